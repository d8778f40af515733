//! The attribute layouts of data files ([`AttributeLayout`](crate::schema::AttributeLayout)) and the conversions between an
//! attribute map as SQL sees it (nested, with `array_value`) and as lean files store it (an
//! array as JSON in `bytes_value`). Conversions are driven by the arrays' types alone, so
//! they apply to `attributes`, `resource_attributes`, and the attribute maps inside `events`
//! and `links` alike, and to any column that holds none (returned as it is).
//!
//! Both directions copy nothing but the columns they change: a map without arrays keeps its
//! keys and scalar values as they are, and gains (or loses) only the `array_value` column.
//! This module never reads or writes files.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryBuilder, BooleanBuilder, Float64Builder,
    Int64Builder, ListArray, MapArray, StringBuilder, StructArray, new_null_array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Float64Type, Int64Type};
use arrow::error::ArrowError;
use base64::Engine;

use crate::schema::{attribute_value_type, scalar_value_type};

/// `array` (any column of the SQL schema) with its attribute maps in the lean layout: arrays
/// encoded into `bytes_value`. Fails on a value that sets `array_value` without `type =
/// 'array'` or with `bytes_value` too (the lean layout could not tell them apart).
pub(crate) fn to_lean(array: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    convert(array, Direction::ToLean)
}

/// `array` (a stored column) with its attribute maps in the SQL (nested) layout: arrays
/// decoded from `bytes_value`. A column already nested is returned as it is. Fails on an
/// array whose JSON is malformed (a corrupt file).
pub(crate) fn to_nested(array: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    convert(array, Direction::ToNested)
}

/// Whether `data_type` holds a lean attribute map anywhere inside it.
pub(crate) fn holds_lean(data_type: &DataType) -> bool {
    match data_type {
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(fields) => fields
                .get(1)
                .is_some_and(|value| is_lean_value(value.data_type())),
            _ => false,
        },
        DataType::List(item) => holds_lean(item.data_type()),
        DataType::Struct(fields) => fields.iter().any(|f| holds_lean(f.data_type())),
        _ => false,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToLean,
    ToNested,
}

/// A nested attribute value struct (the SQL one).
fn is_nested_value(data_type: &DataType) -> bool {
    matches!(data_type, DataType::Struct(fields)
        if fields.find("type").is_some() && fields.find("array_value").is_some())
}

/// A lean attribute value struct: the scalar fields without `array_value`.
fn is_lean_value(data_type: &DataType) -> bool {
    matches!(data_type, DataType::Struct(fields)
        if fields.find("type").is_some()
            && fields.find("bytes_value").is_some()
            && fields.find("array_value").is_none())
}

fn convert(array: &ArrayRef, direction: Direction) -> Result<ArrayRef, ArrowError> {
    match array.data_type() {
        DataType::Map(entries_field, sorted) => {
            let map = array.as_map();
            let entries = map.entries();
            let DataType::Struct(entry_fields) = entries_field.data_type() else {
                return Ok(array.clone());
            };
            let Some(value_field) = entry_fields.get(1) else {
                return Ok(array.clone());
            };
            let value = entries.column(1);
            let converted = match direction {
                Direction::ToLean if is_nested_value(value_field.data_type()) => {
                    value_to_lean(value.as_struct())?
                }
                Direction::ToNested if is_lean_value(value_field.data_type()) => {
                    value_to_nested(value.as_struct())?
                }
                _ => return Ok(array.clone()),
            };
            let value_field = Arc::new(Field::new(
                value_field.name(),
                converted.data_type().clone(),
                value_field.is_nullable(),
            ));
            let entry_fields = Fields::from(vec![entry_fields[0].clone(), value_field]);
            let entries = StructArray::try_new(
                entry_fields.clone(),
                vec![entries.column(0).clone(), converted],
                entries.nulls().cloned(),
            )?;
            let entries_field = Arc::new(Field::new(
                entries_field.name(),
                DataType::Struct(entry_fields),
                entries_field.is_nullable(),
            ));
            Ok(Arc::new(MapArray::try_new(
                entries_field,
                map.offsets().clone(),
                entries,
                map.nulls().cloned(),
                *sorted,
            )?))
        }
        DataType::List(item) => {
            let list = array.as_list::<i32>();
            let values = convert(list.values(), direction)?;
            if values.data_type() == item.data_type() {
                return Ok(array.clone());
            }
            let item = Arc::new(Field::new(
                item.name(),
                values.data_type().clone(),
                item.is_nullable(),
            ));
            Ok(Arc::new(ListArray::try_new(
                item,
                list.offsets().clone(),
                values,
                list.nulls().cloned(),
            )?))
        }
        DataType::Struct(fields) => {
            let s = array.as_struct();
            let children = s
                .columns()
                .iter()
                .map(|c| convert(c, direction))
                .collect::<Result<Vec<_>, _>>()?;
            if children
                .iter()
                .zip(fields.iter())
                .all(|(c, f)| c.data_type() == f.data_type())
            {
                return Ok(array.clone());
            }
            let fields: Vec<FieldRef> = fields
                .iter()
                .zip(&children)
                .map(|(f, c)| {
                    Arc::new(Field::new(f.name(), c.data_type().clone(), f.is_nullable()))
                })
                .collect();
            Ok(Arc::new(StructArray::try_new(
                fields.into(),
                children,
                s.nulls().cloned(),
            )?))
        }
        _ => Ok(array.clone()),
    }
}

/// The column of `s` named `name`.
fn column<'a>(s: &'a StructArray, name: &str) -> Result<&'a ArrayRef, ArrowError> {
    s.column_by_name(name)
        .ok_or_else(|| ArrowError::SchemaError(format!("an attribute value has no field {name:?}")))
}

/// A nested value struct without `array_value`, each array's JSON in `bytes_value`.
fn value_to_lean(values: &StructArray) -> Result<ArrayRef, ArrowError> {
    let arrays = column(values, "array_value")?.as_list::<i32>();
    let types = column(values, "type")?.as_string::<i32>();
    let bytes = column(values, "bytes_value")?.as_binary::<i32>();
    let DataType::Struct(lean_fields) = scalar_value_type() else {
        unreachable!("scalar_value_type is a struct")
    };
    let mut children: Vec<ArrayRef> = Vec::with_capacity(lean_fields.len());
    for field in lean_fields.iter() {
        children.push(column(values, field.name())?.clone());
    }
    let holds_arrays = (0..values.len()).any(|i| values.is_valid(i) && arrays.is_valid(i));
    if holds_arrays {
        let mut encoded = BinaryBuilder::with_capacity(values.len(), 0);
        for i in 0..values.len() {
            if values.is_valid(i) && arrays.is_valid(i) {
                if types.is_null(i) || types.value(i) != "array" {
                    return Err(ArrowError::InvalidArgumentError(format!(
                        "an attribute value with array_value must have type 'array', not {:?}",
                        types.is_valid(i).then(|| types.value(i))
                    )));
                }
                if bytes.is_valid(i) {
                    return Err(ArrowError::InvalidArgumentError(
                        "an attribute value of type 'array' sets bytes_value too".into(),
                    ));
                }
                encoded.append_value(encode_array(arrays.value(i).as_struct())?);
            } else if bytes.is_valid(i) {
                encoded.append_value(bytes.value(i));
            } else {
                encoded.append_null();
            }
        }
        let position = lean_fields
            .iter()
            .position(|f| f.name() == "bytes_value")
            .expect("bytes_value is a scalar field");
        children[position] = Arc::new(encoded.finish());
    }
    canonical(types, &lean_fields, &mut children)?;
    Ok(Arc::new(StructArray::try_new(
        lean_fields,
        children,
        values.nulls().cloned(),
    )?))
}

/// Drops the scalar fields a value sets beside the one its `type` names (an OpenTelemetry
/// value has one): `attributes['k']['string_value']` then reads what `attr_str` reads, which
/// dedicated columns rely on (see `crate::dedicated`).
fn canonical(
    types: &arrow::array::StringArray,
    fields: &arrow::datatypes::Fields,
    children: &mut [ArrayRef],
) -> Result<(), ArrowError> {
    const TYPED: [(&str, &str); 4] = [
        ("string_value", "string"),
        ("int_value", "int"),
        ("double_value", "double"),
        ("bool_value", "bool"),
    ];
    for (field, wanted) in TYPED {
        let Some((position, _)) = fields.find(field) else {
            continue;
        };
        let child = &children[position];
        if child.null_count() == child.len() {
            continue;
        }
        let stray = |i: usize| child.is_valid(i) && (types.is_null(i) || types.value(i) != wanted);
        if !(0..child.len()).any(stray) {
            continue;
        }
        let keep: arrow::array::BooleanArray = (0..child.len()).map(|i| Some(!stray(i))).collect();
        children[position] = arrow::compute::nullif(child, &arrow::compute::not(&keep)?)?;
    }
    Ok(())
}

/// A lean value struct with `array_value` again, decoded from the `bytes_value` of values of
/// type `'array'` (which then hold no bytes).
fn value_to_nested(values: &StructArray) -> Result<ArrayRef, ArrowError> {
    let DataType::Struct(nested_fields) = attribute_value_type() else {
        unreachable!("attribute_value_type is a struct")
    };
    let types = column(values, "type")?.as_string::<i32>();
    let bytes = column(values, "bytes_value")?.as_binary::<i32>();
    let array_rows: Vec<bool> = (0..values.len())
        .map(|i| values.is_valid(i) && types.is_valid(i) && types.value(i) == "array")
        .collect();
    let array_field = nested_fields
        .find("array_value")
        .map(|(_, f)| f.clone())
        .expect("array_value is a field of attribute values");
    let mut children: Vec<ArrayRef> = Vec::with_capacity(nested_fields.len());
    let (bytes_value, array_value): (ArrayRef, ArrayRef) = if array_rows.iter().any(|&a| a) {
        let mut kept = BinaryBuilder::with_capacity(values.len(), 0);
        let mut elements = ElementBuilder::default();
        let mut offsets = Vec::with_capacity(values.len() + 1);
        offsets.push(0i32);
        for (i, &is_array) in array_rows.iter().enumerate() {
            if is_array {
                kept.append_null();
                if bytes.is_valid(i) {
                    elements.decode(bytes.value(i))?;
                }
            } else if bytes.is_valid(i) {
                kept.append_value(bytes.value(i));
            } else {
                kept.append_null();
            }
            offsets.push(i32::try_from(elements.len).map_err(|_| {
                ArrowError::InvalidArgumentError("attribute arrays too long for one batch".into())
            })?);
        }
        let DataType::List(element_field) = array_field.data_type() else {
            unreachable!("array_value is a list")
        };
        let list = ListArray::try_new(
            element_field.clone(),
            OffsetBuffer::new(offsets.into()),
            Arc::new(elements.finish()?),
            Some(NullBuffer::from(array_rows.clone())),
        )?;
        (Arc::new(kept.finish()), Arc::new(list))
    } else {
        (
            Arc::new(bytes.clone()) as ArrayRef,
            new_null_array(array_field.data_type(), values.len()),
        )
    };
    for field in nested_fields.iter() {
        children.push(match field.name().as_str() {
            "bytes_value" => bytes_value.clone(),
            "array_value" => array_value.clone(),
            name => column(values, name)?.clone(),
        });
    }
    Ok(Arc::new(StructArray::try_new(
        nested_fields,
        children,
        values.nulls().cloned(),
    )?))
}

/// The JSON of one attribute array (its element structs): see
/// [`AttributeLayout::Lean`](crate::schema::AttributeLayout::Lean).
fn encode_array(elements: &StructArray) -> Result<Vec<u8>, ArrowError> {
    let types = column(elements, "type")?.as_string::<i32>();
    let strings = column(elements, "string_value")?.as_string::<i32>();
    let ints = column(elements, "int_value")?.as_primitive::<Int64Type>();
    let doubles = column(elements, "double_value")?.as_primitive::<Float64Type>();
    let bools = column(elements, "bool_value")?.as_boolean();
    let bytes: &BinaryArray = column(elements, "bytes_value")?.as_binary::<i32>();
    let mut out = Vec::with_capacity(elements.len() * 32);
    out.push(b'[');
    for i in 0..elements.len() {
        if i > 0 {
            out.push(b',');
        }
        if elements.is_null(i) {
            out.extend_from_slice(b"null");
            continue;
        }
        let mut object = serde_json::Map::new();
        if types.is_valid(i) {
            object.insert("type".into(), types.value(i).into());
        }
        if strings.is_valid(i) {
            object.insert("string_value".into(), strings.value(i).into());
        }
        if ints.is_valid(i) {
            object.insert("int_value".into(), ints.value(i).into());
        }
        if doubles.is_valid(i) {
            // As text: the shortest decimal that parses back to the same double (JSON
            // numbers are not read back exactly by every parser, serde_json's default one
            // included), or NaN / Infinity / -Infinity.
            let d = doubles.value(i);
            let text = if d.is_nan() {
                "NaN".to_string()
            } else if d.is_infinite() {
                if d > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
            } else {
                format!("{d:?}")
            };
            object.insert("double_value".into(), text.into());
        }
        if bools.is_valid(i) {
            object.insert("bool_value".into(), bools.value(i).into());
        }
        if bytes.is_valid(i) {
            let text = base64::engine::general_purpose::STANDARD.encode(bytes.value(i));
            object.insert("bytes_value".into(), text.into());
        }
        serde_json::to_writer(&mut out, &object)
            .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
    }
    out.push(b']');
    Ok(out)
}

/// One element of a stored attribute array, as [`encode_array`] writes it.
#[derive(serde::Deserialize)]
struct Element<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    string_value: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    int_value: Option<i64>,
    #[serde(default)]
    double_value: Option<Double>,
    #[serde(default)]
    bool_value: Option<bool>,
    #[serde(borrow, default)]
    bytes_value: Option<std::borrow::Cow<'a, str>>,
}

/// A double as text (what tracelake writes: exact) or as a JSON number.
struct Double(f64);

impl<'de> serde::Deserialize<'de> for Double {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Double;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a double as a string or a number")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Double, E> {
                Ok(Double(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Double, E> {
                Ok(Double(v as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Double, E> {
                Ok(Double(v as f64))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Double, E> {
                v.parse::<f64>()
                    .map(Double)
                    .map_err(|_| E::custom(format!("{v:?} is not a double")))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The element structs of decoded attribute arrays, built column by column.
#[derive(Default)]
struct ElementBuilder {
    len: usize,
    validity: Vec<bool>,
    types: StringBuilder,
    strings: StringBuilder,
    ints: Int64Builder,
    doubles: Float64Builder,
    bools: BooleanBuilder,
    bytes: BinaryBuilder,
}

fn malformed(what: impl std::fmt::Display) -> ArrowError {
    ArrowError::ParseError(format!(
        "a stored attribute array is malformed ({what}); the data file is corrupt or was \
         not written by tracelake"
    ))
}

impl ElementBuilder {
    /// Appends the elements of one array's JSON.
    fn decode(&mut self, json: &[u8]) -> Result<(), ArrowError> {
        // Typed and borrowing: no map or string allocated per element (a scan of a table with
        // array attributes decodes one array per value).
        let parsed: Vec<Option<Element<'_>>> = serde_json::from_slice(json).map_err(malformed)?;
        for element in parsed {
            self.len += 1;
            let Some(e) = element else {
                self.validity.push(false);
                self.types.append_null();
                self.strings.append_null();
                self.ints.append_null();
                self.doubles.append_null();
                self.bools.append_null();
                self.bytes.append_null();
                continue;
            };
            self.validity.push(true);
            self.types.append_option(e.kind.as_deref());
            self.strings.append_option(e.string_value.as_deref());
            self.ints.append_option(e.int_value);
            self.doubles.append_option(e.double_value.map(|d| d.0));
            self.bools.append_option(e.bool_value);
            match e.bytes_value {
                Some(text) => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(text.as_bytes())
                        .map_err(malformed)?;
                    self.bytes.append_value(decoded);
                }
                None => self.bytes.append_null(),
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<StructArray, ArrowError> {
        let DataType::Struct(fields) = scalar_value_type() else {
            unreachable!("scalar_value_type is a struct")
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.types.finish()),
            Arc::new(self.strings.finish()),
            Arc::new(self.ints.finish()),
            Arc::new(self.doubles.finish()),
            Arc::new(self.bools.finish()),
            Arc::new(self.bytes.finish()),
        ];
        StructArray::try_new(fields, columns, Some(NullBuffer::from(self.validity)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{AttributeLayout, col, sql_schema, storage_schema_of};
    use crate::span::{AttributeValue as V, Event, Link, Span, spans_to_batch};

    fn span(attributes: Vec<(String, V)>) -> Span {
        Span {
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            span_id: "b7ad6b7169203331".into(),
            name: "x".into(),
            service_name: "svc".into(),
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            attributes: attributes.clone(),
            resource_attributes: attributes.clone(),
            events: vec![Event {
                attributes: attributes.clone(),
                ..Default::default()
            }],
            links: vec![Link {
                attributes,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// Every map column of the SQL batch goes to the lean type and back to what it was, with
    /// arrays of every element type, floats that JSON cannot hold, empty arrays and maps.
    #[test]
    fn lean_and_back_is_the_identity() {
        let every = vec![
            ("s".to_string(), V::String("a\"b\\".into())),
            ("i".to_string(), V::Int(i64::MAX)),
            ("nan".to_string(), V::Double(f64::NAN)),
            ("b".to_string(), V::Bytes(vec![0, 255])),
            (
                "a".to_string(),
                V::Array(vec![
                    V::String("x".into()),
                    V::Int(i64::MIN),
                    V::Double(f64::INFINITY),
                    V::Double(-0.0),
                    V::Double(1e-300),
                    V::Double(1.722_204_432_020_011_2e-248),
                    V::Bool(true),
                    V::Bytes(vec![]),
                ]),
            ),
            ("e".to_string(), V::Array(vec![])),
        ];
        let batch = spans_to_batch(&[
            span(every),
            span(vec![]),
            span(vec![("k".into(), V::Int(1))]),
        ])
        .unwrap();
        let lean_schema = storage_schema_of(AttributeLayout::Lean);
        for name in [
            col::ATTRIBUTES,
            col::RESOURCE_ATTRIBUTES,
            col::EVENTS,
            col::LINKS,
        ] {
            let column = batch.column_by_name(name).unwrap();
            let lean = to_lean(column).unwrap();
            assert_eq!(
                lean.data_type(),
                lean_schema.field_with_name(name).unwrap().data_type(),
                "{name}"
            );
            assert!(holds_lean(lean.data_type()));
            assert!(!holds_lean(column.data_type()));
            let back = to_nested(&lean).unwrap();
            assert_eq!(
                back.data_type(),
                sql_schema().field_with_name(name).unwrap().data_type()
            );
            // NaN != NaN in Arrow's equality: compare the rendered values.
            let render = |a: &ArrayRef| {
                (0..a.len())
                    .map(|i| arrow::util::display::array_value_to_string(a, i).unwrap())
                    .collect::<Vec<_>>()
            };
            assert_eq!(render(&back), render(column), "{name}");
            // A column without maps, and one already in the wanted layout, are left alone.
            assert!(Arc::ptr_eq(&to_nested(column).unwrap(), column));
            assert!(Arc::ptr_eq(&to_lean(&lean).unwrap(), &lean));
        }
        let ids = batch.column_by_name(col::TRACE_ID).unwrap();
        assert!(Arc::ptr_eq(&to_lean(ids).unwrap(), ids));
    }

    /// Corrupt JSON in a lean file is an error naming the cause, never a panic.
    #[test]
    fn malformed_arrays_are_errors() {
        let batch =
            spans_to_batch(&[span(vec![("a".to_string(), V::Array(vec![V::Int(1)]))])]).unwrap();
        let lean = to_lean(batch.column_by_name(col::ATTRIBUTES).unwrap()).unwrap();
        let map = lean.as_map();
        let values = map.entries().column(1).as_struct();
        for bad in [
            &b"{"[..],
            b"[{\"int_value\":\"x\"}]",
            b"[{\"bytes_value\":\"%%\"}]",
        ] {
            let mut columns = values.columns().to_vec();
            columns[5] = Arc::new(BinaryArray::from(vec![Some(bad)]));
            let corrupt = StructArray::try_new(values.fields().clone(), columns, None).unwrap();
            let err = value_to_nested(&corrupt).unwrap_err().to_string();
            assert!(err.contains("malformed"), "{err}");
        }
    }
}
