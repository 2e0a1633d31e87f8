//! A viewer TCP stream that sends zero-copy bodies (`zerocopy::body`) with `vmsplice` + `splice`.
//!
//! hyper writes a response as vectored writes of its header buffer and the body's `Bytes`. This
//! wrapper looks at each write: slices before the first slice of a registered body go out with
//! `sendmsg(MSG_MORE)` (so the head and the first body bytes can share a segment), and a slice of
//! a registered body goes through a pipe: `vmsplice` puts references to its pages in the pipe and
//! `splice` moves them to the socket, so the kernel references the body's pages instead of
//! copying them. Everything else is passed to the `TcpStream` unchanged. Only the transport
//! changes; the bytes on the wire are the same.
//!
//! Bytes left in the pipe when the socket is full count as written; every later write, flush or
//! shutdown sends them first, so the order on the wire is kept. A connection holds its pipe only
//! while bytes are in it; empty pipes go back to the context's pool. Such a connection's send
//! buffer is raised (`server.send_buffer`), so the kernel holds a whole segment and vedge is not
//! woken to refill it.
//!
//! On drop of the stream, a pipe it still holds is closed with whatever was left in it (the
//! connection is gone; those bytes had nowhere to go). Nothing here waits on a timer: a stalled
//! viewer only leaves the socket unwritable, and the server's own timeouts end it.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use super::ZeroCopy;

/// What a connection's pipe is asked to hold: 128 pages per `vmsplice` + `splice` round.
const PIPE_SIZE: libc::c_int = 512 << 10;
/// A pipe smaller than this (the kernel's default) is not worth splicing through.
const MIN_PIPE_SIZE: libc::c_int = 64 << 10;

/// Why no pipe could be had.
enum NoPipe {
    /// Pipes hold their whole share of the descriptor budget; one may be free again soon.
    Budget,
    /// The kernel refused a pipe, or one big enough; this connection stops asking.
    Kernel,
}

/// A non-blocking pipe, the conduit between a body's pages and the socket.
pub(super) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// The context's count of pipes alive (`ZeroCopy::pipes`), decremented on drop.
    count: Arc<AtomicUsize>,
}

impl Pipe {
    /// An idle pipe from `zc`'s pool, else a new one.
    fn take(zc: &ZeroCopy) -> Result<Pipe, NoPipe> {
        if let Some(p) = zc.pipe_pool.lock().ok().and_then(|mut pool| pool.pop()) {
            return Ok(p);
        }
        Pipe::new(zc)
    }

    /// Puts an empty pipe back in `zc`'s pool (the caller has drained it). Empty pipes wait
    /// there for the next connection that needs one: a connection keeps a pipe only while bytes
    /// are in it, so pipes follow the connections sending large bodies at the moment, not every
    /// connection that ever did.
    fn give_back(self, zc: &ZeroCopy) {
        if let Ok(mut pool) = zc.pipe_pool.lock() {
            pool.push(self);
        }
    }

    /// A new pipe, unless pipes would take more than their share of the descriptor budget.
    fn new(zc: &ZeroCopy) -> Result<Pipe, NoPipe> {
        if zc.pipes.load(Relaxed) * 2 >= zc.fd_budget() / 2 {
            return Err(NoPipe::Budget);
        }
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(NoPipe::Kernel);
        }
        // SAFETY: both descriptors are fresh and ours.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A larger pipe means fewer rounds. The kernel may refuse the size (a
        // `fs.pipe-user-pages-hard` limit), and past `fs.pipe-user-pages-soft` an unprivileged
        // user's new pipes start with two pages, where two syscalls per 8 KiB cost more than
        // copying. A pipe left under the default 16 pages is not used (the connection copies).
        // SAFETY: fcntl on our descriptors.
        let size = unsafe {
            libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE);
            libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ)
        };
        if size < MIN_PIPE_SIZE {
            tracing::debug!(size, "pipe too small for splicing; copying instead");
            return Err(NoPipe::Kernel);
        }
        zc.pipes.fetch_add(1, Relaxed);
        Ok(Pipe {
            read,
            write,
            count: zc.pipes.clone(),
        })
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Relaxed);
    }
}

/// `net.core.wmem_max`, the most `SO_SNDBUF` may ask for; `None` if it cannot be read (the
/// send buffer is then left to the kernel). A machine-wide sysctl, read once per process: it is
/// not part of any edge's state, so it stays out of `ZeroCopy`.
fn wmem_max() -> Option<libc::c_int> {
    static MAX: std::sync::OnceLock<Option<libc::c_int>> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/core/wmem_max")
            .ok()?
            .trim()
            .parse()
            .ok()
    })
}

/// Slices shorter than this are never looked up (a lookup takes a read lock).
const LOOKUP_MIN: usize = 4096;

pub struct ZeroCopyStream {
    inner: TcpStream,
    /// Where this connection's bodies are registered, its pipes pooled and its bytes counted.
    zc: Arc<ZeroCopy>,
    /// Taken from the pool for a slice in anonymous pages, given back once empty.
    pipe: Option<Pipe>,
    /// Whether the kernel refused this connection a usable pipe (it copies from then on).
    no_pipe: bool,
    /// Bytes in the pipe, already reported written, not yet in the socket.
    in_pipe: usize,
    /// The send buffer to ask for once this connection sends a body from anonymous pages
    /// (config `server.send_buffer`; 0: the kernel's autotuning). A whole 4 MiB segment then
    /// fits in the socket: the kernel sends it as the viewer's window opens, instead of waking
    /// vedge to refill a buffer that autotuning keeps at a few hundred KiB on low-latency paths.
    /// The queued bytes are references to the body's pages, not copies. Side by side on 4 MiB
    /// hits (`wrk -t2 -c64 -d8s`, three alternating pairs), p99 went from 94-96 ms to 77-80 ms
    /// at the same req/s, with less edge CPU.
    send_buffer: libc::c_int,
    /// Whether the send buffer has been raised.
    sndbuf_raised: bool,
}

impl ZeroCopyStream {
    pub fn new(inner: TcpStream, send_buffer: usize, zc: Arc<ZeroCopy>) -> ZeroCopyStream {
        ZeroCopyStream {
            zc,
            send_buffer: libc::c_int::try_from(send_buffer).unwrap_or(libc::c_int::MAX),
            inner,
            pipe: None,
            no_pipe: false,
            in_pipe: 0,
            sndbuf_raised: send_buffer == 0,
        }
    }

    /// Raises the send buffer for large bodies, once per connection (`send_buffer`). Setting it
    /// turns the kernel's autotuning off and is capped at `net.core.wmem_max`, which many kernels
    /// leave at 208 KiB while autotuning may grow a buffer to 4 MiB: so it is only set when the
    /// capped size is larger than the buffer the socket has now. It never shrinks one.
    fn raise_sndbuf(&mut self) {
        self.sndbuf_raised = true;
        let Some(want) = wmem_max().map(|cap| cap.min(self.send_buffer)) else {
            return;
        };
        let fd = self.inner.as_raw_fd();
        let mut cur: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt/setsockopt on our socket with pointers to live c_ints and their sizes.
        unsafe {
            let got = libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&mut cur as *mut libc::c_int).cast(),
                &mut len,
            );
            // The kernel reports (and grants) twice the size asked for.
            if got == 0 && cur / 2 < want {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUF,
                    (&want as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }

    /// Moves whatever is left in the pipe into the socket; `Ready(Ok)` once the pipe is empty.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.in_pipe > 0 {
            let Some(pipe) = self.pipe.as_ref() else {
                return Poll::Ready(Err(io::Error::other("bytes in a pipe that is gone")));
            };
            let (from, n) = (pipe.read.as_raw_fd(), self.in_pipe);
            let sent = ready!(self.poll_write_with(cx, |sock| splice_out(from, sock, n)))?;
            if sent == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.zc.splice_bytes.fetch_add(sent as u64, Relaxed);
            self.in_pipe -= sent;
        }
        // Empty: another connection may use it until this one needs one again.
        if let Some(p) = self.pipe.take() {
            p.give_back(&self.zc);
        }
        Poll::Ready(Ok(()))
    }

    /// A pipe for this connection; `None` when none can be had.
    fn pipe(&mut self) -> Option<RawFd> {
        if self.pipe.is_none() && !self.no_pipe {
            match Pipe::take(&self.zc) {
                Ok(p) => self.pipe = Some(p),
                Err(NoPipe::Budget) => {}
                Err(NoPipe::Kernel) => self.no_pipe = true,
            }
        }
        self.pipe.as_ref().map(|p| p.write.as_raw_fd())
    }

    /// Sends `buf` (anonymous memory that is never rewritten) through the pipe: references to
    /// its pages go in, as many as the pipe holds, and out to the socket as far as it takes them.
    fn poll_splice(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // Wait for room in the socket first, so the pages wait in the pipe as briefly as possible
        // (and no pipe is held while the socket is full).
        ready!(self.inner.poll_write_ready(cx))?;
        if !self.sndbuf_raised {
            self.raise_sndbuf();
        }
        let Some(into) = self.pipe() else {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        };
        let iov = libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: the iovec describes `buf`, which the caller keeps alive for the call. The pipe
        // takes references to its pages; the body is never written again (`body`'s invariant),
        // so the bytes the socket sends later are the bytes here now.
        let n = unsafe { libc::vmsplice(into, &iov, 1, libc::SPLICE_F_NONBLOCK) };
        if n <= 0 {
            // The pipe refused (it is empty here, so this is not `WouldBlock`; a seccomp filter,
            // say): this connection copies from now on.
            self.no_pipe = true;
            if let Some(p) = self.pipe.take() {
                p.give_back(&self.zc);
            }
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        self.in_pipe = n as usize;
        match self.poll_drain(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // Pending: the rest stays in the pipe and goes first on the next call.
            _ => Poll::Ready(Ok(n as usize)),
        }
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

fn zero_copy_slice(zc: &ZeroCopy, b: &IoSlice<'_>) -> bool {
    b.len() >= LOOKUP_MIN && zc.registered(b.as_ptr(), b.len())
}

fn splice_out(pipe: RawFd, sock: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open (the caller owns the pipe and the socket); no offsets.
    let n = unsafe {
        libc::splice(
            pipe,
            std::ptr::null_mut(),
            sock,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
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
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        match bufs.iter().position(|b| zero_copy_slice(&this.zc, b)) {
            None => Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
            Some(0) => this.poll_splice(cx, &bufs[0]),
            Some(i) => {
                let head = &bufs[..i];
                this.poll_write_with(cx, |sock| sendmsg_more(sock, head))
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The socket's send buffer as the kernel reports it (twice what was asked for).
    fn sndbuf(s: &TcpStream) -> libc::c_int {
        let (mut v, mut l): (libc::c_int, libc::socklen_t) = (0, 4);
        // SAFETY: getsockopt into a live c_int of the size given.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&mut v as *mut libc::c_int).cast(),
                &mut l,
            )
        };
        assert_eq!(rc, 0);
        v
    }

    #[tokio::test]
    async fn a_body_in_anonymous_pages_is_spliced_whole_and_the_pipe_goes_back_empty() {
        let zc = ZeroCopy::new(true);
        let len = 3 << 20;
        let src: Vec<u8> = (0..len).map(|i| (i % 239) as u8).collect();
        let body = zc.concat(&[bytes::Bytes::copy_from_slice(&src)], len);
        assert!(zc.registered(body.as_ptr(), body.len()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let reader = tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let mut got = Vec::new();
            c.read_to_end(&mut got).await.expect("read");
            got
        });
        let (sock, _) = listener.accept().await.expect("accept");
        let buf_before = sndbuf(&sock);
        let mut stream = ZeroCopyStream::new(sock, 4 << 20, zc.clone());
        let before = zc.splice_bytes();
        stream.write_all(b"head\r\n").await.expect("head");
        stream.write_all(&body).await.expect("body");
        stream.flush().await.expect("flush");
        assert_eq!(stream.in_pipe, 0);
        assert!(
            stream.pipe.is_none(),
            "the drained pipe went back to the pool"
        );
        // The send buffer was raised for the large body, as far as `wmem_max` lets it.
        let after = sndbuf(&stream.inner);
        let want = wmem_max().map_or(0, |cap| 2 * cap.min(4 << 20));
        assert!(
            after >= buf_before.max(want),
            "send buffer {buf_before} -> {after} (asked for {want})"
        );
        stream.shutdown().await.expect("shutdown");
        drop(stream);
        let got = reader.await.expect("reader");
        assert_eq!(&got[..6], b"head\r\n");
        assert!(got[6..] == src[..], "the bytes after the head are the body");
        assert!(zc.splice_bytes() - before >= len as u64);
        assert_eq!(zc.pipes(), 1, "the one pipe idles in the pool");
    }

    #[tokio::test]
    async fn the_send_buffer_is_raised_but_never_lowered() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (sock, _) = listener.accept().await.expect("accept");
        let big: libc::c_int = 96 << 10;
        // SAFETY: setsockopt from a live c_int of the size given.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&big as *const libc::c_int).cast(),
                4,
            )
        };
        let before = sndbuf(&sock);
        let mut stream = ZeroCopyStream::new(sock, 16 << 10, ZeroCopy::new(true));
        stream.raise_sndbuf();
        assert_eq!(
            sndbuf(&stream.inner),
            before,
            "a smaller setting leaves the buffer alone"
        );
        assert!(
            ZeroCopyStream::new(stream.inner, 0, stream.zc).sndbuf_raised,
            "0: the kernel's autotuning"
        );
    }
}
