//! Origin connections for passes (requests forwarded uncached: other methods, credentialed
//! requests, hit-for-pass keys; `proxy::pass`), per origin. Passes share the origin's
//! connection budget (`origin_client.max_connections_per_origin`, `tls::Connector`) with fills,
//! but a pass is one viewer's request and lasts as long as that viewer takes its body, which it
//! can make last for ever (an h2 window opened a byte at a time, a body trickled under the gap
//! timeout). So:
//!
//! - passes as a whole hold at most `max - max / 4` of an origin's connections (at least one
//!   less than `max`): the rest stays for fills, which every viewer of a key shares;
//! - one client address (as the limits count it: IPv6 per /64) holds at most a quarter of
//!   `max` in passes (`share`); addresses on `limits.allow` (a local TLS terminator, a tier's
//!   edges) have no share, only the cap on passes as a whole.
//!
//! A pass over its client's share waits for one of that client's own passes to end, at most
//! `SHARE_WAIT`; a pass over the cap on passes waits like a dial for a connection, within the
//! first-byte timeout. Either then fails as origin-busy (503 with `Retry-After`), which never
//! reached the origin and says nothing about its health. A pass holds its slot from before its
//! request is sent until its response body ends or is dropped (`PassSlot`).
//!
//! Requests in flight, not connections, are counted: an h1 request holds one connection for its
//! whole exchange, so passes in flight bound the connections busy with passes; a connection a
//! pass leaves idle in the pool is any request's to take. With `max_connections_per_origin = 0`
//! (no cap on connections) there is nothing to share and passes are not limited; with `1`
//! nothing can be kept for fills, and passes may take that one connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a pass over its client's share waits for one of that client's passes to end. Short:
/// the client holding its whole share is the one asking for more; `Retry-After` tells it when
/// to come back.
pub const SHARE_WAIT: Duration = Duration::from_secs(1);

/// One origin's pass slots.
pub struct PassLimit {
    /// Passes in flight to the origin at once (`None`: unlimited).
    all: Option<Arc<Semaphore>>,
    /// Passes one client address may have in flight to the origin (0: no share applies).
    share: usize,
    /// Each client with a pass holding or awaiting its share; an entry goes with its last user,
    /// so the map holds at most the passes in flight.
    clients: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
    /// Gauge: passes holding a slot now.
    active: AtomicU64,
    /// Passes that found no slot in time (answered 503 origin-busy).
    refused: AtomicU64,
}

/// The slots of `max` connections: (passes as a whole, one client's share). See the module doc.
pub fn sizes(max: usize) -> (Option<usize>, usize) {
    match max {
        0 => (None, 0),
        1 => (Some(1), 1),
        max => {
            let quarter = (max / 4).max(1);
            let all = max - quarter;
            (Some(all), quarter.min(all))
        }
    }
}

impl PassLimit {
    /// The pass slots of an origin this edge opens at most `max_connections` connections to.
    pub fn new(max_connections: usize) -> PassLimit {
        let (all, share) = sizes(max_connections);
        PassLimit {
            all: all.map(|n| Arc::new(Semaphore::new(n))),
            share,
            clients: Mutex::new(HashMap::new()),
            active: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// A slot for one pass of `client` (its address as the limits count it; `None`: no share
    /// applies), waiting at most `SHARE_WAIT` for the client's share and `wait` for a pass slot;
    /// `None`: the origin is busy (for this client, or with passes).
    pub async fn admit(
        self: &Arc<Self>,
        client: Option<IpAddr>,
        wait: Duration,
    ) -> Option<PassSlot> {
        let share = match client.filter(|_| self.share > 0) {
            None => None,
            Some(ip) => {
                let semaphore = self
                    .clients
                    .lock()
                    .entry(ip)
                    .or_insert_with(|| Arc::new(Semaphore::new(self.share)))
                    .clone();
                let mut share = ClientShare {
                    limit: self.clone(),
                    ip,
                    semaphore,
                    permit: None,
                };
                share.permit = match share.semaphore.clone().try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        let acquire = share.semaphore.clone().acquire_owned();
                        tokio::time::timeout(SHARE_WAIT.min(wait), acquire)
                            .await
                            .ok()
                            .and_then(Result::ok)
                    }
                };
                if share.permit.is_none() {
                    // Every pass of this client's share stayed in flight.
                    self.refused.fetch_add(1, Relaxed);
                    return None;
                }
                Some(share)
            }
        };
        let all = match &self.all {
            None => None,
            Some(sem) => {
                let permit = match sem.clone().try_acquire_owned() {
                    Ok(p) => Ok(p),
                    Err(_) => tokio::time::timeout(wait, sem.clone().acquire_owned())
                        .await
                        .map_err(drop)
                        .and_then(|r| r.map_err(drop)),
                };
                match permit {
                    Ok(p) => Some(p),
                    Err(()) => {
                        // Passes held every slot they may (the rest is the fills').
                        self.refused.fetch_add(1, Relaxed);
                        return None;
                    }
                }
            }
        };
        self.active.fetch_add(1, Relaxed);
        Some(PassSlot {
            limit: self.clone(),
            _all: all,
            _share: share,
        })
    }

    /// Passes holding a slot now.
    pub fn active(&self) -> u64 {
        self.active.load(Relaxed)
    }

    /// Passes refused (origin-busy) since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Relaxed)
    }
}

/// The pass slots of the upstream (origin or shield node) that gave an answer, in that answer's
/// extensions (`OriginClient::attempt`): a fill whose answer turns out to be one viewer's takes
/// one of them for its relay (`OriginClient::relay_slot`).
#[derive(Clone)]
pub(crate) struct AnsweredBy(pub(crate) Arc<PassLimit>);

/// A pass slot travelling with the response it is for, in its extensions (which ask for
/// `Clone`: the one `Arc` is taken out by the relay, `proxy::pass::relay`, and held with the
/// body; dropped with the response if no relay takes it).
#[derive(Clone)]
pub struct RelaySlot {
    _slot: Arc<PassSlot>,
}

impl RelaySlot {
    pub(crate) fn new(slot: PassSlot) -> RelaySlot {
        RelaySlot {
            _slot: Arc::new(slot),
        }
    }
}

/// One pass's slot, held until its response body ends or is dropped (the viewer leaves, the
/// request fails). Dropped, it gives back the pass slot and the client's share.
pub struct PassSlot {
    limit: Arc<PassLimit>,
    _all: Option<OwnedSemaphorePermit>,
    _share: Option<ClientShare>,
}

impl Drop for PassSlot {
    fn drop(&mut self) {
        self.limit.active.fetch_sub(1, Relaxed);
    }
}

/// A pass's use of its client's share: waiting for a permit, then holding it. Dropped, it gives
/// the permit back and forgets the client when no other pass of it holds or awaits one.
struct ClientShare {
    limit: Arc<PassLimit>,
    ip: IpAddr,
    semaphore: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for ClientShare {
    fn drop(&mut self) {
        let mut clients = self.limit.clients.lock();
        self.permit = None;
        // The map's reference and this one: nobody else.
        if Arc::strong_count(&self.semaphore) == 2 {
            clients.remove(&self.ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_keep_a_quarter_and_one_client_passes_in_a_quarter() {
        assert_eq!(sizes(0), (None, 0));
        assert_eq!(sizes(1), (Some(1), 1));
        assert_eq!(sizes(2), (Some(1), 1));
        assert_eq!(sizes(4), (Some(3), 1));
        assert_eq!(sizes(512), (Some(384), 128));
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("ip"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_over_its_share_waits_then_is_refused_while_another_passes() {
        let limit = Arc::new(PassLimit::new(4));
        let wait = Duration::from_secs(5);
        let a = limit.admit(ip("192.0.2.1"), wait).await.expect("a's share");
        assert!(limit.admit(ip("192.0.2.1"), wait).await.is_none());
        let b = limit.admit(ip("192.0.2.2"), wait).await.expect("b's share");
        let c = limit.admit(None, wait).await.expect("no share");
        // Three of four: the last connection is the fills'.
        assert!(limit.admit(ip("192.0.2.3"), wait).await.is_none());
        assert_eq!((limit.active(), limit.refused()), (3, 2));
        drop(a);
        let again = limit.admit(ip("192.0.2.1"), wait).await.expect("a again");
        drop((again, b, c));
        assert_eq!(limit.active(), 0);
        assert!(limit.clients.lock().is_empty(), "every client forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_waiting_for_its_share_takes_it_when_one_of_its_own_ends() {
        let limit = Arc::new(PassLimit::new(8));
        let wait = Duration::from_secs(5);
        let first = limit.admit(ip("192.0.2.1"), wait).await.expect("first");
        let second = limit.admit(ip("192.0.2.1"), wait).await.expect("second");
        let l = limit.clone();
        let third = tokio::spawn(async move { l.admit(ip("192.0.2.1"), wait).await.is_some() });
        tokio::task::yield_now().await;
        drop(first);
        assert!(third.await.expect("task"), "admitted once a slot freed");
        drop(second);
    }
}
