//! A viewer TCP stream that sends memfd-backed bodies (`cache::memfile`) with `sendfile`.
//!
//! hyper writes a response as vectored writes of its header buffer and the body's `Bytes`. This
//! wrapper looks at each write: slices before the first memfd-backed slice go out with
//! `sendmsg(MSG_MORE)` (so the head and the first body bytes can share a segment), and a
//! memfd-backed slice goes out with `sendfile` from the memfd at the slice's offset, so the
//! kernel references the body's pages instead of copying them. Everything else is passed to the
//! `TcpStream` unchanged. Only the transport changes; the bytes on the wire are the same.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::cache::memfile;

/// Bytes sent with `sendfile` since start (the `vedge_sendfile_bytes_total` metric).
static SENT: AtomicU64 = AtomicU64::new(0);

/// Bytes sent with `sendfile` since the process started.
pub fn sendfile_bytes() -> u64 {
    SENT.load(Relaxed)
}

/// Slices shorter than this are never looked up (a lookup takes a read lock).
const LOOKUP_MIN: usize = 4096;

pub struct ZeroCopyStream {
    inner: TcpStream,
}

impl ZeroCopyStream {
    pub fn new(inner: TcpStream) -> ZeroCopyStream {
        ZeroCopyStream { inner }
    }

    /// Runs `op` on the socket once it is writable, retrying on `WouldBlock`.
    fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        mut op: impl FnMut(RawFd) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        let fd = self.inner.as_raw_fd();
        loop {
            ready!(self.inner.poll_write_ready(cx))?;
            match self.inner.try_io(Interest::WRITABLE, || op(fd)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }
}

fn file_slice(b: &IoSlice<'_>) -> Option<(RawFd, u64)> {
    if b.len() < LOOKUP_MIN {
        return None;
    }
    memfile::lookup(b.as_ptr(), b.len())
}

fn sendfile(sock: RawFd, file: RawFd, offset: u64, len: usize) -> io::Result<usize> {
    let mut off = offset as libc::off_t;
    // SAFETY: both descriptors are open (the caller holds the body that owns `file`); the
    // kernel reads at most `len` bytes of the file from `off`.
    let n = unsafe { libc::sendfile(sock, file, &mut off, len.min(0x7fff_f000)) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        SENT.fetch_add(n as u64, Relaxed);
        Ok(n as usize)
    }
}

fn sendmsg_more(sock: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: an all-zero msghdr is valid; the iovec array is `IoSlice`s, which are
    // ABI-compatible with `iovec`, and outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len() as _;
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_MORE | libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl AsyncRead for ZeroCopyStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ZeroCopyStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.len() >= LOOKUP_MIN {
            if let Some((file, off)) = memfile::lookup(buf.as_ptr(), buf.len()) {
                let len = buf.len();
                return self.poll_write_with(cx, |sock| sendfile(sock, file, off, len));
            }
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs
            .iter()
            .enumerate()
            .find_map(|(i, b)| file_slice(b).map(|f| (i, f)));
        match first {
            None => Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
            Some((0, (file, off))) => {
                let len = bufs[0].len();
                self.poll_write_with(cx, |sock| sendfile(sock, file, off, len))
            }
            Some((i, _)) => {
                let head = &bufs[..i];
                self.poll_write_with(cx, |sock| sendmsg_more(sock, head))
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
