//! The io_uring engine: one dedicated ring thread per store, and its failover to psync.
//!
//! The thread blocks in `submit_and_wait(1)` and never spins: callers hand it operations over a
//! channel and poke an eventfd whose pending read sits in the ring, so a new submission completes
//! that read and wakes the thread. Operations in flight are bounded (`MAX_INFLIGHT`) well below
//! the completion queue size (2 x `ENTRIES`), so the CQ cannot overflow. Short transfers and
//! EINTR/EAGAIN completions are resubmitted from where they stopped.
//!
//! Buffer ownership: once an operation's entry is pushed to the submission queue its slot is
//! marked `in_kernel` until the completion is reaped, and only then is the buffer handed back or
//! freed. That holds on every way out:
//! - `io_uring_enter` failing with EINTR is retried; EAGAIN/EBUSY reap what completed and retry
//!   (backing off 1 ms when nothing did), at most `MAX_BUSY_RETRIES` times in a row.
//! - Any other submit error fails the ring: no operation enters it again, everything the kernel
//!   holds is cancelled (IORING_OP_ASYNC_CANCEL) and its completion awaited, for at most
//!   `DRAIN_LIMIT`. Buffers still held then are leaked on purpose (never freed: the kernel may
//!   still write them) and their callers get an error.
//! - Stop (the engine dropped) waits for every operation, then cancels the pending eventfd read
//!   the same way before its buffer goes.
//! - A panic unwinding the thread leaks whatever the kernel holds (`Drop for RingThread`).
//!
//! After a ring failure the engine fails over to a psync pool on the same descriptor rather than
//! failing the store: psync gives the same whole-buffer semantics on the same file, so the store
//! keeps serving and writing, which an edge would otherwise lose until a restart (and a restart
//! gets a fresh ring). Cancelled or unsubmitted operations are re-run there from the start
//! (positional reads and writes are idempotent). The error is logged once, with the errno, and
//! `stats().engine` reports psync from then on. Only if psync cannot start either (no thread
//! could be spawned) does every operation fail, with an error saying so.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering::Relaxed};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::psync::PsyncEngine;
use super::{EngineKind, IoEngine, Op, OpKind, OwnedFile, RingFailure, PSYNC_THREADS};
use crate::buf::AlignedBuf;

const ENTRIES: u32 = 128;
const MAX_INFLIGHT: usize = 64;
/// user_data of the eventfd read, of cancel requests and of the drain's timer; slots are small.
const WAKE: u64 = u64::MAX;
const CANCEL: u64 = u64::MAX - 1;
const TIMER: u64 = u64::MAX - 2;
/// Largest single SQE transfer; longer operations are split (the SQE length is a u32).
const MAX_CHUNK: usize = 1 << 30;
/// How long a failed (or stopping) ring waits for the kernel to complete or cancel what it holds
/// before leaking those buffers. Block devices time out commands after 30 s by default.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// Longest single wait while draining, so the limit is checked and late operations forwarded.
const DRAIN_TICK: Duration = Duration::from_millis(100);
/// Consecutive EAGAIN/EBUSY from `io_uring_enter` before the ring counts as failed.
const MAX_BUSY_RETRIES: u32 = 1000;
const BUSY_BACKOFF: Duration = Duration::from_millis(1);

enum Msg {
    Op(Op),
    Stop,
}

pub(crate) struct UringEngine {
    tx: mpsc::Sender<Msg>,
    efd: RawFd,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What `submit` (any thread) and the ring thread share.
struct Shared {
    /// Set once, by the ring thread, when the ring fails; from then on `submit` goes here.
    fallback: OnceLock<Fallback>,
    failure: Mutex<Option<RingFailure>>,
    /// Test hook (see `IoEngine::inject_submit_errno`); `u32::MAX` times means every one.
    inject_errno: AtomicI32,
    inject_times: AtomicU32,
    drain_limit: Duration,
}

enum Fallback {
    Psync(PsyncEngine),
    /// psync could not start either: every operation fails with this message.
    Dead(String),
}

impl Fallback {
    fn start(file: &Arc<OwnedFile>, cause: &io::Error) -> Self {
        match PsyncEngine::new(file.clone(), PSYNC_THREADS) {
            Ok(p) => Fallback::Psync(p),
            Err(e) => Fallback::Dead(format!(
                "io_uring failed ({cause}) and the psync fallback could not start ({e}); \
                 the store can do no I/O until restarted"
            )),
        }
    }

    fn submit(&self, op: Op) {
        match self {
            Fallback::Psync(p) => p.submit(op),
            Fallback::Dead(msg) => {
                let _ = op.done.send((op.buf, Err(io::Error::other(msg.clone()))));
            }
        }
    }
}

impl UringEngine {
    /// Creates the ring and checks it works with a NOP round trip, so `EngineChoice::Auto` can fall
    /// back to psync on any error (seccomp, old kernel, `io_uring_disabled`).
    pub(crate) fn new(file: Arc<OwnedFile>) -> io::Result<Self> {
        Self::with_drain_limit(file, DRAIN_LIMIT)
    }

    fn with_drain_limit(file: Arc<OwnedFile>, drain_limit: Duration) -> io::Result<Self> {
        let mut ring = IoUring::new(ENTRIES)?;
        let nop = opcode::Nop::new().build().user_data(1);
        // SAFETY: a NOP references no memory.
        unsafe { ring.submission().push(&nop) }
            .map_err(|_| io::Error::other("io_uring SQ full on probe"))?;
        ring.submit_and_wait(1)?;
        let probe = ring
            .completion()
            .next()
            .ok_or_else(|| io::Error::other("io_uring probe: no completion"))?;
        if probe.result() < 0 {
            return Err(io::Error::from_raw_os_error(-probe.result()));
        }
        // SAFETY: plain syscall.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        let shared = Arc::new(Shared {
            fallback: OnceLock::new(),
            failure: Mutex::new(None),
            inject_errno: AtomicI32::new(0),
            inject_times: AtomicU32::new(0),
            drain_limit,
        });
        let (tx, rx) = mpsc::channel();
        let thread_shared = shared.clone();
        let thread = thread::Builder::new()
            .name("vedge-uring".into())
            .spawn(move || RingThread::new(ring, file, efd, thread_shared, rx).run());
        match thread {
            Ok(t) => Ok(UringEngine {
                tx,
                efd,
                shared,
                thread: Some(t),
            }),
            Err(e) => {
                // SAFETY: we created it above and nobody else has it.
                unsafe { libc::close(efd) };
                Err(e)
            }
        }
    }

    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to our eventfd. A failure (counter overflow)
        // cannot leave the thread asleep: the counter is then non-zero, so its read completes.
        unsafe { libc::write(self.efd, (&one as *const u64).cast(), 8) };
    }
}

impl IoEngine for UringEngine {
    fn submit(&self, op: Op) {
        if let Some(fallback) = self.shared.fallback.get() {
            return fallback.submit(op);
        }
        // An op that races the failover lands in the channel; the ring thread forwards it.
        if self.tx.send(Msg::Op(op)).is_ok() {
            self.wake();
        }
    }

    fn kind(&self) -> EngineKind {
        match self.shared.fallback.get() {
            Some(Fallback::Psync(_)) => EngineKind::Psync,
            _ => EngineKind::Uring,
        }
    }

    fn inject_submit_errno(&self, errno: i32, times: u32) {
        self.shared.inject_errno.store(errno, Relaxed);
        self.shared.inject_times.store(times, Relaxed);
        self.wake();
    }

    fn ring_failure(&self) -> Option<RingFailure> {
        *self.shared.failure.lock()
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        self.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // SAFETY: the ring thread has exited; the eventfd is ours to close.
        unsafe { libc::close(self.efd) };
    }
}

/// One operation owned by the ring thread.
struct Slot {
    op: Op,
    /// Bytes already transferred; a short transfer is resubmitted from here.
    done: usize,
    /// Its entry is in the submission queue or the kernel and its completion not yet reaped:
    /// the kernel may read or write the buffer, which must stay put until then.
    in_kernel: bool,
    cancel_sent: bool,
}

/// What to do with an operation once the drain's bookkeeping is up to date.
enum After {
    Finish(Op, io::Result<()>),
    Redo(Op),
    /// Its buffer was leaked: the caller gets an empty buffer and this error.
    Abandon(oneshot::Sender<(AlignedBuf, io::Result<()>)>),
}

struct RingThread {
    // First field: dropped (ring fd closed) before anything below.
    ring: IoUring,
    file: Arc<OwnedFile>,
    efd: RawFd,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Msg>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// Occupied slots, in the kernel or waiting in `ready`.
    inflight: usize,
    /// Entries not yet pushed to the submission queue (it was full); not the kernel's.
    ready: VecDeque<squeue::Entry>,
    /// Target of the eventfd read; `None` once leaked.
    wake_buf: Option<Box<[u8; 8]>>,
    wake_in_kernel: bool,
    wake_cancel_sent: bool,
    /// The drain's timeout; the kernel copies it when it takes the entry.
    timer: Box<types::Timespec>,
    timer_in_kernel: bool,
    /// The kernel refused IORING_OP_TIMEOUT: the drain polls instead.
    timer_broken: bool,
    stopping: bool,
}

impl RingThread {
    fn new(
        ring: IoUring,
        file: Arc<OwnedFile>,
        efd: RawFd,
        shared: Arc<Shared>,
        rx: mpsc::Receiver<Msg>,
    ) -> Self {
        RingThread {
            ring,
            file,
            efd,
            shared,
            rx,
            slots: Vec::new(),
            free: Vec::new(),
            inflight: 0,
            ready: VecDeque::new(),
            wake_buf: Some(Box::new([0u8; 8])),
            wake_in_kernel: false,
            wake_cancel_sent: false,
            timer: Box::new(types::Timespec::new()),
            timer_in_kernel: false,
            timer_broken: false,
            stopping: false,
        }
    }

    fn run(mut self) {
        self.arm_wake();
        let mut busy = 0u32;
        loop {
            self.accept();
            if self.stopping && self.inflight == 0 {
                break;
            }
            self.push_ready();
            match self.enter() {
                Ok(()) => busy = 0,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY))
                        && busy < MAX_BUSY_RETRIES =>
                {
                    // The kernel is short of memory (EAGAIN) or has completions to post
                    // (EBUSY): reaping below frees room. Back off when there are none, so a
                    // persistent EAGAIN is neither a spin nor an instant failure.
                    busy += 1;
                    if self.ring.completion().is_empty() {
                        thread::sleep(BUSY_BACKOFF);
                    }
                }
                Err(e) => {
                    self.fail(e);
                    return;
                }
            }
            self.reap();
        }
        // Stopping with nothing in flight but the eventfd read: cancel it before its buffer goes.
        let deadline = Instant::now() + self.shared.drain_limit;
        self.drain(deadline);
    }

    fn arm_wake(&mut self) {
        if let Some(buf) = self.wake_buf.as_mut() {
            let e = opcode::Read::new(types::Fd(self.efd), buf.as_mut_ptr(), 8)
                .build()
                .user_data(WAKE);
            self.ready.push_back(e);
        }
    }

    /// Takes new operations off the channel, up to `MAX_INFLIGHT`.
    fn accept(&mut self) {
        while !self.stopping && self.inflight < MAX_INFLIGHT {
            match self.rx.try_recv() {
                Ok(Msg::Op(op)) => {
                    if op.kind != OpKind::Sync && total_len(&op) == 0 {
                        let _ = op.done.send((op.buf, Ok(())));
                        continue;
                    }
                    let slot = self.free.pop().unwrap_or_else(|| {
                        self.slots.push(None);
                        self.slots.len() - 1
                    });
                    let mut s = Slot {
                        op,
                        done: 0,
                        in_kernel: false,
                        cancel_sent: false,
                    };
                    self.ready.push_back(sqe_for(self.file.fd, slot, &mut s));
                    self.slots[slot] = Some(s);
                    self.inflight += 1;
                }
                Ok(Msg::Stop) | Err(mpsc::TryRecvError::Disconnected) => self.stopping = true,
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
    }

    /// Moves `ready` entries into the submission queue; each one's buffer is the kernel's from here.
    fn push_ready(&mut self) {
        let mut sq = self.ring.submission();
        while let Some(e) = self.ready.front() {
            // SAFETY: every buffer a queued entry points to is owned by `slots` (or is wake_buf)
            // and is neither freed nor handed back while its slot is `in_kernel`, which is set
            // right here and cleared only when the completion is reaped.
            if unsafe { sq.push(e) }.is_err() {
                break;
            }
            match e.get_user_data() {
                WAKE => self.wake_in_kernel = true,
                ud => {
                    if let Some(Some(s)) = self.slots.get_mut(ud as usize) {
                        s.in_kernel = true;
                    }
                }
            }
            self.ready.pop_front();
        }
    }

    fn ops_in_kernel(&self) -> bool {
        self.slots.iter().flatten().any(|s| s.in_kernel)
    }

    /// The injected errno if the hook is armed (and, when `need_ops`, an operation is in flight).
    fn injected(&self, need_ops: bool) -> Option<i32> {
        let times = self.shared.inject_times.load(Relaxed);
        if times == 0 || (need_ops && !self.ops_in_kernel()) {
            return None;
        }
        if times != u32::MAX {
            self.shared.inject_times.store(times - 1, Relaxed);
        }
        Some(self.shared.inject_errno.load(Relaxed))
    }

    /// `submit_and_wait(1)`. An injected failure first lets the kernel take the queued entries,
    /// as a failing `io_uring_enter` may have done, then reports the error instead of waiting.
    fn enter(&mut self) -> io::Result<()> {
        if let Some(errno) = self.injected(true) {
            self.ring.submit()?;
            return Err(io::Error::from_raw_os_error(errno));
        }
        self.ring.submit_and_wait(1).map(drop)
    }

    fn reap(&mut self) {
        let cqes: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (ud, res) in cqes {
            match ud {
                WAKE => {
                    self.wake_in_kernel = false;
                    if !self.stopping {
                        self.arm_wake();
                    }
                }
                CANCEL | TIMER => {}
                _ => {
                    let slot = ud as usize;
                    let Some(mut s) = self.slots.get_mut(slot).and_then(Option::take) else {
                        continue;
                    };
                    s.in_kernel = false;
                    match outcome(&mut s, res) {
                        None => {
                            self.ready.push_back(sqe_for(self.file.fd, slot, &mut s));
                            self.slots[slot] = Some(s);
                        }
                        Some(r) => {
                            finish(s.op, r);
                            self.free.push(slot);
                            self.inflight -= 1;
                        }
                    }
                }
            }
        }
    }

    /// The ring is broken: switch new work to psync, then cancel and reap (or leak) what the
    /// kernel holds, then keep forwarding operations that raced the switch until stopped.
    fn fail(&mut self, cause: io::Error) {
        let errno = cause.raw_os_error().unwrap_or(0);
        let in_flight = self.slots.iter().flatten().filter(|s| s.in_kernel).count() as u64;
        let fallback = Fallback::start(&self.file, &cause);
        match &fallback {
            Fallback::Psync(_) => tracing::error!(
                errno,
                error = %cause,
                in_flight,
                "io_uring submit failed: cancelling the operations in flight; this store now uses psync"
            ),
            Fallback::Dead(msg) => tracing::error!(errno, error = %cause, in_flight, "{msg}"),
        }
        *self.shared.failure.lock() = Some(RingFailure {
            errno,
            in_flight,
            ..RingFailure::default()
        });
        // The only place it is set, so this cannot fail.
        let _ = self.shared.fallback.set(fallback);
        // Entries not yet pushed never reached the kernel: run those operations on psync now.
        self.ready.clear();
        for i in 0..self.slots.len() {
            if self.slots[i].as_ref().is_some_and(|s| !s.in_kernel) {
                if let Some(s) = self.slots[i].take() {
                    self.free.push(i);
                    self.inflight -= 1;
                    self.redo(s.op);
                }
            }
        }
        let deadline = Instant::now() + self.shared.drain_limit;
        self.drain(deadline);
        // `submit` may have read an empty fallback just before it was set and sent its op here.
        // A blocking receive: the thread sleeps until one arrives or the engine stops.
        while !self.stopping {
            match self.rx.recv() {
                Ok(Msg::Op(op)) => self.redo(op),
                Ok(Msg::Stop) | Err(_) => self.stopping = true,
            }
        }
    }

    fn redo(&mut self, op: Op) {
        match self.shared.fallback.get() {
            Some(fallback) => {
                if let Some(f) = self.shared.failure.lock().as_mut() {
                    f.redone += 1;
                }
                fallback.submit(op);
            }
            None => {
                let _ = op
                    .done
                    .send((op.buf, Err(io::Error::other("I/O engine stopped"))));
            }
        }
    }

    fn anything_in_kernel(&self) -> bool {
        self.wake_in_kernel || self.ops_in_kernel()
    }

    /// Cancels everything the kernel holds and waits for each completion until `deadline`;
    /// whatever is still missing then is leaked, never freed. Every wait is bounded by
    /// `DRAIN_TICK` (a kernel timer, or a sleep when entering the ring fails).
    fn drain(&mut self, deadline: Instant) {
        let mut enter_error_logged = false;
        loop {
            if self.shared.fallback.get().is_some() {
                self.forward_new();
            }
            let mut after = self.reap_draining();
            let now = Instant::now();
            let finished = if !self.anything_in_kernel() {
                true
            } else if now >= deadline {
                after.extend(self.leak_in_kernel());
                true
            } else {
                false
            };
            if finished {
                if let Some(f) = self.shared.failure.lock().as_mut() {
                    f.drained = true;
                }
            }
            // Delivered after the accounting, so a caller that got its buffer back sees it counted.
            for a in after {
                match a {
                    After::Finish(op, r) => finish(op, r),
                    After::Redo(op) => self.redo(op),
                    After::Abandon(done) => {
                        let _ = done.send((
                            AlignedBuf::zeroed(0),
                            Err(abandoned(self.shared.drain_limit)),
                        ));
                    }
                }
            }
            if finished {
                return;
            }
            self.push_cancels();
            let tick = DRAIN_TICK.min(deadline - now);
            let timed = !self.timer_broken && self.push_timer(tick);
            let res = if self.injected(false).is_some() {
                Err(io::Error::from_raw_os_error(
                    self.shared.inject_errno.load(Relaxed),
                ))
            } else if timed {
                self.ring.submit_and_wait(1).map(drop)
            } else {
                self.ring.submit().map(drop)
            };
            match res {
                Ok(()) if timed => {}
                Ok(()) => thread::sleep(tick / 10),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => {
                    if !enter_error_logged {
                        enter_error_logged = true;
                        tracing::warn!(error = %e, "io_uring enter failed while draining; polling for completions");
                    }
                    thread::sleep(tick / 10);
                }
            }
        }
    }

    /// Operations sent to the ring thread after the failover go to the fallback.
    fn forward_new(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok(Msg::Op(op)) => self.redo(op),
                Ok(Msg::Stop) | Err(mpsc::TryRecvError::Disconnected) => {
                    self.stopping = true;
                    return;
                }
                Err(mpsc::TryRecvError::Empty) => return,
            }
        }
    }

    fn reap_draining(&mut self) -> Vec<After> {
        let cqes: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        let mut after = Vec::new();
        for (ud, res) in cqes {
            match ud {
                WAKE => self.wake_in_kernel = false,
                CANCEL => {}
                TIMER => {
                    self.timer_in_kernel = false;
                    if res != -libc::ETIME {
                        self.timer_broken = true;
                    }
                }
                _ => {
                    let slot = ud as usize;
                    let Some(mut s) = self.slots.get_mut(slot).and_then(Option::take) else {
                        continue;
                    };
                    self.free.push(slot);
                    self.inflight -= 1;
                    if let Some(f) = self.shared.failure.lock().as_mut() {
                        f.reaped += 1;
                    }
                    // Cancelled or cut short: the ring takes no more work, psync redoes it all.
                    after.push(if res == -libc::ECANCELED {
                        After::Redo(s.op)
                    } else {
                        match outcome(&mut s, res) {
                            None => After::Redo(s.op),
                            Some(r) => After::Finish(s.op, r),
                        }
                    });
                }
            }
        }
        after
    }

    fn push_cancels(&mut self) {
        let mut sq = self.ring.submission();
        let targets = self
            .slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| s.as_mut().map(|s| (i as u64, s)))
            .filter(|(_, s)| s.in_kernel && !s.cancel_sent)
            .map(|(i, s)| (i, &mut s.cancel_sent));
        let wake = (self.wake_in_kernel && !self.wake_cancel_sent)
            .then_some((WAKE, &mut self.wake_cancel_sent));
        for (target, sent) in targets.chain(wake) {
            let e = opcode::AsyncCancel::new(target).build().user_data(CANCEL);
            // SAFETY: a cancel request references no memory of ours.
            if unsafe { sq.push(&e) }.is_err() {
                // Submission queue full: the rest go next round.
                break;
            }
            *sent = true;
        }
    }

    /// Queues a timer that ends the next wait after `tick`; false if none could be queued.
    fn push_timer(&mut self, tick: Duration) -> bool {
        if self.timer_in_kernel {
            return true;
        }
        *self.timer = types::Timespec::from(tick);
        let e = opcode::Timeout::new(&*self.timer as *const types::Timespec)
            .build()
            .user_data(TIMER);
        // SAFETY: the timespec is boxed and lives as long as the ring thread; the kernel
        // copies it when it takes the entry.
        if unsafe { self.ring.submission().push(&e) }.is_err() {
            return false;
        }
        self.timer_in_kernel = true;
        true
    }

    /// Gives up on what the kernel still holds: its buffers are leaked, its callers told.
    fn leak_in_kernel(&mut self) -> Vec<After> {
        let mut after = Vec::new();
        for i in 0..self.slots.len() {
            if !self.slots[i].as_ref().is_some_and(|s| s.in_kernel) {
                continue;
            }
            if let Some(s) = self.slots[i].take() {
                let Op { buf, done, .. } = s.op;
                // The kernel may still write this memory: never free it.
                std::mem::forget(buf);
                after.push(After::Abandon(done));
                self.free.push(i);
                self.inflight -= 1;
            }
        }
        if self.wake_in_kernel {
            std::mem::forget(self.wake_buf.take());
            self.wake_in_kernel = false;
        }
        let leaked = after.len() as u64;
        if let Some(f) = self.shared.failure.lock().as_mut() {
            f.leaked += leaked;
        }
        tracing::error!(
            leaked,
            limit_s = self.shared.drain_limit.as_secs_f64(),
            "io_uring did not complete these operations in time; their buffers are leaked, \
             not freed, because the kernel may still write them, and their callers get an error"
        );
        after
    }
}

impl Drop for RingThread {
    fn drop(&mut self) {
        // Normally nothing is left by now. After a panic, whatever the kernel holds keeps its
        // memory forever rather than having it freed under a pending transfer.
        let stopped = || io::Error::other("I/O engine stopped");
        for s in self.slots.iter_mut().filter_map(Option::take) {
            let Op { buf, done, .. } = s.op;
            if s.in_kernel {
                std::mem::forget(buf);
                let _ = done.send((AlignedBuf::zeroed(0), Err(stopped())));
            } else {
                let _ = done.send((buf, Err(stopped())));
            }
        }
        if self.wake_in_kernel {
            std::mem::forget(self.wake_buf.take());
        }
    }
}

fn abandoned(limit: Duration) -> io::Error {
    io::Error::other(format!(
        "io_uring failed and the kernel did not complete this operation within {} s; \
         its buffer was abandoned",
        limit.as_secs()
    ))
}

fn sqe_for(fd: RawFd, slot: usize, s: &mut Slot) -> squeue::Entry {
    let op = &mut s.op;
    let offset = op.offset + s.done as u64;
    match op.kind {
        OpKind::Sync => opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(slot as u64),
        OpKind::Read => {
            let len = (op.buf.capacity() - s.done).min(MAX_CHUNK);
            // SAFETY (pointer arithmetic): done < capacity, so the pointer stays inside the buffer.
            let ptr = unsafe { op.buf.as_mut_ptr().add(s.done) };
            opcode::Read::new(types::Fd(fd), ptr, len as u32)
                .offset(offset)
                .build()
                .user_data(slot as u64)
        }
        OpKind::Write => {
            let data = op.buf.as_slice();
            let len = (data.len() - s.done).min(MAX_CHUNK);
            let ptr = data[s.done..].as_ptr();
            opcode::Write::new(types::Fd(fd), ptr, len as u32)
                .offset(offset)
                .build()
                .user_data(slot as u64)
        }
    }
}

fn total_len(op: &Op) -> usize {
    match op.kind {
        OpKind::Read => op.buf.capacity(),
        OpKind::Write => op.buf.as_slice().len(),
        OpKind::Sync => 0,
    }
}

/// What a completion means for its operation: `None` to resubmit the rest, else the result.
fn outcome(s: &mut Slot, res: i32) -> Option<io::Result<()>> {
    if res < 0 {
        let errno = -res;
        return if errno == libc::EINTR || errno == libc::EAGAIN {
            None
        } else {
            Some(Err(io::Error::from_raw_os_error(errno)))
        };
    }
    if s.op.kind == OpKind::Sync {
        return Some(Ok(()));
    }
    if res == 0 {
        return Some(Err(match s.op.kind {
            OpKind::Read => io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the store",
            ),
            _ => io::Error::new(io::ErrorKind::WriteZero, "device accepted no bytes"),
        }));
    }
    s.done += res as usize;
    (s.done >= total_len(&s.op)).then_some(Ok(()))
}

/// Hands a completed operation back to its caller.
fn finish(mut op: Op, r: io::Result<()>) {
    if r.is_ok() && op.kind == OpKind::Read {
        let n = op.buf.capacity();
        // SAFETY: the kernel reported all n bytes transferred into the buffer.
        unsafe { op.buf.set_filled(n) };
    }
    let _ = op.done.send((op.buf, r));
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::IntoRawFd;

    use super::*;

    /// A read that never completes on its own: nothing is ever written to this pipe.
    fn pipe() -> (RawFd, RawFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        (fds[0], fds[1])
    }

    fn engine(fd: RawFd, drain_limit: Duration) -> Option<UringEngine> {
        match UringEngine::with_drain_limit(Arc::new(OwnedFile { fd }), drain_limit) {
            Ok(e) => Some(e),
            Err(e) => {
                eprintln!("io_uring unavailable ({e}); skipped");
                None
            }
        }
    }

    fn read(e: &UringEngine, len: usize) -> (AlignedBuf, io::Result<()>) {
        let (tx, rx) = oneshot::channel();
        e.submit(Op {
            kind: OpKind::Read,
            offset: 0,
            buf: AlignedBuf::uninit(len),
            done: tx,
        });
        rx.blocking_recv().expect("every operation is answered")
    }

    const LEN: usize = 64 << 10;

    #[test]
    fn submit_failure_cancels_and_reaps_before_handing_the_buffer_back() {
        let (r, w) = pipe();
        let Some(e) = engine(r, Duration::from_secs(10)) else {
            return;
        };
        e.inject_submit_errno(libc::EIO, 1);
        let (buf, res) = read(&e, LEN);
        // Its own buffer, back only after the cancelled completion was reaped, then re-run on
        // psync, where pread on a pipe is ESPIPE.
        assert_eq!(buf.capacity(), LEN);
        assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::ESPIPE));
        let want = RingFailure {
            errno: libc::EIO,
            in_flight: 1,
            reaped: 1,
            leaked: 0,
            redone: 1,
            drained: true,
        };
        assert_eq!(e.ring_failure(), Some(want));
        assert_eq!(e.kind(), EngineKind::Psync);
        // New work goes straight to psync.
        let (buf, res) = read(&e, LEN);
        assert_eq!(buf.capacity(), LEN);
        assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::ESPIPE));
        assert_eq!(e.ring_failure(), Some(want));
        drop(e);
        // SAFETY: our write end.
        unsafe { libc::close(w) };
    }

    #[test]
    fn an_operation_the_kernel_never_completes_is_leaked_not_freed() {
        let (r, w) = pipe();
        let Some(e) = engine(r, Duration::from_millis(200)) else {
            return;
        };
        // Every enter fails, the cancels' included, so the read stays in the kernel.
        e.inject_submit_errno(libc::EFAULT, u32::MAX);
        let (buf, res) = read(&e, LEN);
        assert_ne!(
            buf.capacity(),
            LEN,
            "the kernel's buffer must not come back"
        );
        let err = res.unwrap_err();
        assert!(err.to_string().contains("abandoned"), "{err}");
        assert_eq!(
            e.ring_failure(),
            Some(RingFailure {
                errno: libc::EFAULT,
                in_flight: 1,
                reaped: 0,
                leaked: 1,
                redone: 0,
                drained: true,
            })
        );
        // Dropping joins the thread, which is blocked forwarding, not spinning.
        drop(e);
        // SAFETY: our write end.
        unsafe { libc::close(w) };
    }

    #[test]
    fn eintr_eagain_and_ebusy_are_retried_not_failures() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..LEN).map(|i| (i * 7 % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let Some(e) = engine(f.into_raw_fd(), Duration::from_secs(10)) else {
            return;
        };
        for errno in [libc::EINTR, libc::EAGAIN, libc::EBUSY] {
            e.inject_submit_errno(errno, 1);
            let (buf, res) = read(&e, LEN);
            res.unwrap();
            assert!(buf.as_slice() == &data[..], "bytes after {errno}");
        }
        assert_eq!(e.ring_failure(), None);
        assert_eq!(e.kind(), EngineKind::Uring);
    }
}
