//! Evaluation of a [`SpansetTree`] on the spans of one trace: the spanset a query with
//! structural operators (`>`, `>>`, `<`, `<<`, `~`, and their `!` and `&` forms) selects.
//!
//! Linear in the trace's spans for every operator (ancestors and descendants are found with
//! one memoized walk per span). Spans whose parent is not in the trace are roots; a cycle in
//! the parent links (bad data) ends the walk instead of looping.

use std::collections::HashMap;

use super::compile::{Form, Relation, SpansetTree};

/// The spans of one trace, in any order: their parents (index into the same list, `None` for
/// a root or a parent not in the trace) and, per leaf of the query, which spans match it.
#[derive(Debug, Clone, Default)]
pub struct TraceSpans {
    pub parent: Vec<Option<usize>>,
    /// `leaves[i][s]`: span `s` matches leaf `i`.
    pub leaves: Vec<Vec<bool>>,
}

impl TraceSpans {
    /// The spans from their ids and parent ids (`None`: a root).
    pub fn from_ids<'a>(
        ids: impl ExactSizeIterator<Item = (&'a str, Option<&'a str>)> + Clone,
        leaves: Vec<Vec<bool>>,
    ) -> Self {
        let index: HashMap<&str, usize> = ids
            .clone()
            .enumerate()
            .map(|(i, (id, _))| (id, i))
            .collect();
        let parent = ids
            .map(|(_, p)| p.and_then(|p| index.get(p).copied()))
            .collect();
        Self { parent, leaves }
    }

    fn len(&self) -> usize {
        self.parent.len()
    }

    /// The spanset `tree` selects: `out[s]` is whether span `s` is in it.
    pub fn evaluate(&self, tree: &SpansetTree) -> Vec<bool> {
        match tree {
            SpansetTree::Leaf(i) => self
                .leaves
                .get(*i)
                .cloned()
                .unwrap_or_else(|| vec![false; self.len()]),
            SpansetTree::Or(a, b) => or(self.evaluate(a), &self.evaluate(b)),
            SpansetTree::And(a, b) => {
                let (a, b) = (self.evaluate(a), self.evaluate(b));
                if a.contains(&true) && b.contains(&true) {
                    or(a, &b)
                } else {
                    vec![false; self.len()]
                }
            }
            SpansetTree::Structural {
                relation,
                form,
                lhs,
                rhs,
            } => {
                let (l, r) = (self.evaluate(lhs), self.evaluate(rhs));
                match form {
                    Form::Plain => and(&r, &self.related(*relation, &l)),
                    Form::Negated => {
                        let related = self.related(*relation, &l);
                        r.iter().zip(related).map(|(r, x)| *r && !x).collect()
                    }
                    Form::Union => {
                        let right = and(&r, &self.related(*relation, &l));
                        let left = and(&l, &self.related(inverse(*relation), &r));
                        or(right, &left)
                    }
                }
            }
        }
    }

    /// `out[s]`: span `s` stands in `relation` to some span of `set` (for [`Relation::Child`]:
    /// its parent is in `set`).
    fn related(&self, relation: Relation, set: &[bool]) -> Vec<bool> {
        let n = self.len();
        match relation {
            Relation::Child => (0..n)
                .map(|s| self.parent[s].is_some_and(|p| set[p]))
                .collect(),
            Relation::Parent => {
                let mut out = vec![false; n];
                for (&member, parent) in set.iter().zip(&self.parent) {
                    if let (true, Some(p)) = (member, parent) {
                        out[*p] = true;
                    }
                }
                out
            }
            Relation::Sibling => {
                // Per parent: how many of its children are in `set`.
                let mut in_set = vec![0usize; n];
                for (&member, parent) in set.iter().zip(&self.parent) {
                    if let (true, Some(p)) = (member, parent) {
                        in_set[*p] += 1;
                    }
                }
                (0..n)
                    .map(|s| self.parent[s].is_some_and(|p| in_set[p] > usize::from(set[s])))
                    .collect()
            }
            Relation::Ancestor => {
                // Walk up from each member, stopping at a span already marked: each span is
                // marked once.
                let mut out = vec![false; n];
                for (&member, parent) in set.iter().zip(&self.parent) {
                    if !member {
                        continue;
                    }
                    let mut at = *parent;
                    let mut steps = 0;
                    while let Some(p) = at {
                        if out[p] || steps > n {
                            break;
                        }
                        out[p] = true;
                        at = self.parent[p];
                        steps += 1;
                    }
                }
                out
            }
            Relation::Descendant => {
                // has[s]: some ancestor of `s` is in `set`, memoized along each walk.
                let mut has: Vec<Option<bool>> = vec![None; n];
                let mut path = Vec::new();
                for s in 0..n {
                    if has[s].is_some() {
                        continue;
                    }
                    path.clear();
                    let mut at = s;
                    let value = loop {
                        if let Some(v) = has[at] {
                            break v;
                        }
                        if path.len() > n {
                            break false; // a cycle
                        }
                        path.push(at);
                        match self.parent[at] {
                            None => break false,
                            Some(p) if set[p] => break true,
                            Some(p) => at = p,
                        }
                    };
                    // Every span on the path below the answer shares it.
                    for &span in &path {
                        has[span] = Some(value);
                    }
                }
                has.into_iter().map(|v| v.unwrap_or(false)).collect()
            }
        }
    }
}

fn inverse(relation: Relation) -> Relation {
    match relation {
        Relation::Child => Relation::Parent,
        Relation::Parent => Relation::Child,
        Relation::Descendant => Relation::Ancestor,
        Relation::Ancestor => Relation::Descendant,
        Relation::Sibling => Relation::Sibling,
    }
}

fn or(mut a: Vec<bool>, b: &[bool]) -> Vec<bool> {
    for (x, y) in a.iter_mut().zip(b) {
        *x |= *y;
    }
    a
}

fn and(a: &[bool], b: &[bool]) -> Vec<bool> {
    a.iter().zip(b).map(|(x, y)| *x && *y).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traceql::{Compiled, compile_text};

    /// root(a) -> b -> c, root -> d; leaves from the span names.
    fn spans(query: &str) -> (TraceSpans, SpansetTree) {
        let Ok(Compiled::Search(plan)) = compile_text(query) else {
            panic!("{query} does not compile to a search");
        };
        let names = ["a", "b", "c", "d"];
        let parents = [None, Some("a"), Some("b"), Some("a")];
        let leaves = plan
            .leaves
            .iter()
            .map(|sql| {
                names
                    .iter()
                    .map(|n| sql.contains(&format!("'{n}'")))
                    .collect()
            })
            .collect();
        let spans = TraceSpans::from_ids(names.iter().copied().zip(parents), leaves);
        (spans, plan.structure.expect("structural"))
    }

    fn selected(query: &str) -> Vec<&'static str> {
        let (spans, tree) = spans(query);
        let names = ["a", "b", "c", "d"];
        spans
            .evaluate(&tree)
            .iter()
            .zip(names)
            .filter(|(x, _)| **x)
            .map(|(_, n)| n)
            .collect()
    }

    #[test]
    fn operators_select_the_right_hand_spans() {
        let any = r#"{ name = "b" || name = "c" || name = "d" }"#;
        assert_eq!(
            selected(&format!(r#"{{ name = "a" }} > {any}"#)),
            ["b", "d"]
        );
        assert_eq!(
            selected(&format!(r#"{{ name = "a" }} >> {any}"#)),
            ["b", "c", "d"]
        );
        assert_eq!(
            selected(r#"{ name = "c" } < { name = "b" || name = "a" }"#),
            ["b"]
        );
        assert_eq!(
            selected(r#"{ name = "c" } << { name = "b" || name = "a" }"#),
            ["a", "b"]
        );
        assert_eq!(selected(&format!(r#"{{ name = "b" }} ~ {any}"#)), ["d"]);
        assert_eq!(
            selected(r#"{ name = "a" } !> { name = "b" || name = "c" }"#),
            ["c"]
        );
        assert_eq!(
            selected(r#"{ name = "a" } !>> { name = "c" }"#),
            Vec::<&str>::new()
        );
        assert_eq!(selected(r#"{ name = "a" } &> { name = "b" }"#), ["a", "b"]);
        assert_eq!(
            selected(r#"{ name = "b" } !~ { name = "d" }"#),
            Vec::<&str>::new()
        );
        // Chains associate to the left: c's parent is b, whose parent is a.
        assert_eq!(
            selected(r#"{ name = "a" } > { name = "b" } > { name = "c" }"#),
            ["c"]
        );
        assert_eq!(
            selected(r#"{ name = "d" } > { name = "c" }"#),
            Vec::<&str>::new()
        );
        // Spanset && and || around a structural expression.
        assert_eq!(
            selected(r#"({ name = "a" } > { name = "c" }) || { name = "d" }"#),
            ["d"]
        );
        assert_eq!(
            selected(r#"({ name = "b" } > { name = "c" }) && { name = "d" }"#),
            ["c", "d"]
        );
    }

    #[test]
    fn cycles_and_missing_parents_end_the_walks() {
        // x -> y -> x (a cycle), z's parent is not in the trace.
        let spans = TraceSpans::from_ids(
            [("x", Some("y")), ("y", Some("x")), ("z", Some("gone"))].into_iter(),
            vec![vec![true, false, false], vec![true, true, true]],
        );
        for relation in [
            Relation::Child,
            Relation::Descendant,
            Relation::Parent,
            Relation::Ancestor,
            Relation::Sibling,
        ] {
            let tree = SpansetTree::Structural {
                relation,
                form: Form::Plain,
                lhs: Box::new(SpansetTree::Leaf(0)),
                rhs: Box::new(SpansetTree::Leaf(1)),
            };
            let out = spans.evaluate(&tree);
            assert!(!out[2], "{relation:?}: z has no relation to x");
        }
    }
}
