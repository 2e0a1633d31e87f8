//! Zero-copy sending, as one component: where large bodies are placed (`body`: anonymous pages,
//! huge pages from 1 MiB) and how the plain-TCP viewer socket sends them (`socket`: `vmsplice` +
//! `splice` through pooled pipes).
//!
//! `ZeroCopy` is the context both halves share: whether zero-copy is on (`server.zero_copy`),
//! the mapping and pipe-descriptor budgets, the registry of the bodies' addresses, the pipe pool
//! and the counters the admin listener reports. The edge makes one (`Edge::zero_copy`) and
//! hands it to whoever places or sends bodies; nothing here is a process global, so two edges in
//! one process (the tests) never see each other's bodies, budget or counters.

pub mod body;
pub mod socket;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};

pub use body::{footprint, Blank, Growing, Written, MIN_SIZE};
pub use socket::ZeroCopyStream;

/// One edge's zero-copy state. Bodies (`body::MemFile`) keep an `Arc` of it, so it outlives
/// every body registered in it.
pub struct ZeroCopy {
    enabled: bool,
    /// The descriptors splice pipes may hold (two each).
    fd_budget: usize,
    /// The mappings bodies may hold (one or two each, `body::mapping_cost`): by default half of
    /// `vm.max_map_count`, leaving the rest to the allocator, the store and thread stacks.
    map_budget: usize,
    /// Mappings bodies hold now, reserved before each is made (`body::Slot`), so concurrent
    /// fills never take the count past `map_budget`.
    maps: AtomicUsize,
    /// Bodies kept on the heap because a budget was spent (`vedge_zero_copy_fallbacks_total`).
    map_fallbacks: AtomicU64,
    /// Registered mappings: start address -> end address.
    registry: RwLock<BTreeMap<usize, usize>>,
    /// Bodies alive (`vedge_zero_copy_bodies`).
    live: AtomicUsize,
    /// Bytes sent with `vmsplice` + `splice` (`vedge_splice_bytes_total`).
    splice_bytes: AtomicU64,
    /// Pipes alive (two descriptors each). Shared with each pipe, which decrements it on drop:
    /// a pipe idling in `pipe_pool` holding an `Arc<ZeroCopy>` would keep the context alive
    /// forever.
    pipes: Arc<AtomicUsize>,
    /// Empty pipes waiting for the next connection that needs one (`socket`).
    pipe_pool: Mutex<Vec<socket::Pipe>>,
}

impl ZeroCopy {
    /// A context with zero-copy `enabled` or not (config `server.zero_copy`) and the default
    /// budgets. Off, every body stays on the heap and the socket wrapper finds nothing to send
    /// without a copy.
    pub fn new(enabled: bool) -> Arc<ZeroCopy> {
        ZeroCopy::with_budgets(enabled, 0, 0)
    }

    /// Like `new`, with the mapping and descriptor budgets set (`server.zero_copy_map_budget`,
    /// `server.zero_copy_fd_budget`); 0 takes the default (half of `vm.max_map_count`, a quarter
    /// of `RLIMIT_NOFILE`). A budget is never raised past its default: the kernel limits are
    /// what it protects.
    pub fn with_budgets(enabled: bool, maps: usize, fds: usize) -> Arc<ZeroCopy> {
        let pick = |set: usize, default: usize| if set == 0 { default } else { set.min(default) };
        Arc::new(ZeroCopy {
            enabled,
            fd_budget: pick(fds, fd_budget_from_rlimit()),
            map_budget: pick(maps, map_budget_from_sysctl()),
            maps: AtomicUsize::new(0),
            map_fallbacks: AtomicU64::new(0),
            registry: RwLock::new(BTreeMap::new()),
            live: AtomicUsize::new(0),
            splice_bytes: AtomicU64::new(0),
            pipes: Arc::new(AtomicUsize::new(0)),
            pipe_pool: Mutex::new(Vec::new()),
        })
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The descriptors splice pipes may hold: a quarter of the open-file limit unless configured
    /// lower.
    pub fn fd_budget(&self) -> usize {
        self.fd_budget
    }

    /// The mappings zero-copy bodies may hold: half of `vm.max_map_count` unless configured
    /// lower.
    pub fn map_budget(&self) -> usize {
        self.map_budget
    }

    /// The mappings zero-copy bodies hold now (`vedge_zero_copy_mappings`); never above
    /// `map_budget`.
    pub fn mappings(&self) -> usize {
        self.maps.load(Relaxed)
    }

    /// Large bodies kept on the heap because the mapping budget was spent.
    pub fn fallbacks(&self) -> u64 {
        self.map_fallbacks.load(Relaxed)
    }

    /// How many zero-copy bodies are alive (`vedge_zero_copy_bodies`).
    pub fn live(&self) -> usize {
        self.live.load(Relaxed)
    }

    /// Bytes sent from anonymous-page bodies with `vmsplice` + `splice` since this context was
    /// made.
    pub fn splice_bytes(&self) -> u64 {
        self.splice_bytes.load(Relaxed)
    }

    /// Pipes alive: lent to a connection that is sending a body from anonymous pages, or idle in
    /// the pool.
    pub fn pipes(&self) -> usize {
        self.pipes.load(Relaxed)
    }
}

/// A quarter of the soft open-file limit (at most 65,536). The limit is process-wide, read once
/// per context: two edges in one process (tests only) each budget the same quarter, which a
/// test never comes near.
fn fd_budget_from_rlimit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur as usize
    } else {
        1024
    };
    (soft / 4).min(1 << 16)
}

/// Half of `vm.max_map_count` (read once per context; the kernel's default is 65,530). A
/// process past the limit gets ENOMEM from every mmap, the allocator's included.
fn map_budget_from_sysctl() -> usize {
    let max = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(65_530);
    max / 2
}
