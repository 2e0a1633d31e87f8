//! The viewer side: the hyper server (HTTP/1.1, h2c, TLS), connection limits and timeouts,
//! response building, ranges, bodies, CORS answers (`cors`) and zero-copy sending. It knows nothing of caching: the
//! request path (`proxy`) plugs in as a `server::Handler`.

pub mod access;
pub mod body;
pub mod cache_status;
pub mod conditional;
pub mod conn;
pub mod cors;
pub mod h2_flood;
pub mod limits;
pub mod range;
pub mod response;
pub mod server;
pub mod tls;
