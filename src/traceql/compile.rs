//! A TraceQL syntax tree to SQL over `spans`: the span predicate of a search (an SQL boolean
//! expression over one span's columns, which the search path and the dedicated attribute
//! columns serve), the trace-level filter applied to the traces it finds, and the grouping of
//! a metrics query. What cannot be compiled exactly is refused with the construct's name and
//! position, never approximated or ignored.

use super::TraceQlError;
use super::parse::{
    Aggregate, AttrScope, CmpOp, FieldExpr, Literal, MetricsFunction, Operand, Query, SpansetExpr,
    Stage, StructuralOp,
};

/// A field a search shows on the spans of its spansets (the attributes a query reads, and
/// those of `select(...)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShownField {
    /// An attribute (`span`, `resource`, or either for `.x`).
    Attribute { scope: AttrScope, key: String },
    /// An intrinsic, by its canonical name.
    Intrinsic(String),
}

/// A compiled search.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPlan {
    /// SQL over one span's columns: the spans any spanset filter may match.
    pub span_predicate: String,
    /// The span predicate of each spanset filter, when `trace_filter` reads them (as
    /// `"__leaf_<i>"`: the trace has a span in the window matching filter `i`).
    pub leaves: Vec<String>,
    /// Aggregates over a trace's matching spans that `trace_filter` reads (as `"__agg_<j>"`):
    /// `(function, SQL argument)`, the function one of `avg`, `min`, `max`, `sum`.
    pub aggregates: Vec<(String, String)>,
    /// SQL over the columns of `trace_search` and the leaves and aggregates above: which
    /// traces found by `span_predicate` qualify. `None`: every one.
    pub trace_filter: Option<String>,
    /// The fields to show on matching spans.
    pub shown: Vec<ShownField>,
    /// For a query with structural operators (`>`, `>>`, `<`, `<<`, `~` and their `!` and `&`
    /// forms): the spanset expression over `leaves`, evaluated per trace on its span tree.
    /// The trace qualifies when the resulting spanset is not empty, and its matched spans are
    /// that spanset. `None` for other queries.
    pub structure: Option<SpansetTree>,
}

/// A structural relation: which spans of the right-hand side a plain operator keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// `>`: those whose parent is on the left.
    Child,
    /// `>>`: those with an ancestor on the left.
    Descendant,
    /// `<`: those that are the parent of a span on the left.
    Parent,
    /// `<<`: those that are an ancestor of a span on the left.
    Ancestor,
    /// `~`: those with a sibling (same parent, another span) on the left.
    Sibling,
}

/// How a structural operator uses its relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `>`: the right-hand spans in the relation.
    Plain,
    /// `!>`: the right-hand spans not in the relation.
    Negated,
    /// `&>`: the spans of both sides that are in the relation.
    Union,
}

/// A spanset expression over the leaves (spanset filters) of a [`SearchPlan`].
#[derive(Debug, Clone, PartialEq)]
pub enum SpansetTree {
    /// The spans matching leaf `i` (in the window).
    Leaf(usize),
    /// Both sides' spans when neither is empty, else none.
    And(Box<SpansetTree>, Box<SpansetTree>),
    /// The spans of either side.
    Or(Box<SpansetTree>, Box<SpansetTree>),
    Structural {
        relation: Relation,
        form: Form,
        lhs: Box<SpansetTree>,
        rhs: Box<SpansetTree>,
    },
}

/// The function of a compiled metrics query.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricsKind {
    /// Matching spans per second.
    Rate,
    /// Matching spans per step.
    CountOverTime,
    /// Quantiles of an SQL value (`duration_ns` is reported in seconds).
    Quantile { value: String, quantiles: Vec<f64> },
    /// Counts per power-of-two bucket of an SQL value (`duration_ns`: buckets in seconds).
    Histogram { value: String },
}

/// A compiled metrics query.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsPlan {
    /// SQL over one span's columns: the spans counted.
    pub span_predicate: String,
    pub kind: MetricsKind,
    /// The series labels: `(label as written, SQL text of the value)`.
    pub by: Vec<(String, String)>,
    /// Whether the value is a duration in nanoseconds (reported in seconds).
    pub value_is_duration: bool,
}

/// What a query is.
#[derive(Debug, Clone, PartialEq)]
pub enum Compiled {
    Search(SearchPlan),
    Metrics(MetricsPlan),
}

/// Compiles a parsed query.
pub fn compile(query: &Query) -> Result<Compiled, TraceQlError> {
    let mut compiler = Compiler::default();
    let tree = compiler.spansets(&query.spansets)?;
    let metrics_at = query
        .stages
        .iter()
        .position(|s| matches!(s, Stage::Metrics { .. }));
    if let Some(at) = metrics_at {
        if at + 1 != query.stages.len() {
            return Err(TraceQlError::new(
                stage_pos(&query.stages[at + 1]),
                "nothing may follow a metrics function",
            ));
        }
        if let Some(stage) = query.stages[..at].first() {
            return Err(TraceQlError::new(
                stage_pos(stage),
                "a metrics query takes spanset filters only before its metrics function",
            ));
        }
        let Stage::Metrics { function, by, pos } = &query.stages[at] else {
            unreachable_stage()?
        };
        return compiler
            .metrics(tree, function, by, *pos)
            .map(Compiled::Metrics);
    }
    let mut trace_conditions: Vec<String> = Vec::new();
    for stage in &query.stages {
        match stage {
            Stage::Select(fields, _) => {
                for field in fields {
                    compiler.show(field)?;
                }
            }
            Stage::Filter {
                aggregate,
                op,
                value,
                pos,
            } => trace_conditions.push(compiler.aggregate_filter(aggregate, *op, value, *pos)?),
            Stage::By(_, pos) => {
                return Err(TraceQlError::new(
                    *pos,
                    "by(...) in a search (grouping spansets) is not supported; use it after a \
                     metrics function, for example `{} | rate() by (resource.service.name)`",
                ));
            }
            Stage::Spanset(_, pos) => {
                return Err(TraceQlError::new(
                    *pos,
                    "a spanset filter after '|' is not supported; combine the conditions in one \
                     filter with &&",
                ));
            }
            Stage::Metrics { .. } => unreachable_stage()?,
        }
    }
    let span_predicate = or_all(compiler.leaves.iter().map(|l| l.span_sql.clone()));
    if compiler.structural_at.is_some() {
        if let Some(at) = compiler.leaves.iter().find_map(|l| l.trace_pos) {
            return Err(TraceQlError::new(
                at,
                "trace-level intrinsics (trace:duration, trace:rootName, trace:rootService) are \
                 not supported in a query with structural operators",
            ));
        }
        if let Some(stage) = query
            .stages
            .iter()
            .find(|s| matches!(s, Stage::Filter { .. }))
        {
            return Err(TraceQlError::new(
                stage_pos(stage),
                "pipeline aggregates (count(), avg(), ...) are not supported after structural \
                 operators",
            ));
        }
        return Ok(Compiled::Search(SearchPlan {
            span_predicate,
            leaves: compiler.leaves.iter().map(|l| l.span_sql.clone()).collect(),
            aggregates: Vec::new(),
            trace_filter: None,
            shown: compiler.shown,
            structure: Some(tree.public()),
        }));
    }
    let needs_leaves = tree_needs_leaves(&tree, &compiler.leaves);
    let mut filter_parts = Vec::new();
    if needs_leaves {
        filter_parts.push(compiler.tree_sql(&tree));
    }
    filter_parts.extend(trace_conditions);
    let trace_filter = if filter_parts.is_empty() {
        None
    } else {
        Some(and_all(filter_parts))
    };
    let leaves = if needs_leaves {
        compiler.leaves.iter().map(|l| l.span_sql.clone()).collect()
    } else {
        Vec::new()
    };
    Ok(Compiled::Search(SearchPlan {
        span_predicate,
        leaves,
        aggregates: compiler.aggregates,
        trace_filter,
        shown: compiler.shown,
        structure: None,
    }))
}

fn unreachable_stage<T>() -> Result<T, TraceQlError> {
    Err(TraceQlError::new(
        0,
        "internal: a metrics stage was expected",
    ))
}

fn stage_pos(stage: &Stage) -> usize {
    match stage {
        Stage::Filter { pos, .. }
        | Stage::Select(_, pos)
        | Stage::By(_, pos)
        | Stage::Spanset(_, pos)
        | Stage::Metrics { pos, .. } => *pos,
    }
}

/// A spanset filter, compiled.
#[derive(Debug)]
struct Leaf {
    span_sql: String,
    /// Conditions on the trace (over `trace_search`'s columns).
    trace_sql: Vec<String>,
    /// Where the first trace-level condition is written.
    trace_pos: Option<usize>,
}

/// Spanset operators over leaves.
enum Tree {
    Leaf(usize),
    And(Box<Tree>, Box<Tree>),
    Or(Box<Tree>, Box<Tree>),
    Structural {
        relation: Relation,
        form: Form,
        lhs: Box<Tree>,
        rhs: Box<Tree>,
    },
}

impl Tree {
    fn public(&self) -> SpansetTree {
        match self {
            Tree::Leaf(i) => SpansetTree::Leaf(*i),
            Tree::And(a, b) => SpansetTree::And(Box::new(a.public()), Box::new(b.public())),
            Tree::Or(a, b) => SpansetTree::Or(Box::new(a.public()), Box::new(b.public())),
            Tree::Structural {
                relation,
                form,
                lhs,
                rhs,
            } => SpansetTree::Structural {
                relation: *relation,
                form: *form,
                lhs: Box::new(lhs.public()),
                rhs: Box::new(rhs.public()),
            },
        }
    }
}

fn tree_needs_leaves(tree: &Tree, leaves: &[Leaf]) -> bool {
    match tree {
        Tree::Leaf(i) => !leaves[*i].trace_sql.is_empty(),
        Tree::And(..) | Tree::Structural { .. } => true,
        Tree::Or(a, b) => tree_needs_leaves(a, leaves) || tree_needs_leaves(b, leaves),
    }
}

#[derive(Default)]
struct Compiler {
    leaves: Vec<Leaf>,
    aggregates: Vec<(String, String)>,
    shown: Vec<ShownField>,
    /// Where the first structural operator is written.
    structural_at: Option<usize>,
}

/// An SQL string literal.
pub(crate) fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn or_all(parts: impl Iterator<Item = String>) -> String {
    let mut parts: Vec<String> = parts.collect();
    parts.dedup();
    match parts.len() {
        0 => "TRUE".into(),
        1 => parts.remove(0),
        _ => parts
            .iter()
            .map(|p| format!("({p})"))
            .collect::<Vec<_>>()
            .join(" OR "),
    }
}

fn and_all(parts: Vec<String>) -> String {
    match parts.len() {
        0 => "TRUE".into(),
        1 => parts.into_iter().next().unwrap_or_default(),
        _ => parts
            .iter()
            .map(|p| format!("({p})"))
            .collect::<Vec<_>>()
            .join(" AND "),
    }
}

/// Where an attribute may live: each place is `(map column, key)`, or the `service_name`
/// column for the resource's `service.name`.
fn places(scope: AttrScope, key: &str) -> Vec<Place> {
    let resource = |key: &str| {
        if key == "service.name" {
            Place::ServiceName
        } else {
            Place::Map("resource_attributes", key.to_string())
        }
    };
    match scope {
        AttrScope::Span => vec![Place::Map("attributes", key.to_string())],
        AttrScope::Resource => vec![resource(key)],
        _ => vec![Place::Map("attributes", key.to_string()), resource(key)],
    }
}

enum Place {
    Map(&'static str, String),
    ServiceName,
}

impl Place {
    /// The typed access of the value (`None`: this place holds no value of the type).
    fn typed(&self, accessor: &str) -> Option<String> {
        match self {
            Place::Map(map, key) => Some(format!("{accessor}({map}, {})", sql_string(key))),
            Place::ServiceName => (accessor == "attr_str").then(|| "service_name".to_string()),
        }
    }

    /// The value as text, whatever its type.
    fn as_text(&self) -> String {
        match self {
            Place::Map(map, key) => {
                let k = sql_string(key);
                format!(
                    "coalesce(attr_str({map}, {k}), CAST(attr_int({map}, {k}) AS VARCHAR), \
                     CAST(attr_double({map}, {k}) AS VARCHAR), CAST(attr_bool({map}, {k}) AS VARCHAR))"
                )
            }
            Place::ServiceName => "service_name".into(),
        }
    }

    fn exists(&self) -> String {
        match self {
            Place::Map(map, key) => {
                format!(
                    "coalesce(array_has(map_keys({map}), {}), false)",
                    sql_string(key)
                )
            }
            Place::ServiceName => "service_name IS NOT NULL".into(),
        }
    }
}

fn comparison(value: &str, op: CmpOp, literal: &str) -> String {
    match op {
        CmpOp::Match => format!("{value} ~ {literal}"),
        CmpOp::NotMatch => format!("{value} !~ {literal}"),
        CmpOp::Ne => format!("{value} <> {literal}"),
        other => format!("{value} {} {literal}", other.text()),
    }
}

/// A literal as SQL, with the accessor that reads attributes of its type.
fn literal_sql(value: &Literal) -> Option<(&'static str, String)> {
    Some(match value {
        Literal::Str(s) => ("attr_str", sql_string(s)),
        Literal::Int(i) => ("attr_int", i.to_string()),
        Literal::Duration(ns) => ("attr_int", ns.to_string()),
        Literal::Float(f) => ("attr_double", format!("{f:?}")),
        Literal::Bool(b) => ("attr_bool", b.to_string().to_uppercase()),
        Literal::Nil | Literal::Status(_) | Literal::Kind(_) => return None,
    })
}

/// Whether `name` is a trace-level intrinsic, and the `trace_search` column it reads.
fn trace_column(name: &str) -> Option<&'static str> {
    match name {
        "trace:duration" => Some("duration_ns"),
        "trace:rootName" => Some("root_span_name"),
        "trace:rootService" => Some("root_service_name"),
        _ => None,
    }
}

fn reads_trace_level(e: &FieldExpr) -> Option<usize> {
    match e {
        FieldExpr::And(a, b) | FieldExpr::Or(a, b) => reads_trace_level(a).or(reads_trace_level(b)),
        FieldExpr::Not(inner, _) => reads_trace_level(inner),
        FieldExpr::Cmp { lhs, rhs, .. } => [lhs, rhs].into_iter().find_map(|o| match o {
            Operand::Intrinsic { name, pos } if trace_column(name).is_some() => Some(*pos),
            _ => None,
        }),
        FieldExpr::Bare(Operand::Intrinsic { name, pos }) if trace_column(name).is_some() => {
            Some(*pos)
        }
        FieldExpr::Bare(_) => None,
    }
}

fn conjuncts<'a>(e: &'a FieldExpr, out: &mut Vec<&'a FieldExpr>) {
    match e {
        FieldExpr::And(a, b) => {
            conjuncts(a, out);
            conjuncts(b, out);
        }
        other => out.push(other),
    }
}

fn unsupported_intrinsic(name: &str, pos: usize) -> TraceQlError {
    TraceQlError::new(
        pos,
        format!(
            "the intrinsic {name} is not supported (supported: name, status, statusMessage, kind, \
             duration, span:id, span:parentID, trace:id, trace:duration, trace:rootName, \
             trace:rootService, instrumentation:name, instrumentation:version)"
        ),
    )
}

impl Compiler {
    fn spansets(&mut self, e: &SpansetExpr) -> Result<Tree, TraceQlError> {
        Ok(match e {
            SpansetExpr::Filter { condition, .. } => {
                let leaf = match condition {
                    None => Leaf {
                        span_sql: "TRUE".into(),
                        trace_sql: Vec::new(),
                        trace_pos: None,
                    },
                    Some(condition) => self.leaf(condition)?,
                };
                self.leaves.push(leaf);
                Tree::Leaf(self.leaves.len() - 1)
            }
            SpansetExpr::And(a, b) => {
                Tree::And(Box::new(self.spansets(a)?), Box::new(self.spansets(b)?))
            }
            SpansetExpr::Or(a, b) => {
                Tree::Or(Box::new(self.spansets(a)?), Box::new(self.spansets(b)?))
            }
            SpansetExpr::Structural { op, lhs, rhs, pos } => {
                let (relation, form) = match op {
                    StructuralOp::Child => (Relation::Child, Form::Plain),
                    StructuralOp::Descendant => (Relation::Descendant, Form::Plain),
                    StructuralOp::Parent => (Relation::Parent, Form::Plain),
                    StructuralOp::Ancestor => (Relation::Ancestor, Form::Plain),
                    StructuralOp::Sibling => (Relation::Sibling, Form::Plain),
                    StructuralOp::Other(written) => {
                        let (form, rest) = if let Some(rest) = written.strip_prefix('!') {
                            (Form::Negated, rest)
                        } else if let Some(rest) = written.strip_prefix('&') {
                            (Form::Union, rest)
                        } else {
                            (Form::Plain, *written)
                        };
                        let relation = match rest {
                            ">" => Relation::Child,
                            ">>" => Relation::Descendant,
                            "<" => Relation::Parent,
                            "<<" => Relation::Ancestor,
                            "~" => Relation::Sibling,
                            _ => {
                                return Err(TraceQlError::new(
                                    *pos,
                                    format!("the structural operator {written:?} is not supported"),
                                ));
                            }
                        };
                        (relation, form)
                    }
                };
                self.structural_at.get_or_insert(*pos);
                Tree::Structural {
                    relation,
                    form,
                    lhs: Box::new(self.spansets(lhs)?),
                    rhs: Box::new(self.spansets(rhs)?),
                }
            }
        })
    }

    fn leaf(&mut self, condition: &FieldExpr) -> Result<Leaf, TraceQlError> {
        let mut parts = Vec::new();
        conjuncts(condition, &mut parts);
        let mut span = Vec::new();
        let mut trace = Vec::new();
        let mut trace_pos = None;
        for part in parts {
            match reads_trace_level(part) {
                None => span.push(self.field(part)?),
                Some(at) => match part {
                    FieldExpr::Cmp { lhs, op, rhs, pos } => {
                        trace_pos.get_or_insert(at);
                        trace.push(self.trace_comparison(lhs, *op, rhs, *pos)?)
                    }
                    _ => {
                        return Err(TraceQlError::new(
                            at,
                            "a trace-level intrinsic (trace:duration, trace:rootName, \
                             trace:rootService) may only be compared with a value and combined \
                             with && at the top of a spanset filter",
                        ));
                    }
                },
            }
        }
        Ok(Leaf {
            span_sql: and_all(span),
            trace_sql: trace,
            trace_pos,
        })
    }

    fn trace_comparison(
        &mut self,
        lhs: &Operand,
        op: CmpOp,
        rhs: &Operand,
        pos: usize,
    ) -> Result<String, TraceQlError> {
        let (field, op, value) = normalize(lhs, op, rhs, pos)?;
        let Operand::Intrinsic { name, pos: at } = field else {
            return Err(TraceQlError::new(pos, "expected a trace-level intrinsic"));
        };
        let column = trace_column(name).ok_or_else(|| unsupported_intrinsic(name, *at))?;
        let Operand::Literal { value, pos: lit_at } = value else {
            return Err(two_fields(pos));
        };
        let literal = match (column, value) {
            ("duration_ns", Literal::Duration(ns)) => ns.to_string(),
            ("duration_ns", _) => {
                return Err(TraceQlError::new(
                    *lit_at,
                    format!("{name} compares with a duration such as 100ms or 1.5s"),
                ));
            }
            (_, Literal::Str(s)) => sql_string(s),
            _ => {
                return Err(TraceQlError::new(
                    *lit_at,
                    format!("{name} compares with a string"),
                ));
            }
        };
        check_op(op, column != "duration_ns", *lit_at)?;
        self.shown_intrinsic(name);
        Ok(comparison(column, op, &regex_literal(op, literal)))
    }

    fn shown_intrinsic(&mut self, name: &str) {
        let field = ShownField::Intrinsic(name.to_string());
        if !self.shown.contains(&field) {
            self.shown.push(field);
        }
    }

    fn show(&mut self, operand: &Operand) -> Result<(), TraceQlError> {
        let field = match operand {
            Operand::Attribute { scope, key, pos } => {
                supported_scope(*scope, *pos)?;
                ShownField::Attribute {
                    scope: *scope,
                    key: key.clone(),
                }
            }
            Operand::Intrinsic { name, .. } => ShownField::Intrinsic(name.clone()),
            Operand::Literal { pos, .. } => {
                return Err(TraceQlError::new(
                    *pos,
                    "expected an attribute or an intrinsic",
                ));
            }
        };
        if !self.shown.contains(&field) {
            self.shown.push(field);
        }
        Ok(())
    }

    /// A condition on one span, as SQL.
    fn field(&mut self, e: &FieldExpr) -> Result<String, TraceQlError> {
        Ok(match e {
            FieldExpr::And(a, b) => format!("({}) AND ({})", self.field(a)?, self.field(b)?),
            FieldExpr::Or(a, b) => format!("({}) OR ({})", self.field(a)?, self.field(b)?),
            FieldExpr::Not(inner, _) => format!("NOT coalesce(({}), false)", self.field(inner)?),
            FieldExpr::Bare(operand) => match operand {
                Operand::Literal {
                    value: Literal::Bool(b),
                    ..
                } => b.to_string().to_uppercase(),
                Operand::Attribute { scope, key, pos } => {
                    self.show(operand)?;
                    let _ = pos;
                    or_all(
                        places(*scope, key)
                            .iter()
                            .filter_map(|p| p.typed("attr_bool"))
                            .map(|v| format!("{v} = TRUE")),
                    )
                }
                other => {
                    return Err(TraceQlError::new(
                        other.pos(),
                        format!(
                            "{} alone is not a condition: compare it with a value",
                            other.text()
                        ),
                    ));
                }
            },
            FieldExpr::Cmp { lhs, op, rhs, pos } => self.comparison(lhs, *op, rhs, *pos)?,
        })
    }

    fn comparison(
        &mut self,
        lhs: &Operand,
        op: CmpOp,
        rhs: &Operand,
        pos: usize,
    ) -> Result<String, TraceQlError> {
        let (field, op, value) = normalize(lhs, op, rhs, pos)?;
        let Operand::Literal { value, pos: lit_at } = value else {
            return Err(two_fields(pos));
        };
        let lit_at = *lit_at;
        match field {
            Operand::Attribute { scope, key, pos } => {
                supported_scope(*scope, *pos)?;
                self.show(field)?;
                let places = places(*scope, key);
                if *value == Literal::Nil {
                    let exists = or_all(places.iter().map(Place::exists));
                    return match op {
                        CmpOp::Eq => Ok(format!("NOT ({exists})")),
                        CmpOp::Ne => Ok(exists),
                        _ => Err(TraceQlError::new(
                            lit_at,
                            "nil compares with = or != only (is the attribute missing or set)",
                        )),
                    };
                }
                let Some((accessor, literal)) = literal_sql(value) else {
                    return Err(TraceQlError::new(
                        lit_at,
                        "an attribute compares with a string, a number, a duration, true, \
                         false or nil",
                    ));
                };
                check_op(op, accessor == "attr_str", lit_at)?;
                if accessor == "attr_bool" && !matches!(op, CmpOp::Eq | CmpOp::Ne) {
                    return Err(TraceQlError::new(
                        lit_at,
                        "true and false compare with = or != only",
                    ));
                }
                let literal = regex_literal(op, literal);
                Ok(or_all(
                    places
                        .iter()
                        .filter_map(|p| p.typed(accessor))
                        .map(|v| comparison(&v, op, &literal)),
                ))
            }
            Operand::Intrinsic { name, pos } => {
                let (column, kind) =
                    span_intrinsic(name).ok_or_else(|| unsupported_intrinsic(name, *pos))?;
                let literal = match (kind, value) {
                    (IntrinsicKind::Text, Literal::Str(s)) => sql_string(s),
                    (IntrinsicKind::Id, Literal::Str(s)) => sql_string(&s.to_ascii_lowercase()),
                    (IntrinsicKind::Duration, Literal::Duration(ns)) => ns.to_string(),
                    (IntrinsicKind::Status, Literal::Status(s)) => sql_string(s),
                    (IntrinsicKind::Kind, Literal::Kind(k)) => sql_string(k),
                    _ => {
                        return Err(TraceQlError::new(
                            lit_at,
                            format!("{name} compares with {}", kind.expects()),
                        ));
                    }
                };
                let text = matches!(kind, IntrinsicKind::Text | IntrinsicKind::Id);
                check_op(op, text, lit_at)?;
                if matches!(kind, IntrinsicKind::Status | IntrinsicKind::Kind)
                    && !matches!(op, CmpOp::Eq | CmpOp::Ne)
                {
                    return Err(TraceQlError::new(
                        lit_at,
                        format!("{name} compares with = or != only"),
                    ));
                }
                self.shown_intrinsic(name);
                Ok(comparison(column, op, &regex_literal(op, literal)))
            }
            Operand::Literal { pos, .. } => Err(TraceQlError::new(
                *pos,
                "compare an attribute or an intrinsic with a value",
            )),
        }
    }

    /// `| count() > 2`, `| avg(duration) > 1s`: a condition on the trace's matching spans.
    fn aggregate_filter(
        &mut self,
        aggregate: &Aggregate,
        op: CmpOp,
        value: &Operand,
        pos: usize,
    ) -> Result<String, TraceQlError> {
        let Operand::Literal { value, pos: lit_at } = value else {
            return Err(TraceQlError::new(pos, "an aggregate compares with a value"));
        };
        check_op(op, false, *lit_at)?;
        let number = |v: &Literal| match v {
            Literal::Int(i) => Some(i.to_string()),
            Literal::Float(f) => Some(format!("{f:?}")),
            Literal::Duration(ns) => Some(ns.to_string()),
            _ => None,
        };
        let literal = number(value).ok_or_else(|| {
            TraceQlError::new(*lit_at, "an aggregate compares with a number or a duration")
        })?;
        let (function, field) = match aggregate {
            Aggregate::Count => {
                return Ok(comparison("matched_count", op, &literal));
            }
            Aggregate::Avg(f) => ("avg", f),
            Aggregate::Min(f) => ("min", f),
            Aggregate::Max(f) => ("max", f),
            Aggregate::Sum(f) => ("sum", f),
        };
        let argument = match field {
            Operand::Intrinsic { name, .. } if name == "span:duration" => {
                if !matches!(value, Literal::Duration(_)) {
                    return Err(TraceQlError::new(
                        *lit_at,
                        format!("{function}(duration) compares with a duration such as 100ms"),
                    ));
                }
                "duration_ns".to_string()
            }
            Operand::Attribute { .. } => numeric_attribute(field)?,
            other => {
                return Err(TraceQlError::new(
                    other.pos(),
                    format!("{function}() takes duration or a numeric attribute"),
                ));
            }
        };
        self.aggregates.push((function.to_string(), argument));
        Ok(comparison(
            &format!("\"__agg_{}\"", self.aggregates.len() - 1),
            op,
            &literal,
        ))
    }

    fn tree_sql(&self, tree: &Tree) -> String {
        match tree {
            Tree::Leaf(i) => {
                let mut parts = vec![format!("\"__leaf_{i}\"")];
                parts.extend(self.leaves[*i].trace_sql.iter().cloned());
                and_all(parts)
            }
            Tree::And(a, b) => format!("({}) AND ({})", self.tree_sql(a), self.tree_sql(b)),
            Tree::Or(a, b) => format!("({}) OR ({})", self.tree_sql(a), self.tree_sql(b)),
            // Queries with structural operators are evaluated on the span tree
            // (`SearchPlan::structure`), never through SQL.
            Tree::Structural { .. } => "FALSE".into(),
        }
    }

    fn metrics(
        &mut self,
        tree: Tree,
        function: &MetricsFunction,
        by: &[Operand],
        pos: usize,
    ) -> Result<MetricsPlan, TraceQlError> {
        if let Some(at) = self.structural_at {
            return Err(TraceQlError::new(
                at,
                "a metrics query counts spans: structural operators (>, >>, <, <<, ~) are not \
                 supported in one",
            ));
        }
        if tree_needs_leaves(&tree, &self.leaves) {
            return Err(TraceQlError::new(
                0,
                "a metrics query counts spans: spanset && and trace-level intrinsics \
                 (trace:duration, ...) are not supported in one; use one filter or ||",
            ));
        }
        let span_predicate = or_all(self.leaves.iter().map(|l| l.span_sql.clone()));
        let mut labels = Vec::new();
        for field in by {
            labels.push((field.text(), label_sql(field)?));
        }
        let value_of = |field: &Operand| -> Result<(String, bool), TraceQlError> {
            match field {
                Operand::Intrinsic { name, .. } if name == "span:duration" => {
                    Ok(("duration_ns".into(), true))
                }
                Operand::Attribute { .. } => Ok((numeric_attribute(field)?, false)),
                other => Err(TraceQlError::new(
                    other.pos(),
                    "expected duration or a numeric attribute",
                )),
            }
        };
        let (kind, value_is_duration) = match function {
            MetricsFunction::Rate => (MetricsKind::Rate, false),
            MetricsFunction::CountOverTime => (MetricsKind::CountOverTime, false),
            MetricsFunction::QuantileOverTime(field, quantiles) => {
                let (value, duration) = value_of(field)?;
                (
                    MetricsKind::Quantile {
                        value,
                        quantiles: quantiles.clone(),
                    },
                    duration,
                )
            }
            MetricsFunction::HistogramOverTime(field) => {
                let (value, duration) = value_of(field)?;
                (MetricsKind::Histogram { value }, duration)
            }
            MetricsFunction::Other(name) => {
                return Err(TraceQlError::new(
                    pos,
                    format!(
                        "the metrics function {name}() is not supported (supported: rate(), \
                         count_over_time(), quantile_over_time(), histogram_over_time())"
                    ),
                ));
            }
        };
        Ok(MetricsPlan {
            span_predicate,
            kind,
            by: labels,
            value_is_duration,
        })
    }
}

/// A numeric attribute as SQL (`attr_double`, which widens ints; either map for `.x`).
fn numeric_attribute(field: &Operand) -> Result<String, TraceQlError> {
    let Operand::Attribute { scope, key, pos } = field else {
        return Err(TraceQlError::new(field.pos(), "expected an attribute"));
    };
    supported_scope(*scope, *pos)?;
    let values: Vec<String> = places(*scope, key)
        .iter()
        .filter_map(|p| p.typed("attr_double"))
        .collect();
    if values.is_empty() {
        return Err(TraceQlError::new(
            *pos,
            format!("{} is not numeric", field.text()),
        ));
    }
    Ok(format!("coalesce({})", values.join(", ")))
}

/// The SQL of a series label's value.
fn label_sql(field: &Operand) -> Result<String, TraceQlError> {
    match field {
        Operand::Attribute { scope, key, pos } => {
            supported_scope(*scope, *pos)?;
            let texts: Vec<String> = places(*scope, key).iter().map(Place::as_text).collect();
            Ok(if texts.len() == 1 {
                texts.into_iter().next().unwrap_or_default()
            } else {
                format!("coalesce({})", texts.join(", "))
            })
        }
        Operand::Intrinsic { name, pos } => match name.as_str() {
            "span:name" => Ok("name".into()),
            "span:status" => Ok("lower(status_code)".into()),
            "span:kind" => Ok("lower(kind)".into()),
            "span:statusMessage" => Ok("status_message".into()),
            "instrumentation:name" => Ok("scope_name".into()),
            "instrumentation:version" => Ok("scope_version".into()),
            _ => Err(TraceQlError::new(
                *pos,
                format!(
                    "by({name}) is not supported (by takes attributes, name, status, kind, \
                     statusMessage, instrumentation:name, instrumentation:version)"
                ),
            )),
        },
        Operand::Literal { pos, .. } => {
            Err(TraceQlError::new(*pos, "by(...) takes fields, not values"))
        }
    }
}

#[derive(Clone, Copy)]
enum IntrinsicKind {
    Text,
    Id,
    Duration,
    Status,
    Kind,
}

impl IntrinsicKind {
    fn expects(self) -> &'static str {
        match self {
            IntrinsicKind::Text => "a string",
            IntrinsicKind::Id => "a hex id string",
            IntrinsicKind::Duration => "a duration such as 100ms or 1.5s",
            IntrinsicKind::Status => "ok, error or unset",
            IntrinsicKind::Kind => "server, client, producer, consumer, internal or unspecified",
        }
    }
}

fn span_intrinsic(name: &str) -> Option<(&'static str, IntrinsicKind)> {
    Some(match name {
        "span:name" => ("name", IntrinsicKind::Text),
        "span:status" => ("status_code", IntrinsicKind::Status),
        "span:statusMessage" => ("status_message", IntrinsicKind::Text),
        "span:kind" => ("kind", IntrinsicKind::Kind),
        "span:duration" => ("duration_ns", IntrinsicKind::Duration),
        "span:id" => ("span_id", IntrinsicKind::Id),
        "span:parentID" => ("parent_span_id", IntrinsicKind::Id),
        "trace:id" => ("trace_id", IntrinsicKind::Id),
        "instrumentation:name" => ("scope_name", IntrinsicKind::Text),
        "instrumentation:version" => ("scope_version", IntrinsicKind::Text),
        _ => return None,
    })
}

/// Refuses the scopes whose attributes tracelake cannot read in TraceQL (events, links,
/// instrumentation scopes).
fn supported_scope(scope: AttrScope, pos: usize) -> Result<(), TraceQlError> {
    match scope {
        AttrScope::Event | AttrScope::Link | AttrScope::Instrumentation => {
            Err(scope_unsupported(scope, pos))
        }
        _ => Ok(()),
    }
}

fn scope_unsupported(scope: AttrScope, pos: usize) -> TraceQlError {
    TraceQlError::new(
        pos,
        format!(
            "{} attributes ({}x) are not supported yet (span.x, resource.x and .x are)",
            scope.prefix().trim_end_matches('.'),
            scope.prefix()
        ),
    )
}

fn two_fields(pos: usize) -> TraceQlError {
    TraceQlError::new(
        pos,
        "comparing two fields is not supported; compare a field with a value",
    )
}

/// The field and the literal of a comparison, the field first.
fn normalize<'a>(
    lhs: &'a Operand,
    op: CmpOp,
    rhs: &'a Operand,
    pos: usize,
) -> Result<(&'a Operand, CmpOp, &'a Operand), TraceQlError> {
    match (lhs, rhs) {
        (Operand::Literal { .. }, Operand::Literal { .. }) => Err(TraceQlError::new(
            pos,
            "compare an attribute or an intrinsic with a value, not two values",
        )),
        (Operand::Literal { .. }, field) => {
            if matches!(op, CmpOp::Match | CmpOp::NotMatch) {
                return Err(TraceQlError::new(
                    pos,
                    "a regular expression goes on the right of =~",
                ));
            }
            Ok((field, op.flipped(), lhs))
        }
        (field, _) => Ok((field, op, rhs)),
    }
}

/// Refuses `=~`/`!~` on values that are not text.
fn check_op(op: CmpOp, text: bool, pos: usize) -> Result<(), TraceQlError> {
    if matches!(op, CmpOp::Match | CmpOp::NotMatch) && !text {
        return Err(TraceQlError::new(
            pos,
            format!("{} takes a string (a regular expression)", op.text()),
        ));
    }
    Ok(())
}

/// For `=~` / `!~`, the regular expression anchored at both ends (TraceQL regular expressions
/// match the whole value).
fn regex_literal(op: CmpOp, literal: String) -> String {
    if !matches!(op, CmpOp::Match | CmpOp::NotMatch) {
        return literal;
    }
    let inner = &literal[1..literal.len() - 1];
    format!("'^(?:{inner})$'")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traceql::parse::parse;

    fn search(q: &str) -> SearchPlan {
        match compile(&parse(q).unwrap()).unwrap() {
            Compiled::Search(s) => s,
            other => panic!("{other:?}"),
        }
    }

    fn refused(q: &str) -> TraceQlError {
        compile(&parse(q).unwrap()).unwrap_err()
    }

    #[test]
    fn a_filter_compiles_to_one_span_predicate() {
        let s = search(r#"{ span.http.route = "/pay" && duration > 100ms && status = error }"#);
        assert_eq!(
            s.span_predicate,
            "(attr_str(attributes, 'http.route') = '/pay') AND (duration_ns > 100000000) AND \
             (status_code = 'ERROR')"
        );
        assert_eq!(s.trace_filter, None);
        assert!(s.leaves.is_empty());
    }

    #[test]
    fn scopes_map_to_their_columns() {
        let s = search(r#"{ resource.service.name = "a" && .x =~ "b.*" && resource.k != "q" }"#);
        assert!(
            s.span_predicate.starts_with("(service_name = 'a') AND "),
            "{}",
            s.span_predicate
        );
        assert!(
            s.span_predicate.contains(
                "(attr_str(attributes, 'x') ~ '^(?:b.*)$') OR (attr_str(resource_attributes, 'x') ~ '^(?:b.*)$')"
            ),
            "{}",
            s.span_predicate
        );
        assert!(
            s.span_predicate
                .contains("attr_str(resource_attributes, 'k') <> 'q'")
        );
    }

    #[test]
    fn spanset_and_and_trace_intrinsics_make_a_trace_filter() {
        let s = search(r#"{ name = "a" } && { name = "b" && trace:duration > 1s }"#);
        assert_eq!(s.span_predicate, "(name = 'a') OR (name = 'b')");
        assert_eq!(s.leaves, vec!["name = 'a'", "name = 'b'"]);
        assert_eq!(
            s.trace_filter.as_deref(),
            Some("(\"__leaf_0\") AND ((\"__leaf_1\") AND (duration_ns > 1000000000))")
        );
        let s = search(r#"{ name = "a" } || { name = "b" } | count() > 2 | avg(duration) > 1ms"#);
        assert_eq!(
            s.trace_filter.as_deref(),
            Some("(matched_count > 2) AND (\"__agg_0\" > 1000000)")
        );
        assert_eq!(
            s.aggregates,
            vec![("avg".to_string(), "duration_ns".to_string())]
        );
    }

    #[test]
    fn unsupported_constructs_are_refused_with_their_position() {
        let e = refused(r#"{ name = "a" } >> { name = "b" } | count() > 1"#);
        assert_eq!(e.position, 35);
        assert!(e.message.contains("after structural operators"), "{e}");
        let e = refused(r#"{ name = "a" } > { trace:duration > 1s }"#);
        assert_eq!(e.position, 19);
        assert!(e.message.contains("structural"), "{e}");
        let e = refused(r#"{ name = "a" } ~ { } | rate()"#);
        assert_eq!(e.position, 15);
        assert!(e.message.contains("metrics"), "{e}");
        let e = refused(r#"{ event.x = "a" }"#);
        assert!(e.message.contains("event."), "{e}");
        let e = refused(r#"{ duration > "a" }"#);
        assert!(e.message.contains("duration"), "{e}");
        let e = refused(r#"{ span.a = span.b }"#);
        assert!(e.message.contains("two fields"), "{e}");
        let e = refused(r#"{ name = "a" || trace:duration > 1s }"#);
        assert!(e.message.contains("trace-level"), "{e}");
        let e = refused(r#"{ } | by(name)"#);
        assert!(e.message.contains("by("), "{e}");
        let e = refused(r#"{ span.n =~ 3 }"#);
        assert!(e.message.contains("regular expression"), "{e}");
    }

    #[test]
    fn structural_operators_compile_to_a_spanset_tree() {
        let s = search(r#"{ name = "a" } >> ({ name = "b" } || { name = "c" }) && { }"#);
        assert_eq!(s.leaves.len(), 4);
        assert_eq!(s.trace_filter, None);
        let Some(SpansetTree::And(lhs, rhs)) = s.structure else {
            panic!("{:?}", s.structure);
        };
        assert_eq!(*rhs, SpansetTree::Leaf(3));
        assert!(matches!(
            *lhs,
            SpansetTree::Structural {
                relation: Relation::Descendant,
                form: Form::Plain,
                ..
            }
        ));
        for (op, relation, form) in [
            ("!<", Relation::Parent, Form::Negated),
            ("&~", Relation::Sibling, Form::Union),
            ("!~", Relation::Sibling, Form::Negated),
        ] {
            let s = search(&format!("{{ }} {op} {{ }}"));
            assert!(
                matches!(s.structure, Some(SpansetTree::Structural { relation: r, form: f, .. }) if r == relation && f == form),
                "{op}: {:?}",
                s.structure
            );
        }
        assert_eq!(search("{ }").structure, None);
    }

    #[test]
    fn metrics_compile_with_labels() {
        let Compiled::Metrics(m) = compile(
            &parse(r#"{ status = error } | rate() by (resource.service.name, name)"#).unwrap(),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(m.span_predicate, "status_code = 'ERROR'");
        assert_eq!(m.kind, MetricsKind::Rate);
        assert_eq!(
            m.by,
            vec![
                (
                    "resource.service.name".to_string(),
                    "service_name".to_string()
                ),
                ("span:name".to_string(), "name".to_string())
            ]
        );
        let e = refused("{} | topk(3)");
        assert!(e.message.contains("topk"), "{e}");
    }
}
