//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`, kernel 5.19): a pool of receive buffers the
//! kernel picks from when a multishot recv has data, so an idle session holds no receive buffer.
//!
//! Ownership: a buffer id belongs to the kernel from `recycle` (or construction) until a recv
//! completion names it; then it belongs to the ring, which reads it and hands it back with
//! `recycle`. The memory of both the entry ring and the buffers stays mapped and unmoved until
//! the `BufRing` is dropped, which the ring does only after the io_uring instance is closed.
//!
//! Incremental consumption (`IOU_PBUF_RING_INC`, 6.12): a receive takes only the bytes it brings,
//! at the point where the previous receive into the same buffer stopped, and the kernel keeps
//! the buffer (the completion says `IORING_CQE_F_BUF_MORE`) until it has no room left. Until then
//! only the bytes a completion named belong to the ring, to read; the buffer is the ring's to
//! recycle once a completion naming it comes without that flag. [`BufRing::received`] keeps
//! the place of each buffer and says which case a completion is.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

/// One registered buffer group.
pub struct BufRing {
    /// Start of the mmap'd entry array (page aligned, as the kernel requires).
    entries: *mut BufRingEntry,
    entries_len: usize,
    mask: u16,
    /// Our copy of the tail; published to the kernel by `commit`.
    tail: u16,
    group: u16,
    /// Start of the mmap'd buffer memory: `count * buf_size` bytes.
    memory: *mut u8,
    memory_len: usize,
    buf_size: usize,
    /// Buffers handed to the ring by completions and not yet recycled (for assertions and stats).
    out: usize,
    /// Registered with `IOU_PBUF_RING_INC`.
    incremental: bool,
    /// With incremental consumption: per buffer, how many of its bytes earlier completions
    /// named since it was last recycled (where the next completion's bytes start).
    filled: Box<[u32]>,
}

/// `IOU_PBUF_RING_INC` from the kernel's uapi (`io_uring.h`), 6.12.
const IOU_PBUF_RING_INC: u16 = 2;

// SAFETY: the raw pointers name memory owned exclusively by this value; a BufRing is moved to its
// ring thread before registration and only that thread touches it afterwards.
unsafe impl Send for BufRing {}

fn map(len: usize) -> io::Result<*mut u8> {
    // SAFETY: an anonymous private mapping with no address hint has no preconditions; the result
    // is checked for MAP_FAILED before use.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(ptr.cast())
}

impl BufRing {
    /// Maps `count` buffers of `buf_size` bytes (count a power of two, at most 32768, size at
    /// most 4 GiB) for group `group`, to be consumed incrementally if `incremental`. Nothing is
    /// registered yet: see [`BufRing::register`].
    pub fn new(count: u16, buf_size: usize, group: u16, incremental: bool) -> io::Result<BufRing> {
        if !count.is_power_of_two() || count > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer ring size must be a power of two up to 32768",
            ));
        }
        if u32::try_from(buf_size).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a provided buffer holds at most 4 GiB",
            ));
        }
        let entries_len = count as usize * std::mem::size_of::<BufRingEntry>();
        let entries = map(entries_len)?.cast::<BufRingEntry>();
        let memory_len = count as usize * buf_size;
        let memory = match map(memory_len) {
            Ok(m) => m,
            Err(e) => {
                // SAFETY: `entries` was mapped above with exactly this length and is not shared.
                unsafe { libc::munmap(entries.cast(), entries_len) };
                return Err(e);
            }
        };
        let mut ring = BufRing {
            entries,
            entries_len,
            mask: count - 1,
            tail: 0,
            group,
            memory,
            memory_len,
            buf_size,
            out: count as usize,
            incremental,
            filled: vec![0; if incremental { count as usize } else { 0 }].into_boxed_slice(),
        };
        for bid in 0..count {
            ring.recycle(bid);
        }
        ring.commit();
        Ok(ring)
    }

    /// Registers the ring with the kernel (5.19). EINVAL here on a kernel that should support it is
    /// a known distribution bug (Ubuntu 6.8.0-136+): the caller falls back rather than aborting.
    /// A kernel that refuses incremental consumption gets the ring registered without it
    /// ([`BufRing::incremental`] then says no).
    ///
    /// # Safety
    /// Once registered, the kernel writes received data into this ring's buffers until every
    /// recv naming its group has completed: the caller must keep this `BufRing` alive and
    /// unmoved-from (its mappings are freed on drop) until then, and until the io_uring instance
    /// is closed or the group unregistered.
    pub unsafe fn register(&mut self, submitter: &Submitter<'_>) -> io::Result<()> {
        let register = |flags| {
            // SAFETY: `entries` points at `mask + 1` page-aligned entries that stay mapped until
            // this BufRing is dropped, which the caller guarantees outlasts the kernel's use of
            // them.
            unsafe {
                submitter.register_buf_ring_with_flags(
                    self.entries as u64,
                    self.mask + 1,
                    self.group,
                    flags,
                )
            }
        };
        if self.incremental {
            match register(IOU_PBUF_RING_INC) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.incremental = false,
                result => return result,
            }
        }
        register(0)
    }

    /// Whether receives take only the bytes they bring (registered with `IOU_PBUF_RING_INC`).
    pub fn incremental(&self) -> bool {
        self.incremental
    }

    /// The buffer group id to name in recv submissions.
    pub fn group(&self) -> u16 {
        self.group
    }

    /// Size of each buffer in bytes.
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// Buffers currently held by the ring (taken by completions, not yet recycled).
    pub fn held(&self) -> usize {
        self.out
    }

    /// Takes note of a completion that named buffer `bid` with `len` bytes (`more`: it carried
    /// `IORING_CQE_F_BUF_MORE`). Returns where those bytes start in the buffer, and whether the
    /// buffer is now the ring's, to hand back with [`BufRing::recycle`] once read: always,
    /// unless the ring is consumed incrementally and the kernel keeps filling the buffer.
    pub fn received(&mut self, bid: u16, len: usize, more: bool) -> (usize, bool) {
        assert!(bid <= self.mask, "buffer id {bid} out of range");
        if !self.incremental {
            self.out += 1;
            return (0, true);
        }
        let filled = &mut self.filled[bid as usize];
        let start = *filled as usize;
        assert!(
            start + len <= self.buf_size,
            "completion of {len} bytes at {start} overruns buffer {bid}"
        );
        if more {
            // Fits: bounded by buf_size, which `new` keeps within u32.
            *filled += len as u32;
            (start, false)
        } else {
            self.out += 1;
            (start, true)
        }
    }

    /// The `len` bytes at `start` of buffer `bid`, as [`BufRing::received`] placed them.
    pub fn data(&self, bid: u16, start: usize, len: usize) -> &[u8] {
        assert!(bid <= self.mask, "buffer id {bid} out of range");
        assert!(
            start + len <= self.buf_size,
            "completion of {len} bytes at {start} exceeds the buffer size"
        );
        // SAFETY: bid is in range and start + len <= buf_size, so the slice lies inside
        // `memory`. The kernel wrote these bytes before posting the completion that named them
        // and does not write them again until we recycle the buffer, which needs `&mut self`
        // and so cannot overlap this borrow (with incremental consumption it writes only past
        // them meanwhile).
        unsafe {
            std::slice::from_raw_parts(self.memory.add(bid as usize * self.buf_size + start), len)
        }
    }

    /// Gives buffer `bid` back to the kernel; visible to it after the next [`BufRing::commit`].
    pub fn recycle(&mut self, bid: u16) {
        assert!(bid <= self.mask, "buffer id {bid} out of range");
        assert!(self.out > 0, "recycled more buffers than were taken");
        self.out -= 1;
        if self.incremental {
            self.filled[bid as usize] = 0;
        }
        let index = (self.tail & self.mask) as usize;
        // SAFETY: index <= mask, inside the mapped entry array. The kernel only reads entries
        // between its head and the published tail, and this slot is past the published tail.
        let entry = unsafe { &mut *self.entries.add(index) };
        entry.set_addr(self.memory as u64 + bid as u64 * self.buf_size as u64);
        entry.set_len(self.buf_size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes recycled buffers to the kernel in one store.
    pub fn commit(&mut self) {
        // SAFETY: `entries` is the base of the initialised entry array; the tail field overlays
        // the first entry's reserved field, which the kernel reads with acquire semantics, so a
        // release store through an AtomicU16 makes the entries written before it visible.
        unsafe {
            let tail = BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both regions were mapped in `new` with these lengths and nothing refers to them
        // any more: the owning ring closes its io_uring fd before dropping us.
        unsafe {
            libc::munmap(self.memory.cast(), self.memory_len);
            libc::munmap(self.entries.cast(), self.entries_len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_sizes() {
        assert!(BufRing::new(3, 16, 0, false).is_err());
        assert!(BufRing::new(0, 16, 0, false).is_err());
    }

    #[test]
    fn recycle_cycles_through_the_entries() {
        let mut ring = BufRing::new(4, 64, 1, false).unwrap();
        assert_eq!(ring.held(), 0);
        for round in 0..10u16 {
            let bid = round % 4;
            assert_eq!(ring.received(bid, 64, false), (0, true));
            assert_eq!(ring.data(bid, 0, 64).len(), 64);
            ring.recycle(bid);
            ring.commit();
        }
        assert_eq!(ring.held(), 0);
        assert_eq!(ring.group(), 1);
    }

    #[test]
    fn incremental_completions_follow_one_another_in_a_buffer() {
        let mut ring = BufRing::new(4, 64, 1, true).unwrap();
        // Three receives into buffer 2: the kernel keeps it after the first two.
        assert_eq!(ring.received(2, 10, true), (0, false));
        assert_eq!(ring.received(2, 20, true), (10, false));
        assert_eq!(ring.held(), 0);
        assert_eq!(ring.received(2, 34, false), (30, true));
        assert_eq!(ring.held(), 1);
        ring.recycle(2);
        ring.commit();
        // Recycled, it fills from its start again.
        assert_eq!(ring.received(2, 5, true), (0, false));
        assert_eq!(ring.received(1, 64, false), (0, true));
        ring.recycle(1);
        assert_eq!(ring.held(), 0);
    }

    #[test]
    #[should_panic(expected = "overruns buffer")]
    fn an_incremental_completion_past_the_buffer_is_caught() {
        let mut ring = BufRing::new(4, 64, 1, true).unwrap();
        ring.received(0, 60, true);
        ring.received(0, 5, true);
    }

    #[test]
    #[should_panic(expected = "recycled more buffers")]
    fn double_recycle_is_caught() {
        let mut ring = BufRing::new(4, 64, 1, false).unwrap();
        ring.recycle(0);
    }
}
