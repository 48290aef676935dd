//! The stack's sockets, split into small smoltcp socket sets ("shards").
//!
//! smoltcp walks every socket of the set it is given: to find the socket of
//! each arriving segment, on every egress pass and to compute its next
//! deadline. With thousands of connections in one set, every packet costs
//! thousands of socket checks. plebnet therefore keeps at most
//! [`SHARD_SIZE`] sockets per set; the driver routes each arriving packet
//! to the shard of its connection (plebnet's 4-tuple index) and runs
//! egress only for shards that have work: a packet arrived, an application
//! touched one of their sockets, or their own deadline passed.
//!
//! Non-TCP sockets (UDP, ICMP) live in shard 0, which gets every packet
//! that is not TCP or belongs to no known connection (smoltcp then answers
//! with RST, as it would with one set).
//!
//! The TCP sockets' buffers come from the stack's [`BufferPool`]; this is the
//! one place that hands them out and takes them back, so that no buffer
//! outlives its socket.

#![allow(unsafe_code)]

use std::collections::BTreeSet;
use std::io;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::{AnySocket, Socket, tcp};
use smoltcp::time::{Duration, Instant};

use super::buffers::{BufferPool, IdleWatch, Lease};
use super::config::TcpBuffers;
use super::tables::FastMap;
use super::tidy::Shrink;

/// Most sockets one shard holds (shard 0 may hold more: non-TCP sockets
/// are always put there).
pub(crate) const SHARD_SIZE: usize = 64;

/// A socket of the stack: its shard and its handle in that shard's set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Handle {
    shard: u32,
    inner: SocketHandle,
}

impl Handle {
    /// The shard the socket lives in.
    pub(crate) fn shard(self) -> usize {
        self.shard as usize
    }
}

/// One smoltcp socket set and what the driver knows about its work.
#[derive(Debug)]
pub(crate) struct Shard {
    /// The sockets.
    pub(crate) set: SocketSet<'static>,
    len: usize,
    /// When smoltcp wants this set polled next (its `poll_at` after the
    /// last poll); `None`: only on ingress.
    pub(crate) deadline: Option<Instant>,
    /// Something changed since the last poll (a socket was added or
    /// touched, a packet arrived): poll it now.
    pub(crate) dirty: bool,
}

impl Shard {
    fn new() -> Self {
        Self { set: SocketSet::new(Vec::new()), len: 0, deadline: None, dirty: false }
    }

    /// True if the driver must poll this shard at `now`.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.dirty || self.deadline.is_some_and(|d| d <= now)
    }
}

/// Every socket of a stack, in shards, and the memory of their TCP
/// buffers.
#[derive(Debug)]
pub(crate) struct Sockets {
    shards: Vec<Shard>,
    /// Shards (other than 0) with room, lowest first.
    room: BTreeSet<u32>,
    /// Where each TCP socket's buffers live.
    leases: FastMap<Handle, Lease>,
    idle: IdleWatch,
    /// The TCP buffers' memory. Sockets hold slices of it: every socket
    /// must be dropped before it (see `Drop`).
    buffers: BufferPool,
}

impl Default for Sockets {
    fn default() -> Self {
        Self {
            shards: vec![Shard::new()],
            room: BTreeSet::new(),
            leases: FastMap::default(),
            idle: IdleWatch::default(),
            buffers: BufferPool::default(),
        }
    }
}

impl Drop for Sockets {
    fn drop(&mut self) {
        // The sockets go first: their buffers are slices of `buffers`.
        self.shards.clear();
    }
}

impl Sockets {
    /// Adds a TCP socket with buffers of `sizes` to a shard with room (a
    /// new one if none has). `build` makes the socket from its buffers
    /// (and may connect or listen); if it fails, nothing is added.
    pub(crate) fn add_tcp(
        &mut self,
        sizes: TcpBuffers,
        build: impl FnOnce(tcp::SocketBuffer<'static>, tcp::SocketBuffer<'static>) -> io::Result<tcp::Socket<'static>>,
    ) -> io::Result<Handle> {
        let (lease, rx, tx) = self.buffers.lease(sizes)?;
        let socket = match build(rx, tx) {
            Ok(socket) => socket,
            Err(e) => {
                // SAFETY: `build` consumed the buffers and failed: they are
                // dropped.
                unsafe { self.buffers.give_back(lease) };
                return Err(e);
            }
        };
        let shard = match self.room.first() {
            Some(&s) => s as usize,
            None => {
                self.shards.push(Shard::new());
                let s = self.shards.len() - 1;
                self.room.insert(s as u32);
                s
            }
        };
        let handle = self.add_to(shard, socket);
        self.leases.insert(handle, lease);
        Ok(handle)
    }

    /// Adds a non-TCP socket: always to shard 0, which gets all non-TCP
    /// packets.
    pub(crate) fn add_pinned<T: AnySocket<'static>>(&mut self, socket: T) -> Handle {
        self.add_to(0, socket)
    }

    fn add_to<T: AnySocket<'static>>(&mut self, shard: usize, socket: T) -> Handle {
        let s = &mut self.shards[shard];
        let inner = s.set.add(socket);
        s.len += 1;
        s.dirty = true;
        if shard != 0 && s.len >= SHARD_SIZE {
            self.room.remove(&(shard as u32));
        }
        Handle { shard: shard as u32, inner }
    }

    /// The socket behind `handle`; panics on a stale handle or wrong type.
    pub(crate) fn get<T: AnySocket<'static>>(&self, handle: Handle) -> &T {
        self.shards[handle.shard()].set.get(handle.inner)
    }

    /// The socket behind `handle`, to change it: its shard is polled next.
    pub(crate) fn get_mut<T: AnySocket<'static>>(&mut self, handle: Handle) -> &mut T {
        let s = &mut self.shards[handle.shard()];
        s.dirty = true;
        s.set.get_mut(handle.inner)
    }

    /// Removes the socket behind `handle`; a TCP socket's buffers go back
    /// to the pool.
    pub(crate) fn remove(&mut self, handle: Handle) {
        let shard = handle.shard();
        let s = &mut self.shards[shard];
        drop(s.set.remove(handle.inner));
        s.len -= 1;
        if shard != 0 && s.len < SHARD_SIZE {
            self.room.insert(shard as u32);
        }
        if shard != 0 && s.len == 0 {
            // An empty shard gives its slots' memory back (a thousand bytes
            // each): after a burst of connections, the sets it needed do
            // not stay allocated. No handle refers to it any more.
            s.set = SocketSet::new(Vec::new());
        }
        if let Some(lease) = self.leases.remove(&handle) {
            self.idle.forget(handle);
            // SAFETY: the socket that held the buffers was dropped above.
            unsafe { self.buffers.give_back(lease) };
        }
    }

    /// Gives back the spare capacity of the per-socket tables, and drops
    /// trailing shards that are empty.
    pub(crate) fn tidy(&mut self) {
        self.leases.shrink_sparse();
        self.idle.tidy();
        while self.shards.len() > 1 && self.shards.last().is_some_and(|s| s.len == 0) {
            self.shards.pop();
            self.room.remove(&(self.shards.len() as u32));
        }
    }

    /// Bytes of TCP buffer memory resident now.
    pub(crate) fn buffer_resident_bytes(&self) -> usize {
        self.buffers.resident_bytes()
    }

    /// The application moved data through TCP socket `handle` at `now`:
    /// its buffers may hold pages until it has been idle for `interval`.
    pub(crate) fn note_use(&mut self, handle: Handle, now: Instant, interval: Duration) {
        if self.leases.contains_key(&handle) {
            self.idle.touch(handle, now, interval);
        }
    }

    /// Gives the pages of a finished connection's buffers back now, whatever
    /// they hold: `handle` is in TIME-WAIT or closed, and nobody will read
    /// what it received. Returns false if it holds no buffers of the pool.
    pub(crate) fn release_finished(&mut self, handle: Handle) -> bool {
        let state = self.get::<tcp::Socket>(handle).state();
        assert!(matches!(state, tcp::State::TimeWait | tcp::State::Closed), "releasing a live connection ({state})");
        let Some(lease) = self.leases.get(&handle) else { return false };
        // SAFETY: `&mut self` holds every socket exclusively; the
        // connection is over, so neither buffer will be read again (smoltcp
        // sends nothing from a TIME-WAIT send buffer, which is empty).
        unsafe { self.buffers.discard(lease) };
        self.idle.forget(handle);
        true
    }

    /// Gives back the pages of TCP sockets idle for a whole `interval`
    /// (nothing read or written) whose buffers hold nothing: both queues
    /// empty, and `rx_settled` vouches that no out-of-order data waits in
    /// the receive buffer beyond its (empty) queue. Returns how many.
    pub(crate) fn release_idle(
        &mut self,
        now: Instant,
        interval: Duration,
        rx_settled: impl Fn(Handle, &tcp::Socket) -> bool,
    ) -> usize {
        let Self { shards, leases, idle, buffers, .. } = self;
        let mut released = 0;
        idle.sweep(
            now,
            interval,
            |h| {
                let socket: &tcp::Socket = shards[h.shard()].set.get(h.inner);
                socket.recv_queue() == 0 && socket.send_queue() == 0 && rx_settled(h, socket)
            },
            |h| {
                // SAFETY: `&mut self` holds every socket exclusively, and
                // both buffers hold nothing (checked just before, out-of-
                // order data included): nothing in them will be read.
                unsafe { buffers.discard(&leases[&h]) };
                released += 1;
            },
        );
        released
    }

    /// Every socket, with its handle.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Handle, &Socket<'static>)> {
        self.shards.iter().enumerate().flat_map(|(shard, s)| {
            s.set.iter().map(move |(inner, socket)| (Handle { shard: shard as u32, inner }, socket))
        })
    }

    /// The number of sockets.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len).sum()
    }

    /// The shards, for the driver.
    pub(crate) fn shards_mut(&mut self) -> &mut [Shard] {
        &mut self.shards
    }

    /// The earliest time any shard must be polled (`now` for a dirty one)
    /// or idle buffers looked for.
    pub(crate) fn poll_at(&self, now: Instant) -> Option<Instant> {
        let shards = self.shards.iter().filter_map(|s| if s.dirty { Some(now) } else { s.deadline });
        shards.chain(self.idle.next_sweep()).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZES: TcpBuffers = TcpBuffers { rx: 4096, tx: 4096 };

    fn add(s: &mut Sockets) -> Handle {
        s.add_tcp(SIZES, |rx, tx| Ok(tcp::Socket::new(rx, tx))).unwrap()
    }

    #[test]
    fn shards_fill_up_and_refill() {
        let mut s = Sockets::default();
        let handles: Vec<Handle> = (0..SHARD_SIZE * 3).map(|_| add(&mut s)).collect();
        assert_eq!(s.len(), SHARD_SIZE * 3);
        assert!(handles.iter().all(|h| h.shard() != 0), "TCP sockets stay out of shard 0");
        assert_eq!(handles.iter().map(|h| h.shard()).max(), Some(3));
        s.remove(handles[5]);
        let again = add(&mut s);
        assert_eq!(again.shard(), handles[5].shard(), "a freed place is reused first");
        assert_eq!(s.iter().count(), SHARD_SIZE * 3);
        let _ = s.get::<tcp::Socket>(again);
    }

    #[test]
    fn dirty_shards_are_due_now() {
        let mut s = Sockets::default();
        let h = add(&mut s);
        let now = Instant::from_millis(10);
        assert_eq!(s.poll_at(now), Some(now));
        for shard in s.shards_mut() {
            shard.dirty = false;
        }
        assert_eq!(s.poll_at(now), None);
        let _ = s.get::<tcp::Socket>(h);
        assert_eq!(s.poll_at(now), None, "reading does not dirty");
        let _ = s.get_mut::<tcp::Socket>(h);
        assert!(s.shards_mut()[h.shard()].due(now));
    }

    #[test]
    fn a_failed_build_adds_nothing_and_keeps_no_buffers() {
        let mut s = Sockets::default();
        let e = s.add_tcp(SIZES, |_, _| Err(io::Error::other("no"))).unwrap_err();
        assert_eq!(e.to_string(), "no");
        assert_eq!(s.len(), 0);
        assert!(s.leases.is_empty());
        let h = add(&mut s);
        s.remove(h);
        assert!(s.leases.is_empty(), "removal gives the buffers back");
    }

    #[test]
    fn idle_sockets_are_released_after_a_whole_quiet_interval() {
        let mut s = Sockets::default();
        let (a, b) = (add(&mut s), add(&mut s));
        let second = Duration::from_secs(1);
        let t = |ms| Instant::from_millis(ms);
        assert_eq!(s.poll_at(t(0)), Some(t(0)), "new sockets dirty their shard");
        for shard in s.shards_mut() {
            shard.dirty = false;
        }
        assert_eq!(s.poll_at(t(0)), None, "nothing touched: no sweep timer");
        s.note_use(a, t(100), second);
        s.note_use(b, t(100), second);
        assert_eq!(s.poll_at(t(100)), Some(t(1100)));
        let settled = |_: Handle, _: &tcp::Socket| true;
        assert_eq!(s.release_idle(t(1100), second, settled), 0, "touched during this interval");
        s.note_use(b, t(1500), second);
        assert_eq!(s.release_idle(t(2100), second, |h, _| h != a), 0, "a holds out-of-order data");
        assert_eq!(s.release_idle(t(3100), second, settled), 2, "a, and b, quiet since 1500");
        assert_eq!(s.poll_at(t(3100)), None, "nothing left to watch");
        s.remove(a);
        s.note_use(b, t(4000), second);
        s.remove(b);
        assert_eq!(s.release_idle(t(5000), second, settled), 0, "removed sockets are forgotten");
    }
}
