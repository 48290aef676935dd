//! TCP socket buffers that cost memory only while they carry data.
//!
//! A smoltcp socket's buffers have a fixed capacity, chosen when the socket
//! is made; its window scale follows from the receive capacity, so a buffer
//! cannot grow later without breaking the connection. plebnet therefore
//! gives each socket buffers of its full size (the cap: the stack's
//! [`TcpBuffers`] or the socket's own) but carves them out of its own
//! anonymous mappings, where a page is resident only once written:
//!
//! * a connection that carries little touches few pages (smoltcp's ring
//!   starts again at offset 0 whenever it empties), a bulk transfer grows
//!   to the cap;
//! * a connection idle for a while (both buffers empty, nothing read or
//!   written by the application) gives its pages back to the kernel
//!   ([`BufferPool::discard`]);
//! * a closed connection gives them back when it reaches TIME-WAIT, and a
//!   removed socket's region goes back to its slab, pages discarded, for
//!   the next socket of that size.
//!
//! Regions live in slabs (one mapping holds several), so that thousands of
//! connections need few mappings and opening one needs no system call;
//! a slab whose regions are all free is unmapped, except one per size,
//! kept for the next connections.

#![allow(unsafe_code)]

use std::collections::BTreeSet;
use std::io;

use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};

use super::config::TcpBuffers;
use super::shards::Handle;
use super::tables::{FastMap, FastSet};
use super::tidy::Shrink;
use crate::sys::mapping::{Mapping, PAGE};

/// Bytes of address space one slab spans at most (it holds at least one
/// region however large).
const SLAB_BYTES: usize = 16 << 20;
/// Regions one slab holds at most.
const SLAB_REGIONS: usize = 64;

/// Where one socket's buffers live: its size class, slab and slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lease {
    sizes: TcpBuffers,
    slab: u32,
    slot: u32,
}

/// Every region of one pair of buffer sizes.
#[derive(Debug)]
struct Class {
    /// Page-rounded receive part, then the page-rounded send part.
    region: usize,
    rx_span: usize,
    per_slab: usize,
    slabs: Vec<Option<Slab>>,
    /// Slabs with a free slot, lowest first.
    with_room: BTreeSet<u32>,
}

#[derive(Debug)]
struct Slab {
    map: Mapping,
    free: Vec<u32>,
}

impl Slab {
    fn in_use(&self, per_slab: usize) -> usize {
        per_slab - self.free.len()
    }
}

impl Class {
    fn new(sizes: TcpBuffers) -> Self {
        let rx_span = sizes.rx.next_multiple_of(PAGE);
        let region = rx_span + sizes.tx.next_multiple_of(PAGE);
        let per_slab = (SLAB_BYTES / region).clamp(1, SLAB_REGIONS);
        Self { region, rx_span, per_slab, slabs: Vec::new(), with_room: BTreeSet::new() }
    }

    fn slab(&self, index: u32) -> &Slab {
        self.slabs[index as usize].as_ref().expect("lease of an unmapped slab")
    }

    /// A free slot: in the lowest slab with room, or in a new slab.
    fn take(&mut self) -> io::Result<(u32, u32)> {
        let index = match self.with_room.first() {
            Some(&i) => i,
            None => {
                let map = Mapping::new(self.region * self.per_slab)?;
                let slab = Slab { map, free: (0..self.per_slab as u32).rev().collect() };
                let i = match self.slabs.iter().position(Option::is_none) {
                    Some(i) => {
                        self.slabs[i] = Some(slab);
                        i
                    }
                    None => {
                        self.slabs.push(Some(slab));
                        self.slabs.len() - 1
                    }
                };
                self.with_room.insert(i as u32);
                i as u32
            }
        };
        let slab = self.slabs[index as usize].as_mut().expect("slab with room is mapped");
        let slot = slab.free.pop().expect("slab with room has a free slot");
        if slab.free.is_empty() {
            self.with_room.remove(&index);
        }
        Ok((index, slot))
    }

    /// Puts a slot back; a slab left empty is unmapped unless it is the
    /// only one with room.
    fn put(&mut self, index: u32, slot: u32) {
        let per_slab = self.per_slab;
        let slab = self.slabs[index as usize].as_mut().expect("lease of an unmapped slab");
        slab.free.push(slot);
        self.with_room.insert(index);
        if slab.in_use(per_slab) == 0 && self.with_room.len() > 1 {
            self.slabs[index as usize] = None;
            self.with_room.remove(&index);
        }
    }
}

/// The TCP buffers of one stack, by size.
#[derive(Debug, Default)]
pub(crate) struct BufferPool {
    classes: FastMap<TcpBuffers, Class>,
}

impl BufferPool {
    /// Buffers of `sizes` for a new socket, and the lease to give back when
    /// the socket is gone. The capacities are exactly `sizes`; no page is
    /// resident yet.
    pub(crate) fn lease(
        &mut self,
        sizes: TcpBuffers,
    ) -> io::Result<(Lease, tcp::SocketBuffer<'static>, tcp::SocketBuffer<'static>)> {
        let class = self.classes.entry(sizes).or_insert_with(|| Class::new(sizes));
        let (slab, slot) = class.take()?;
        let base = slot as usize * class.region;
        let map = &class.slab(slab).map;
        // SAFETY: the slot was free, so no other socket holds slices of its
        // region; the rx and tx ranges do not overlap (rx_span ≥ rx). The
        // slices end before the slab is unmapped: that happens only after
        // `give_back`, whose caller promises the socket is gone.
        let (rx, tx) = unsafe { (map.slice(base, sizes.rx), map.slice(base + class.rx_span, sizes.tx)) };
        Ok((Lease { sizes, slab, slot }, tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx)))
    }

    /// Gives the pages of a live socket's buffers back to the kernel; they
    /// read as zeros afterwards.
    ///
    /// # Safety
    /// The caller holds the socket exclusively during the call, and its
    /// buffers hold nothing anybody will read: both are empty, or the
    /// connection is over (TIME-WAIT, nobody to read what it received).
    pub(crate) unsafe fn discard(&self, lease: &Lease) {
        let class = &self.classes[&lease.sizes];
        // SAFETY: the region is this lease's, page-aligned and inside the
        // slab; the caller's promise covers the rest.
        unsafe { class.slab(lease.slab).map.discard(lease.slot as usize * class.region, class.region) };
    }

    /// Takes back the region of a socket that is gone: its pages are given
    /// back to the kernel and the slot serves the next socket of that size.
    ///
    /// # Safety
    /// The socket that held the lease's buffers has been dropped.
    pub(crate) unsafe fn give_back(&mut self, lease: Lease) {
        // SAFETY: with the socket dropped, nobody holds the region.
        unsafe { self.discard(&lease) };
        let class = self.classes.get_mut(&lease.sizes).expect("lease of an unknown size");
        class.put(lease.slab, lease.slot);
    }

    /// Bytes of buffer memory resident now (one `mincore(2)` per slab).
    pub(crate) fn resident_bytes(&self) -> usize {
        self.classes.values().flat_map(|c| c.slabs.iter().flatten()).map(|s| s.map.resident_bytes()).sum()
    }

    /// Address space mapped for buffers, in bytes (pages are resident only
    /// where written).
    #[cfg(test)]
    pub(crate) fn mapped_bytes(&self) -> usize {
        self.classes.values().flat_map(|c| c.slabs.iter().flatten()).map(|s| s.map.len()).sum()
    }
}

/// Which connections may hold resident buffer pages, and when to look
/// for idle ones among them.
///
/// A socket's buffers can only fill through the application: a write, or a
/// read of what arrived (data that arrives and is not read keeps the
/// receive buffer non-empty). So a socket the application did not touch
/// during a whole sweep interval, whose buffers are empty, holds nothing
/// anybody will read, and its pages can go. Only sockets touched since
/// their last release are visited; an idle stack has nothing to visit and
/// sets no timer.
#[derive(Debug, Default)]
pub(crate) struct IdleWatch {
    /// Touched by the application since the last sweep.
    touched: FastSet<Handle>,
    /// Touched before the last sweep and not released since.
    holding: FastSet<Handle>,
    next_sweep: Option<Instant>,
}

impl IdleWatch {
    /// The application moved data through `handle`'s buffers at `now`.
    pub(crate) fn touch(&mut self, handle: Handle, now: Instant, interval: Duration) {
        self.touched.insert(handle);
        self.next_sweep.get_or_insert(now + interval);
    }

    /// `handle`'s pages were released, or its socket is gone.
    pub(crate) fn forget(&mut self, handle: Handle) {
        self.touched.remove(&handle);
        self.holding.remove(&handle);
    }

    /// Gives back the sets' spare capacity (see [`Shrink`]).
    pub(crate) fn tidy(&mut self) {
        self.touched.shrink_sparse();
        self.holding.shrink_sparse();
    }

    /// When [`sweep`](Self::sweep) has work, if ever.
    pub(crate) fn next_sweep(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// At or after [`next_sweep`](Self::next_sweep): calls `release` for
    /// every socket untouched for a whole interval whose buffers `empty`
    /// says are empty, and forgets them.
    pub(crate) fn sweep(
        &mut self,
        now: Instant,
        interval: Duration,
        mut empty: impl FnMut(Handle) -> bool,
        mut release: impl FnMut(Handle),
    ) {
        if self.next_sweep.is_none_or(|t| t > now) {
            return;
        }
        let touched = &self.touched;
        self.holding.retain(|&h| {
            if touched.contains(&h) || !empty(h) {
                return true;
            }
            release(h);
            false
        });
        self.holding.extend(self.touched.drain());
        self.next_sweep = (!self.holding.is_empty()).then_some(now + interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZES: TcpBuffers = TcpBuffers { rx: 256 * 1024, tx: 100_000 };

    #[test]
    fn buffers_have_exactly_the_asked_capacity() {
        let mut pool = BufferPool::default();
        let (lease, rx, tx) = pool.lease(SIZES).unwrap();
        assert_eq!((rx.capacity(), tx.capacity()), (SIZES.rx, SIZES.tx));
        drop((rx, tx));
        // SAFETY: the buffers were dropped above.
        unsafe { pool.give_back(lease) };
    }

    #[test]
    fn slots_are_reused_and_empty_slabs_unmapped() {
        let mut pool = BufferPool::default();
        let per_slab = Class::new(SIZES).per_slab;
        let mut held = Vec::new();
        for _ in 0..per_slab * 3 {
            let (lease, rx, tx) = pool.lease(SIZES).unwrap();
            drop((rx, tx));
            held.push(lease);
        }
        let three = pool.mapped_bytes();
        assert_eq!(held.iter().map(|l| l.slab).max(), Some(2));
        for lease in held.drain(..) {
            // SAFETY: every socket buffer was dropped at lease time.
            unsafe { pool.give_back(lease) };
        }
        assert_eq!(pool.mapped_bytes(), three / 3, "one empty slab is kept, the others unmapped");
        let (lease, rx, tx) = pool.lease(SIZES).unwrap();
        drop((rx, tx));
        assert_eq!(pool.mapped_bytes(), three / 3, "the kept slab serves the next socket");
        // SAFETY: dropped above.
        unsafe { pool.give_back(lease) };
    }

    #[test]
    fn a_given_back_slot_serves_the_next_socket() {
        let mut pool = BufferPool::default();
        let (lease, mut rx, tx) = pool.lease(SIZES).unwrap();
        assert_eq!(rx.enqueue_slice(&[0xAB; 5000]), 5000);
        assert_eq!(pool.resident_bytes(), 2 * PAGE, "5000 bytes touch two pages");
        drop((rx, tx));
        // SAFETY: dropped above.
        unsafe { pool.give_back(lease) };
        assert_eq!(pool.resident_bytes(), 0, "giving back discards the pages");
        let (again, mut rx, tx) = pool.lease(SIZES).unwrap();
        assert_eq!(again, lease, "the same slot");
        let mut out = [1u8; 10];
        assert_eq!(rx.enqueue_slice(&[9; 10]), 10);
        assert_eq!(rx.dequeue_slice(&mut out), 10);
        assert_eq!(out, [9; 10]);
        drop((rx, tx));
        // SAFETY: dropped above.
        unsafe { pool.give_back(again) };
    }
}
