//! Building a span tree without recursion.
//!
//! Input: the spans of one trace (span id, parent span id, start time). Output: the rows in
//! depth-first pre-order, siblings by `start_time` then `span_id`, several roots by
//! `start_time` then `span_id`, with each row's depth, root, child count and parent
//! position. Memory and time are linear in the number of spans (plus the sort); a chain of
//! any depth uses an explicit stack.
//!
//! Anomalies terminate and are reported, never loop:
//! - a span whose parent is absent from the trace roots its own subtree (`orphan`);
//! - a span id that appears more than once: every row stays in the output; children attach to
//!   the first occurrence in (start_time, span_id) order, and the later rows are marked
//!   `duplicate_span_id`;
//! - a parent cycle (a group of spans none of which reaches a root): the cycle is broken at
//!   its earliest span, which becomes a root marked `cycle`.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

/// Why a row is where it is, when it is not a plain child or root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anomaly {
    /// Its parent span is not in the trace; it roots its own subtree.
    Orphan,
    /// Another span of the trace has the same span id.
    DuplicateSpanId,
    /// It is part of a parent cycle, broken here: it is a root.
    Cycle,
}

impl Anomaly {
    /// The SQL value (`anomaly` column).
    pub fn as_str(self) -> &'static str {
        match self {
            Anomaly::Orphan => "orphan",
            Anomaly::DuplicateSpanId => "duplicate_span_id",
            Anomaly::Cycle => "cycle",
        }
    }
}

/// One row of the tree, in output order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeRow {
    /// Index of the span in the input.
    pub input: usize,
    /// 0 for a root.
    pub depth: usize,
    /// Output position of the root of this row's subtree.
    pub root: usize,
    /// Output position of the parent, `None` for a root.
    pub parent: Option<usize>,
    /// Number of direct children in the tree.
    pub child_count: usize,
    pub anomaly: Option<Anomaly>,
}

/// Orders `n` spans as a tree. `span_id(i)`, `parent_id(i)` and `start(i)` describe span `i`.
pub fn build<'a>(
    n: usize,
    span_id: impl Fn(usize) -> &'a str,
    parent_id: impl Fn(usize) -> Option<&'a str>,
    start: impl Fn(usize) -> i64,
) -> Vec<TreeRow> {
    // Spans in sibling order: (start_time, span_id, input index).
    let mut sorted: Vec<usize> = (0..n).collect();
    sorted.sort_by(|&a, &b| {
        start(a)
            .cmp(&start(b))
            .then_with(|| span_id(a).cmp(span_id(b)))
            .then(a.cmp(&b))
    });

    let mut anomaly: Vec<Option<Anomaly>> = vec![None; n];
    let mut rank = vec![0usize; n];
    // Each id maps to its first occurrence in sibling order; later ones are duplicates.
    let mut first: HashMap<&str, usize> = HashMap::with_capacity(n);
    for (k, &i) in sorted.iter().enumerate() {
        rank[i] = k;
        match first.entry(span_id(i)) {
            Entry::Occupied(_) => anomaly[i] = Some(Anomaly::DuplicateSpanId),
            Entry::Vacant(v) => {
                v.insert(i);
            }
        }
    }

    // Children lists in sibling order (CSR layout), and the roots.
    let mut parent_of: Vec<Option<usize>> = vec![None; n];
    let mut child_counts = vec![0usize; n];
    let mut roots = Vec::new();
    for &i in &sorted {
        match parent_id(i).and_then(|p| first.get(p).copied()) {
            Some(p) if p != i => {
                parent_of[i] = Some(p);
                child_counts[p] += 1;
            }
            found => {
                if parent_id(i).is_some() && found.is_none() && anomaly[i].is_none() {
                    anomaly[i] = Some(Anomaly::Orphan);
                } else if found == Some(i) {
                    anomaly[i] = Some(Anomaly::Cycle);
                }
                roots.push(i);
            }
        }
    }
    let mut offsets = vec![0usize; n + 1];
    for i in 0..n {
        offsets[i + 1] = offsets[i] + child_counts[i];
    }
    let mut fill = offsets.clone();
    let mut children = vec![0usize; offsets[n]];
    for &i in &sorted {
        if let Some(p) = parent_of[i] {
            children[fill[p]] = i;
            fill[p] += 1;
        }
    }

    let mut out: Vec<TreeRow> = Vec::with_capacity(n);
    let mut visited = vec![false; n];
    // Stack of (span, depth, parent output position, root output position).
    let mut stack: Vec<(usize, usize, Option<usize>, Option<usize>)> = Vec::new();
    let walk = |start_span: usize,
                out: &mut Vec<TreeRow>,
                visited: &mut Vec<bool>,
                stack: &mut Vec<(usize, usize, Option<usize>, Option<usize>)>,
                anomaly: &[Option<Anomaly>],
                child_counts: &[usize]| {
        stack.push((start_span, 0, None, None));
        while let Some((span, depth, parent, root)) = stack.pop() {
            if visited[span] {
                continue;
            }
            visited[span] = true;
            let position = out.len();
            let root = root.unwrap_or(position);
            out.push(TreeRow {
                input: span,
                depth,
                root,
                parent,
                child_count: child_counts[span],
                anomaly: anomaly[span],
            });
            for &child in children[offsets[span]..offsets[span + 1]].iter().rev() {
                stack.push((child, depth + 1, Some(position), Some(root)));
            }
        }
    };
    for &r in &roots {
        walk(
            r,
            &mut out,
            &mut visited,
            &mut stack,
            &anomaly,
            &child_counts,
        );
    }
    // Whatever is left is in a parent cycle or hangs off one. Follow parents from it to a
    // span on the cycle, break the cycle at its earliest span, and walk from there.
    let mut stamp = vec![usize::MAX; n];
    for (k, &i) in sorted.iter().enumerate() {
        if visited[i] {
            continue;
        }
        let mut on_cycle = i;
        while stamp[on_cycle] != k {
            stamp[on_cycle] = k;
            match parent_of[on_cycle] {
                Some(p) => on_cycle = p,
                None => break,
            }
        }
        let mut earliest = on_cycle;
        let mut member = on_cycle;
        while let Some(p) = parent_of[member] {
            if p == on_cycle {
                break;
            }
            if rank[p] < rank[earliest] {
                earliest = p;
            }
            member = p;
        }
        if let Some(p) = parent_of[earliest] {
            child_counts[p] -= 1;
        }
        anomaly[earliest] = Some(Anomaly::Cycle);
        walk(
            earliest,
            &mut out,
            &mut visited,
            &mut stack,
            &anomaly,
            &child_counts,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(spans: &[(&'static str, Option<&'static str>, i64)]) -> Vec<(String, usize, usize)> {
        build(spans.len(), |i| spans[i].0, |i| spans[i].1, |i| spans[i].2)
            .iter()
            .map(|r| (spans[r.input].0.to_string(), r.depth, r.child_count))
            .collect()
    }

    fn ids(rows: &[(String, usize, usize)]) -> Vec<&str> {
        rows.iter().map(|r| r.0.as_str()).collect()
    }

    #[test]
    fn pre_order_with_siblings_by_start_then_id() {
        let rows = tree(&[
            ("c", Some("a"), 5),
            ("a", None, 0),
            ("b", Some("a"), 5),
            ("d", Some("b"), 6),
            ("e", Some("a"), 1),
        ]);
        assert_eq!(ids(&rows), ["a", "e", "b", "d", "c"]);
        assert_eq!(rows[0], ("a".into(), 0, 3));
        assert_eq!(rows[3], ("d".into(), 2, 0));
    }

    #[test]
    fn orphans_root_their_subtree_and_roots_sort_by_start() {
        let spans = [
            ("x", Some("missing"), 10),
            ("y", Some("x"), 11),
            ("r", None, 20),
        ];
        let rows = build(3, |i| spans[i].0, |i| spans[i].1, |i| spans[i].2);
        let order: Vec<_> = rows.iter().map(|r| spans[r.input].0).collect();
        assert_eq!(order, ["x", "y", "r"]);
        assert_eq!(rows[0].anomaly, Some(Anomaly::Orphan));
        assert_eq!(rows[1].depth, 1);
        assert_eq!(rows[1].root, 0);
        assert_eq!(rows[2].depth, 0);
    }

    #[test]
    fn cycles_terminate_and_are_marked() {
        let spans = [
            ("a", Some("b"), 1),
            ("b", Some("a"), 2),
            ("s", Some("s"), 3),
        ];
        let rows = build(3, |i| spans[i].0, |i| spans[i].1, |i| spans[i].2);
        assert_eq!(rows.len(), 3);
        let order: Vec<_> = rows.iter().map(|r| spans[r.input].0).collect();
        assert_eq!(order, ["s", "a", "b"]);
        assert_eq!(rows[0].anomaly, Some(Anomaly::Cycle), "self-parent");
        assert_eq!(rows[1].anomaly, Some(Anomaly::Cycle));
        assert_eq!(rows[1].child_count, 1);
        assert_eq!(rows[2].depth, 1);
    }

    #[test]
    fn a_cycle_is_broken_at_its_earliest_member_not_at_a_hanging_child() {
        let spans = [
            ("c", Some("a"), 1),
            ("a", Some("b"), 5),
            ("b", Some("a"), 6),
        ];
        let rows = build(3, |i| spans[i].0, |i| spans[i].1, |i| spans[i].2);
        let got: Vec<_> = rows
            .iter()
            .map(|r| (spans[r.input].0, r.depth, r.child_count, r.anomaly))
            .collect();
        assert_eq!(
            got,
            [
                ("a", 0, 2, Some(Anomaly::Cycle)),
                ("c", 1, 0, None),
                ("b", 1, 0, None)
            ]
        );
    }

    #[test]
    fn duplicates_stay_and_children_follow_the_first() {
        let spans = [("a", None, 1), ("a", None, 5), ("c", Some("a"), 2)];
        let rows = build(3, |i| spans[i].0, |i| spans[i].1, |i| spans[i].2);
        let got: Vec<_> = rows.iter().map(|r| (r.input, r.depth, r.anomaly)).collect();
        assert_eq!(
            got,
            [
                (0, 0, None),
                (2, 1, None),
                (1, 0, Some(Anomaly::DuplicateSpanId))
            ]
        );
    }

    #[test]
    fn a_chain_100k_deep_needs_no_recursion() {
        let n = 100_000;
        let names: Vec<String> = (0..n).map(|i| format!("{i:016x}")).collect();
        let rows = build(
            n,
            |i| &names[i],
            |i| (i > 0).then(|| names[i - 1].as_str()),
            |i| i as i64,
        );
        assert_eq!(rows.len(), n);
        assert_eq!(rows[n - 1].depth, n - 1);
        assert_eq!(rows[n - 1].parent, Some(n - 2));
    }
}
