//! The UdpNic's peer table: which underlay endpoint carries which overlay
//! prefixes, in both directions.
//!
//! Egress picks the peer by longest-prefix match on the packet's destination.
//! Ingress accepts a datagram only from a configured endpoint, and only if the
//! packet inside claims a source address that this peer is allowed to use
//! (the same rule as WireGuard's allowed IPs), so one peer cannot speak for
//! another.

use std::net::{IpAddr, SocketAddr};

use crate::Cidr;

/// One peer of a [`UdpNic`](super::UdpNic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpPeer {
    /// The peer's underlay UDP endpoint.
    pub endpoint: SocketAddr,
    /// Overlay prefixes reached through this peer; packets from it must
    /// carry a source address inside one of them.
    pub prefixes: Vec<Cidr>,
}

impl UdpPeer {
    /// A peer at `endpoint` that owns `prefixes`. Panics on a malformed
    /// prefix: meant for tests and examples.
    pub fn new(endpoint: SocketAddr, prefixes: &[&str]) -> Self {
        let prefixes = prefixes.iter().map(|p| p.parse().unwrap_or_else(|e| panic!("{e}"))).collect();
        Self { endpoint: canonical(endpoint), prefixes }
    }
}

/// Why a peer table was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerTableError {
    /// Two peers claim overlapping prefixes, so egress would be ambiguous.
    #[error("peer {a} prefix {a_prefix} overlaps peer {b} prefix {b_prefix}")]
    Overlap {
        /// The first peer's endpoint.
        a: SocketAddr,
        /// Its prefix.
        a_prefix: Cidr,
        /// The second peer's endpoint.
        b: SocketAddr,
        /// Its prefix.
        b_prefix: Cidr,
    },
    /// The same endpoint appears twice.
    #[error("peer endpoint {0} is listed twice")]
    DuplicateEndpoint(SocketAddr),
}

/// IPv4-mapped IPv6 endpoints (what a dual-stack socket reports) become
/// plain IPv4 ones, so that one peer has one spelling.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// Why a UdpNic refuses a datagram from the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpDrop {
    /// It came from an endpoint that is not a peer (or from no address).
    UnknownPeer,
    /// The overlay packet is larger than the MTU.
    TooBig,
    /// Too short, or not IPv4/IPv6: no source address to check.
    NotIp,
    /// The packet claims a source address its peer may not use.
    SpoofedSource,
}

/// The peers of one UdpNic: who may send, and which overlay sources each
/// may claim.
#[derive(Debug, Clone, Default)]
pub struct PeerTable {
    peers: Vec<UdpPeer>,
}

impl PeerTable {
    /// A table of `peers`; refuses duplicate endpoints and overlapping
    /// prefixes.
    pub fn new(peers: Vec<UdpPeer>) -> Result<Self, PeerTableError> {
        let peers: Vec<UdpPeer> =
            peers.into_iter().map(|p| UdpPeer { endpoint: canonical(p.endpoint), prefixes: p.prefixes }).collect();
        for (i, a) in peers.iter().enumerate() {
            for b in &peers[i + 1..] {
                if a.endpoint == b.endpoint {
                    return Err(PeerTableError::DuplicateEndpoint(a.endpoint));
                }
                for pa in &a.prefixes {
                    if let Some(pb) = b.prefixes.iter().find(|pb| pa.overlaps(pb)) {
                        return Err(PeerTableError::Overlap {
                            a: a.endpoint,
                            a_prefix: *pa,
                            b: b.endpoint,
                            b_prefix: *pb,
                        });
                    }
                }
            }
        }
        Ok(Self { peers })
    }

    /// The endpoint that carries packets to `dst`, by longest prefix.
    pub fn route(&self, dst: IpAddr) -> Option<SocketAddr> {
        self.peers
            .iter()
            .flat_map(|p| p.prefixes.iter().map(move |c| (c, p.endpoint)))
            .filter(|(c, _)| c.contains(dst))
            .max_by_key(|(c, _)| c.prefix)
            .map(|(_, e)| e)
    }

    /// The peer at underlay address `from`, if it is one.
    pub fn peer_at(&self, from: SocketAddr) -> Option<&UdpPeer> {
        let from = canonical(from);
        self.peers.iter().find(|p| p.endpoint == from)
    }

    /// The decapsulation rule of a UdpNic for one overlay packet that
    /// arrived from `from` (no address: `None`): the peer it came from, or
    /// why it is dropped — checked in this order: an unknown endpoint, a
    /// packet over `mtu`, no IP source, a source outside the peer's
    /// prefixes.
    pub fn admit(&self, from: Option<SocketAddr>, packet: &[u8], mtu: usize) -> Result<&UdpPeer, UdpDrop> {
        let peer = from.and_then(|f| self.peer_at(f)).ok_or(UdpDrop::UnknownPeer)?;
        if packet.len() > mtu {
            return Err(UdpDrop::TooBig);
        }
        let src = packet_source(packet).ok_or(UdpDrop::NotIp)?;
        if !peer.prefixes.iter().any(|p| p.contains(src)) {
            return Err(UdpDrop::SpoofedSource);
        }
        Ok(peer)
    }
}

/// The source address an IP packet claims, if it is long enough to say.
pub(crate) fn packet_source(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => Some(IpAddr::from(<[u8; 4]>::try_from(&packet[12..16]).ok()?)),
        6 if packet.len() >= 40 => Some(IpAddr::from(<[u8; 16]>::try_from(&packet[8..24]).ok()?)),
        _ => None,
    }
}

/// The destination address of an IP packet, if it is long enough to say.
pub(crate) fn packet_destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => Some(IpAddr::from(<[u8; 4]>::try_from(&packet[16..20]).ok()?)),
        6 if packet.len() >= 40 => Some(IpAddr::from(<[u8; 16]>::try_from(&packet[24..40]).ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn routes_by_longest_prefix() {
        let t = PeerTable::new(vec![
            UdpPeer::new(ep("127.0.0.1:1000"), &["10.0.0.0/8"]),
            UdpPeer::new(ep("127.0.0.1:2000"), &["fd00::/64"]),
        ])
        .unwrap();
        assert_eq!(t.route("10.1.2.3".parse().unwrap()), Some(ep("127.0.0.1:1000")));
        assert_eq!(t.route("fd00::9".parse().unwrap()), Some(ep("127.0.0.1:2000")));
        assert_eq!(t.route("192.168.0.1".parse().unwrap()), None);
        assert!(t.peer_at(ep("[::ffff:127.0.0.1]:1000")).is_some(), "mapped spelling is the same peer");
        assert!(t.peer_at(ep("127.0.0.1:1001")).is_none());
    }

    #[test]
    fn refuses_overlap_and_duplicates() {
        let e = PeerTable::new(vec![
            UdpPeer::new(ep("127.0.0.1:1000"), &["10.0.0.0/8"]),
            UdpPeer::new(ep("127.0.0.1:2000"), &["10.7.0.0/16"]),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("10.7.0.0/16"), "{e}");
        let e = PeerTable::new(vec![
            UdpPeer::new(ep("127.0.0.1:1000"), &["10.0.0.0/8"]),
            UdpPeer::new(ep("127.0.0.1:1000"), &["10.9.0.0/16"]),
        ]);
        assert!(matches!(e, Err(PeerTableError::DuplicateEndpoint(_))));
    }

    #[test]
    fn reads_packet_addresses() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[12..16].copy_from_slice(&[10, 0, 0, 1]);
        v4[16..20].copy_from_slice(&[10, 0, 0, 2]);
        assert_eq!(packet_source(&v4), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(packet_destination(&v4), Some("10.0.0.2".parse().unwrap()));
        assert_eq!(packet_source(&v4[..19]), None);
        assert_eq!(packet_source(&[0x60; 39]), None);
        assert_eq!(packet_source(&[]), None);
    }
}
