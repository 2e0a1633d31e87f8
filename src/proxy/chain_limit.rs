//! The bound on the viewer's own `Via` and `CDN-Loop` entries. Every request the edge sends
//! upstream carries them (RFC 9110 §7.6.3 and RFC 8586: intermediaries append, never remove),
//! a fill too, and a fill is shared: when the entries of the viewer leading it make the head
//! too large for the upstream (Apache refuses a field line past 8,190 bytes, Node a head past
//! 16 KiB), the upstream's 431 or 400 is every collapsed viewer's answer. A request whose
//! entries exceed `MAX_CHAIN_BYTES` is therefore refused alone (431, RFC 6585) before it can
//! lead a fill; dropping the entries instead would cut loop detection (`CDN-Loop` is how a loop
//! through another CDN ends). An upstream that still refuses a chain under the bound (a smaller
//! limit, or a shield seeing this node's own entries added) answers the leader alone
//! (`proxy::loop_answer`).

use http::HeaderMap;

/// The most bytes (names, values and line ends, as sent) of `Via` and `CDN-Loop` a viewer's
/// request may bring: a chain of a hundred proxies, half the smallest common
/// upstream field-line limit (8,190 bytes).
pub const MAX_CHAIN_BYTES: usize = 4 << 10;

/// Whether `headers` bring more `Via` and `CDN-Loop` entries than an upstream request may
/// carry on the viewer's behalf.
pub fn too_long(headers: &HeaderMap) -> bool {
    let mut total = 0usize;
    for name in [&http::header::VIA, &crate::origin::CDN_LOOP] {
        for v in headers.get_all(name) {
            // "Name: value\r\n"
            total = total.saturating_add(name.as_str().len() + v.len() + 4);
        }
    }
    total > MAX_CHAIN_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn a_real_chain_passes_and_a_padded_one_does_not() {
        let mut h = HeaderMap::new();
        assert!(!too_long(&h));
        h.append(
            "via",
            HeaderValue::from_static("1.1 proxy, 1.1 cdn-a (edge)"),
        );
        h.append("cdn-loop", HeaderValue::from_static("othercdn; node=x"));
        assert!(!too_long(&h));
        let long = "x".repeat(MAX_CHAIN_BYTES);
        h.append("via", HeaderValue::from_str(&long).expect("value"));
        assert!(too_long(&h));
        // Many short lines count as much as one long one.
        let mut many = HeaderMap::new();
        for _ in 0..400 {
            many.append("cdn-loop", HeaderValue::from_static("c"));
        }
        assert!(too_long(&many));
    }
}
