//! What a window's spans hold, read from dictionary pages alone: the attribute keys of span
//! and resource attributes (the dictionaries of the maps' key leaves) and the values of a
//! dedicated string column (its dictionary), for tag pickers (the Tempo API's tag and value
//! endpoints). A row group's dictionary page lists exactly the values its pages hold when every
//! data page is dictionary-encoded, and is a few KB; reading it skips decoding the row group.
//!
//! The granularity is the row group: one whose start times straddle the window's edge adds all
//! its values, as Tempo's per-block tag search does. The answer is `None` (the caller counts
//! from the rows instead) when the version has no trace-id index, a file lacks the column, or
//! a chunk fell back from dictionary encoding.

#[cfg(feature = "query-api")]
use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
#[cfg(feature = "query-api")]
use futures::StreamExt;
#[cfg(feature = "query-api")]
use object_store::ObjectStore;
use parquet::basic::Encoding;
use parquet::column::page::{Page, PageReader};
use parquet::file::metadata::ColumnChunkMetaData;
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::serialized_reader::SerializedPageReader;
#[cfg(feature = "query-api")]
use parquet::schema::types::ColumnPath;

#[cfg(feature = "query-api")]
use super::filters::StartBounds;
#[cfg(feature = "query-api")]
use super::index::{IndexedFile, TraceIdIndex};
#[cfg(feature = "query-api")]
use crate::error::{Result, TraceLakeError};

/// Files whose dictionary pages are read at the same time.
#[cfg(feature = "query-api")]
const CONCURRENT_READS: usize = 8;

/// The distinct values of one leaf over the row groups of `index` that may start within
/// `bounds`, at most `cap` of them (the first `cap` in order). `leaf` names the leaf in a file
/// (`None`: the file does not hold it, and the answer is `None`).
#[cfg(feature = "query-api")]
pub(crate) async fn distinct(
    index: &TraceIdIndex,
    store: &Arc<dyn ObjectStore>,
    bounds: &StartBounds,
    leaf: impl Fn(&IndexedFile) -> Option<ColumnPath>,
    cap: usize,
) -> Result<Option<BTreeSet<String>>> {
    let plan = index.plan_all(store, bounds).await?;
    // Per file: the dictionary pages to read, as (row group, column, byte range).
    let mut wanted = Vec::new();
    for (file, row_groups) in &plan.files {
        let Some(path) = leaf(file) else {
            return Ok(None);
        };
        let descr = file.metadata().file_metadata().schema_descr();
        let Some(column) = (0..descr.num_columns()).find(|&i| descr.column(i).path() == &path)
        else {
            return Ok(None);
        };
        let mut pages = Vec::new();
        for &rg in row_groups {
            if !super::attribute_filter::may_start_within(file, rg, bounds) {
                continue;
            }
            let chunk = file.metadata().row_group(rg).column(column);
            if chunk.num_values() == 0 {
                continue;
            }
            let Some(range) = dictionary_range(chunk) else {
                return Ok(None);
            };
            pages.push((rg, range));
        }
        if !pages.is_empty() {
            wanted.push((file.clone(), column, pages));
        }
    }
    // The files' pages read concurrently (one request a file), decoded as they arrive.
    let mut read = futures::stream::iter(wanted)
        .map(|(file, column, pages)| {
            let store = store.clone();
            async move {
                let ranges: Vec<_> = pages.iter().map(|(_, r)| r.clone()).collect();
                let bytes = store
                    .get_ranges(&file.location, &ranges)
                    .await
                    .map_err(|e| TraceLakeError::data_file(&file.location, e))?;
                let mut values = Vec::new();
                for ((rg, range), bytes) in pages.iter().zip(bytes) {
                    let chunk = file.metadata().row_group(*rg).column(column);
                    values.extend(
                        dictionary(range.start, bytes, chunk)
                            .map_err(|e| TraceLakeError::data_file(&file.location, e))?,
                    );
                }
                Ok::<_, TraceLakeError>(values)
            }
        })
        .buffered(CONCURRENT_READS);
    let mut out = BTreeSet::new();
    while let Some(values) = read.next().await {
        for value in values? {
            if out.len() >= cap {
                return Ok(Some(out));
            }
            out.insert(value);
        }
    }
    Ok(Some(out))
}

/// The byte range of `chunk`'s dictionary page, when every data page of the chunk is
/// dictionary-encoded (else the dictionary does not list every value).
pub(crate) fn dictionary_range(chunk: &ColumnChunkMetaData) -> Option<std::ops::Range<u64>> {
    let start = u64::try_from(chunk.dictionary_page_offset()?).ok()?;
    let end = u64::try_from(chunk.data_page_offset()).ok()?;
    let only_dictionary = |e: Encoding| {
        matches!(
            e,
            Encoding::PLAIN_DICTIONARY | Encoding::RLE_DICTIONARY | Encoding::RLE
        )
    };
    let all_dictionary = match (
        chunk.page_encoding_stats_mask(),
        chunk.page_encoding_stats(),
    ) {
        (Some(mask), _) => {
            mask.is_only(Encoding::PLAIN_DICTIONARY) || mask.is_only(Encoding::RLE_DICTIONARY)
        }
        (None, Some(stats)) => stats.iter().all(|s| {
            s.page_type == parquet::basic::PageType::DICTIONARY_PAGE || only_dictionary(s.encoding)
        }),
        (None, None) => false,
    };
    (all_dictionary && end > start).then_some(start..end)
}

/// The values of the dictionary page held by `bytes` (read from file offset `start`).
pub(crate) fn dictionary(
    start: u64,
    bytes: Bytes,
    chunk: &ColumnChunkMetaData,
) -> std::result::Result<Vec<String>, parquet::errors::ParquetError> {
    let reader = Arc::new(Slice { start, bytes });
    let mut pages = SerializedPageReader::new(reader, chunk, 0, None)?;
    let Some(Page::DictionaryPage {
        buf, num_values, ..
    }) = pages.get_next_page()?
    else {
        return Err(parquet::errors::ParquetError::General(
            "the column chunk does not start with a dictionary page".into(),
        ));
    };
    // PLAIN byte arrays: a 4-byte little-endian length, then the bytes.
    let mut values = Vec::with_capacity(num_values as usize);
    let mut at = 0usize;
    for _ in 0..num_values {
        let Some(len) = buf.get(at..at + 4) else {
            return Err(parquet::errors::ParquetError::EOF(
                "a dictionary value's length".into(),
            ));
        };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        at += 4;
        let Some(value) = buf.get(at..at + len) else {
            return Err(parquet::errors::ParquetError::EOF(
                "a dictionary value".into(),
            ));
        };
        values.push(String::from_utf8_lossy(value).into_owned());
        at += len;
    }
    Ok(values)
}

/// The bytes of one range of a file, read at file offsets.
struct Slice {
    start: u64,
    bytes: Bytes,
}

impl Slice {
    fn offset(&self, at: u64) -> parquet::errors::Result<usize> {
        at.checked_sub(self.start)
            .map(|o| o as usize)
            .filter(|&o| o <= self.bytes.len())
            .ok_or_else(|| {
                parquet::errors::ParquetError::EOF(format!(
                    "offset {at} is outside the range read ({} bytes from {})",
                    self.bytes.len(),
                    self.start
                ))
            })
    }
}

impl Length for Slice {
    fn len(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

impl ChunkReader for Slice {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        use bytes::Buf;
        Ok(self.bytes.slice(self.offset(start)?..).reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let from = self.offset(start)?;
        let to = from
            .checked_add(length)
            .filter(|&t| t <= self.bytes.len())
            .ok_or_else(|| {
                parquet::errors::ParquetError::EOF(format!(
                    "{length} bytes at {start} are outside the range read"
                ))
            })?;
        Ok(self.bytes.slice(from..to))
    }
}

#[cfg(all(test, feature = "query-api"))]
mod tests {
    use super::*;
    use crate::dedicated::{AttributeScope, DedicatedColumn, DedicatedColumns, DedicatedType};
    use crate::table::{AttributeLeaf, TableOptions};
    use crate::{AttributeValue, Span, TraceLake};

    const T0: i64 = 1_714_564_800_000_000_000;
    const MINUTE: i64 = 60_000_000_000;

    fn span(i: usize, start: i64, route: &str, key: &str) -> Span {
        Span {
            trace_id: format!("{:032x}", i + 1),
            span_id: format!("{:016x}", i + 1),
            name: format!("op-{i}"),
            service_name: "svc".into(),
            start_time_unix_nano: start,
            end_time_unix_nano: start + 1_000,
            attributes: vec![
                ("http.route".into(), AttributeValue::String(route.into())),
                (key.into(), AttributeValue::Int(i as i64)),
            ],
            ..Default::default()
        }
    }

    async fn values(
        lake: &TraceLake,
        bounds: StartBounds,
        leaf: impl Fn(&IndexedFile) -> Option<ColumnPath>,
    ) -> Option<Vec<String>> {
        let table = lake.table();
        let snapshot = table.snapshot();
        distinct(
            snapshot.index().unwrap(),
            &table.location().root_store,
            &bounds,
            leaf,
            100,
        )
        .await
        .unwrap()
        .map(|s| s.into_iter().collect())
    }

    #[tokio::test]
    async fn keys_and_dedicated_values_come_from_dictionary_pages() {
        let dir = tempfile::tempdir().unwrap();
        let route = DedicatedColumn {
            scope: AttributeScope::Span,
            key: "http.route".into(),
            kind: DedicatedType::String,
        };
        let options = TableOptions {
            dedicated_columns: DedicatedColumns::new(vec![route.clone()]).unwrap(),
            ..Default::default()
        };
        let lake = TraceLake::create_with_options(dir.path().to_str().unwrap(), &options)
            .await
            .unwrap();
        // Two commits (files) an hour apart, each with its own extra key and routes.
        lake.append_spans(&[
            span(0, T0, "/a", "early.key"),
            span(1, T0 + MINUTE, "/b", "early.key"),
        ])
        .await
        .unwrap();
        lake.append_spans(&[span(2, T0 + 60 * MINUTE, "/c", "late.key")])
            .await
            .unwrap();
        let keys = |_: &IndexedFile| Some(AttributeLeaf::Key.path(crate::schema::col::ATTRIBUTES));
        let all = StartBounds::default();
        assert_eq!(
            values(&lake, all, keys).await.unwrap(),
            ["early.key", "http.route", "late.key"]
        );
        // The window keeps the files (row groups) whose start times it overlaps.
        let late = StartBounds {
            min: Some(T0 + 30 * MINUTE),
            max: None,
        };
        assert_eq!(
            values(&lake, late, keys).await.unwrap(),
            ["http.route", "late.key"]
        );
        let dedicated = |file: &IndexedFile| {
            file.dedicated
                .contains(&route)
                .then(|| ColumnPath::from(route.column_name()))
        };
        assert_eq!(
            values(&lake, all, dedicated).await.unwrap(),
            ["/a", "/b", "/c"]
        );
        assert_eq!(values(&lake, late, dedicated).await.unwrap(), ["/c"]);
        // A file without the leaf: no answer (the caller counts from the rows).
        assert_eq!(values(&lake, all, |_| None).await, None);
    }
}
