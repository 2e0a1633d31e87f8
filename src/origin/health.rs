//! Active health checks: one task per origin of a group with `health = {...}`, probing
//! `GET path` every `interval` through the origin's own pool (so TLS and h2 are checked too).
//! The tasks run on the edge's task tracker and end when the client's shutdown token fires.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request};
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;

use crate::config::HealthCheck;
use crate::http::body::Body;
use crate::origin::target::Target;
use crate::origin::tls::DialWatch;

/// Probes `target` until `stop` fires: at once, then every `interval`.
pub async fn run(target: Arc<Target>, check: HealthCheck, stop: CancellationToken) {
    loop {
        let passed = tokio::select! {
            _ = stop.cancelled() => return,
            passed = probe(&target, &check) => passed,
        };
        // `None`: the check never reached the origin (it waited for one of this edge's own
        // connection slots): no verdict either way.
        if let Some(passed) = passed {
            target.record_check(passed, &check);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(check.interval) => {}
        }
    }
}

/// One check: a 2xx or 3xx head and a body that ends, all within `timeout`; `None` when the
/// time ran out while the probe waited on this edge's side (`DialWatch::waited_locally`: its
/// dial queued for a slot of `max_connections_per_origin`, or behind another request's h2
/// connect), or the pool gave it a connection that had closed: a busy origin is not a failing
/// one.
async fn probe(target: &Target, check: &HealthCheck) -> Option<bool> {
    let Ok(uri) = target.uri(&check.path) else {
        return Some(false);
    };
    let mut req = Request::new(Body::empty());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri;
    if let Some(host) = &target.host {
        req.headers_mut().insert(header::HOST, host.clone());
    }
    req.headers_mut()
        .insert(header::USER_AGENT, HeaderValue::from_static("vedge-health"));
    let dial = DialWatch::new(&mut req);
    let attempt = async {
        let resp = match dial.watch(target.client.request(req)).await {
            Ok(resp) => resp,
            // The pool's error, not a connect of the probe's own: no verdict.
            Err(e) if e.is_connect() && dial.waited_for_a_closed_one() => return None,
            Err(_) => return Some(false),
        };
        let ok = resp.status().is_success() || resp.status().is_redirection();
        // Read the body, bounded, so the connection goes back to the pool.
        let read = http_body_util::Limited::new(resp.into_body(), 64 << 10)
            .collect()
            .await
            .is_ok();
        Some(ok && read)
    };
    match tokio::time::timeout(check.timeout, attempt).await {
        Ok(verdict) => verdict,
        Err(_) if dial.waited_locally() => None,
        Err(_) => Some(false),
    }
}
