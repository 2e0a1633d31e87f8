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

/// The pass reason when the upstream's `status` to a fill started by a request with `viewer`
/// headers may answer nothing but the leader's own `CDN-Loop` / `Via` entries; `None` when it
/// is every viewer's answer.
pub fn leader_only(status: StatusCode, viewer: &HeaderMap) -> Option<&'static str> {
    match status {
        StatusCode::LOOP_DETECTED if viewer.contains_key(&crate::origin::CDN_LOOP) => Some(REASON),
        StatusCode::BAD_REQUEST | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            if viewer.contains_key(&crate::origin::CDN_LOOP)
                || viewer.contains_key(http::header::VIA) =>
        {
            Some(HEAD_REFUSED)
        }
        _ => None,
    }
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
            assert_eq!(leader_only(status, &viewer), None);
        }
        viewer.insert("cdn-loop", HeaderValue::from_static("vedge; node=shield"));
        assert_eq!(
            leader_only(StatusCode::LOOP_DETECTED, &viewer),
            Some(REASON)
        );
        assert_eq!(leader_only(StatusCode::BAD_GATEWAY, &viewer), None);
        let mut via = HeaderMap::new();
        via.insert("via", HeaderValue::from_static("1.1 proxy"));
        assert_eq!(leader_only(StatusCode::LOOP_DETECTED, &via), None);
        for status in [
            StatusCode::BAD_REQUEST,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        ] {
            assert_eq!(leader_only(status, &via), Some(HEAD_REFUSED));
            assert!(refill(HEAD_REFUSED));
        }
    }
}
