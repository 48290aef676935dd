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

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::{AnySocket, Socket};
use smoltcp::time::Instant;

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

/// Every socket of a stack, in shards.
#[derive(Debug)]
pub(crate) struct Sockets {
    shards: Vec<Shard>,
    /// Shards (other than 0) with room, lowest first.
    room: std::collections::BTreeSet<u32>,
}

impl Default for Sockets {
    fn default() -> Self {
        Self { shards: vec![Shard::new()], room: std::collections::BTreeSet::new() }
    }
}

impl Sockets {
    /// Adds a TCP socket to a shard with room (a new one if none has).
    pub(crate) fn add<T: AnySocket<'static>>(&mut self, socket: T) -> Handle {
        let shard = match self.room.first() {
            Some(&s) => s as usize,
            None => {
                self.shards.push(Shard::new());
                let s = self.shards.len() - 1;
                self.room.insert(s as u32);
                s
            }
        };
        self.add_to(shard, socket)
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

    /// Removes the socket behind `handle`.
    pub(crate) fn remove(&mut self, handle: Handle) {
        let shard = handle.shard();
        let s = &mut self.shards[shard];
        s.set.remove(handle.inner);
        s.len -= 1;
        if shard != 0 && s.len < SHARD_SIZE {
            self.room.insert(shard as u32);
        }
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

    /// The earliest time any shard must be polled (`now` for a dirty one).
    pub(crate) fn poll_at(&self, now: Instant) -> Option<Instant> {
        self.shards.iter().filter_map(|s| if s.dirty { Some(now) } else { s.deadline }).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::socket::tcp;

    fn tcp_socket() -> tcp::Socket<'static> {
        tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 64]), tcp::SocketBuffer::new(vec![0; 64]))
    }

    #[test]
    fn shards_fill_up_and_refill() {
        let mut s = Sockets::default();
        let handles: Vec<Handle> = (0..SHARD_SIZE * 3).map(|_| s.add(tcp_socket())).collect();
        assert_eq!(s.len(), SHARD_SIZE * 3);
        assert!(handles.iter().all(|h| h.shard() != 0), "TCP sockets stay out of shard 0");
        assert_eq!(handles.iter().map(|h| h.shard()).max(), Some(3));
        s.remove(handles[5]);
        let again = s.add(tcp_socket());
        assert_eq!(again.shard(), handles[5].shard(), "a freed place is reused first");
        assert_eq!(s.iter().count(), SHARD_SIZE * 3);
        let _ = s.get::<tcp::Socket>(again);
    }

    #[test]
    fn dirty_shards_are_due_now() {
        let mut s = Sockets::default();
        let h = s.add(tcp_socket());
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
}
