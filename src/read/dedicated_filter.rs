//! Filters on typed attribute values, applied by the scan itself: through a file's dedicated
//! column where it holds one (see [`crate::dedicated`]), through the attribute maps where it
//! does not.
//!
//! A filter qualifies when every use it makes of `attributes` or `resource_attributes` is a
//! typed access with a literal key: `attr_str|attr_int|attr_double|attr_bool(map, 'k')`, or
//! `map['k']['string_value' | 'int_value' | 'double_value' | 'bool_value']`, and it reads no
//! event or link and nothing volatile. The provider reports such filters as applied exactly,
//! so DataFusion does not evaluate them again above the scan (and does not read the maps for
//! them); the scan evaluates each against every row it produces, per group of files: a
//! typed access of a key the files hold a dedicated column of, with the column's type, reads
//! that column instead (the same value: a column holds what the accessor returns, and values
//! are stored with only their type's field set).

use datafusion::common::Column;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::Expr;

use crate::dedicated::{AttributeScope, DedicatedColumn, DedicatedType};
use crate::schema::col;

/// A typed access to an attribute: its map, key and type.
struct TypedAccess {
    scope: AttributeScope,
    key: String,
    kind: DedicatedType,
    /// Through `map['k'][field]` (equals the column only for the types whose field it is).
    through_field: bool,
}

fn literal_str(e: &Expr) -> Option<&str> {
    match e {
        Expr::Literal(v, _) => v.try_as_str().flatten(),
        _ => None,
    }
}

fn map_scope(e: &Expr) -> Option<AttributeScope> {
    match e {
        Expr::Column(c) => AttributeScope::of_column(&c.name),
        _ => None,
    }
}

fn field_kind(field: &str) -> Option<DedicatedType> {
    Some(match field {
        "string_value" => DedicatedType::String,
        "int_value" => DedicatedType::Int,
        "double_value" => DedicatedType::Double,
        "bool_value" => DedicatedType::Bool,
        _ => return None,
    })
}

/// `e` as a typed access, if it is one.
fn typed_access(e: &Expr) -> Option<TypedAccess> {
    let Expr::ScalarFunction(function) = e else {
        return None;
    };
    let name = function.func.name();
    let kind = match name {
        "attr_str" => Some(DedicatedType::String),
        "attr_int" => Some(DedicatedType::Int),
        "attr_double" => Some(DedicatedType::Double),
        "attr_bool" => Some(DedicatedType::Bool),
        _ => None,
    };
    match (kind, function.args.as_slice()) {
        (Some(kind), [map, key]) => Some(TypedAccess {
            scope: map_scope(map)?,
            key: literal_str(key)?.to_string(),
            kind,
            through_field: false,
        }),
        (None, [map, key, field]) if name == "get_field" => Some(TypedAccess {
            scope: map_scope(map)?,
            key: literal_str(key)?.to_string(),
            kind: field_kind(literal_str(field)?)?,
            through_field: true,
        }),
        (None, [inner, field]) if name == "get_field" => {
            let Expr::ScalarFunction(inner) = inner else {
                return None;
            };
            match (inner.func.name(), inner.args.as_slice()) {
                ("get_field", [map, key]) => Some(TypedAccess {
                    scope: map_scope(map)?,
                    key: literal_str(key)?.to_string(),
                    kind: field_kind(literal_str(field)?)?,
                    through_field: true,
                }),
                _ => None,
            }
        }
        _ => None,
    }
}

fn is_map_column(name: &str) -> bool {
    matches!(
        name,
        col::ATTRIBUTES | col::RESOURCE_ATTRIBUTES | col::EVENTS | col::LINKS
    )
}

/// Whether the scan applies `filter` itself (see the module docs).
pub(crate) fn is_attribute_filter(filter: &Expr) -> bool {
    if filter.is_volatile() {
        return false;
    }
    let mut accesses = 0usize;
    let mut other_use = false;
    let _ = filter.apply(|e| {
        if typed_access(e).is_some() {
            accesses += 1;
            return Ok(TreeNodeRecursion::Jump);
        }
        match e {
            Expr::Column(c) if is_map_column(&c.name) => {
                other_use = true;
                Ok(TreeNodeRecursion::Stop)
            }
            Expr::ScalarSubquery(_)
            | Expr::Exists(_)
            | Expr::InSubquery(_)
            | Expr::OuterReferenceColumn(..)
            | Expr::AggregateFunction(_)
            | Expr::WindowFunction(_)
            | Expr::Placeholder(_) => {
                other_use = true;
                Ok(TreeNodeRecursion::Stop)
            }
            _ => Ok(TreeNodeRecursion::Continue),
        }
    });
    accesses > 0 && !other_use
}

/// `filter` (of [`is_attribute_filter`]) without table qualifiers, every typed access to a
/// key `held` has a column of, with its type, replaced by that column.
pub(crate) fn substitute(filter: &Expr, held: &[DedicatedColumn]) -> Expr {
    filter
        .clone()
        .transform_down(|e| {
            if let Some(access) = typed_access(&e) {
                let column = held.iter().find(|d| {
                    d.scope == access.scope
                        && d.key == access.key
                        && d.kind == access.kind
                        && (!access.through_field || d.kind.value_field().is_some())
                });
                return Ok(match column {
                    Some(d) => Transformed::new(
                        Expr::Column(Column::new_unqualified(d.column_name())),
                        true,
                        TreeNodeRecursion::Jump,
                    ),
                    None => Transformed::new(unqualified(e), true, TreeNodeRecursion::Jump),
                });
            }
            Ok(match e {
                Expr::Column(c) if c.relation.is_some() => {
                    Transformed::yes(Expr::Column(Column::new_unqualified(c.name)))
                }
                other => Transformed::no(other),
            })
        })
        .map(|t| t.data)
        .unwrap_or_else(|_| filter.clone())
}

fn unqualified(e: Expr) -> Expr {
    e.clone()
        .transform_up(|e| {
            Ok(match e {
                Expr::Column(c) if c.relation.is_some() => {
                    Transformed::yes(Expr::Column(Column::new_unqualified(c.name)))
                }
                other => Transformed::no(other),
            })
        })
        .map(|t| t.data)
        .unwrap_or(e)
}

/// Whether `e` still reads an attribute map (so parquet cannot prune by it).
pub(crate) fn reads_maps(e: &Expr) -> bool {
    e.column_refs().iter().any(|c| is_map_column(&c.name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col as c, lit};

    fn udf(name: &str) -> datafusion::logical_expr::ScalarUDF {
        crate::functions::udfs::all()
            .into_iter()
            .find(|f| f.name() == name)
            .unwrap()
    }

    #[test]
    fn typed_accesses_qualify_and_use_the_columns_held() {
        let attr_str = udf("attr_str");
        let attr_int = udf("attr_int");
        let route = attr_str.call(vec![c("spans.attributes"), lit("http.route")]);
        let status = attr_int.call(vec![c("attributes"), lit("http.response.status_code")]);
        let field = datafusion::functions::core::expr_fn::get_field(
            datafusion::functions::core::expr_fn::get_field(c("attributes"), "http.route"),
            "string_value",
        );
        let held = vec![
            DedicatedColumn::new(AttributeScope::Span, "http.route", DedicatedType::String),
            DedicatedColumn::new(
                AttributeScope::Span,
                "http.response.status_code",
                DedicatedType::Int,
            ),
        ];
        for (filter, expected) in [
            (
                route.clone().eq(lit("/a")),
                "__dedicated_span_http_route = Utf8(\"/a\")",
            ),
            (
                status
                    .clone()
                    .gt_eq(lit(500i64))
                    .and(c("name").eq(lit("x"))),
                "__dedicated_span_http_response_status_code >= Int64(500) AND name = Utf8(\"x\")",
            ),
            (
                field.clone().eq(lit("/b")),
                "__dedicated_span_http_route = Utf8(\"/b\")",
            ),
            (
                route.clone().like(lit("/c%")).or(route.clone().is_null()),
                "__dedicated_span_http_route LIKE Utf8(\"/c%\") OR __dedicated_span_http_route IS NULL",
            ),
        ] {
            assert!(is_attribute_filter(&filter), "{filter}");
            assert_eq!(substitute(&filter, &held).to_string(), expected);
            // A file without the columns answers from the maps.
            assert!(reads_maps(&substitute(&filter, &[])), "{filter}");
        }
        // Another type than the column's reads the map.
        let as_string = attr_str.call(vec![c("attributes"), lit("http.response.status_code")]);
        assert!(reads_maps(&substitute(&as_string.eq(lit("500")), &held)));
        // Not typed accesses: left to DataFusion above the scan.
        let whole = datafusion::functions::core::expr_fn::get_field(c("attributes"), "http.route");
        assert!(!is_attribute_filter(&whole.is_not_null()));
        assert!(!is_attribute_filter(&c("name").eq(lit("x"))));
        assert!(!is_attribute_filter(
            &route.eq(lit("/a")).or(c("events").is_null())
        ));
    }
}
