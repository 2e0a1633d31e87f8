//! Warm origin connections: the first burst after start (or after a quiet spell) should not pay
//! for TCP connect and the TLS handshake. hyper-util's pooled client has no "open a connection"
//! call, so each origin gets one cheap request (`HEAD /` by default, no body) at start, which
//! leaves a keep-alive connection in the pool; while the origin had requests within
//! `keep_warm`, the request is repeated before the pool's idle timeout would close the last
//! idle connection. The origin sees these requests (`User-Agent: vedge-preconnect`); a route
//! that must not see them sets `origin_client.preconnect = false`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::Request;
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;

use crate::config::OriginClientConfig;
use crate::http::body::Body;
use crate::origin::target::Target;

/// The longest pause between two warm-ups of a busy origin: origins close idle keep-alive
/// connections on their own clock (nginx 75 s, Node 5 s), which the pool cannot see.
const MAX_INTERVAL: Duration = Duration::from_secs(30);
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// A warm-up response body (an origin answering HEAD with one anyway) read at most this far.
const MAX_WARM_BODY: usize = 64 << 10;

/// One origin's last real request, and how many warm-ups completed. Lock-free: every origin
/// request touches it.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Milliseconds since `epoch()` of the last request, plus one (0: never).
    last: AtomicU64,
    warmups: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Traffic {
    /// A real (viewer-driven) request went to this origin now.
    pub fn touch(&self) {
        let ms = epoch().elapsed().as_millis() as u64 + 1;
        self.last.store(ms, Relaxed);
    }

    /// How long ago the last real request was; `None` if there was none.
    fn since_last(&self) -> Option<Duration> {
        match self.last.load(Relaxed) {
            0 => None,
            ms => Some(
                epoch()
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms - 1)),
            ),
        }
    }

    pub fn warmups(&self) -> u64 {
        self.warmups.load(Relaxed)
    }
}

/// How often a busy origin's pool is re-warmed: well inside the pool's idle timeout.
fn interval(pool_idle_timeout: Duration) -> Duration {
    (pool_idle_timeout / 2).clamp(MIN_INTERVAL, MAX_INTERVAL)
}

/// Whether a warm-up is due: the origin had real requests within `keep_warm`, but none within
/// the last `every` (a request that recent already left a fresh connection in the pool).
fn due(since_last: Option<Duration>, every: Duration, keep_warm: Duration) -> bool {
    since_last.is_some_and(|ago| ago >= every && ago <= keep_warm)
}

/// Warms `target` at once, then keeps it warm while it has traffic, until `stop` fires.
pub async fn run(target: Arc<Target>, cfg: OriginClientConfig, stop: CancellationToken) {
    let timeout = cfg.connect_timeout + cfg.first_byte_timeout;
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = warm(&target, &cfg, timeout) => {}
    }
    if cfg.preconnect.keep_warm.is_zero() {
        return;
    }
    let every = interval(cfg.pool_idle_timeout);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if due(target.traffic.since_last(), every, cfg.preconnect.keep_warm) {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = warm(&target, &cfg, timeout) => {}
            }
        }
    }
}

/// One warm-up request through the origin's own pool. Failures are only logged: the origin may
/// be down at start, and viewer requests report that on their own.
async fn warm(target: &Target, cfg: &OriginClientConfig, timeout: Duration) {
    let Ok(uri) = target.uri(&cfg.preconnect.path) else {
        return;
    };
    let mut req = Request::new(Body::empty());
    *req.method_mut() = cfg.preconnect.method.clone();
    *req.uri_mut() = uri;
    if let Some(host) = &target.host {
        req.headers_mut().insert(header::HOST, host.clone());
    }
    req.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("vedge-preconnect"),
    );
    let attempt = async {
        let resp = target.client.request(req).await.ok()?;
        // Read the (empty, bounded) body to its end so the connection goes back to the pool.
        http_body_util::Limited::new(resp.into_body(), MAX_WARM_BODY)
            .collect()
            .await
            .ok()?;
        Some(())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Some(())) => {
            target.traffic.warmups.fetch_add(1, Relaxed);
        }
        _ => tracing::debug!(origin = target.name(), "preconnect failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_is_due_only_between_recent_traffic_and_keep_warm() {
        let s = Duration::from_secs;
        assert!(
            !due(None, s(30), s(60)),
            "no traffic yet: start warm-up only"
        );
        assert!(
            !due(Some(s(5)), s(30), s(60)),
            "a recent request left a fresh connection"
        );
        assert!(due(Some(s(40)), s(30), s(60)));
        assert!(
            !due(Some(s(61)), s(30), s(60)),
            "quiet longer than keep_warm: let it close"
        );
    }

    #[test]
    fn interval_stays_inside_the_pool_idle_timeout() {
        let s = Duration::from_secs;
        assert_eq!(interval(s(60)), s(30));
        assert_eq!(interval(s(10)), s(5));
        assert_eq!(interval(s(600)), MAX_INTERVAL);
        assert_eq!(interval(Duration::ZERO), MIN_INTERVAL);
    }
}
