//! Per-client and global abuse limits on the viewer listener: connections open at once (all
//! clients, and per client address) and a token-bucket request rate per client address, with an
//! allowlist of CIDRs that bypass the per-client limits. The per-address table is bounded in
//! bytes (`limits.table_size`): idle entries are evicted to make room, and when every entry is an
//! open connection a new address goes untracked (counted) rather than growing the table.
//!
//! A client is an IPv4 address or an IPv6 /64 (`client_of`): one subscriber holds a /64 or
//! wider, and counted per address its 2^64 addresses each had a fresh cap and bucket, so one
//! viewer could take every global connection slot.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::sync::{OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};
use parking_lot::Mutex;

use crate::cache::status::CacheStatus;
use crate::http::body::Body;
use crate::http::response::{stamp, CacheInfo};

use crate::config::{canonical_ip, LimitsConfig};
use crate::metrics::{LimitMetrics, Metrics};

/// Shards of the per-address table: one lock each, so accept loops on several threads rarely
/// meet on one.
const SHARDS: usize = 64;

/// What one tracked address costs in the table: key (17 bytes, padded), state (24 bytes) and the
/// hash table's control byte and spare capacity at its 7/8 load factor, rounded up.
pub const ENTRY_BYTES: u64 = 64;

/// The limits state, shared by every accept loop of the edge.
pub struct Limits {
    cfg: LimitsConfig,
    metrics: Arc<LimitMetrics>,
    open: AtomicUsize,
    shards: Box<[Mutex<HashMap<IpAddr, Client>>]>,
    /// Picks an address's shard with keys drawn at start: with fixed keys a client holding
    /// many networks (a /48 is 65,536 client addresses) could pick ones that all land in one
    /// shard, fill it with connected entries, and then go untracked (no per-client limits).
    shard_keys: std::hash::RandomState,
    /// Entries one shard may hold.
    per_shard: usize,
    /// Sustained rate, tokens per second (0: unlimited).
    rps: f64,
    burst: f64,
    /// How long a client with no connection takes to refill its whole bucket: after that its
    /// entry holds nothing a new one would not, so it may go.
    refill: Duration,
}

struct Client {
    conns: u32,
    tokens: f64,
    last: Instant,
    /// The client's h2 responses, for what they hold while waiting for it (`conn::InFlight`).
    stalled: Arc<Stalled>,
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `limits.max_connections`.
    Global,
    /// `limits.per_ip_connections`.
    PerIp,
}

impl Limits {
    fn shard_of(&self, ip: IpAddr) -> usize {
        (self.shard_keys.hash_one(ip) % SHARDS as u64) as usize
    }

    pub fn new(cfg: LimitsConfig, metrics: Arc<LimitMetrics>) -> Limits {
        let entries = (cfg.table_size / ENTRY_BYTES).max(SHARDS as u64);
        let per_shard = usize::try_from(entries / SHARDS as u64).unwrap_or(usize::MAX);
        let rps = f64::from(cfg.per_ip_rps);
        let burst = f64::from(cfg.per_ip_burst.max(1));
        let refill = if rps > 0.0 {
            Duration::from_secs_f64(burst / rps)
        } else {
            Duration::ZERO
        };
        Limits {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            shard_keys: std::hash::RandomState::new(),
            per_shard,
            rps,
            burst,
            refill,
            open: AtomicUsize::new(0),
            metrics,
            cfg,
        }
    }

    /// Whether `ip` is on `limits.allow`.
    pub fn bypasses(&self, ip: IpAddr) -> bool {
        self.cfg.allow.iter().any(|c| c.contains(ip))
    }

    /// Admits a new connection from `peer`, or says why not. The returned guard holds the
    /// connection's place until it is dropped (when the connection ends).
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Admitted, Refusal> {
        let ip = canonical_ip(peer);
        let client = client_of(ip);
        let open = self.open.fetch_add(1, Relaxed);
        let mut admitted = Admitted {
            limits: self.clone(),
            ip: client,
            limited: false,
            tracked: false,
            stalled: None,
        };
        self.metrics.connections_open.fetch_add(1, Relaxed);
        if self.cfg.max_connections > 0 && open >= self.cfg.max_connections {
            Metrics::inc(&self.metrics.refused_global);
            return Err(Refusal::Global);
        }
        if self.bypasses(ip) {
            return Ok(admitted);
        }
        admitted.limited = self.rps > 0.0;
        if self.cfg.per_ip_connections == 0 {
            return Ok(admitted);
        }
        let cap = u32::try_from(self.cfg.per_ip_connections).unwrap_or(u32::MAX);
        let refused = self.with_client(client, |c| {
            if c.conns >= cap {
                return None;
            }
            c.conns += 1;
            Some(c.stalled.clone())
        });
        match refused {
            Some(None) => {
                Metrics::inc(&self.metrics.refused_per_ip);
                Err(Refusal::PerIp)
            }
            Some(Some(stalled)) => {
                admitted.tracked = true;
                admitted.stalled = (self.cfg.per_ip_stalled_bytes > 0).then_some(stalled);
                Ok(admitted)
            }
            // The table is full of connected clients: this one goes uncounted.
            None => Ok(admitted),
        }
    }

    /// Counts a pause of accepting: a viewer's descriptor was in the reserve kept for fills.
    pub fn paused_for_descriptors(&self) {
        Metrics::inc(&self.metrics.accept_paused_descriptors);
    }

    /// Takes one request token for `ip`; `Err(retry_after)` when its bucket is empty.
    pub fn take_request(&self, ip: IpAddr) -> Result<(), Duration> {
        let (rps, burst) = (self.rps, self.burst);
        let wait = self.with_client(ip, |c| {
            let now = Instant::now();
            let elapsed = now.saturating_duration_since(c.last).as_secs_f64();
            c.tokens = (c.tokens + elapsed * rps).min(burst);
            c.last = now;
            if c.tokens >= 1.0 {
                c.tokens -= 1.0;
                None
            } else {
                Some(Duration::from_secs_f64((1.0 - c.tokens) / rps))
            }
        });
        match wait.flatten() {
            Some(w) => {
                Metrics::inc(&self.metrics.rate_limited);
                Err(w)
            }
            None => Ok(()),
        }
    }

    /// Runs `f` on `ip`'s entry, making one (a full bucket) if needed; `None` when the table has
    /// no room for it.
    fn with_client<T>(&self, ip: IpAddr, f: impl FnOnce(&mut Client) -> T) -> Option<T> {
        let mut shard = self.shards[self.shard_of(ip)].lock();
        if let Some(c) = shard.get_mut(&ip) {
            return Some(f(c));
        }
        if shard.len() >= self.per_shard && !self.make_room(&mut shard) {
            Metrics::inc(&self.metrics.table_full);
            return None;
        }
        let c = shard.entry(ip).or_insert_with(|| Client {
            conns: 0,
            tokens: self.burst,
            last: Instant::now(),
            stalled: Arc::default(),
        });
        self.metrics.tracked_ips.fetch_add(1, Relaxed);
        Some(f(c))
    }

    /// Frees at least one slot in a full shard: first every entry that is idle (no connection,
    /// bucket refilled), else the least recently seen entry without a connection.
    fn make_room(&self, shard: &mut HashMap<IpAddr, Client>) -> bool {
        let now = Instant::now();
        let before = shard.len();
        shard.retain(|_, c| c.conns > 0 || now.saturating_duration_since(c.last) < self.refill);
        if shard.len() == before {
            let oldest = shard
                .iter()
                .filter(|(_, c)| c.conns == 0)
                .min_by_key(|(_, c)| c.last)
                .map(|(ip, _)| *ip);
            if let Some(ip) = oldest {
                shard.remove(&ip);
            }
        }
        let freed = before - shard.len();
        self.metrics.tracked_ips.fetch_sub(freed as u64, Relaxed);
        freed > 0
    }

    fn release(&self, ip: IpAddr) {
        let mut shard = self.shards[self.shard_of(ip)].lock();
        if let Some(c) = shard.get_mut(&ip) {
            c.conns = c.conns.saturating_sub(1);
            // Without a rate limit the entry only counted connections: it is done.
            if c.conns == 0 && self.rps == 0.0 {
                shard.remove(&ip);
                self.metrics.tracked_ips.fetch_sub(1, Relaxed);
            }
        }
    }
}

/// 403 for a viewer address a route's `allow_ips` / `deny_ips` refuses.
pub fn ip_denied(_cdn_id: &str) -> Response<Body> {
    let mut r = crate::http::response::plain(
        StatusCode::FORBIDDEN,
        Bytes::from_static(b"vedge: this address may not use this route\n"),
    );
    stamp(
        &mut r,
        CacheInfo {
            status: CacheStatus::Bypass,
            // Generated here, not by any cache: no Cache-Status member (RFC 9211 §2).
            cache_status: String::new(),
            age: None,
        },
    );
    r
}

/// The client `ip` is counted as: itself for IPv4 (IPv4-mapped included), its /64 for IPv6
/// (the size of one subscriber's network, RFC 6177).
pub(crate) fn client_of(ip: IpAddr) -> IpAddr {
    // An IPv4 viewer of a dual-stack (`[::]`) listener arrives as `::ffff:a.b.c.d`, whose /64
    // is `::`: every IPv4 viewer would be one client.
    match crate::config::canonical_ip(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// A connection's place under the limits, released on drop.
pub struct Admitted {
    limits: Arc<Limits>,
    /// The client it counts for (`client_of`).
    ip: IpAddr,
    /// Its requests take rate tokens (not on the allowlist, a rate is configured).
    limited: bool,
    /// It counts in the per-address table.
    tracked: bool,
    /// The client's h2 responses (`limits.per_ip_stalled_bytes`): `None` when not capped
    /// (allowed, untracked, or no cap configured).
    stalled: Option<Arc<Stalled>>,
}

impl Admitted {
    /// Takes a request token; `Err(retry_after)` when the client is over its rate.
    pub fn take_request(&self) -> Result<(), Duration> {
        if !self.limited {
            return Ok(());
        }
        self.limits.take_request(self.ip)
    }

    /// The client's h2 responses, for the connection's requests to join (`conn::InFlight`).
    pub fn stalled(&self) -> Option<&Arc<Stalled>> {
        self.stalled.as_ref()
    }

    /// Whether the client's stalled h2 responses hold more than `limits.per_ip_stalled_bytes`:
    /// its new requests wait until they drain.
    pub fn over_stalled_bytes(&self) -> bool {
        self.stalled
            .as_ref()
            .is_some_and(|s| s.exceeds(self.limits.cfg.per_ip_stalled_bytes))
    }
}

/// How long an h2 response waits for its viewer to take more before it counts as stalled: an
/// active download is polled again as soon as its window opens (within a round trip of the
/// viewer's last window update). Shorter lets fewer streams in before the cap applies (a client
/// sends at most `per_ip_rps` a second), longer spares viewers on slow links with small windows.
pub const STALLED_AFTER: Duration = Duration::from_millis(500);

/// One client's h2 responses, each with its body's length and since when it has waited for its
/// viewer (`conn::InFlight`). A body handed to the connection in part is a slice that keeps all
/// of it in memory, and one the RAM tier has let go is held by nothing else: a client that opens
/// streams and never reads them pins a body per stream.
#[derive(Default)]
pub struct Stalled {
    responses: Mutex<Vec<Weak<StalledResponse>>>,
}

/// One response of a [`Stalled`] client.
#[derive(Default)]
pub struct StalledResponse {
    pub len: AtomicU64,
    /// Milliseconds since `epoch_ms`'s start + 1 when it began to wait; 0 while polled.
    pub since: AtomicU64,
}

impl Stalled {
    /// Registers a response; it leaves when the returned handle is dropped.
    pub fn join(&self) -> Arc<StalledResponse> {
        let r = Arc::new(StalledResponse::default());
        let mut list = self.responses.lock();
        // Ended responses go when the list is full, before it grows: amortised constant work.
        if list.len() == list.capacity() {
            list.retain(|w| w.strong_count() > 0);
        }
        list.push(Arc::downgrade(&r));
        r
    }

    /// Whether the client's responses that have waited for it `STALLED_AFTER` or longer hold
    /// more than `cap` bytes. Stops at the first response past it; lengths come from origins'
    /// `Content-Length`, so they add up saturating. Ended responses leave the list in `join`.
    pub fn exceeds(&self, cap: u64) -> bool {
        let now = epoch_ms();
        let after = STALLED_AFTER.as_millis() as u64;
        let list = self.responses.lock();
        let mut held = 0u64;
        for r in list.iter().filter_map(Weak::upgrade) {
            let since = r.since.load(Relaxed);
            if since != 0 && now.saturating_sub(since - 1) >= after {
                held = held.saturating_add(r.len.load(Relaxed));
                if held > cap {
                    return true;
                }
            }
        }
        false
    }
}

/// Milliseconds since the first call (a process-wide clock for `StalledResponse::since`).
pub fn epoch_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.limits.open.fetch_sub(1, Relaxed);
        self.limits.metrics.connections_open.fetch_sub(1, Relaxed);
        if self.tracked {
            self.limits.release(self.ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cidr;

    fn limits(per_ip_connections: usize, rps: u32, burst: u32, table_size: u64) -> Arc<Limits> {
        Arc::new(Limits::new(
            LimitsConfig {
                max_connections: 3,
                per_ip_connections,
                per_ip_rps: rps,
                per_ip_burst: burst,
                allow: vec![Cidr::parse("10.0.0.0/8").expect("cidr")],
                table_size,
                per_ip_stalled_bytes: 0,
            },
            Arc::default(),
        ))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn which_shard_an_address_lands_in_is_not_known_before_start() {
        let (a, b) = (limits(2, 0, 1, 1 << 20), limits(2, 0, 1, 1 << 20));
        let addrs: Vec<IpAddr> = (0..64u16)
            .map(|i| IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, i, 0, 0, 0, 1)))
            .collect();
        let shards = |l: &Limits| addrs.iter().map(|&ip| l.shard_of(ip)).collect::<Vec<_>>();
        // 64 addresses in the same shards twice by chance: 1 in 64^64.
        assert_ne!(shards(&a), shards(&b), "shards keyed per start");
    }

    #[test]
    fn per_ip_and_global_connection_caps_release_on_drop() {
        let l = limits(2, 0, 1, 1 << 20);
        let a = l.admit(ip("192.0.2.1")).expect("first");
        let b = l
            .admit(ip("::ffff:192.0.2.1"))
            .expect("second, same client mapped");
        assert_eq!(l.admit(ip("192.0.2.1")).err(), Some(Refusal::PerIp));
        let c = l.admit(ip("192.0.2.2")).expect("another client");
        assert_eq!(l.admit(ip("192.0.2.3")).err(), Some(Refusal::Global));
        drop((a, b, c));
        assert_eq!(l.open.load(Relaxed), 0);
        assert_eq!(l.metrics.tracked_ips.load(Relaxed), 0);
        l.admit(ip("192.0.2.1")).expect("room again");
    }

    #[test]
    fn the_addresses_of_one_ipv6_64_are_one_client() {
        let l = limits(2, 0, 1, 1 << 20);
        let a = l.admit(ip("2001:db8:1:2::1")).expect("first");
        let b = l
            .admit(ip("2001:db8:1:2:ffff::7"))
            .expect("second, same /64");
        assert_eq!(
            l.admit(ip("2001:db8:1:2:dead:beef:0:1")).err(),
            Some(Refusal::PerIp),
            "a third address of the same /64 is over the per-client cap"
        );
        let c = l.admit(ip("2001:db8:1:3::1")).expect("another /64");
        drop((a, b, c));
        assert_eq!(l.metrics.tracked_ips.load(Relaxed), 0);

        let r = limits(0, 1, 2, 1 << 20);
        let a = r.admit(ip("2001:db8::1")).expect("admitted");
        let b = r.admit(ip("2001:db8::2")).expect("admitted");
        a.take_request().expect("within the burst");
        b.take_request().expect("within the burst");
        b.take_request()
            .expect_err("the /64 shares one bucket: over the rate");
    }

    #[test]
    fn the_bucket_allows_the_burst_then_asks_to_retry() {
        let l = limits(0, 1, 3, 1 << 20);
        let a = l.admit(ip("192.0.2.1")).expect("admitted");
        for _ in 0..3 {
            a.take_request().expect("within the burst");
        }
        let wait = a.take_request().expect_err("over the rate");
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        let allowed = l.admit(ip("10.1.2.3")).expect("allowlisted");
        for _ in 0..100 {
            allowed
                .take_request()
                .expect("allowlisted clients are not rate limited");
        }
    }

    #[test]
    fn the_table_stays_within_its_size() {
        let l = limits(1, 1, 1, 64 << 10);
        let cap = (64 << 10) / ENTRY_BYTES;
        for i in 0..10_000u32 {
            let _ = l.take_request(IpAddr::V4(std::net::Ipv4Addr::from(0xC000_0000 + i)));
        }
        let tracked: usize = l.shards.iter().map(|s| s.lock().len()).sum();
        assert!(tracked as u64 <= cap, "{tracked} entries > {cap}");
        assert_eq!(l.metrics.tracked_ips.load(Relaxed), tracked as u64);
    }
}
