//! [`NestedAttributes`]: the expression a scan puts above a stored attribute column (lean
//! maps, or a list of events or links holding them) to present it in its SQL type. It only
//! converts: it never reads and never filters.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Schema};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;

use crate::layout;
use crate::schema::sql_schema;

/// The SQL column `column` (`attributes`, `resource_attributes`, `events` or `links`) from its
/// stored form `input`: see [`crate::layout`].
#[derive(Debug, Eq)]
pub(crate) struct NestedAttributes {
    input: Arc<dyn PhysicalExpr>,
    column: String,
    target: DataType,
}

impl PartialEq for NestedAttributes {
    fn eq(&self, other: &Self) -> bool {
        self.column == other.column && self.input.eq(&other.input)
    }
}

impl Hash for NestedAttributes {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.column.hash(state);
        self.input.hash(state);
    }
}

impl NestedAttributes {
    /// The SQL column `column` from `input`; fails when `spans` has no such column.
    pub(crate) fn try_new(input: Arc<dyn PhysicalExpr>, column: &str) -> DfResult<Self> {
        let target = sql_schema().field_with_name(column)?.data_type().clone();
        Ok(Self {
            input,
            column: column.to_string(),
            target,
        })
    }

    /// The SQL column this presents.
    #[cfg(feature = "cluster")]
    pub(crate) fn column(&self) -> &str {
        &self.column
    }
}

impl fmt::Display for NestedAttributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nested_attributes({})", self.input)
    }
}

impl PhysicalExpr for NestedAttributes {
    fn data_type(&self, _input_schema: &Schema) -> DfResult<DataType> {
        Ok(self.target.clone())
    }

    fn nullable(&self, input_schema: &Schema) -> DfResult<bool> {
        self.input.nullable(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> DfResult<ColumnarValue> {
        let array = self.input.evaluate(batch)?.into_array(batch.num_rows())?;
        let nested = layout::to_nested(&array)?;
        if nested.data_type() == &self.target {
            return Ok(ColumnarValue::Array(nested));
        }
        // A file of another writer (strings as views, say): parquet's types to the SQL ones.
        Ok(ColumnarValue::Array(
            arrow::compute::cast(&nested, &self.target).map_err(|e| {
                DataFusionError::Execution(format!(
                    "column {} of a data file cannot be read as {}: {e}",
                    self.column, self.target
                ))
            })?,
        ))
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> DfResult<Arc<dyn PhysicalExpr>> {
        match children.as_slice() {
            [input] => Ok(Arc::new(Self::try_new(input.clone(), &self.column)?)),
            _ => Err(DataFusionError::Internal(format!(
                "nested_attributes takes one input, got {}",
                children.len()
            ))),
        }
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nested_attributes(")?;
        self.input.fmt_sql(f)?;
        write!(f, ")")
    }
}
