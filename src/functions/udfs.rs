//! Scalar UDFs: typed attribute access and id checks.
//!
//! - `attr_str(map, key)`, `attr_int(map, key)`, `attr_double(map, key)`,
//!   `attr_bool(map, key)`: the value of attribute `key` in an attribute map (`attributes`,
//!   `resource_attributes`, or an event's or link's `attributes`) when it has that type,
//!   `NULL` when the key is absent, the map or key is `NULL`, or the value has another type.
//!   `attr_double` also returns int values, widened.
//! - `attrs(key, value, ...)`: an attribute map from typed SQL values, for `INSERT`.
//! - `is_trace_id(text)`, `is_span_id(text)`: whether a string is 32 (16) hex characters.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBuilder, Float64Builder, Int64Builder, MapArray,
    StringArray, StringBuilder, StructArray,
};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::common::{DataFusionError, Result, ScalarValue, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, DocSection, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility,
};

use crate::schema::is_hex_id;
use crate::span::{AttributeMapColumn, AttributeValue, Attributes};

const DOC_SECTION: DocSection = DocSection {
    include: true,
    label: "tracelake functions",
    description: Some("Functions over OpenTelemetry spans"),
};

/// The type an `attr_*` function returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum AttrType {
    Str,
    Int,
    Double,
    Bool,
}

impl AttrType {
    fn name(self) -> &'static str {
        match self {
            AttrType::Str => "attr_str",
            AttrType::Int => "attr_int",
            AttrType::Double => "attr_double",
            AttrType::Bool => "attr_bool",
        }
    }

    fn data_type(self) -> DataType {
        match self {
            AttrType::Str => DataType::Utf8,
            AttrType::Int => DataType::Int64,
            AttrType::Double => DataType::Float64,
            AttrType::Bool => DataType::Boolean,
        }
    }

    fn otel_type(self) -> &'static str {
        match self {
            AttrType::Str => "string",
            AttrType::Int => "int",
            AttrType::Double => "double",
            AttrType::Bool => "bool",
        }
    }
}

/// `attr_str`, `attr_int`, `attr_double`, `attr_bool`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct AttrUdf {
    kind: AttrType,
    signature: Signature,
}

static ATTR_DOCS: LazyLock<[Documentation; 4]> = LazyLock::new(|| {
    [AttrType::Str, AttrType::Int, AttrType::Double, AttrType::Bool].map(|kind| {
        let name = kind.name();
        Documentation::builder(
            DOC_SECTION,
            format!(
                "The {} value of an attribute, or NULL when the key is absent or its value has \
                 another type{}.",
                kind.otel_type(),
                if kind == AttrType::Double { " (int values are widened)" } else { "" }
            ),
            format!("{name}(attributes, key)"),
        )
        .with_argument(
            "attributes",
            "An attribute map: `attributes`, `resource_attributes`, or the `attributes` of an event or link.",
        )
        .with_argument("key", "The attribute key, for example 'http.route'.")
        .with_sql_example(format!(
            "SELECT {name}(attributes, 'http.route') FROM spans"
        ))
        .build()
    })
});

impl ScalarUDFImpl for AttrUdf {
    fn name(&self) -> &str {
        self.kind.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let name = self.kind.name();
        if arg_types.len() != 2 {
            return plan_err!(
                "{name} expects (attributes, key), got {} arguments",
                arg_types.len()
            );
        }
        if !is_attribute_map(&arg_types[0]) && arg_types[0] != DataType::Null {
            return plan_err!(
                "{name} expects an attribute map (such as attributes or resource_attributes) \
                 for argument 1, got {}",
                arg_types[0]
            );
        }
        if !matches!(
            arg_types[1],
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null
        ) {
            return plan_err!(
                "{name} expects a string key for argument 2, got {}",
                arg_types[1]
            );
        }
        Ok(self.kind.data_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.kind.name();
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let n = args.number_rows;
        let [map, keys] = arrays.as_slice() else {
            return plan_err!(
                "{name} expects (attributes, key), got {} arguments",
                arrays.len()
            );
        };
        if map.data_type() == &DataType::Null || keys.data_type() == &DataType::Null {
            return Ok(ColumnarValue::Array(arrow::array::new_null_array(
                &self.kind.data_type(),
                n,
            )));
        }
        // The planner checked the types; checked again here so that a caller bypassing it
        // gets an error, not a panic.
        if !is_attribute_map(map.data_type()) {
            return plan_err!(
                "{name} expects an attribute map for argument 1, got {}",
                map.data_type()
            );
        }
        let keys = arrow::compute::cast(keys, &DataType::Utf8)?;
        let keys = keys.as_string::<i32>();
        let map = map.as_map();
        let values = map.values().as_struct();
        let found = (0..n).map(|row| find(map, keys, row));
        let result: ArrayRef = match self.kind {
            AttrType::Str => {
                let col = values.column(1).as_string::<i32>();
                let mut b = StringBuilder::new();
                for j in found {
                    b.append_option(
                        j.filter(|&j| type_is(values, j, "string"))
                            .map(|j| col.value(j)),
                    );
                }
                Arc::new(b.finish())
            }
            AttrType::Int => {
                let col = values.column(2).as_primitive::<Int64Type>();
                let mut b = Int64Builder::new();
                for j in found {
                    b.append_option(
                        j.filter(|&j| type_is(values, j, "int"))
                            .map(|j| col.value(j)),
                    );
                }
                Arc::new(b.finish())
            }
            AttrType::Double => {
                let ints = values.column(2).as_primitive::<Int64Type>();
                let doubles = values.column(3).as_primitive::<Float64Type>();
                let mut b = Float64Builder::new();
                for j in found {
                    b.append_option(j.and_then(|j| {
                        if type_is(values, j, "double") {
                            Some(doubles.value(j))
                        } else if type_is(values, j, "int") {
                            Some(ints.value(j) as f64)
                        } else {
                            None
                        }
                    }));
                }
                Arc::new(b.finish())
            }
            AttrType::Bool => {
                let col = values.column(4).as_boolean();
                let mut b = BooleanBuilder::new();
                for j in found {
                    b.append_option(
                        j.filter(|&j| type_is(values, j, "bool"))
                            .map(|j| col.value(j)),
                    );
                }
                Arc::new(b.finish())
            }
        };
        Ok(ColumnarValue::Array(result))
    }

    fn documentation(&self) -> Option<&Documentation> {
        let i = self.kind as usize;
        Some(&ATTR_DOCS[i])
    }
}

/// Whether `t` is `map<string, attribute value struct>`: the value struct starts with
/// `type` (string), `string_value` (string), `int_value` (int64), `double_value` (float64) and
/// `bool_value` (boolean), names and types both.
fn is_attribute_map(t: &DataType) -> bool {
    let DataType::Map(entries, _) = t else {
        return false;
    };
    let DataType::Struct(kv) = entries.data_type() else {
        return false;
    };
    const VALUE_FIELDS: [(&str, DataType); 5] = [
        ("type", DataType::Utf8),
        ("string_value", DataType::Utf8),
        ("int_value", DataType::Int64),
        ("double_value", DataType::Float64),
        ("bool_value", DataType::Boolean),
    ];
    kv.len() == 2
        && kv[0].data_type() == &DataType::Utf8
        && matches!(kv[1].data_type(), DataType::Struct(v) if v.len() >= VALUE_FIELDS.len()
        && v.iter().zip(VALUE_FIELDS.iter()).all(|(f, (name, data_type))| {
            f.name() == name && f.data_type() == data_type
        }))
}

/// The entry index of `key` in row `row` of `map`, if present (the first match).
fn find(map: &MapArray, keys: &StringArray, row: usize) -> Option<usize> {
    if map.is_null(row) || keys.is_null(row) {
        return None;
    }
    let key = keys.value(row);
    let offsets = map.value_offsets();
    let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
    let entry_keys = map.keys().as_string::<i32>();
    (start..end).find(|&j| entry_keys.value(j) == key)
}

fn type_is(values: &StructArray, j: usize, name: &str) -> bool {
    let types = values.column(0).as_string::<i32>();
    values.is_valid(j) && types.is_valid(j) && types.value(j) == name
}

/// `is_trace_id`, `is_span_id`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct IsIdUdf {
    name: &'static str,
    len: usize,
    signature: Signature,
}

static ID_DOCS: LazyLock<[Documentation; 2]> = LazyLock::new(|| {
    [("is_trace_id", 32, "0af7651916cd43dd8448eb211c80319c"), ("is_span_id", 16, "b7ad6b7169203331")].map(
        |(name, len, example)| {
            Documentation::builder(
                DOC_SECTION,
                format!("Whether a string is a valid {} id: {len} hexadecimal characters (either case). NULL for NULL.",
                    if len == 32 { "trace" } else { "span" }),
                format!("{name}(text)"),
            )
            .with_argument("text", "The string to check.")
            .with_sql_example(format!("SELECT {name}('{example}')"))
            .build()
        },
    )
});

impl ScalarUDFImpl for IsIdUdf {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let text = arrow::compute::cast(&arrays[0], &DataType::Utf8)?;
        let result: BooleanArray = text
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(|s| is_hex_id(s, self.len)))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(result)))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&ID_DOCS[usize::from(self.len == 16)])
    }
}

/// `attrs(key, value, ...)`: builds an attribute map from typed SQL values, for `INSERT`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct AttrsUdf {
    signature: Signature,
}

static ATTRS_DOC: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_SECTION,
        "Builds an attribute map from key/value pairs, keeping each value's type: strings, \
         integers, floats, booleans, binary, and arrays of those. Pairs whose value is NULL are \
         left out. Use it to give attributes in INSERT INTO spans.",
        "attrs(key1, value1 [, key2, value2 ...])",
    )
    .with_argument("key", "A string key.")
    .with_argument(
        "value",
        "A string, integer, float, boolean, binary, or array of those.",
    )
    .with_sql_example("SELECT attrs('http.route', '/checkout', 'http.response.status_code', 200)")
    .build()
});

fn attribute_value(value: &ScalarValue) -> Result<Option<AttributeValue>> {
    Ok(Some(match value {
        v if v.is_null() => return Ok(None),
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => AttributeValue::String(s.clone()),
        ScalarValue::Boolean(Some(b)) => AttributeValue::Bool(*b),
        ScalarValue::Float16(_) | ScalarValue::Float32(_) | ScalarValue::Float64(_) => {
            match value.cast_to(&DataType::Float64)? {
                ScalarValue::Float64(Some(f)) => AttributeValue::Double(f),
                _ => return Ok(None),
            }
        }
        ScalarValue::Binary(Some(b))
        | ScalarValue::LargeBinary(Some(b))
        | ScalarValue::BinaryView(Some(b)) => AttributeValue::Bytes(b.clone()),
        ScalarValue::List(list) => {
            let items = list.value(0);
            let mut out = Vec::with_capacity(items.len());
            for i in 0..items.len() {
                let item = ScalarValue::try_from_array(&items, i)?;
                match attribute_value(&item)? {
                    Some(AttributeValue::Array(_)) => {
                        return plan_err!("attrs: an array inside an array is not supported");
                    }
                    Some(v) => out.push(v),
                    None => {}
                }
            }
            AttributeValue::Array(out)
        }
        v if v.data_type().is_integer() => match v.cast_to(&DataType::Int64)? {
            ScalarValue::Int64(Some(i)) => AttributeValue::Int(i),
            _ => return Ok(None),
        },
        other => {
            return plan_err!(
                "attrs: a value of type {} cannot be an attribute; use a string, integer, \
                 float, boolean, binary or array",
                other.data_type()
            );
        }
    }))
}

impl ScalarUDFImpl for AttrsUdf {
    fn name(&self) -> &str {
        "attrs"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        if !arg_types.len().is_multiple_of(2) {
            return plan_err!(
                "attrs expects key/value pairs (an even number of arguments), got {}",
                arg_types.len()
            );
        }
        for (i, t) in arg_types.iter().enumerate().step_by(2) {
            if !matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
                return plan_err!("attrs expects a string key for argument {}, got {t}", i + 1);
            }
        }
        Ok(crate::schema::attribute_map_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let mut column = AttributeMapColumn::new();
        for row in 0..args.number_rows {
            let mut attributes: Attributes = Vec::with_capacity(arrays.len() / 2);
            for pair in arrays.chunks(2) {
                let key = ScalarValue::try_from_array(&pair[0], row)?;
                let Some(key) = key.try_as_str().flatten() else {
                    return plan_err!("attrs: a key is NULL");
                };
                if let Some(value) = attribute_value(&ScalarValue::try_from_array(&pair[1], row)?)?
                {
                    attributes.push((key.to_string(), value));
                }
            }
            column
                .append(Some(&attributes))
                .map_err(DataFusionError::from)?;
        }
        Ok(ColumnarValue::Array(Arc::new(
            column.finish().map_err(DataFusionError::from)?,
        )))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&ATTRS_DOC)
    }
}

/// Every scalar UDF of tracelake.
pub fn all() -> Vec<ScalarUDF> {
    let mut udfs: Vec<ScalarUDF> = [
        AttrType::Str,
        AttrType::Int,
        AttrType::Double,
        AttrType::Bool,
    ]
    .into_iter()
    .map(|kind| {
        ScalarUDF::new_from_impl(AttrUdf {
            kind,
            signature: Signature::any(2, Volatility::Immutable),
        })
    })
    .collect();
    for (name, len) in [("is_trace_id", 32), ("is_span_id", 16)] {
        udfs.push(ScalarUDF::new_from_impl(IsIdUdf {
            name,
            len,
            signature: Signature::string(1, Volatility::Immutable),
        }));
    }
    udfs.push(ScalarUDF::new_from_impl(AttrsUdf {
        signature: Signature::variadic_any(Volatility::Immutable),
    }));
    udfs
}

/// A call of the tracelake UDF `name` (one of [`all`]) on `args`, for plans built in code.
pub(crate) fn call(
    name: &str,
    args: Vec<datafusion::logical_expr::Expr>,
) -> Result<datafusion::logical_expr::Expr> {
    all()
        .into_iter()
        .find(|udf| udf.name() == name)
        .map(|udf| udf.call(args))
        .ok_or_else(|| DataFusionError::Internal(format!("no tracelake function {name}")))
}
