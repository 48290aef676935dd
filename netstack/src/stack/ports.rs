//! Port bookkeeping: explicit binds, conflicts, and ephemeral allocation
//! (smoltcp has none).

use smoltcp::wire::IpAddress;

use super::tables::FastMap;
use super::tidy::Shrink;
use crate::rng::Rng;

/// The IANA dynamic range, as Linux uses by default.
const EPHEMERAL: std::ops::RangeInclusive<u16> = 49152..=65535;

/// Why a port could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// Another socket is bound to an overlapping address on this port.
    #[error("port {0} is already bound to an overlapping address; choose another port or close the other socket")]
    InUse(u16),
    /// Every ephemeral port is taken.
    #[error("all {} ephemeral ports are in use; close idle connections or raise the connection limit", EPHEMERAL.len())]
    Exhausted,
}

/// `None` stands for the unspecified (any) address.
type BoundAddr = Option<IpAddress>;

fn overlaps(a: BoundAddr, b: BoundAddr) -> bool {
    a.is_none() || b.is_none() || a == b
}

/// Which ports are taken, per protocol.
#[derive(Debug)]
pub(crate) struct PortTable {
    tcp_listeners: FastMap<u16, Vec<BoundAddr>>,
    /// Ephemeral ports of outgoing TCP connections (count per port).
    tcp_conns: FastMap<u16, u32>,
    udp: FastMap<u16, Vec<BoundAddr>>,
    rng: Rng,
}

impl PortTable {
    /// Gives back the tables' spare capacity (see `tidy`).
    pub(crate) fn tidy(&mut self) {
        self.tcp_conns.shrink_sparse();
    }

    pub(crate) fn new(seed: u64) -> Self {
        Self {
            tcp_listeners: FastMap::default(),
            tcp_conns: FastMap::default(),
            udp: FastMap::default(),
            rng: Rng::new(seed),
        }
    }

    /// Binds a TCP listener; `port` 0 picks an ephemeral port.
    pub(crate) fn bind_tcp_listener(&mut self, addr: BoundAddr, port: u16) -> Result<u16, PortError> {
        let port = if port == 0 { self.pick(|t, p| t.tcp_free(p))? } else { port };
        let bound = self.tcp_listeners.entry(port).or_default();
        if bound.iter().any(|b| overlaps(*b, addr)) {
            return Err(PortError::InUse(port));
        }
        bound.push(addr);
        Ok(port)
    }

    pub(crate) fn release_tcp_listener(&mut self, addr: BoundAddr, port: u16) {
        release(&mut self.tcp_listeners, addr, port);
    }

    /// An ephemeral port for an outgoing TCP connection.
    pub(crate) fn alloc_tcp_conn(&mut self) -> Result<u16, PortError> {
        let port = self.pick(|t, p| t.tcp_free(p))?;
        *self.tcp_conns.entry(port).or_default() += 1;
        Ok(port)
    }

    pub(crate) fn release_tcp_conn(&mut self, port: u16) {
        if let Some(n) = self.tcp_conns.get_mut(&port) {
            *n -= 1;
            if *n == 0 {
                self.tcp_conns.remove(&port);
            }
        }
    }

    /// Binds a UDP socket; `port` 0 picks an ephemeral port.
    pub(crate) fn bind_udp(&mut self, addr: BoundAddr, port: u16) -> Result<u16, PortError> {
        let port = if port == 0 { self.pick(|t, p| !t.udp.contains_key(&p))? } else { port };
        let bound = self.udp.entry(port).or_default();
        if bound.iter().any(|b| overlaps(*b, addr)) {
            return Err(PortError::InUse(port));
        }
        bound.push(addr);
        Ok(port)
    }

    pub(crate) fn release_udp(&mut self, addr: BoundAddr, port: u16) {
        release(&mut self.udp, addr, port);
    }

    fn tcp_free(&self, port: u16) -> bool {
        !self.tcp_listeners.contains_key(&port) && !self.tcp_conns.contains_key(&port)
    }

    /// A random starting point, then a linear probe through the range.
    fn pick(&mut self, free: impl Fn(&Self, u16) -> bool) -> Result<u16, PortError> {
        let span = EPHEMERAL.len() as u64;
        let start = self.rng.below(span);
        (0..span)
            .map(|i| *EPHEMERAL.start() + ((start + i) % span) as u16)
            .find(|&p| free(self, p))
            .ok_or(PortError::Exhausted)
    }
}

fn release(map: &mut FastMap<u16, Vec<BoundAddr>>, addr: BoundAddr, port: u16) {
    if let Some(bound) = map.get_mut(&port) {
        if let Some(i) = bound.iter().position(|b| *b == addr) {
            bound.swap_remove(i);
        }
        if bound.is_empty() {
            map.remove(&port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::Ipv4Address;

    fn v4(a: u8) -> BoundAddr {
        Some(IpAddress::Ipv4(Ipv4Address::new(10, 0, 0, a)))
    }

    #[test]
    fn overlapping_binds_conflict_disjoint_ones_do_not() {
        let mut t = PortTable::new(1);
        assert_eq!(t.bind_tcp_listener(v4(1), 80), Ok(80));
        assert_eq!(t.bind_tcp_listener(v4(2), 80), Ok(80));
        assert_eq!(t.bind_tcp_listener(None, 80), Err(PortError::InUse(80)));
        assert_eq!(t.bind_tcp_listener(v4(1), 80), Err(PortError::InUse(80)));
        t.release_tcp_listener(v4(1), 80);
        assert_eq!(t.bind_tcp_listener(v4(1), 80), Ok(80));
        assert_eq!(t.bind_udp(None, 80), Ok(80), "UDP and TCP ports are separate");
        assert_eq!(t.bind_udp(v4(3), 80), Err(PortError::InUse(80)));
    }

    #[test]
    fn ephemeral_ports_are_unique_until_released() {
        let mut t = PortTable::new(2);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let p = t.alloc_tcp_conn().unwrap();
            assert!(EPHEMERAL.contains(&p));
            assert!(seen.insert(p), "port {p} handed out twice");
        }
        let listener = t.bind_tcp_listener(None, 0).unwrap();
        assert!(!seen.contains(&listener));
    }

    #[test]
    fn exhaustion_is_an_error_not_a_panic() {
        let mut t = PortTable::new(3);
        for _ in 0..EPHEMERAL.len() {
            t.alloc_tcp_conn().unwrap();
        }
        assert_eq!(t.alloc_tcp_conn(), Err(PortError::Exhausted));
        t.release_tcp_conn(50000);
        assert_eq!(t.alloc_tcp_conn(), Ok(50000));
    }
}
