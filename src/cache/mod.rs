//! Policy and decisions: cache keys, content classes and freshness, `Vary`, collapsing of
//! concurrent misses (`lock`, `fill`), the RAM tier and cached objects. No network I/O here: a
//! fill places bodies in zero-copy memory (`crate::zerocopy::body`) but never sends them.

pub mod fill;
pub mod key;
pub mod lock;
pub mod object;
pub mod policy;
pub mod ram;
pub mod request_cc;
pub mod sfv;
pub mod status;
pub mod upstream;
pub mod vary;
