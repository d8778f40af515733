//! Table maintenance: incremental optimize (compaction clustered by trace id).
//!
//! Optimize rewrites only the partitions that need it: those whose files' trace-id ranges
//! overlap (several small appends, each covering the whole id space). It Z-orders them on
//! `trace_id` (with one column, a sort), so the rewritten files have disjoint id ranges and
//! sorted row groups, and the next run skips them. It never holds the commit lock while
//! rewriting: appends go on, Delta's optimistic concurrency orders the commits.

use std::collections::BTreeMap;

use deltalake::operations::optimize::OptimizeType;
use deltalake::{FilterOp, FilterValue};
use tracing::{Instrument, field};

use super::{TraceTable, writer_properties};
use crate::error::Result;
use crate::observe::names;
use crate::schema::col;

/// What an optimize run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OptimizeOutcome {
    /// Partitions (`span_date` values) rewritten.
    pub partitions: Vec<String>,
    pub files_removed: u64,
    pub files_added: u64,
    /// The version after the run (unchanged when nothing needed optimizing).
    pub version: i64,
}

impl TraceTable {
    /// The partitions whose files overlap in trace-id range and would be rewritten by
    /// [`TraceTable::optimize`].
    pub fn partitions_to_optimize(&self) -> Result<Vec<String>> {
        let snapshot = self.snapshot();
        let log_data = snapshot
            .delta_table()
            .snapshot()?
            .snapshot()
            .try_log_data()?;
        let prefix = super::lookup::table_prefix(&self.location().url);
        let mut ranges: BTreeMap<String, Vec<Option<(String, String)>>> = BTreeMap::new();
        for view in log_data.iter() {
            let date = view
                .partition_values_map()
                .get(col::SPAN_DATE)
                .cloned()
                .flatten()
                .unwrap_or_default();
            let location = object_store::path::Path::from_iter(
                prefix.parts().chain(view.object_store_path().parts()),
            );
            let range = snapshot
                .index()
                .and_then(|index| index.file(&location))
                .and_then(|file| file.trace_id_range());
            ranges.entry(date).or_default().push(range);
        }
        Ok(ranges
            .into_iter()
            .filter(|(_, files)| overlapping(files))
            .map(|(date, _)| date)
            .collect())
    }

    /// Compacts the partitions that need it (see [`TraceTable::partitions_to_optimize`]) into
    /// files sorted by trace id, as one commit, and installs the new version.
    pub async fn optimize(&self) -> Result<OptimizeOutcome> {
        let partitions = self.partitions_to_optimize()?;
        let before = self.version();
        let span = tracing::info_span!(
            names::DELTA_OPTIMIZE,
            { names::ATTR_VERSION_BEFORE } = before,
            { names::ATTR_VERSION_AFTER } = field::Empty,
            { names::ATTR_PARTITIONS } = partitions.len(),
            { names::ATTR_FILES_ADDED } = field::Empty,
            { names::ATTR_FILES_REMOVED } = field::Empty,
            { names::ATTR_ERROR } = field::Empty,
        );
        if partitions.is_empty() {
            span.record(names::ATTR_VERSION_AFTER, before);
            return Ok(OptimizeOutcome {
                version: before,
                ..Default::default()
            });
        }
        let result = async {
            let table = self.snapshot().delta_table().clone();
            let values: Vec<&str> = partitions.iter().map(String::as_str).collect();
            let filters = [(col::SPAN_DATE, FilterOp::In, FilterValue::Set(values))];
            let (optimized, metrics) = table
                .optimize()
                .with_type(OptimizeType::ZOrder(vec![col::TRACE_ID.to_string()]))
                .with_filters(&filters)
                .with_writer_properties(writer_properties())
                .await?;
            let _guard = self.commit_lock.lock().await;
            let version = self.install(optimized).await?;
            Ok(OptimizeOutcome {
                partitions: partitions.clone(),
                files_removed: metrics.num_files_removed,
                files_added: metrics.num_files_added,
                version,
            })
        }
        .instrument(span.clone())
        .await;
        let outcome = super::record_result(&span, result)?;
        span.record(names::ATTR_VERSION_AFTER, outcome.version);
        span.record(names::ATTR_FILES_ADDED, outcome.files_added);
        span.record(names::ATTR_FILES_REMOVED, outcome.files_removed);
        Ok(outcome)
    }
}

/// Whether files (by trace-id range; `None` when unknown) need clustering: two or more whose
/// ranges overlap, or any unknown range among several files.
fn overlapping(files: &[Option<(String, String)>]) -> bool {
    if files.len() < 2 {
        return false;
    }
    let mut ranges: Vec<&(String, String)> = Vec::with_capacity(files.len());
    for f in files {
        match f {
            Some(r) => ranges.push(r),
            None => return true,
        }
    }
    ranges.sort();
    ranges.windows(2).any(|w| w[1].0 <= w[0].1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(a: &str, b: &str) -> Option<(String, String)> {
        Some((a.into(), b.into()))
    }

    #[test]
    fn only_overlapping_partitions_need_work() {
        assert!(!overlapping(&[r("0", "f")]));
        assert!(!overlapping(&[r("0", "3"), r("4", "7"), r("8", "f")]));
        assert!(overlapping(&[r("0", "8"), r("4", "f")]));
        assert!(overlapping(&[r("0", "3"), None]));
    }
}
