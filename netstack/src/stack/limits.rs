//! Connection limits: how many TCP connections a stack holds, in total and
//! per remote address (`StackConfig::max_connections`,
//! `StackConfig::max_connections_per_peer`).
//!
//! The table is shared by the core (active opens, sockets leaving a
//! listener's pool, sockets removed) and the device's SYN guard, which
//! checks a SYN against it before smoltcp sees the SYN. Both reach it only
//! while holding the stack lock, so its own mutex is never contended.
//!
//! A SYN the guard admits *reserves* a place for its peer until the driver
//! has sorted the listeners' pools after the poll; the connection then
//! becomes a member, and the batch's reservations are cleared.

use std::sync::{Arc, Mutex, MutexGuard};

use super::tables::FastMap;
use super::tidy::Shrink;
use crate::stack::shards::Handle;
use smoltcp::wire::IpAddress;

/// Which limit a new connection would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitHit {
    /// `max_connections`: the stack's total.
    Stack(usize),
    /// `max_connections_per_peer`: connections with one remote address.
    Peer(usize),
}

/// Connections the stack holds, by socket and by remote address.
#[derive(Debug, Default)]
pub(crate) struct ConnTable {
    max_total: Option<usize>,
    max_per_peer: Option<usize>,
    /// Every socket that holds a connection, with its remote address.
    members: FastMap<Handle, IpAddress>,
    per_peer: FastMap<IpAddress, usize>,
    /// SYNs admitted in the current poll, not yet members.
    reserved: usize,
    reserved_per_peer: FastMap<IpAddress, usize>,
}

impl ConnTable {
    /// Gives back the tables' spare capacity (see `tidy`).
    pub(crate) fn tidy(&mut self) {
        self.members.shrink_sparse();
        self.per_peer.shrink_sparse();
        self.reserved_per_peer.shrink_sparse();
    }

    /// A table enforcing these limits (`None`: unlimited).
    pub(crate) fn new(max_total: Option<usize>, max_per_peer: Option<usize>) -> Self {
        Self { max_total, max_per_peer, ..Self::default() }
    }

    /// Connections held now, reservations included.
    pub(crate) fn total(&self) -> usize {
        self.members.len() + self.reserved
    }

    /// Connections held now with `peer`, reservations included.
    pub(crate) fn with_peer(&self, peer: IpAddress) -> usize {
        self.per_peer.get(&peer).copied().unwrap_or(0) + self.reserved_per_peer.get(&peer).copied().unwrap_or(0)
    }

    /// Whether one more connection with `peer` fits.
    pub(crate) fn check(&self, peer: IpAddress) -> Result<(), LimitHit> {
        if let Some(max) = self.max_total
            && self.total() >= max
        {
            return Err(LimitHit::Stack(max));
        }
        if let Some(max) = self.max_per_peer
            && self.with_peer(peer) >= max
        {
            return Err(LimitHit::Peer(max));
        }
        Ok(())
    }

    /// Reserves a place for an admitted SYN from `peer`, if one is left.
    pub(crate) fn reserve(&mut self, peer: IpAddress) -> Result<(), LimitHit> {
        self.check(peer)?;
        if self.max_total.is_some() || self.max_per_peer.is_some() {
            self.reserved += 1;
            *self.reserved_per_peer.entry(peer).or_default() += 1;
        }
        Ok(())
    }

    /// Drops the reservations of the last batch of SYNs; the connections
    /// they opened are members by now.
    pub(crate) fn clear_reserved(&mut self) {
        self.reserved = 0;
        self.reserved_per_peer.clear();
    }

    /// `handle` now holds a connection with `peer` (idempotent).
    pub(crate) fn add(&mut self, handle: Handle, peer: IpAddress) {
        if let Some(old) = self.members.insert(handle, peer) {
            self.dec_peer(old);
        }
        *self.per_peer.entry(peer).or_default() += 1;
    }

    /// `handle` no longer holds a connection (idempotent).
    pub(crate) fn remove(&mut self, handle: Handle) {
        if let Some(peer) = self.members.remove(&handle) {
            self.dec_peer(peer);
        }
    }

    fn dec_peer(&mut self, peer: IpAddress) {
        if let Some(n) = self.per_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&peer);
            }
        }
    }
}

/// The table, shared by the core and the SYN guard.
#[derive(Debug, Clone, Default)]
pub(crate) struct SharedConns(Arc<Mutex<ConnTable>>);

impl SharedConns {
    /// A shared table enforcing these limits.
    pub(crate) fn new(max_total: Option<usize>, max_per_peer: Option<usize>) -> Self {
        Self(Arc::new(Mutex::new(ConnTable::new(max_total, max_per_peer))))
    }

    /// The table (uncontended: callers hold the stack lock).
    pub(crate) fn lock(&self) -> MutexGuard<'_, ConnTable> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::shards::Sockets;
    use smoltcp::socket::udp;

    fn handles(n: usize) -> Vec<Handle> {
        // Handles come only from a socket set.
        let mut set = Sockets::default();
        (0..n)
            .map(|_| {
                let b = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY], vec![0u8; 8]);
                set.add_pinned(udp::Socket::new(b(), b()))
            })
            .collect()
    }

    #[test]
    fn limits_count_members_and_reservations() {
        let (a, b) = (IpAddress::v4(10, 0, 0, 1), IpAddress::v4(10, 0, 0, 2));
        let h = handles(3);
        let mut t = ConnTable::new(Some(3), Some(2));
        t.add(h[0], a);
        t.add(h[0], a);
        assert_eq!((t.total(), t.with_peer(a)), (1, 1), "adding twice counts once");
        t.reserve(a).unwrap();
        assert_eq!(t.check(a), Err(LimitHit::Peer(2)));
        t.reserve(b).unwrap();
        assert_eq!(t.check(b), Err(LimitHit::Stack(3)));
        t.clear_reserved();
        t.add(h[1], a);
        t.add(h[2], b);
        assert_eq!(t.check(b), Err(LimitHit::Stack(3)));
        t.remove(h[1]);
        t.remove(h[1]);
        assert_eq!((t.total(), t.with_peer(a)), (2, 1));
        assert_eq!(t.check(a), Ok(()));
    }

    #[test]
    fn unlimited_tables_reserve_nothing() {
        let mut t = ConnTable::new(None, None);
        t.reserve(IpAddress::v4(10, 0, 0, 1)).unwrap();
        assert_eq!(t.total(), 0);
    }
}
