//! The read path: what a query does to find and read spans. The trace-id [`index`] of each
//! version (built when a version is installed, from the log and the footers of new files),
//! the [`filters`] a scan can use, the [`scan`] behind `spans`, [`LookupExec`] for lookups by
//! trace id, and the [`reader`]s that read data files through the store stack.
//!
//! The read path never lists and never writes: it reads only the footers, bloom filters and
//! pages of files the installed version names.
//!
//! [`LookupExec`]: lookup_exec::LookupExec

pub(crate) mod attribute_filter;
pub(crate) mod attributes;
pub(crate) mod decoded;
pub(crate) mod dedicated_filter;
pub(crate) mod dictionary_values;
pub(crate) mod filters;
pub(crate) mod index;
pub(crate) mod lookup_exec;
pub(crate) mod reader;
pub(crate) mod scan;

use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};

use crate::schema::{AttributeLayout, col, storage_schema_of};

/// The columns stored in each parquet file of `layout`: the storage schema without the
/// partition column. Both layouts have the same columns in the same order (only the types of
/// the attribute maps differ), so a projection is the same list of indices in either.
pub(crate) fn file_schema(layout: AttributeLayout) -> SchemaRef {
    static LEAN: std::sync::LazyLock<SchemaRef> =
        std::sync::LazyLock::new(|| without_partition(AttributeLayout::Lean));
    static NESTED: std::sync::LazyLock<SchemaRef> =
        std::sync::LazyLock::new(|| without_partition(AttributeLayout::Nested));
    match layout {
        AttributeLayout::Lean => LEAN.clone(),
        AttributeLayout::Nested => NESTED.clone(),
    }
}

fn without_partition(layout: AttributeLayout) -> SchemaRef {
    let storage = storage_schema_of(layout);
    Arc::new(Schema::new(
        storage
            .fields()
            .iter()
            .filter(|f| f.name() != col::SPAN_DATE)
            .cloned()
            .collect::<Vec<_>>(),
    ))
}
