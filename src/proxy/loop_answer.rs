//! An upstream's refusal of a fill's head may be about the leader's own entries alone. A fill
//! carries its leader's `CDN-Loop` and `Via` entries (RFC 8586, RFC 9110 §7.6.3: intermediaries
//! append, never remove), so when the leader sent entries of its own:
//!
//! - a 508 Loop Detected may be nothing but that viewer's text (`CDN-Loop: vedge; node=<shield>`);
//! - a 400 or 431 may be the head those entries made too large for the upstream (Apache answers
//!   400 past 8,190 bytes a line, Node and hyper 431 past their head limit). The edge bounds a
//!   viewer's entries (`proxy::chain_limit`), but an upstream with a smaller limit, or a vedge
//!   shield seeing the edge's own entries added to a chain just under the bound, still refuses.
//!
//! - a 400 or 431 to a large head (over `LARGE_HEAD`) may be what the leader's own values of
//!   the headers the route forwards (`forward_headers`, varied headers) made of it: any viewer
//!   may send a 20 KB `User-Agent`, and origins refuse heads past 8 KB (nginx answers 400).
//!
//! Such an answer is handed to the leader alone, and the viewers collapsed onto the fill look up
//! again and claim one fresh fill between them, led by one of their own (bounded by
//! `Lookup::rounds`: a viewer tries at most one more fill, then passes with its own request). The
//! same answer to a fill whose leader sent no entries is about the request itself (a 508 names
//! this node's own entry: a genuine loop) and is answered to every viewer as before.

use http::{HeaderMap, StatusCode};

/// The pass reason of a 508 meant for the fill's leader only.
pub const REASON: &str = "loop-detected";

/// The pass reason of a 400 or 431 meant for the fill's leader only.
pub const HEAD_REFUSED: &str = "head-refused";

/// A fill's head larger than this (names and values of the fields it asked with) is one an
/// upstream may refuse for its size; the edge's own fields come to a few hundred bytes.
pub const LARGE_HEAD: usize = 4096;

/// The pass reason when the upstream's `status` to a fill started by a request with `viewer`
/// headers, asked with `asked`, may answer nothing but the leader's own `CDN-Loop` / `Via`
/// entries or its own large header values; `None` when it is every viewer's answer.
pub fn leader_only(
    status: StatusCode,
    viewer: &HeaderMap,
    asked: &HeaderMap,
) -> Option<&'static str> {
    match status {
        StatusCode::LOOP_DETECTED if viewer.contains_key(&crate::origin::CDN_LOOP) => Some(REASON),
        StatusCode::BAD_REQUEST | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            if viewer.contains_key(&crate::origin::CDN_LOOP)
                || viewer.contains_key(http::header::VIA)
                || head_bytes(asked) > LARGE_HEAD =>
        {
            Some(HEAD_REFUSED)
        }
        _ => None,
    }
}

/// The size of `headers` as they go on the wire in HTTP/1.1 (`name: value\r\n`).
fn head_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum()
}

/// Whether a collapsed reader told to pass for `reason` should instead look up again and
/// claim a fill of its own (the leader's refusal is not its answer).
pub fn refill(reason: &str) -> bool {
    reason == REASON || reason == HEAD_REFUSED
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn only_a_refusal_to_a_leader_with_entries_of_its_own_is_the_leaders() {
        let mut viewer = HeaderMap::new();
        for status in [
            StatusCode::LOOP_DETECTED,
            StatusCode::BAD_REQUEST,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        ] {
            assert_eq!(leader_only(status, &viewer, &HeaderMap::new()), None);
        }
        viewer.insert("cdn-loop", HeaderValue::from_static("vedge; node=shield"));
        assert_eq!(
            leader_only(StatusCode::LOOP_DETECTED, &viewer, &HeaderMap::new()),
            Some(REASON)
        );
        assert_eq!(
            leader_only(StatusCode::BAD_GATEWAY, &viewer, &HeaderMap::new()),
            None
        );
        let mut via = HeaderMap::new();
        via.insert("via", HeaderValue::from_static("1.1 proxy"));
        assert_eq!(
            leader_only(StatusCode::LOOP_DETECTED, &via, &HeaderMap::new()),
            None
        );
        for status in [
            StatusCode::BAD_REQUEST,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        ] {
            assert_eq!(
                leader_only(status, &via, &HeaderMap::new()),
                Some(HEAD_REFUSED)
            );
            assert!(refill(HEAD_REFUSED));
        }
    }
}
