//! Origin protection for fills: at most `origin_client.max_fills` fills of one route fetch from
//! its origins at once. A fill over the cap waits for a slot until the collapse deadline (its
//! collapsed readers wait with it, they joined the fill), then fails as "origin busy": 503 with
//! `Retry-After` and `Cache-Status: ...; detail=origin-busy`.
//!
//! Slots are per route (a route is an origin group), so a flood of cold keys on one route never
//! starves another. The fill table itself is bounded by this too: a fill holds its key's entry
//! from claim to end, and at most `max_fills` per route are fetching; the rest wait at most the
//! collapse deadline.
//!
//! A fill waits in its leader's priority class (`admission::PriorityGate`): a player reporting a
//! low buffer with CMCD is given the next free slot before the others, but never more than
//! three such in a row while another fill waits (the claim is the viewer's own).

use std::sync::atomic::Ordering::Relaxed;

use crate::metrics::AbuseMetrics;
use crate::proxy::admission::{GatePermit, Priority, PriorityGate};

/// One gate per route index (`Config::routes`); `None` when `max_fills` is 0 (unlimited).
pub struct FillLimit {
    routes: Vec<Option<PriorityGate>>,
}

/// A fill's slot: held for the whole origin fetch, body included.
pub struct FillSlot<'a> {
    _permit: Option<GatePermit>,
    metrics: &'a AbuseMetrics,
}

impl Drop for FillSlot<'_> {
    fn drop(&mut self) {
        self.metrics.fills_active.fetch_sub(1, Relaxed);
    }
}

impl FillLimit {
    pub fn new(routes: usize, max_fills: usize) -> FillLimit {
        FillLimit {
            routes: (0..routes)
                .map(|_| (max_fills > 0).then(|| PriorityGate::new(max_fills)))
                .collect(),
        }
    }

    /// A slot for one fill of `route`, waiting until `deadline` at most; `None`: the origin is
    /// busy (every slot held until the deadline).
    pub async fn admit<'a>(
        &self,
        route: usize,
        priority: Priority,
        deadline: tokio::time::Instant,
        metrics: &'a AbuseMetrics,
    ) -> Option<FillSlot<'a>> {
        let permit = match self.routes.get(route).and_then(Option::as_ref) {
            None => None,
            Some(gate) => match gate.try_acquire() {
                Some(p) => Some(p),
                None => {
                    metrics.fills_queued.fetch_add(1, Relaxed);
                    match tokio::time::timeout_at(deadline, gate.acquire(priority)).await {
                        Ok(p) => Some(p),
                        // Every slot stayed taken until the deadline: the origin is busy.
                        Err(_) => {
                            metrics.fills_refused.fetch_add(1, Relaxed);
                            return None;
                        }
                    }
                }
            },
        };
        metrics.fills_active.fetch_add(1, Relaxed);
        Some(FillSlot {
            _permit: permit,
            metrics,
        })
    }
}
