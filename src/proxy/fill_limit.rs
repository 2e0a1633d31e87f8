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
//!
//! One client address leads at most a quarter of a route's slots at once (`share`). Without the
//! share, one client asking for many cold objects of a slow origin held every slot, and every
//! other viewer's fill of that route waited and failed as origin-busy. A fill whose leader's
//! share is all taken does not wait for it: other viewers may have joined it, and one client's
//! share is no reason to hold them. It gives up its key at once (`Refused::Share`); whoever
//! joined claims a fill of their own, and the leader's request waits for its share to free
//! (`share_free`, within the same deadline) before it claims again. Addresses on
//! `limits.allow` (a local TLS terminator, a tier's edges) and fills without a viewer
//! (prefetch) have none.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::AbuseMetrics;
use crate::proxy::admission::{GatePermit, Priority, PriorityGate};

/// One gate per route index (`Config::routes`); `None` when `max_fills` is 0 (unlimited).
pub struct FillLimit {
    routes: Vec<Option<PriorityGate>>,
    /// Slots one client address may hold in one route.
    share: usize,
    /// Each (route, client) with a fill holding or awaiting its share; an entry goes with its
    /// last user, so the map holds at most the fills in flight.
    clients: Mutex<HashMap<(usize, IpAddr), Arc<Semaphore>>>,
}

/// Why a fill got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every slot of the route stayed taken until the deadline: the origin is busy.
    Busy,
    /// Every slot of the leader's share is taken (not waited for: see the module comment).
    Share,
}

/// A fill's slot: held for the whole origin fetch, body included.
pub struct FillSlot<'a> {
    _permit: Option<GatePermit>,
    _share: Option<Share<'a>>,
    metrics: &'a AbuseMetrics,
}

impl Drop for FillSlot<'_> {
    fn drop(&mut self) {
        self.metrics.fills_active.fetch_sub(1, Relaxed);
    }
}

/// A fill's use of its client's share: waiting for a permit, then holding it. Dropped (the
/// fill ends, is refused, or its wait is cancelled), it gives the permit back and forgets the
/// client when no other fill of it holds or awaits one.
struct Share<'a> {
    limit: &'a FillLimit,
    key: (usize, IpAddr),
    semaphore: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        let mut clients = self.limit.clients.lock();
        self.permit = None;
        // The map's reference and this one: nobody else.
        if Arc::strong_count(&self.semaphore) == 2 {
            clients.remove(&self.key);
        }
    }
}

impl FillLimit {
    pub fn new(routes: usize, max_fills: usize) -> FillLimit {
        FillLimit {
            routes: (0..routes)
                .map(|_| (max_fills > 0).then(|| PriorityGate::new(max_fills)))
                .collect(),
            share: (max_fills / 4).max(1),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for one fill of `route` led by `client` (its address as the limits count it;
    /// `None`: no share applies), waiting for the route's slots until `deadline` at most.
    pub async fn admit<'a>(
        &'a self,
        route: usize,
        client: Option<IpAddr>,
        priority: Priority,
        deadline: tokio::time::Instant,
        metrics: &'a AbuseMetrics,
    ) -> Result<FillSlot<'a>, Refused> {
        let limited = self.routes.get(route).and_then(Option::as_ref).is_some();
        let share = match client.filter(|_| limited) {
            None => None,
            Some(ip) => {
                let key = (route, ip);
                let semaphore = self
                    .clients
                    .lock()
                    .entry(key)
                    .or_insert_with(|| Arc::new(Semaphore::new(self.share)))
                    .clone();
                let mut share = Share {
                    limit: self,
                    key,
                    semaphore,
                    permit: None,
                };
                match share.semaphore.clone().try_acquire_owned() {
                    Ok(p) => share.permit = Some(p),
                    Err(_) => {
                        metrics.fills_share_released.fetch_add(1, Relaxed);
                        return Err(Refused::Share);
                    }
                }
                Some(share)
            }
        };
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
                            return Err(Refused::Busy);
                        }
                    }
                }
            },
        };
        metrics.fills_active.fetch_add(1, Relaxed);
        Ok(FillSlot {
            _permit: permit,
            _share: share,
            metrics,
        })
    }

    /// Waits until `client`'s share of `route` has a free slot, or until `deadline`: false
    /// then. A request whose fill gave up its key for want of the share waits here, holding
    /// nothing another viewer needs, before it claims again.
    pub async fn share_free(
        &self,
        route: usize,
        client: Option<IpAddr>,
        deadline: tokio::time::Instant,
    ) -> bool {
        let Some(ip) = client else {
            return true;
        };
        let Some(semaphore) = self.clients.lock().get(&(route, ip)).cloned() else {
            return true; // every fill of the client ended
        };
        let wait = semaphore.clone().acquire_owned();
        let free = matches!(tokio::time::timeout_at(deadline, wait).await, Ok(Ok(_)));
        // As `Share::drop`: the map's reference and this one, nobody else's.
        let mut clients = self.clients.lock();
        if Arc::strong_count(&semaphore) == 2 {
            clients.remove(&(route, ip));
        }
        free
    }
}
