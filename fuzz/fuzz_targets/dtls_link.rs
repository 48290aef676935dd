//! The DTLS link core as a server facing arbitrary datagrams: garbage,
//! mutated records and ClientHellos from a few underlay addresses, mixed
//! with the passage of time.
//!
//! Input: records `[op, len_hi, len_lo, bytes...]`: `op`'s low bits pick
//! the source (the peer's allowed address or a stranger), a high bit turns
//! the record into a clock step of `len` milliseconds. Invariants: never
//! panics (neither plebnet's link nor dimpl under it); nothing is ever
//! delivered (no input can hold the pinned peer's signature); nothing is
//! ever sent to the stranger, whose datagrams are all counted as dropped;
//! handshakes in progress stay within the configured bound.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use plebnet_transport::dtls::{DtlsConfig, DtlsIdentity, DtlsLink, DtlsLinkLimits, DtlsPeer, LinkIo};

struct Io {
    sent_to: Vec<SocketAddr>,
    delivered: usize,
}

impl LinkIo for Io {
    fn transmit(&mut self, to: SocketAddr, _datagram: &[u8]) {
        self.sent_to.push(to);
    }
    fn deliver(&mut self, _packet: &[u8]) {
        self.delivered += 1;
    }
}

fn identities() -> &'static (DtlsIdentity, DtlsIdentity) {
    static IDS: OnceLock<(DtlsIdentity, DtlsIdentity)> = OnceLock::new();
    IDS.get_or_init(|| (DtlsIdentity::self_signed("server").unwrap(), DtlsIdentity::self_signed("peer").unwrap()))
}

fuzz_target!(|data: &[u8]| {
    let (server, peer) = identities();
    let allowed: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    let stranger: SocketAddr = "127.0.0.9:6000".parse().unwrap();
    let limits = DtlsLinkLimits { max_handshakes: 4, ..DtlsLinkLimits::default() };
    let mut now = Instant::now();
    let mut link = DtlsLink::new(
        DtlsConfig::new(server.clone()),
        vec![DtlsPeer {
            pin: peer.pin(),
            prefixes: vec!["10.0.0.1/32".parse().unwrap()],
            endpoint: Some(allowed),
            initiate: false,
        }],
        limits,
        now,
    )
    .unwrap();
    let mut io = Io { sent_to: Vec::new(), delivered: 0 };
    let mut from_stranger = 0;
    let mut rest = data;
    while rest.len() >= 3 {
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        let op = rest[0];
        if op & 0x80 != 0 {
            now += Duration::from_millis(len as u64 % 60_000);
            link.handle_timeout(now, &mut io);
            rest = &rest[3..];
            continue;
        }
        let len = len.min(rest.len() - 3);
        let datagram = &rest[3..3 + len];
        rest = &rest[3 + len..];
        let from = if op & 1 == 0 { allowed } else { stranger };
        from_stranger += usize::from(from == stranger);
        link.handle_datagram(now, from, datagram, &mut io);
    }
    let counters = link.counters();
    assert_eq!(io.delivered, 0, "an unauthenticated datagram was delivered");
    assert_eq!(counters.rx_packets.get(), 0);
    assert!(io.sent_to.iter().all(|&to| to == allowed), "a stranger got an answer");
    assert_eq!(counters.rx_dropped_stranger.get() as usize >= from_stranger, true);
    assert!(counters.handshakes_started.get() <= counters.rx_datagrams.get());
});
