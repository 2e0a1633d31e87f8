//! The I/O boundary: one `IoEngine` trait, an io_uring engine and a portable pread/pwrite pool.
//!
//! Every engine takes ownership of the buffer for the duration of the operation and gives it back
//! through a tokio oneshot, so a cancelled caller (dropped future) can never leave the kernel
//! writing into freed memory. Engines finish short transfers themselves: a completion is either
//! the whole buffer or an error. The io_uring engine goes further: a buffer the kernel may still
//! write is never handed back or freed, even when the ring fails (see `uring.rs`).

pub(crate) mod psync;
pub(crate) mod uring;

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU32, Ordering};
use std::sync::Arc;

use tokio::sync::{oneshot, watch};

use crate::buf::AlignedBuf;

/// What an operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpKind {
    /// Fill the whole capacity of the buffer from `offset`.
    Read,
    /// Write the initialised bytes of the buffer at `offset`.
    Write,
    /// fdatasync the file.
    Sync,
}

/// Worker threads of the psync engine, and of the psync fallback an io_uring engine switches to
/// when its ring fails.
pub(crate) const PSYNC_THREADS: usize = 4;

pub(crate) struct Op {
    pub kind: OpKind,
    pub offset: u64,
    pub buf: AlignedBuf,
    pub done: oneshot::Sender<(AlignedBuf, io::Result<()>)>,
}

/// An engine moves whole buffers to and from one file descriptor.
pub(crate) trait IoEngine: Send + Sync + 'static {
    /// Queues `op`; the result arrives on `op.done`. Never blocks on the device.
    fn submit(&self, op: Op);
    fn kind(&self) -> EngineKind;
    /// Test hook: the next `times` ring submissions carrying an operation fail with `errno`
    /// (after the kernel took the entries, as a real failure may). Engines without a ring
    /// ignore it.
    fn inject_submit_errno(&self, _errno: i32, _times: u32) {}
    /// What happened to the operations in flight when the ring failed, if it did.
    fn ring_failure(&self) -> Option<RingFailure> {
        None
    }
}

/// Accounting of an io_uring failure (see `Store::ring_failure`): every operation the kernel
/// held when submit failed is either `reaped` (its completion arrived: delivered, or re-run on
/// psync) or `leaked` (never completed in time: its buffer is deliberately never freed).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingFailure {
    /// The errno `io_uring_enter` failed with.
    pub errno: i32,
    /// Operations submitted to the kernel whose completion had not been reaped at the failure.
    pub in_flight: u64,
    /// Of those, the ones whose completion was reaped before their buffer was let go.
    pub reaped: u64,
    /// Of those, the ones the kernel did not complete within the drain limit: buffer leaked,
    /// caller given an error.
    pub leaked: u64,
    /// Operations run on psync instead: cancelled or cut short in the kernel, queued but not
    /// yet submitted, or sent to the ring while it was being drained.
    pub redone: u64,
    /// The drain is over: `reaped + leaked == in_flight` from then on.
    pub drained: bool,
}

/// The engine actually in use (see [`crate::StoreStats::engine`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    Uring,
    Psync,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Uring => "io_uring",
            EngineKind::Psync => "psync",
        }
    }
}

/// A cheap handle with async helpers over a shared engine.
#[derive(Clone)]
pub(crate) struct Io {
    engine: Arc<dyn IoEngine>,
    /// Test hook: when non-zero, writes and syncs fail with this errno before reaching the
    /// engine (how the fault tests produce ENOSPC on any filesystem).
    fail_writes: Arc<AtomicI32>,
    /// Test hook: when `crash_errno` is non-zero, the next `writes_left` writes go through and
    /// then `fail_writes` is set to it (a device that stops taking writes at an exact point).
    writes_left: Arc<AtomicI64>,
    crash_errno: Arc<AtomicI32>,
    /// Test hook: the next `reads_to_fail` reads fail with `fail_reads` before reaching the
    /// engine (a device returning EIO for a while). Checked after the read gate, so reads held
    /// by `hold_reads` fail once let go.
    fail_reads: Arc<AtomicI32>,
    reads_to_fail: Arc<AtomicU32>,
    /// Test hook: while closed, reads wait before reaching the engine.
    gate: Arc<Gate>,
}

/// Test hook (`Store::hold_reads`, `Store::hold_writer`): while closed, whoever passes it
/// waits; counts the ones waiting.
pub(crate) struct Gate {
    closed: AtomicBool,
    open: watch::Sender<bool>,
    held: watch::Sender<usize>,
}

impl Gate {
    pub(crate) fn new() -> Gate {
        Gate {
            closed: AtomicBool::new(false),
            open: watch::Sender::new(true),
            held: watch::Sender::new(0),
        }
    }

    pub(crate) fn hold(&self, on: bool) {
        self.closed.store(on, Ordering::SeqCst);
        self.open.send_replace(!on);
    }

    /// Waits until at least `n` are held.
    pub(crate) async fn held(&self, n: usize) {
        let _ = self.held.subscribe().wait_for(|h| *h >= n).await;
    }

    /// Returns at once while open; while closed, once opened again.
    pub(crate) async fn pass(&self) {
        if !self.closed.load(Ordering::SeqCst) {
            return;
        }
        let mut open = self.open.subscribe();
        self.held.send_modify(|h| *h += 1);
        let _ = open.wait_for(|o| *o).await;
        self.held.send_modify(|h| *h -= 1);
    }
}

impl Io {
    pub(crate) fn new(engine: Arc<dyn IoEngine>) -> Self {
        Io {
            engine,
            fail_writes: Arc::new(AtomicI32::new(0)),
            writes_left: Arc::new(AtomicI64::new(0)),
            crash_errno: Arc::new(AtomicI32::new(0)),
            fail_reads: Arc::new(AtomicI32::new(0)),
            reads_to_fail: Arc::new(AtomicU32::new(0)),
            gate: Arc::new(Gate::new()),
        }
    }

    pub(crate) fn hold_reads(&self, on: bool) {
        self.gate.hold(on);
    }

    /// Waits until at least `n` reads are held.
    pub(crate) async fn reads_held(&self, n: usize) {
        self.gate.held(n).await;
    }

    pub(crate) fn inject_write_errno(&self, errno: i32) {
        self.crash_errno.store(0, Ordering::Relaxed);
        self.fail_writes.store(errno, Ordering::Relaxed);
    }

    pub(crate) fn inject_write_errno_after(&self, writes: u32, errno: i32) {
        self.fail_writes.store(0, Ordering::Relaxed);
        self.writes_left.store(i64::from(writes), Ordering::Relaxed);
        self.crash_errno.store(errno, Ordering::Relaxed);
    }

    pub(crate) fn inject_read_errno(&self, errno: i32, times: u32) {
        self.reads_to_fail.store(times, Ordering::SeqCst);
        self.fail_reads.store(errno, Ordering::SeqCst);
    }

    /// The injected errno this read fails with, if any (test hook only): each one uses up one
    /// of the reads `inject_read_errno` asked to fail.
    fn injected_read(&self) -> Option<io::Error> {
        let errno = self.fail_reads.load(Ordering::SeqCst);
        if errno == 0 {
            return None;
        }
        self.reads_to_fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .ok()
            .map(|_| io::Error::from_raw_os_error(errno))
    }

    /// The injected errno this write or sync fails with, if any (test hooks only).
    fn injected(&self, write: bool) -> Option<io::Error> {
        let crash = self.crash_errno.load(Ordering::Relaxed);
        if write && crash != 0 && self.writes_left.fetch_sub(1, Ordering::Relaxed) <= 0 {
            self.fail_writes.store(crash, Ordering::Relaxed);
        }
        match self.fail_writes.load(Ordering::Relaxed) {
            0 => None,
            errno => Some(io::Error::from_raw_os_error(errno)),
        }
    }

    pub(crate) fn kind(&self) -> EngineKind {
        self.engine.kind()
    }

    pub(crate) fn inject_submit_errno(&self, errno: i32, times: u32) {
        self.engine.inject_submit_errno(errno, times);
    }

    pub(crate) fn ring_failure(&self) -> Option<RingFailure> {
        self.engine.ring_failure()
    }

    async fn run(
        &self,
        kind: OpKind,
        offset: u64,
        buf: AlignedBuf,
    ) -> (AlignedBuf, io::Result<()>) {
        let (tx, rx) = oneshot::channel();
        self.engine.submit(Op {
            kind,
            offset,
            buf,
            done: tx,
        });
        match rx.await {
            Ok(r) => r,
            // The engine dropped the op: only happens when its thread is gone (shutdown or panic).
            Err(_) => (
                AlignedBuf::zeroed(0),
                Err(io::Error::other("I/O engine stopped")),
            ),
        }
    }

    /// Reads `len` bytes (rounded up to 4 KiB) at `offset`.
    pub(crate) async fn read(&self, offset: u64, len: usize) -> io::Result<AlignedBuf> {
        self.read_into(offset, AlignedBuf::uninit(len)).await
    }

    /// Reads `buf.capacity()` bytes at `offset` into `buf`.
    pub(crate) async fn read_into(&self, offset: u64, buf: AlignedBuf) -> io::Result<AlignedBuf> {
        self.gate.pass().await;
        if let Some(e) = self.injected_read() {
            return Err(e);
        }
        let (buf, res) = self.run(OpKind::Read, offset, buf).await;
        res.map(|()| buf)
    }

    /// Writes all of `buf` at `offset`.
    pub(crate) async fn write(&self, offset: u64, buf: AlignedBuf) -> io::Result<()> {
        if let Some(e) = self.injected(true) {
            return Err(e);
        }
        self.run(OpKind::Write, offset, buf).await.1
    }

    pub(crate) async fn sync(&self) -> io::Result<()> {
        if let Some(e) = self.injected(false) {
            return Err(e);
        }
        self.run(OpKind::Sync, 0, AlignedBuf::zeroed(0)).await.1
    }
}

/// The file descriptor engines operate on, closed when the last engine thread lets go of it.
pub(crate) struct OwnedFile {
    pub fd: RawFd,
}

impl Drop for OwnedFile {
    fn drop(&mut self) {
        // SAFETY: we own this descriptor (taken with into_raw_fd) and close it exactly once.
        unsafe { libc::close(self.fd) };
    }
}

/// Synchronous positional transfer of a whole buffer, retrying short transfers and EINTR.
/// Shared by the psync engine and by io_uring's fallback for odd cases.
pub(crate) fn blocking_op(
    fd: RawFd,
    kind: OpKind,
    offset: u64,
    buf: &mut AlignedBuf,
) -> io::Result<()> {
    match kind {
        OpKind::Sync => {
            // SAFETY: plain syscall on a descriptor we own.
            if unsafe { libc::fdatasync(fd) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
        OpKind::Read => {
            let total = buf.capacity();
            let mut done = 0usize;
            let base = buf.as_mut_ptr();
            while done < total {
                // SAFETY: base+done..base+total lies inside the buffer's allocation.
                let n = unsafe {
                    libc::pread(
                        fd,
                        base.add(done).cast(),
                        total - done,
                        (offset + done as u64) as libc::off_t,
                    )
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "read past the end of the store",
                    ));
                }
                done += n as usize;
            }
            // SAFETY: the kernel filled all `total` bytes.
            unsafe { buf.set_filled(total) };
            Ok(())
        }
        OpKind::Write => {
            let data = buf.as_slice();
            let mut done = 0usize;
            while done < data.len() {
                let rest = &data[done..];
                // SAFETY: rest is a valid slice for the duration of the call.
                let n = unsafe {
                    libc::pwrite(
                        fd,
                        rest.as_ptr().cast(),
                        rest.len(),
                        (offset + done as u64) as libc::off_t,
                    )
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "device accepted no bytes",
                    ));
                }
                done += n as usize;
            }
            Ok(())
        }
    }
}
