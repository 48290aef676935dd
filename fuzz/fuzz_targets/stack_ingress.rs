//! Arbitrary packets arriving at a running plebnet `Stack`.
//!
//! One stack per process (10.7.0.1/24 over one end of a `MemLink`), with a
//! TCP listener on port 80 and a UDP socket on port 7; the harness holds the
//! other end of the link. Input: packets, each `[len_hi, len_lo, bytes...]`
//! (the last one takes whatever is left). Invariants, across all inputs: the
//! stack never panics and keeps serving — after the input's packets, its
//! counters are readable and a valid UDP datagram the harness sends to port 7
//! arrives intact, from the right address.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use plebnet::net::{Stack, StackConfig, TcpListener, UdpSocket};
use plebnet::netstack::nic::{MemLink, MemLinkConfig, MemNic};
use plebnet::netstack::smoltcp::phy::{ChecksumCapabilities, Device, RxToken, TxToken};
use plebnet::netstack::smoltcp::time::Instant as SmolInstant;
use plebnet::netstack::smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr};

const MTU: usize = 1500;
const STACK_ADDR: Ipv4Addr = Ipv4Addr::new(10, 7, 0, 1);
const PEER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 7, 0, 2), 4000);
const UDP_PORT: u16 = 7;

struct Harness {
    /// The link's other end: what we send, the stack receives.
    wire: MemNic,
    stack: Stack,
    udp: UdpSocket,
    _tcp: TcpListener,
    probes: u64,
}

fn harness() -> &'static Mutex<Harness> {
    static HARNESS: OnceLock<Mutex<Harness>> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let (ours, wire) = MemLink::pair(MemLinkConfig { mtu: MTU, queue_packets: 4096 });
        let stack = Stack::new(StackConfig::with_address("10.7.0.1/24"), ours).expect("stack");
        let udp = UdpSocket::bind(&stack, SocketAddr::from((STACK_ADDR, UDP_PORT))).expect("udp bind");
        udp.set_read_timeout(Some(Duration::from_millis(100))).expect("udp timeout");
        let tcp = TcpListener::bind(&stack, SocketAddr::from((STACK_ADDR, 80))).expect("tcp bind");
        Mutex::new(Harness { wire, stack, udp, _tcp: tcp, probes: 0 })
    })
}

fn send(wire: &mut MemNic, packet: &[u8]) {
    let token = wire.transmit(SmolInstant::ZERO).expect("MemNic always transmits");
    token.consume(packet.len(), |buf| buf.copy_from_slice(packet));
}

/// A valid IPv4/UDP packet from `PEER` to the stack's UDP socket.
fn udp_packet(payload: &[u8]) -> Vec<u8> {
    let (src, dst) = (IpAddress::Ipv4(*PEER.ip()), IpAddress::Ipv4(STACK_ADDR));
    let udp = UdpRepr { src_port: PEER.port(), dst_port: UDP_PORT };
    let ip = Ipv4Repr {
        src_addr: *PEER.ip(),
        dst_addr: STACK_ADDR,
        next_header: IpProtocol::Udp,
        payload_len: udp.header_len() + payload.len(),
        hop_limit: 64,
    };
    let mut buf = vec![0; ip.buffer_len() + ip.payload_len];
    let caps = ChecksumCapabilities::default();
    let mut packet = Ipv4Packet::new_unchecked(&mut buf);
    ip.emit(&mut packet, &caps);
    let mut datagram = UdpPacket::new_unchecked(packet.payload_mut());
    udp.emit(&mut datagram, &src, &dst, payload.len(), |b| b.copy_from_slice(payload), &caps);
    buf
}

fuzz_target!(|data: &[u8]| {
    let mut h = harness().lock().unwrap_or_else(|e| e.into_inner());
    let h = &mut *h;

    // What the stack sent back last time (RSTs, ICMP errors, SYN-ACKs): drop it.
    while let Some((rx, _tx)) = h.wire.receive(SmolInstant::ZERO) {
        rx.consume(|_| ());
    }

    let mut rest = data;
    while !rest.is_empty() {
        let (len, body) = match rest {
            [hi, lo, body @ ..] => (usize::from(u16::from_be_bytes([*hi, *lo])), body),
            _ => (rest.len(), rest),
        };
        let (packet, tail) = body.split_at(len.min(body.len()));
        send(&mut h.wire, &packet[..packet.len().min(MTU)]);
        rest = tail;
    }

    // The stack must still be serving: counters readable, and a probe queued
    // behind the fuzz packets reaches the UDP socket intact.
    let groups = h.stack.counters();
    assert!(!groups.is_empty(), "no counters");
    h.probes += 1;
    let probe = [b"plebnet-fuzz-probe-".as_slice(), &h.probes.to_be_bytes()].concat();
    send(&mut h.wire, &udp_packet(&probe));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 2048];
    loop {
        match h.udp.recv_from(&mut buf) {
            // Fuzz packets may carry datagrams for port 7 too; skip them.
            Ok((n, from)) if buf[..n] == probe[..] => {
                assert_eq!(from, SocketAddr::V4(PEER), "probe arrived from the wrong address");
                break;
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("udp recv failed: {e}"),
        }
        assert!(Instant::now() < deadline, "stack stopped serving: probe {} never arrived", h.probes);
    }
});
