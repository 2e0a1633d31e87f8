//! The io_uring engine: one dedicated ring thread per store.
//!
//! The thread blocks in `submit_and_wait(1)` and never spins: callers hand it operations over a
//! channel and poke an eventfd whose pending read sits in the ring, so a new submission completes
//! that read and wakes the thread. Operations in flight are bounded (`MAX_INFLIGHT`) well below
//! the completion queue size (2 x `ENTRIES`), so the CQ cannot overflow. Short transfers and
//! EINTR/EAGAIN are resubmitted from where they stopped. On drop the thread is told to stop,
//! finishes everything in flight, delivers the results and exits; the drop joins it.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};

use io_uring::{opcode, types, IoUring};

use super::{EngineKind, IoEngine, Op, OpKind, OwnedFile};

const ENTRIES: u32 = 128;
const MAX_INFLIGHT: usize = 64;
const WAKE: u64 = u64::MAX;
/// Largest single SQE transfer; longer operations are split (the SQE length is a u32).
const MAX_CHUNK: usize = 1 << 30;

enum Msg {
    Op(Op),
    Stop,
}

pub(crate) struct UringEngine {
    tx: mpsc::Sender<Msg>,
    efd: RawFd,
    thread: Option<JoinHandle<()>>,
}

struct InFlight {
    op: Op,
    done: usize,
}

impl UringEngine {
    /// Creates the ring and checks it works with a NOP round trip, so `EngineChoice::Auto` can fall
    /// back to psync on any error (seccomp, old kernel, `io_uring_disabled`).
    pub(crate) fn new(file: Arc<OwnedFile>) -> io::Result<Self> {
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
        let (tx, rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("vedge-uring".into())
            .spawn(move || ring_loop(ring, file, efd, rx));
        match thread {
            Ok(t) => Ok(UringEngine {
                tx,
                efd,
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
        if self.tx.send(Msg::Op(op)).is_ok() {
            self.wake();
        }
    }

    fn kind(&self) -> EngineKind {
        EngineKind::Uring
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

fn sqe_for(fd: RawFd, slot: usize, inf: &mut InFlight) -> io_uring::squeue::Entry {
    let op = &mut inf.op;
    let offset = op.offset + inf.done as u64;
    match op.kind {
        OpKind::Sync => opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(slot as u64),
        OpKind::Read => {
            let len = (op.buf.capacity() - inf.done).min(MAX_CHUNK);
            // SAFETY (pointer arithmetic): done < capacity, so the pointer stays inside the buffer.
            let ptr = unsafe { op.buf.as_mut_ptr().add(inf.done) };
            opcode::Read::new(types::Fd(fd), ptr, len as u32)
                .offset(offset)
                .build()
                .user_data(slot as u64)
        }
        OpKind::Write => {
            let data = op.buf.as_slice();
            let len = (data.len() - inf.done).min(MAX_CHUNK);
            let ptr = data[inf.done..].as_ptr();
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

fn ring_loop(mut ring: IoUring, file: Arc<OwnedFile>, efd: RawFd, rx: mpsc::Receiver<Msg>) {
    let fd = file.fd;
    // Lives until after the ring is dropped below: the kernel may hold the pending eventfd read.
    let mut wake_buf = Box::new([0u8; 8]);
    let mut slots: Vec<Option<InFlight>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut inflight = 0usize;
    let mut ready: VecDeque<io_uring::squeue::Entry> = VecDeque::new();
    let mut stopping = false;
    let arm = |buf: &mut [u8; 8]| {
        opcode::Read::new(types::Fd(efd), buf.as_mut_ptr(), 8)
            .build()
            .user_data(WAKE)
    };
    ready.push_back(arm(&mut wake_buf));

    loop {
        while !stopping && inflight < MAX_INFLIGHT {
            match rx.try_recv() {
                Ok(Msg::Op(op)) => {
                    if op.kind != OpKind::Sync && total_len(&op) == 0 {
                        let _ = op.done.send((op.buf, Ok(())));
                        continue;
                    }
                    let slot = free.pop().unwrap_or_else(|| {
                        slots.push(None);
                        slots.len() - 1
                    });
                    let mut inf = InFlight { op, done: 0 };
                    ready.push_back(sqe_for(fd, slot, &mut inf));
                    slots[slot] = Some(inf);
                    inflight += 1;
                }
                Ok(Msg::Stop) | Err(mpsc::TryRecvError::Disconnected) => stopping = true,
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        if stopping && inflight == 0 {
            break;
        }
        {
            let mut sq = ring.submission();
            while let Some(e) = ready.front() {
                // SAFETY: every buffer referenced by a queued SQE is owned by `slots` (or is
                // wake_buf) and stays put until its completion is reaped.
                if unsafe { sq.push(e) }.is_err() {
                    break;
                }
                ready.pop_front();
            }
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e)
                if e.raw_os_error() == Some(libc::EINTR)
                    || e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => {
                // The ring itself is broken: fail everything in flight and stop serving.
                tracing::error!(error = %e, "io_uring submit failed; failing in-flight operations");
                for inf in slots.iter_mut().filter_map(Option::take) {
                    let _ = inf
                        .op
                        .done
                        .send((inf.op.buf, Err(io::Error::new(e.kind(), e.to_string()))));
                }
                return;
            }
        }
        let cqes: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (ud, res) in cqes {
            if ud == WAKE {
                if !stopping {
                    ready.push_back(arm(&mut wake_buf));
                }
                continue;
            }
            let slot = ud as usize;
            let Some(mut inf) = slots.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            let outcome: Option<io::Result<()>> = if res < 0 {
                let errno = -res;
                if errno == libc::EINTR || errno == libc::EAGAIN {
                    None
                } else {
                    Some(Err(io::Error::from_raw_os_error(errno)))
                }
            } else if inf.op.kind == OpKind::Sync {
                Some(Ok(()))
            } else if res == 0 {
                Some(Err(match inf.op.kind {
                    OpKind::Read => io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "read past the end of the store",
                    ),
                    _ => io::Error::new(io::ErrorKind::WriteZero, "device accepted no bytes"),
                }))
            } else {
                inf.done += res as usize;
                if inf.done < total_len(&inf.op) {
                    None
                } else {
                    Some(Ok(()))
                }
            };
            match outcome {
                None => {
                    ready.push_back(sqe_for(fd, slot, &mut inf));
                    slots[slot] = Some(inf);
                }
                Some(r) => {
                    if r.is_ok() && inf.op.kind == OpKind::Read {
                        let n = inf.op.buf.capacity();
                        // SAFETY: the kernel reported all n bytes transferred into the buffer.
                        unsafe { inf.op.buf.set_filled(n) };
                    }
                    let _ = inf.op.done.send((inf.op.buf, r));
                    free.push(slot);
                    inflight -= 1;
                }
            }
        }
    }
    // Dropping the ring cancels the pending eventfd read before wake_buf goes away.
    drop(ring);
    drop(wake_buf);
    drop(file);
}
