//! What a scan of `spans` read and skipped, from the metrics of an executed physical plan:
//! Delta file skipping (`count_files_scanned`) and parquet pruning (row groups pruned by
//! statistics and by bloom filters, bytes scanned). Deterministic figures, for tests,
//! benchmarks and users who want to check that a filter reaches the files.

use std::sync::Arc;

use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::MetricValue;

/// Figures summed over every node of an executed plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanMetrics {
    /// Data files the Delta scan kept after file skipping (Delta scan path; a lookup served
    /// by the trace-id index does not go through it and reports 0).
    pub files_scanned: usize,
    /// Data files the scan read bytes from, whichever path planned it (a file whose row
    /// groups were all pruned from footers held in memory is not counted).
    pub files_opened: usize,
    /// Row groups of opened files that DataFusion read or considered after pruning.
    pub row_groups_matched: usize,
    /// Row groups skipped by min/max statistics.
    pub row_groups_pruned_statistics: usize,
    /// Row groups skipped by bloom filters.
    pub row_groups_pruned_bloom_filter: usize,
    /// Row groups skipped before the scan because the bloom filters of their attribute keys
    /// or string values rule out a filter on `attributes` or `resource_attributes`.
    pub row_groups_pruned_attributes: usize,
    /// Compressed bytes of the row groups skipped by attribute filters.
    pub bytes_pruned_attributes: usize,
    /// Bytes read from data files.
    pub bytes_scanned: usize,
    /// Rows produced by the scan leaves.
    pub rows_scanned: usize,
    /// Files whose rows of a lookup came from the decoded cache of lookup rows (decoded
    /// before, neither read nor decoded again).
    pub decoded_cache_hits: usize,
}

impl ScanMetrics {
    /// Reads the metrics of `plan` (after it ran) and of all its children.
    pub fn from_plan(plan: &Arc<dyn ExecutionPlan>) -> Self {
        let mut out = ScanMetrics::default();
        let mut files = std::collections::HashSet::new();
        let mut stack = vec![plan.clone()];
        while let Some(node) = stack.pop() {
            let is_leaf = node.children().is_empty();
            if let Some(metrics) = node.metrics() {
                for metric in metrics.iter() {
                    if metric.value().name() == "bytes_scanned" && metric.value().as_usize() > 0 {
                        for label in metric.labels() {
                            if label.name() == "filename" {
                                files.insert(label.value().to_string());
                            }
                        }
                    }
                    match metric.value() {
                        MetricValue::PruningMetrics {
                            name,
                            pruning_metrics,
                        } => match name.as_ref() {
                            "row_groups_pruned_statistics" => {
                                out.row_groups_pruned_statistics += pruning_metrics.pruned();
                                out.row_groups_matched += pruning_metrics.matched();
                            }
                            "row_groups_pruned_bloom_filter" => {
                                out.row_groups_pruned_bloom_filter += pruning_metrics.pruned();
                            }
                            _ => {}
                        },
                        v if v.name() == "count_files_scanned" => out.files_scanned += v.as_usize(),
                        v if v.name() == "row_groups_pruned_attributes" => {
                            out.row_groups_pruned_attributes += v.as_usize()
                        }
                        v if v.name() == "bytes_pruned_attributes" => {
                            out.bytes_pruned_attributes += v.as_usize()
                        }
                        v if v.name() == "bytes_scanned" => out.bytes_scanned += v.as_usize(),
                        v if v.name() == "decoded_cache_hits" => {
                            out.decoded_cache_hits += v.as_usize()
                        }
                        MetricValue::OutputRows(rows) if is_leaf => {
                            out.rows_scanned += rows.value()
                        }
                        _ => {}
                    }
                }
            }
            stack.extend(node.children().into_iter().cloned());
        }
        out.files_opened = files.len();
        out
    }

    /// Row groups left to read after statistics and bloom filters.
    pub fn row_groups_read(&self) -> usize {
        self.row_groups_matched
            .saturating_sub(self.row_groups_pruned_bloom_filter)
    }
}
