//! tracelake's integration tests, as one test binary (one link of the library and its
//! dependencies instead of one per file; run one module with `cargo test --test it lookup::`).
//!
//! A module that needs an optional part of the crate is compiled only with its cargo feature,
//! so `cargo test --no-default-features` runs what the library core alone can run.
//! `observability` installs the process-wide tracing subscriber once; it records only the
//! threads of the tests that ask for it (see `observability::Capture`), so the spans of the
//! other modules' tests neither reach its assertions nor pile up in its buffer.

mod common;

mod bench_compare;
#[cfg(feature = "cli")]
mod cli;
#[cfg(all(feature = "cli", feature = "cluster"))]
mod distributed;
mod faults;
#[cfg(feature = "flight-sql")]
mod flight_sql;
mod ingest;
mod lifecycle;
mod lookup;
mod observability;
#[cfg(feature = "otlp")]
mod otlp;
mod properties;
mod provider;
#[cfg(feature = "s3")]
mod s3;
mod scale;
#[cfg(feature = "query-api")]
mod tempo;
#[cfg(all(feature = "cli", feature = "query-api"))]
mod ui;
