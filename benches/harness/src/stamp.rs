//! A client socket that records when a response's first byte reached this host, by the kernel's
//! receive timestamp (`SO_TIMESTAMPNS`), not when the client got round to reading it.
//!
//! On a small box the load generator shares the cores with the edge. Once hundreds of bodies
//! are streaming, a connection whose response head has arrived may wait tens of milliseconds
//! for the client's runtime to poll it, and a TTFB taken in user space then measures the client.
//! The kernel stamps each segment as it enters the receive path (on loopback, inside the edge's
//! send call), so "first byte at the viewer's host" can be read off the first segment of the
//! response whatever the client is doing. The bench reports both.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// The first read of a response takes at most this much, so it returns one segment (the one
/// holding the head's first bytes) and its timestamp is that segment's.
const FIRST_READ: usize = 256;

/// One exchange's two instants, in `CLOCK_REALTIME` nanoseconds (the kernel's stamp clock).
#[derive(Debug, Default)]
struct Stamps {
    armed: bool,
    sent: Option<i128>,
    first: Option<i128>,
}

/// Shared between the socket (which stamps) and the request (which reads the result).
#[derive(Debug, Default)]
pub struct Clock(Mutex<Stamps>);

impl Clock {
    /// Starts a new exchange: the next write is its request, the next read its first byte.
    pub fn arm(&self) {
        *self.0.lock() = Stamps {
            armed: true,
            ..Stamps::default()
        };
    }

    /// From the request's write to its response's first byte arriving, if both were seen.
    pub fn first_byte(&self) -> Option<Duration> {
        let s = self.0.lock();
        let ns = s.first? - s.sent?;
        Some(Duration::from_nanos(u64::try_from(ns).unwrap_or(0)))
    }
}

pub struct Stamped {
    inner: TcpStream,
    clock: Arc<Clock>,
}

impl Stamped {
    /// Wraps `inner` and turns on receive timestamps (without them the read time stands in).
    pub fn new(inner: TcpStream, clock: Arc<Clock>) -> Stamped {
        let on: libc::c_int = 1;
        // SAFETY: setsockopt on our socket with a pointer to a live c_int and its size.
        let rc = unsafe {
            libc::setsockopt(
                inner.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "no receive timestamps");
        }
        Stamped { inner, clock }
    }
}

fn realtime_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// `recvmsg` into `buf`; the byte count and the kernel's receive stamp of the (last) segment read.
fn recv_stamped(fd: i32, buf: &mut [u8]) -> io::Result<(usize, Option<i128>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one control message holding a timespec, aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid; it points at `iov` and `control`, both alive for the
    // call, with their true lengths.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: as above; the kernel writes at most the lengths given.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: the CMSG macros walk the control buffer the kernel filled, within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                stamp = Some(ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, stamp))
}

impl AsyncRead for Stamped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let waiting = {
            let s = self.clock.0.lock();
            s.sent.is_some() && s.first.is_none()
        };
        if !waiting {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let fd = self.inner.as_raw_fd();
        let room = buf.remaining().min(FIRST_READ);
        let dst = buf.initialize_unfilled_to(room);
        let (n, stamp) = loop {
            ready!(self.inner.poll_read_ready(cx))?;
            match self
                .inner
                .try_io(Interest::READABLE, || recv_stamped(fd, dst))
            {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => break r?,
            }
        };
        if n > 0 {
            self.clock.0.lock().first = Some(stamp.unwrap_or_else(realtime_ns));
        }
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Stamped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        let mut s = self.clock.0.lock();
        if s.armed && s.sent.is_none() && n > 0 {
            s.sent = Some(realtime_ns());
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_first_byte_is_stamped_when_it_arrives_not_when_it_is_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut req = [0u8; 4];
            s.read_exact(&mut req).await.expect("request");
            tokio::time::sleep(Duration::from_millis(50)).await;
            s.write_all(&[7u8; 1000]).await.expect("answer");
            s
        });
        let clock = Arc::new(Clock::default());
        let sock = TcpStream::connect(addr).await.expect("connect");
        let mut c = Stamped::new(sock, clock.clone());
        clock.arm();
        c.write_all(b"ping").await.expect("write");
        assert_eq!(clock.first_byte(), None, "nothing has arrived yet");
        // The answer arrives ~50 ms after the request; the client reads it 550 ms later still.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let mut got = vec![0u8; 1000];
        c.read_exact(&mut got).await.expect("read");
        assert!(got.iter().all(|&b| b == 7), "every byte read through");
        let t = clock.first_byte().expect("stamped");
        assert!(
            t >= Duration::from_millis(45) && t < Duration::from_millis(500),
            "stamped on arrival, not on read: {t:?}"
        );
        drop(server.await);
    }
}
