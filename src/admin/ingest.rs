//! Admin routes for push ingest. The handlers live in `crate::ingest::admin` (with the engine
//! they drive); this module is what `crate::admin` routes to.

pub use crate::ingest::admin::{handle, is_route, EdgeSink, IngestJobs, Job, MAX_PUSH_BYTES};
