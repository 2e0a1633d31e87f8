//! A 508 Loop Detected answer to a fill is about the `CDN-Loop` entries the fill carried, and a
//! fill carries its leader's (RFC 8586: intermediaries append, never remove). When the leader
//! sent entries of its own, the loop the upstream saw may be nothing but that viewer's text
//! (`CDN-Loop: vedge; node=<shield>`): the 508 is handed to the leader alone, and the viewers
//! collapsed onto the fill look up again and claim one fresh fill between them, led by one of
//! their own (bounded by `Lookup::rounds`: a viewer tries at most one more fill, then passes
//! with its own request). A 508 to a fill whose leader sent no `CDN-Loop` names this node's own
//! entry: a genuine loop, answered to every viewer as before.

use http::{HeaderMap, StatusCode};

/// The pass reason of a 508 meant for the fill's leader only.
pub const REASON: &str = "loop-detected";

/// Whether the origin's `status` to a fill started by a request with `viewer` headers is a loop
/// the leader's own `CDN-Loop` entries may have caused.
pub fn leader_only(status: StatusCode, viewer: &HeaderMap) -> bool {
    status == StatusCode::LOOP_DETECTED && viewer.contains_key("cdn-loop")
}

/// Whether a collapsed reader told to pass for `reason` should instead look up again and
/// claim a fill of its own (the leader's 508 is not its answer).
pub fn refill(reason: &str) -> bool {
    reason == REASON
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn only_a_508_to_a_leader_with_cdn_loop_is_the_leaders() {
        let mut viewer = HeaderMap::new();
        assert!(!leader_only(StatusCode::LOOP_DETECTED, &viewer));
        viewer.insert("cdn-loop", HeaderValue::from_static("vedge; node=shield"));
        assert!(leader_only(StatusCode::LOOP_DETECTED, &viewer));
        assert!(!leader_only(StatusCode::BAD_GATEWAY, &viewer));
    }
}
