//! `ObjectBuf`: an object written in place. The caller fills the payload straight into the
//! aligned buffer the device write will use, so a pushed segment is copied once (socket or page
//! cache -> buffer) instead of twice (-> `Bytes` -> buffer).
//!
//! The header is encoded into the same buffer by the writer task once the object has a place
//! (it carries the region generation), in front of the payload; the payload's offset depends only
//! on the key, head, tags and declared length, all known when the buffer is made.

use std::io;
use std::os::fd::AsRawFd;

use bytes::Bytes;

use crate::buf::AlignedBuf;
use crate::config::Meta;
use crate::error::StoreError;
use crate::format;

/// A buffer for one object of a declared payload length, filled by the caller and then stored
/// with [`Store::insert_durable_buf`](crate::Store::insert_durable_buf).
pub struct ObjectBuf {
    pub(crate) buf: AlignedBuf,
    pub(crate) key: Bytes,
    pub(crate) meta: Meta,
    /// Header length: the payload starts here.
    pub(crate) hlen: usize,
    /// Declared payload length.
    pub(crate) len: usize,
}

impl std::fmt::Debug for ObjectBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectBuf")
            .field("key", &self.key)
            .field("len", &self.len)
            .field("filled", &self.filled())
            .finish()
    }
}

impl ObjectBuf {
    pub(crate) fn new(key: &[u8], meta: Meta, len: usize) -> Self {
        let tags = format::encode_tags(&meta.tags).len();
        let hlen = format::header_len(key.len(), meta.head.len(), tags, len as u64);
        let extent = crate::buf::round_up((hlen + len) as u64);
        let mut buf = AlignedBuf::uninit(extent as usize);
        // The header is written later; zero it now so the initialised prefix is contiguous
        // (header + payload so far) and `as_slice` can cover it.
        buf.zero(0, hlen);
        // SAFETY: 0..hlen was just zeroed.
        unsafe { buf.set_filled(hlen) };
        ObjectBuf {
            buf,
            key: Bytes::copy_from_slice(key),
            meta,
            hlen,
            len,
        }
    }

    /// Declared payload length.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Payload bytes filled so far.
    pub fn filled(&self) -> usize {
        self.buf.filled() - self.hlen
    }

    /// Payload bytes still expected.
    pub fn remaining(&self) -> usize {
        self.len - self.filled()
    }

    /// The payload filled so far.
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_slice()[self.hlen..]
    }

    /// Appends `data` to the payload. Refused (nothing appended) if it would exceed the declared
    /// length.
    pub fn put(&mut self, data: &[u8]) -> Result<(), StoreError> {
        if data.len() > self.remaining() {
            return Err(StoreError::Refused(
                "more bytes than the declared object length",
            ));
        }
        let at = self.buf.filled();
        self.buf.put(at, data);
        // SAFETY: `put` initialised at..at + data.len(), and everything before `at` already was.
        unsafe { self.buf.set_filled(at + data.len()) };
        Ok(())
    }

    /// Reads from `file` (at its current position) into the rest of the payload, once:
    /// returns the bytes read, 0 at end of file or when the payload is complete. The kernel
    /// copies straight into the buffer. Blocking: call it from a blocking thread.
    pub fn read_from(&mut self, file: &impl AsRawFd) -> io::Result<usize> {
        let want = self.remaining();
        if want == 0 {
            return Ok(0);
        }
        let at = self.buf.filled();
        loop {
            // SAFETY: at + want <= hlen + len <= the allocation's size; the kernel writes at
            // most `want` bytes there, and the buffer is exclusively ours (&mut self).
            let n =
                unsafe { libc::read(file.as_raw_fd(), self.buf.as_mut_ptr().add(at).cast(), want) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            // SAFETY: read(2) initialised at..at + n.
            unsafe { self.buf.set_filled(at + n) };
            return Ok(n);
        }
    }

    /// Whether every declared byte has been filled.
    pub fn is_complete(&self) -> bool {
        self.remaining() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::SystemTime;

    fn meta() -> Meta {
        Meta {
            head: Bytes::from_static(b"head"),
            stored_at: SystemTime::now(),
            expires_at: SystemTime::now(),
            tags: vec!["t".into()],
            pinned: true,
        }
    }

    #[test]
    fn put_refuses_more_than_declared() {
        let mut b = ObjectBuf::new(b"k", meta(), 10);
        b.put(b"12345").unwrap();
        assert!(b.put(b"123456").is_err());
        assert_eq!(b.filled(), 5);
        b.put(b"67890").unwrap();
        assert!(b.is_complete());
        assert_eq!(b.payload(), b"1234567890");
    }

    #[test]
    fn read_from_a_file_fills_the_payload() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        use std::io::Seek;
        f.rewind().unwrap();
        let mut b = ObjectBuf::new(b"key", meta(), data.len());
        while b.read_from(&f).unwrap() > 0 {}
        assert!(b.is_complete());
        assert_eq!(b.payload(), &data[..]);
        // A file longer than declared: reads stop at the declared length.
        f.rewind().unwrap();
        let mut short = ObjectBuf::new(b"key", meta(), 10);
        while short.read_from(&f).unwrap() > 0 {}
        assert_eq!(short.payload(), &data[..10]);
    }
}
