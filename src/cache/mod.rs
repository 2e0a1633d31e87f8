//! Policy and decisions: cache keys, content classes and freshness, `Vary`, collapsing of
//! concurrent misses, the RAM tier. No network I/O happens here.

pub mod key;
pub mod policy;
pub mod status;
pub mod vary;
