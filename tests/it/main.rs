//! The integration-test binary: one file per feature (see STYLE.md).

mod ingest;
