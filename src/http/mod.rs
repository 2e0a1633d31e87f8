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

/// The transfer codings a message's `Transfer-Encoding` lists, trimmed, empty list elements
/// left out (RFC 9112 §6.1). Shared by both sides: a request body and an origin answer in any
/// coding but `chunked` (which hyper undoes) are refused.
pub fn transfer_codings(headers: &http::HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|c| c.trim_ascii())
        .filter(|c| !c.is_empty())
}
