//! Observability: the names contract (span names and attribute keys). Instrumentation code
//! uses these constants only; it never spells a name inline.

pub mod names;
