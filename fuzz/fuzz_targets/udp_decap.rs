//! UdpNic decapsulation with its peer table: arbitrary datagrams from
//! arbitrary underlay addresses through `UdpPeerTable::admit`, the rule the
//! NIC applies to every overlay packet it receives.
//!
//! Input: records `[from, len_hi, len_lo, bytes...]`; `from` picks one of a
//! few underlay addresses (the two peers, their IPv4-mapped and wrong-port
//! spellings, a stranger, no address). Invariants, against a reference
//! written here: never panics; a packet is admitted only from a peer's
//! endpoint (in any spelling), within the MTU, and with an IP source inside
//! that peer's prefixes; every refusal gives the first reason that applies;
//! the route for an admitted packet's source leads back to its peer.
#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use plebnet::netstack::nic::{UdpDrop, UdpPeer, UdpPeerTable};

const MTU: usize = 1400;

fn table() -> &'static UdpPeerTable {
    static TABLE: OnceLock<UdpPeerTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        UdpPeerTable::new(vec![
            UdpPeer::new("127.0.0.1:4001".parse().unwrap(), &["10.0.0.0/24", "fd00::/64"]),
            UdpPeer::new("[::1]:4002".parse().unwrap(), &["10.0.1.2/32"]),
        ])
        .unwrap()
    })
}

fn from(selector: u8) -> Option<SocketAddr> {
    let addrs = ["127.0.0.1:4001", "[::ffff:127.0.0.1]:4001", "[::1]:4002", "127.0.0.1:4002", "127.0.0.2:4001"];
    addrs.get(usize::from(selector % 6)).map(|a| a.parse().unwrap())
}

fn source(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => Some(IpAddr::from(<[u8; 4]>::try_from(&packet[12..16]).ok()?)),
        6 if packet.len() >= 40 => Some(IpAddr::from(<[u8; 16]>::try_from(&packet[8..24]).ok()?)),
        _ => None,
    }
}

/// Which peer (0 or 1) an address is, in any spelling.
fn peer_index(addr: SocketAddr) -> Option<usize> {
    let ip = match addr.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match (ip.to_string().as_str(), addr.port()) {
        ("127.0.0.1", 4001) => Some(0),
        ("::1", 4002) => Some(1),
        _ => None,
    }
}

fn in_prefixes(peer: usize, ip: IpAddr) -> bool {
    match (peer, ip) {
        (0, IpAddr::V4(v4)) => v4.octets()[..3] == [10, 0, 0],
        (0, IpAddr::V6(v6)) => v6.segments()[..4] == [0xfd00, 0, 0, 0],
        (1, IpAddr::V4(v4)) => v4.octets() == [10, 0, 1, 2],
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let table = table();
    let mut rest = data;
    while rest.len() >= 3 {
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let (selector, packet) = (rest[0], &rest[3..3 + len]);
        rest = &rest[3 + len..];
        let from = from(selector);
        let expected = match from.and_then(peer_index) {
            None => Err(UdpDrop::UnknownPeer),
            Some(_) if packet.len() > MTU => Err(UdpDrop::TooBig),
            Some(p) => match source(packet) {
                None => Err(UdpDrop::NotIp),
                Some(src) if !in_prefixes(p, src) => Err(UdpDrop::SpoofedSource),
                Some(_) => Ok(p),
            },
        };
        let got = table.admit(from, packet, MTU).map(|peer| peer_index(peer.endpoint).expect("a peer's endpoint"));
        assert_eq!(got, expected, "from {from:?}, {} bytes", packet.len());
        if let Ok(p) = got {
            let back = table.route(source(packet).unwrap()).and_then(peer_index);
            assert_eq!(back, Some(p), "the route for an admitted source leads to its peer");
        }
    }
});
