//! The viewer side: the hyper server (HTTP/1.1, h2c, TLS), the request path, ranges, responses.

pub mod body;
pub mod fetch;
pub mod handler;
pub mod range;
pub mod response;
pub mod server;
