//! TraceQL text to a syntax tree. The parser accepts the grammar of Grafana Tempo's TraceQL
//! (spanset filters, spanset operators, pipelines, metrics functions) and reports the first
//! error with its byte position; whether a construct can be *run* is the compiler's concern
//! ([`super::compile`]), which refuses what tracelake does not support, naming it.
//!
//! It never panics on any input and never recurses deeper than [`MAX_DEPTH`].

use super::TraceQlError;

/// The deepest nesting of parentheses and operators accepted.
pub const MAX_DEPTH: usize = 64;

/// The longest query accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 64 * 1024;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    /// `=~`: the regular expression matches the whole value.
    Match,
    /// `!~`.
    NotMatch,
}

impl CmpOp {
    pub(crate) fn text(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "!=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Match => "=~",
            CmpOp::NotMatch => "!~",
        }
    }

    /// The operator with its operands swapped (`1 < x` is `x > 1`).
    pub(crate) fn flipped(self) -> CmpOp {
        match self {
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            other => other,
        }
    }
}

/// Which attributes an attribute reference reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrScope {
    /// `span.x`.
    Span,
    /// `resource.x`.
    Resource,
    /// `.x`: the span's or the resource's.
    Any,
    /// `event.x`.
    Event,
    /// `link.x`.
    Link,
    /// `instrumentation.x`.
    Instrumentation,
}

impl AttrScope {
    pub(crate) fn prefix(self) -> &'static str {
        match self {
            AttrScope::Span => "span.",
            AttrScope::Resource => "resource.",
            AttrScope::Any => ".",
            AttrScope::Event => "event.",
            AttrScope::Link => "link.",
            AttrScope::Instrumentation => "instrumentation.",
        }
    }
}

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Str(String),
    Int(i64),
    Float(f64),
    /// A duration, in nanoseconds.
    Duration(i64),
    Bool(bool),
    Nil,
    /// `ok`, `error`, `unset`.
    Status(&'static str),
    /// `server`, `client`, ...: the `kind` column's value.
    Kind(&'static str),
}

/// A field, an attribute or a literal.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Attribute {
        scope: AttrScope,
        key: String,
        pos: usize,
    },
    /// An intrinsic, by its canonical name (`name`, `span:duration`, `trace:rootService`, ...).
    Intrinsic {
        name: String,
        pos: usize,
    },
    Literal {
        value: Literal,
        pos: usize,
    },
}

impl Operand {
    pub fn pos(&self) -> usize {
        match self {
            Operand::Attribute { pos, .. }
            | Operand::Intrinsic { pos, .. }
            | Operand::Literal { pos, .. } => *pos,
        }
    }

    /// The operand as written (for messages and labels).
    pub fn text(&self) -> String {
        match self {
            Operand::Attribute { scope, key, .. } => format!("{}{key}", scope.prefix()),
            Operand::Intrinsic { name, .. } => name.clone(),
            Operand::Literal { value, .. } => format!("{value:?}"),
        }
    }
}

/// A condition on one span, inside `{ }`.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldExpr {
    And(Box<FieldExpr>, Box<FieldExpr>),
    Or(Box<FieldExpr>, Box<FieldExpr>),
    Not(Box<FieldExpr>, usize),
    Cmp {
        lhs: Operand,
        op: CmpOp,
        rhs: Operand,
        pos: usize,
    },
    /// A lone operand: a boolean attribute or literal.
    Bare(Operand),
}

/// A structural operator between spansets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StructuralOp {
    /// `>`: the right side's spans whose parent is on the left side.
    Child,
    /// `>>`: descendants.
    Descendant,
    /// `<`: parents.
    Parent,
    /// `<<`: ancestors.
    Ancestor,
    /// `~`: siblings.
    Sibling,
    /// A negated or union form (`!>`, `&>>`, ...), as written.
    Other(&'static str),
}

/// An expression over spansets.
#[derive(Debug, Clone, PartialEq)]
pub enum SpansetExpr {
    /// `{ ... }` (`None`: `{}`, every span).
    Filter {
        condition: Option<FieldExpr>,
        pos: usize,
    },
    And(Box<SpansetExpr>, Box<SpansetExpr>),
    Or(Box<SpansetExpr>, Box<SpansetExpr>),
    Structural {
        op: StructuralOp,
        lhs: Box<SpansetExpr>,
        rhs: Box<SpansetExpr>,
        pos: usize,
    },
}

/// An aggregate of a spanset, in a pipeline filter (`| count() > 2`).
#[derive(Debug, Clone, PartialEq)]
pub enum Aggregate {
    Count,
    Avg(Operand),
    Min(Operand),
    Max(Operand),
    Sum(Operand),
}

/// A metrics function, the last stage of a metrics query.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricsFunction {
    Rate,
    CountOverTime,
    /// `quantile_over_time(field, q, ...)`.
    QuantileOverTime(Operand, Vec<f64>),
    HistogramOverTime(Operand),
    /// Another metrics function, by name (refused by the compiler).
    Other(String),
}

/// A pipeline stage after the spanset expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// `| aggregate op value`.
    Filter {
        aggregate: Aggregate,
        op: CmpOp,
        value: Operand,
        pos: usize,
    },
    /// `| select(fields)`.
    Select(Vec<Operand>, usize),
    /// `| by(fields)` (spanset grouping).
    By(Vec<Operand>, usize),
    /// `| { ... }`: a further spanset filter.
    Spanset(SpansetExpr, usize),
    /// `| rate() by (...)` and the other metrics functions.
    Metrics {
        function: MetricsFunction,
        by: Vec<Operand>,
        pos: usize,
    },
}

/// A whole query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub spansets: SpansetExpr,
    pub stages: Vec<Stage>,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LBrace,
    RBrace,
    LParen,
    RParen,
    Comma,
    Pipe,
    AndAnd,
    OrOr,
    Not,
    Op(CmpOp),
    /// `>>`, `<<`, `~`, `!>`, `&>>`, ...: structural (`>` and `<` are [`Tok::Op`]).
    Structural(&'static str),
    Str(String),
    Number(String),
    Ident(String),
    End,
}

struct Lexer<'a> {
    text: &'a str,
    pos: usize,
}

fn is_ident_char(c: char) -> bool {
    !c.is_whitespace()
        && !matches!(
            c,
            '{' | '}' | '(' | ')' | '=' | '!' | '<' | '>' | '~' | '&' | '|' | ',' | '"' | '`'
        )
}

impl<'a> Lexer<'a> {
    fn error<T>(&self, pos: usize, message: impl Into<String>) -> Result<T, TraceQlError> {
        Err(TraceQlError::new(pos, message))
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn tokens(mut self) -> Result<Vec<(Tok, usize)>, TraceQlError> {
        let mut out = Vec::new();
        loop {
            let trimmed = self.rest().trim_start();
            self.pos = self.text.len() - trimmed.len();
            let start = self.pos;
            let Some(c) = trimmed.chars().next() else {
                out.push((Tok::End, start));
                return Ok(out);
            };
            // Longest operators first.
            const OPERATORS: [(&str, Tok); 22] = [
                ("&>>", Tok::Structural("&>>")),
                ("&<<", Tok::Structural("&<<")),
                ("!>>", Tok::Structural("!>>")),
                ("!<<", Tok::Structural("!<<")),
                ("&&", Tok::AndAnd),
                ("||", Tok::OrOr),
                ("=~", Tok::Op(CmpOp::Match)),
                ("!~", Tok::Op(CmpOp::NotMatch)),
                ("!=", Tok::Op(CmpOp::Ne)),
                (">=", Tok::Op(CmpOp::Ge)),
                ("<=", Tok::Op(CmpOp::Le)),
                (">>", Tok::Structural(">>")),
                ("<<", Tok::Structural("<<")),
                ("&>", Tok::Structural("&>")),
                ("&<", Tok::Structural("&<")),
                ("&~", Tok::Structural("&~")),
                ("!>", Tok::Structural("!>")),
                ("!<", Tok::Structural("!<")),
                ("=", Tok::Op(CmpOp::Eq)),
                (">", Tok::Op(CmpOp::Gt)),
                ("<", Tok::Op(CmpOp::Lt)),
                ("~", Tok::Structural("~")),
            ];
            if let Some((text, tok)) = OPERATORS.iter().find(|(t, _)| trimmed.starts_with(t)) {
                out.push((tok.clone(), start));
                self.pos += text.len();
                continue;
            }
            let single = match c {
                '{' => Some(Tok::LBrace),
                '}' => Some(Tok::RBrace),
                '(' => Some(Tok::LParen),
                ')' => Some(Tok::RParen),
                ',' => Some(Tok::Comma),
                '|' => Some(Tok::Pipe),
                '!' => Some(Tok::Not),
                _ => None,
            };
            if let Some(tok) = single {
                out.push((tok, start));
                self.pos += 1;
                continue;
            }
            match c {
                '"' | '`' => {
                    let value = self.string(c)?;
                    out.push((Tok::Str(value), start));
                }
                '0'..='9' | '-' => {
                    let len = trimmed
                        .char_indices()
                        .skip(1)
                        .find(|(_, ch)| !(ch.is_alphanumeric() || *ch == '.' || *ch == 'µ'))
                        .map(|(i, _)| i)
                        .unwrap_or(trimmed.len());
                    if c == '-' && len == 1 {
                        return self.error(start, "expected a number after '-'");
                    }
                    out.push((Tok::Number(trimmed[..len].to_string()), start));
                    self.pos += len;
                }
                _ => {
                    let mut len = 0;
                    for (i, ch) in trimmed.char_indices() {
                        if ch == '"' && i > 0 && trimmed[..i].ends_with('.') {
                            // `span."key with spaces"`
                            self.pos = start + i;
                            let quoted = self.string('"')?;
                            let prefix = &trimmed[..i];
                            out.push((Tok::Ident(format!("{prefix}\u{0}{quoted}")), start));
                            len = usize::MAX;
                            break;
                        }
                        if !is_ident_char(ch) {
                            break;
                        }
                        len = i + ch.len_utf8();
                    }
                    if len == usize::MAX {
                        continue;
                    }
                    if len == 0 {
                        return self.error(start, format!("unexpected character {c:?}"));
                    }
                    out.push((Tok::Ident(trimmed[..len].to_string()), start));
                    self.pos += len;
                }
            }
        }
    }

    /// A string literal starting at `self.pos` (its quote `quote`); `"` strings take `\`
    /// escapes, backtick strings are raw.
    fn string(&mut self, quote: char) -> Result<String, TraceQlError> {
        let start = self.pos;
        let mut value = String::new();
        let mut chars = self.text[start + 1..].char_indices();
        while let Some((i, ch)) = chars.next() {
            if ch == quote {
                self.pos = start + 1 + i + 1;
                return Ok(value);
            }
            if ch == '\\' && quote == '"' {
                match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, 'r')) => value.push('\r'),
                    Some((_, e @ ('\\' | '"' | '\''))) => value.push(e),
                    Some((j, other)) => {
                        return self.error(
                            start + 1 + j,
                            format!("unknown escape \\{other} in a string"),
                        );
                    }
                    None => break,
                }
                continue;
            }
            value.push(ch);
        }
        self.error(start, "unterminated string")
    }
}

/// Parses `text` into a [`Query`].
pub fn parse(text: &str) -> Result<Query, TraceQlError> {
    if text.len() > MAX_QUERY_BYTES {
        return Err(TraceQlError::new(
            0,
            format!(
                "the query is {} bytes, more than the {MAX_QUERY_BYTES} accepted",
                text.len()
            ),
        ));
    }
    let tokens = Lexer { text, pos: 0 }.tokens()?;
    let mut parser = Parser {
        tokens,
        at: 0,
        depth: 0,
    };
    let query = parser.query()?;
    Ok(query)
}

struct Parser {
    tokens: Vec<(Tok, usize)>,
    at: usize,
    depth: usize,
}

/// Parses a duration literal (`100ms`, `1.5s`, `2h`) into nanoseconds.
pub(crate) fn duration_nanos(text: &str) -> Option<i64> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if unit.is_empty() {
        return None;
    }
    let scale: f64 = match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        "d" => 86_400e9,
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    let nanos = (value * scale).round();
    (nanos.is_finite() && nanos.abs() < 9.2e18).then_some(nanos as i64)
}

/// The canonical name of an intrinsic written `text`, if it is one.
fn intrinsic(text: &str) -> Option<&'static str> {
    Some(match text {
        "name" | "span:name" => "span:name",
        "status" | "span:status" => "span:status",
        "statusMessage" | "span:statusMessage" => "span:statusMessage",
        "kind" | "span:kind" => "span:kind",
        "duration" | "span:duration" => "span:duration",
        "span:id" => "span:id",
        "span:parentID" => "span:parentID",
        "childCount" | "span:childCount" => "span:childCount",
        "trace:duration" | "traceDuration" => "trace:duration",
        "trace:rootName" | "rootName" => "trace:rootName",
        "trace:rootService" | "rootServiceName" => "trace:rootService",
        "trace:id" => "trace:id",
        "event:name" => "event:name",
        "event:timeSinceStart" => "event:timeSinceStart",
        "link:traceID" => "link:traceID",
        "link:spanID" => "link:spanID",
        "instrumentation:name" => "instrumentation:name",
        "instrumentation:version" => "instrumentation:version",
        "nestedSetLeft" | "nestedSetRight" | "nestedSetParent" => "span:nestedSet",
        _ => return None,
    })
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.tokens[self.at.min(self.tokens.len() - 1)].0
    }

    fn pos(&self) -> usize {
        self.tokens[self.at.min(self.tokens.len() - 1)].1
    }

    fn bump(&mut self) -> (Tok, usize) {
        let token = self.tokens[self.at.min(self.tokens.len() - 1)].clone();
        if self.at < self.tokens.len() - 1 {
            self.at += 1;
        }
        token
    }

    fn error<T>(&self, message: impl Into<String>) -> Result<T, TraceQlError> {
        Err(TraceQlError::new(self.pos(), message))
    }

    fn describe(tok: &Tok) -> String {
        match tok {
            Tok::End => "the end of the query".into(),
            Tok::Str(s) => format!("the string {s:?}"),
            Tok::Number(n) => format!("{n:?}"),
            Tok::Ident(i) => format!("{:?}", i.replace('\u{0}', "")),
            other => format!("{:?}", Self::symbol(other)),
        }
    }

    fn symbol(tok: &Tok) -> &'static str {
        match tok {
            Tok::LBrace => "{",
            Tok::RBrace => "}",
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::Comma => ",",
            Tok::Pipe => "|",
            Tok::AndAnd => "&&",
            Tok::OrOr => "||",
            Tok::Not => "!",
            Tok::Op(op) => op.text(),
            Tok::Structural(s) => s,
            _ => "",
        }
    }

    fn expect(&mut self, tok: Tok, what: &str) -> Result<usize, TraceQlError> {
        if *self.peek() == tok {
            Ok(self.bump().1)
        } else {
            self.error(format!(
                "expected {what}, found {}",
                Self::describe(self.peek())
            ))
        }
    }

    fn deeper(&mut self) -> Result<(), TraceQlError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.error(format!("the query nests deeper than {MAX_DEPTH} levels"));
        }
        Ok(())
    }

    fn query(&mut self) -> Result<Query, TraceQlError> {
        let spansets = self.spanset_or()?;
        let mut stages = Vec::new();
        while *self.peek() == Tok::Pipe {
            self.bump();
            stages.push(self.stage()?);
        }
        // `{...} | rate() by (x)` and `{...} by (x)` (a `by` right after the spansets)
        if matches!(self.peek(), Tok::Ident(i) if i == "by") {
            let pos = self.pos();
            self.bump();
            stages.push(Stage::By(self.field_list()?, pos));
        }
        if *self.peek() != Tok::End {
            return self.error(format!(
                "expected '|' or the end of the query, found {}",
                Self::describe(self.peek())
            ));
        }
        Ok(Query { spansets, stages })
    }

    fn spanset_or(&mut self) -> Result<SpansetExpr, TraceQlError> {
        self.deeper()?;
        let mut lhs = self.spanset_and()?;
        while *self.peek() == Tok::OrOr {
            self.bump();
            let rhs = self.spanset_and()?;
            lhs = SpansetExpr::Or(Box::new(lhs), Box::new(rhs));
        }
        self.depth -= 1;
        Ok(lhs)
    }

    fn spanset_and(&mut self) -> Result<SpansetExpr, TraceQlError> {
        let mut lhs = self.spanset_structural()?;
        while *self.peek() == Tok::AndAnd {
            self.bump();
            let rhs = self.spanset_structural()?;
            lhs = SpansetExpr::And(Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn spanset_structural(&mut self) -> Result<SpansetExpr, TraceQlError> {
        let mut lhs = self.spanset_primary()?;
        loop {
            let pos = self.pos();
            let op = match self.peek() {
                Tok::Op(CmpOp::Gt) => StructuralOp::Child,
                Tok::Op(CmpOp::Lt) => StructuralOp::Parent,
                Tok::Structural(">>") => StructuralOp::Descendant,
                Tok::Structural("<<") => StructuralOp::Ancestor,
                Tok::Structural("~") => StructuralOp::Sibling,
                Tok::Structural(other) => StructuralOp::Other(other),
                // Between spansets `!~` is "not a sibling of" (the lexer reads the regex
                // operator).
                Tok::Op(CmpOp::NotMatch) => StructuralOp::Other("!~"),
                _ => return Ok(lhs),
            };
            self.bump();
            let rhs = self.spanset_primary()?;
            lhs = SpansetExpr::Structural {
                op,
                lhs: Box::new(lhs),
                rhs: Box::new(rhs),
                pos,
            };
        }
    }

    fn spanset_primary(&mut self) -> Result<SpansetExpr, TraceQlError> {
        match self.peek() {
            Tok::LParen => {
                self.bump();
                let inner = self.spanset_or()?;
                self.expect(Tok::RParen, "')'")?;
                Ok(inner)
            }
            Tok::LBrace => {
                let pos = self.bump().1;
                if *self.peek() == Tok::RBrace {
                    self.bump();
                    return Ok(SpansetExpr::Filter {
                        condition: None,
                        pos,
                    });
                }
                let condition = self.field_or()?;
                self.expect(Tok::RBrace, "'}' or an operator")?;
                Ok(SpansetExpr::Filter {
                    condition: Some(condition),
                    pos,
                })
            }
            other => {
                let found = Self::describe(other);
                self.error(format!(
                    "expected a spanset filter '{{ ... }}', found {found}"
                ))
            }
        }
    }

    fn field_or(&mut self) -> Result<FieldExpr, TraceQlError> {
        self.deeper()?;
        let mut lhs = self.field_and()?;
        while *self.peek() == Tok::OrOr {
            self.bump();
            let rhs = self.field_and()?;
            lhs = FieldExpr::Or(Box::new(lhs), Box::new(rhs));
        }
        self.depth -= 1;
        Ok(lhs)
    }

    fn field_and(&mut self) -> Result<FieldExpr, TraceQlError> {
        let mut lhs = self.field_unary()?;
        while *self.peek() == Tok::AndAnd {
            self.bump();
            let rhs = self.field_unary()?;
            lhs = FieldExpr::And(Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn field_unary(&mut self) -> Result<FieldExpr, TraceQlError> {
        match self.peek() {
            Tok::Not => {
                let pos = self.bump().1;
                self.deeper()?;
                let inner = self.field_unary()?;
                self.depth -= 1;
                Ok(FieldExpr::Not(Box::new(inner), pos))
            }
            Tok::LParen => {
                self.bump();
                let inner = self.field_or()?;
                self.expect(Tok::RParen, "')'")?;
                Ok(inner)
            }
            _ => {
                let lhs = self.operand()?;
                if let Tok::Op(op) = *self.peek() {
                    let pos = self.bump().1;
                    let rhs = self.operand()?;
                    Ok(FieldExpr::Cmp { lhs, op, rhs, pos })
                } else {
                    Ok(FieldExpr::Bare(lhs))
                }
            }
        }
    }

    fn operand(&mut self) -> Result<Operand, TraceQlError> {
        let (tok, pos) = self.bump();
        match tok {
            Tok::Str(s) => Ok(Operand::Literal {
                value: Literal::Str(s),
                pos,
            }),
            Tok::Number(n) => Ok(Operand::Literal {
                value: number(&n).ok_or_else(|| {
                    TraceQlError::new(pos, format!("{n:?} is not a number or a duration"))
                })?,
                pos,
            }),
            Tok::Ident(text) => ident_operand(&text, pos),
            other => Err(TraceQlError::new(
                pos,
                format!(
                    "expected an attribute, an intrinsic or a value, found {}",
                    Self::describe(&other)
                ),
            )),
        }
    }

    fn field_list(&mut self) -> Result<Vec<Operand>, TraceQlError> {
        self.expect(Tok::LParen, "'('")?;
        let mut fields = Vec::new();
        loop {
            fields.push(self.operand()?);
            match self.peek() {
                Tok::Comma => {
                    self.bump();
                }
                _ => break,
            }
        }
        self.expect(Tok::RParen, "')' or ','")?;
        Ok(fields)
    }

    fn stage(&mut self) -> Result<Stage, TraceQlError> {
        let pos = self.pos();
        if *self.peek() == Tok::LBrace || *self.peek() == Tok::LParen {
            return Ok(Stage::Spanset(self.spanset_or()?, pos));
        }
        let Tok::Ident(name) = self.peek().clone() else {
            return self.error(format!(
                "expected a pipeline stage (count(), avg(...), select(...), by(...), rate(), ...), found {}",
                Self::describe(self.peek())
            ));
        };
        self.bump();
        let aggregate = match name.as_str() {
            "select" => return Ok(Stage::Select(self.field_list()?, pos)),
            "by" => return Ok(Stage::By(self.field_list()?, pos)),
            "count" => {
                self.expect(Tok::LParen, "'('")?;
                self.expect(Tok::RParen, "')'")?;
                Aggregate::Count
            }
            "avg" | "min" | "max" | "sum" => {
                let mut fields = self.field_list()?;
                if fields.len() != 1 {
                    return Err(TraceQlError::new(pos, format!("{name}() takes one field")));
                }
                let field = fields.remove(0);
                match name.as_str() {
                    "avg" => Aggregate::Avg(field),
                    "min" => Aggregate::Min(field),
                    "max" => Aggregate::Max(field),
                    _ => Aggregate::Sum(field),
                }
            }
            "rate"
            | "count_over_time"
            | "quantile_over_time"
            | "histogram_over_time"
            | "min_over_time"
            | "max_over_time"
            | "avg_over_time"
            | "sum_over_time"
            | "compare"
            | "topk"
            | "bottomk" => {
                let function = self.metrics_function(&name, pos)?;
                let by = if matches!(self.peek(), Tok::Ident(i) if i == "by") {
                    self.bump();
                    self.field_list()?
                } else {
                    Vec::new()
                };
                return Ok(Stage::Metrics { function, by, pos });
            }
            other => {
                return Err(TraceQlError::new(
                    pos,
                    format!("unknown pipeline stage {other:?}"),
                ));
            }
        };
        let Tok::Op(op) = *self.peek() else {
            return self.error(format!(
                "expected a comparison after the aggregate (for example '> 2'), found {}",
                Self::describe(self.peek())
            ));
        };
        self.bump();
        let value = self.operand()?;
        Ok(Stage::Filter {
            aggregate,
            op,
            value,
            pos,
        })
    }

    fn metrics_function(
        &mut self,
        name: &str,
        pos: usize,
    ) -> Result<MetricsFunction, TraceQlError> {
        self.expect(Tok::LParen, "'('")?;
        let mut args = Vec::new();
        while *self.peek() != Tok::RParen {
            args.push(self.operand()?);
            if *self.peek() == Tok::Comma {
                self.bump();
            } else {
                break;
            }
        }
        self.expect(Tok::RParen, "')' or ','")?;
        let no_args = |function: MetricsFunction| {
            if args.is_empty() {
                Ok(function)
            } else {
                Err(TraceQlError::new(
                    pos,
                    format!("{name}() takes no arguments"),
                ))
            }
        };
        match name {
            "rate" => no_args(MetricsFunction::Rate),
            "count_over_time" => no_args(MetricsFunction::CountOverTime),
            "histogram_over_time" => match args.as_slice() {
                [field] => Ok(MetricsFunction::HistogramOverTime(field.clone())),
                _ => Err(TraceQlError::new(
                    pos,
                    "histogram_over_time() takes one field",
                )),
            },
            "quantile_over_time" => {
                let mut args = args.into_iter();
                let Some(field) = args.next() else {
                    return Err(TraceQlError::new(
                        pos,
                        "quantile_over_time() takes a field and one or more quantiles",
                    ));
                };
                let mut quantiles = Vec::new();
                for arg in args {
                    let q = match &arg {
                        Operand::Literal {
                            value: Literal::Float(q),
                            ..
                        } => *q,
                        Operand::Literal {
                            value: Literal::Int(q),
                            ..
                        } => *q as f64,
                        other => {
                            return Err(TraceQlError::new(
                                other.pos(),
                                "a quantile is a number between 0 and 1",
                            ));
                        }
                    };
                    if !(0.0..=1.0).contains(&q) {
                        return Err(TraceQlError::new(
                            arg.pos(),
                            format!("a quantile is a number between 0 and 1, got {q}"),
                        ));
                    }
                    quantiles.push(q);
                }
                if quantiles.is_empty() {
                    return Err(TraceQlError::new(
                        pos,
                        "quantile_over_time() takes a field and one or more quantiles",
                    ));
                }
                Ok(MetricsFunction::QuantileOverTime(field, quantiles))
            }
            other => Ok(MetricsFunction::Other(other.to_string())),
        }
    }
}

fn number(text: &str) -> Option<Literal> {
    if let Some(nanos) = duration_nanos(text) {
        return Some(Literal::Duration(nanos));
    }
    if let Ok(i) = text.parse::<i64>() {
        return Some(Literal::Int(i));
    }
    text.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map(Literal::Float)
}

fn ident_operand(text: &str, pos: usize) -> Result<Operand, TraceQlError> {
    // `span."key"` arrives as `span.\0key`.
    let (text, quoted_key) = match text.split_once('\u{0}') {
        Some((prefix, key)) => (prefix, Some(key)),
        None => (text, None),
    };
    let literal = |value| Ok(Operand::Literal { value, pos });
    if quoted_key.is_none() {
        match text {
            "true" => return literal(Literal::Bool(true)),
            "false" => return literal(Literal::Bool(false)),
            "nil" => return literal(Literal::Nil),
            "ok" => return literal(Literal::Status("OK")),
            "error" => return literal(Literal::Status("ERROR")),
            "unset" => return literal(Literal::Status("UNSET")),
            "server" => return literal(Literal::Kind("SERVER")),
            "client" => return literal(Literal::Kind("CLIENT")),
            "producer" => return literal(Literal::Kind("PRODUCER")),
            "consumer" => return literal(Literal::Kind("CONSUMER")),
            "internal" => return literal(Literal::Kind("INTERNAL")),
            "unspecified" => return literal(Literal::Kind("UNSPECIFIED")),
            _ => {}
        }
        if let Some(name) = intrinsic(text) {
            return Ok(Operand::Intrinsic {
                name: name.to_string(),
                pos,
            });
        }
    }
    const SCOPES: [(&str, AttrScope); 6] = [
        ("span.", AttrScope::Span),
        ("resource.", AttrScope::Resource),
        ("event.", AttrScope::Event),
        ("link.", AttrScope::Link),
        ("instrumentation.", AttrScope::Instrumentation),
        (".", AttrScope::Any),
    ];
    for (prefix, scope) in SCOPES {
        if let Some(rest) = text.strip_prefix(prefix) {
            let key = match quoted_key {
                Some(key) if rest.is_empty() => key.to_string(),
                Some(_) => break,
                None => rest.to_string(),
            };
            if key.is_empty() {
                return Err(TraceQlError::new(
                    pos,
                    format!("expected an attribute name after {prefix:?}"),
                ));
            }
            return Ok(Operand::Attribute { scope, key, pos });
        }
    }
    Err(TraceQlError::new(
        pos,
        format!(
            "unknown identifier {text:?}: an attribute is written span.x, resource.x or .x; \
             intrinsics are name, status, statusMessage, kind, duration, span:id, trace:id, \
             trace:duration, trace:rootName, trace:rootService"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(scope: AttrScope, key: &str, pos: usize) -> Operand {
        Operand::Attribute {
            scope,
            key: key.into(),
            pos,
        }
    }

    #[test]
    fn a_filter_with_scoped_attributes_and_a_duration_parses() {
        let q = parse(r#"{ span.http.route = "/pay" && duration > 100ms }"#).unwrap();
        let SpansetExpr::Filter {
            condition: Some(FieldExpr::And(a, b)),
            ..
        } = q.spansets
        else {
            panic!("{q:?}")
        };
        assert_eq!(
            *a,
            FieldExpr::Cmp {
                lhs: attr(AttrScope::Span, "http.route", 2),
                op: CmpOp::Eq,
                rhs: Operand::Literal {
                    value: Literal::Str("/pay".into()),
                    pos: 20
                },
                pos: 18
            }
        );
        let FieldExpr::Cmp { rhs, .. } = *b else {
            panic!()
        };
        assert_eq!(
            rhs,
            Operand::Literal {
                value: Literal::Duration(100_000_000),
                pos: 41
            }
        );
    }

    #[test]
    fn literals_keywords_and_quoted_keys_parse() {
        let q = parse(r#"{ status = error && kind = server && span."a b" = 1.5 && .x != nil }"#)
            .unwrap();
        let text = format!("{q:?}");
        assert!(text.contains("Status(\"ERROR\")"), "{text}");
        assert!(text.contains("Kind(\"SERVER\")"), "{text}");
        assert!(text.contains("key: \"a b\""), "{text}");
        assert!(text.contains("Float(1.5)"), "{text}");
        assert!(text.contains("scope: Any, key: \"x\""), "{text}");
        assert_eq!(duration_nanos("1.5s"), Some(1_500_000_000));
        assert_eq!(duration_nanos("2m"), Some(120_000_000_000));
        assert_eq!(duration_nanos("10"), None);
    }

    #[test]
    fn pipelines_and_metrics_parse() {
        let q = parse("{ } | count() > 2 | select(span.a) ").unwrap();
        assert_eq!(q.stages.len(), 2);
        let q = parse("{} | quantile_over_time(duration, 0.9, .5) by (resource.service.name)");
        assert!(q.is_err(), "`.5` is an attribute, not a number");
        let q = parse("{} | quantile_over_time(duration, 0.9, 0.5) by (resource.service.name)")
            .unwrap();
        let Stage::Metrics { function, by, .. } = &q.stages[0] else {
            panic!()
        };
        assert!(matches!(function, MetricsFunction::QuantileOverTime(_, q) if q == &[0.9, 0.5]));
        assert_eq!(by.len(), 1);
    }

    #[test]
    fn errors_name_the_construct_and_position() {
        let e = parse("{ span.a = }").unwrap_err();
        assert_eq!(e.position, 11);
        assert!(e.message.contains("expected an attribute"), "{e}");
        let e = parse(r#"{ name = "x" "#).unwrap_err();
        assert!(e.message.contains("expected '}'"), "{e}");
        let e = parse(r#"{ name = "x }"#).unwrap_err();
        assert!(e.message.contains("unterminated"), "{e}");
        let e = parse("{ foo = 1 }").unwrap_err();
        assert!(e.message.contains("unknown identifier \"foo\""), "{e}");
        let deep = format!("{}{{}}{}", "(".repeat(200), ")".repeat(200));
        assert!(parse(&deep).unwrap_err().message.contains("deeper"));
        assert!(parse("").is_err());
        assert!(parse("{} | nope()").is_err());
    }

    proptest::proptest! {
        #[test]
        fn no_input_makes_the_parser_or_compiler_panic(text in "[{}()|&!=<>~,\"`. a-z0-9:_-]{0,60}") {
            if let Ok(q) = parse(&text) {
                let _ = crate::traceql::compile(&q);
            }
        }
    }

    #[test]
    fn structural_operators_parse() {
        let q = parse("{ name = \"a\" } >> { name = \"b\" } && {}").unwrap();
        assert!(matches!(q.spansets, SpansetExpr::And(..)));
        let q = parse("{} !>> {}").unwrap();
        assert!(matches!(
            q.spansets,
            SpansetExpr::Structural {
                op: StructuralOp::Other("!>>"),
                ..
            }
        ));
    }
}
