//! Large buffers used again instead of freed.
//!
//! What a bulk transfer allocates per run (a frame read off the stream, a run of pages read out
//! of the region) is about 1 MiB, and a fresh allocation of that size is fresh memory: glibc
//! gives freed heap memory above its trim threshold back to the kernel, which then faults in
//! and zeroes every page of the next such buffer on its first write. In `touch.sequential`
//! those faults were about a third of the page faults of the coordinator and as many again in
//! the processes, and keeping freed memory instead (`GLIBC_TUNABLES` with a 1 GiB trim
//! threshold, five interleaved runs) took the figure from 329-394 to 386-448 MB/s.
//!
//! [`take`] hands out an empty buffer of [`BUFFER`] bytes' room, one kept from before if there
//! is one; [`share`] makes it shared bytes that put the buffer back when their last slice is
//! dropped (on whatever thread that happens). At most [`KEEP`] buffers are kept; [`trim`]
//! frees them all (the coordinator when a session ends, a process when it detaches), so an idle
//! process holds none. The process has one [`Pool`], [`POOL`], which these functions use.

use std::sync::{Mutex, PoisonError};

use bytes::Bytes;

use crate::page_data::PageData;

/// The room of every kept buffer: the largest frame, its length prefix included.
pub const BUFFER: usize = crate::frame::HEADER_LEN + crate::frame::MAX_FRAME_LEN;

/// Most buffers kept (16 MiB).
pub const KEEP: usize = 16;

/// A set of kept buffers; the process has one, [`POOL`].
#[derive(Debug, Default)]
pub struct Pool {
    kept: Mutex<Vec<Vec<u8>>>,
}

/// The process's pool, which the free functions of this module use.
pub static POOL: Pool = Pool::new();

impl Pool {
    /// An empty pool.
    pub const fn new() -> Pool {
        Pool { kept: Mutex::new(Vec::new()) }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An empty buffer with room for [`BUFFER`] bytes: one used before if one is kept.
    pub fn take(&self) -> Vec<u8> {
        let reused = self.kept().pop();
        reused.unwrap_or_else(|| Vec::with_capacity(BUFFER))
    }

    /// `buf`'s bytes, shared; the buffer is kept for [`take`](Self::take) once the last slice
    /// is dropped (if it came from `take` and fewer than [`KEEP`] are kept).
    pub fn share(&'static self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Recycled { buf, pool: self })
    }

    /// Frees every kept buffer.
    pub fn trim(&self) {
        let all = std::mem::take(&mut *self.kept());
        drop(all);
    }

    /// How many buffers are kept now.
    pub fn kept_count(&self) -> usize {
        self.kept().len()
    }

    fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() != BUFFER {
            return;
        }
        buf.clear();
        let mut kept = self.kept();
        if kept.len() < KEEP {
            kept.push(buf);
        }
    }
}

/// [`Pool::take`] of [`POOL`].
pub fn take() -> Vec<u8> {
    POOL.take()
}

/// [`Pool::share`] of [`POOL`].
pub fn share(buf: Vec<u8>) -> Bytes {
    POOL.share(buf)
}

/// `buf`'s bytes, shared: kept in [`POOL`] afterwards if it came from [`take`].
pub fn bytes(buf: Vec<u8>) -> Bytes {
    if buf.capacity() == BUFFER {
        share(buf)
    } else {
        Bytes::from(buf)
    }
}

/// `buf` as page data: shared (and kept in [`POOL`] afterwards) if it came from [`take`], else
/// its own.
pub fn page_data(buf: Vec<u8>) -> PageData {
    if buf.capacity() == BUFFER {
        PageData::from(share(buf))
    } else {
        PageData::from(buf)
    }
}

/// [`Pool::trim`] of [`POOL`].
pub fn trim() {
    POOL.trim();
}

struct Recycled {
    buf: Vec<u8>,
    pool: &'static Pool,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_when_their_last_slice_is_dropped_and_trim_frees_them() {
        let pool: &'static Pool = Box::leak(Box::new(Pool::new()));
        let mut buf = pool.take();
        assert!(buf.capacity() >= BUFFER);
        buf.extend_from_slice(&[7u8; 8192]);
        let ptr = buf.as_ptr();
        let whole = pool.share(buf);
        let part = whole.slice(4096..8192);
        drop(whole);
        assert_eq!(pool.kept_count(), 0, "a slice still holds it");
        assert_eq!(part[0], 7);
        drop(part);
        assert_eq!(pool.kept_count(), 1);
        let again = pool.take();
        assert_eq!(again.as_ptr(), ptr, "the same memory is used again");
        assert!(again.is_empty());
        // Never more than KEEP.
        let many: Vec<Bytes> = (0..KEEP + 3).map(|_| pool.share(pool.take())).collect();
        drop(many);
        assert_eq!(pool.kept_count(), KEEP);
        pool.trim();
        assert_eq!(pool.kept_count(), 0);
        // A buffer of another size is not kept.
        drop(pool.share(vec![0u8; 4096]));
        assert_eq!(pool.kept_count(), 0);
    }

    #[test]
    fn page_data_of_a_taken_buffer_is_shared_and_of_any_other_its_own() {
        assert!(page_data(take()).is_shared());
        assert!(!page_data(vec![0u8; 4096]).is_shared());
        let own = vec![5u8; 4096];
        let at = own.as_ptr();
        assert_eq!(bytes(own).as_ptr(), at, "bytes of any other buffer are that buffer, not a copy");
    }
}
