//! Silence to strangers: a UdpNic under a flood of one million datagrams
//! from an underlay endpoint that is not its peer — random garbage, valid
//! TCP SYNs and UDP packets to its overlay address, and packets claiming
//! its real peer's overlay source — while a 16 MiB transfer from that peer
//! runs. Nothing from the stranger may reach the stack, nothing may go back
//! to it, and the transfer must arrive intact.

use std::net::{SocketAddr, UdpSocket as KernelUdp};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use plebnet::net::{Stack, StackConfig, TcpListener, TcpStream, UdpSocket};
use plebnet::netstack::nic::{Capture, UdpNic, UdpNicConfig, UdpPeer};
use plebnet::netstack::rng::Rng;
use plebnet::netstack::smoltcp::phy::ChecksumCapabilities;
use plebnet::netstack::smoltcp::wire::{
    IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
};
use plebnet_tests::{Paced, kernel_drops, read_exact_hash, send_pattern};

/// Datagrams the stranger sends.
const FLOOD: u64 = 1_000_000;
/// Bytes B sends to A meanwhile.
const TRANSFER: usize = 16 << 20;
const A_IP: [u8; 4] = [10, 7, 0, 1];
const B_IP: [u8; 4] = [10, 7, 0, 2];
/// A's TCP server port and the UDP port the fake UDP packets target.
const TCP_PORT: u16 = 9000;
const UDP_PORT: u16 = 5353;

fn counter(stack: &Stack, layer: &str, name: &str) -> u64 {
    stack.counters().iter().find(|g| g.layer == layer).and_then(|g| g.get(name)).unwrap()
}

/// An IPv4 packet from `src` to `dst` around `emit_payload`'s transport
/// header and payload of `payload_len` bytes, all checksums valid.
fn ipv4(src: [u8; 4], dst: [u8; 4], proto: IpProtocol, payload_len: usize, emit: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let ip = Ipv4Repr {
        src_addr: Ipv4Address::from(src),
        dst_addr: Ipv4Address::from(dst),
        next_header: proto,
        payload_len,
        hop_limit: 64,
    };
    let mut buf = vec![0u8; ip.buffer_len() + payload_len];
    let mut packet = Ipv4Packet::new_unchecked(&mut buf);
    ip.emit(&mut packet, &ChecksumCapabilities::default());
    emit(packet.payload_mut());
    buf
}

fn udp(src: [u8; 4], dst: [u8; 4], src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let repr = UdpRepr { src_port, dst_port };
    let (s, d) = (Ipv4Address::from(src).into(), Ipv4Address::from(dst).into());
    ipv4(src, dst, IpProtocol::Udp, repr.header_len() + payload.len(), |buf| {
        let caps = ChecksumCapabilities::default();
        repr.emit(&mut UdpPacket::new_unchecked(buf), &s, &d, payload.len(), |b| b.copy_from_slice(payload), &caps);
    })
}

fn tcp(src: [u8; 4], dst: [u8; 4], src_port: u16, dst_port: u16, control: TcpControl, seq: u32) -> Vec<u8> {
    let repr = TcpRepr {
        src_port,
        dst_port,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: None,
        window_len: 65_535,
        window_scale: None,
        max_seg_size: (control == TcpControl::Syn).then_some(1400),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let (s, d) = (Ipv4Address::from(src).into(), Ipv4Address::from(dst).into());
    ipv4(src, dst, IpProtocol::Tcp, repr.buffer_len(), |buf| {
        repr.emit(&mut TcpPacket::new_unchecked(buf), &s, &d, &ChecksumCapabilities::default());
    })
}

/// The `n`th datagram of the flood: garbage, a SYN or UDP packet to A from
/// some other overlay address, or a packet claiming B's overlay source
/// (including RSTs aimed at the running connection `b_port` → 9000).
fn hostile(rng: &mut Rng, b_port: u16) -> Vec<u8> {
    let other = [10, 7, 0, 3 + rng.below(250) as u8];
    match rng.below(5) {
        0 | 1 => {
            let mut garbage = vec![0u8; rng.below(1501) as usize];
            garbage.iter_mut().for_each(|b| *b = rng.next_u64() as u8);
            garbage
        }
        2 => tcp(other, A_IP, 1024 + rng.below(60_000) as u16, TCP_PORT, TcpControl::Syn, rng.next_u64() as u32),
        3 => udp(other, A_IP, 4444, UDP_PORT, b"from a stranger"),
        _ if rng.chance(0.5) => udp(B_IP, A_IP, 4444, UDP_PORT, b"claims to be B"),
        _ => tcp(B_IP, A_IP, b_port, TCP_PORT, TcpControl::Rst, rng.next_u64() as u32),
    }
}

/// Every record of a RAW pcap as (IPv4 source, IPv4 destination).
fn pcap_addresses(data: &[u8]) -> Vec<([u8; 4], [u8; 4])> {
    assert_eq!(u32::from_le_bytes(data[20..24].try_into().unwrap()), 101, "link type RAW");
    let mut out = Vec::new();
    let mut at = 24;
    while at < data.len() {
        let incl = u32::from_le_bytes(data[at + 8..at + 12].try_into().unwrap()) as usize;
        let packet = &data[at + 16..at + 16 + incl];
        assert_eq!(packet[0] >> 4, 4, "every record is an IPv4 packet");
        out.push((packet[12..16].try_into().unwrap(), packet[16..20].try_into().unwrap()));
        at += 16 + incl;
    }
    assert_eq!(at, data.len(), "no torn record");
    out
}

#[test]
fn a_million_stranger_datagrams_reach_nothing_and_get_no_answer() {
    let started = Instant::now();
    let pcap = std::env::temp_dir().join(format!("plebnet-hostile-{}.pcap", std::process::id()));
    let sa = KernelUdp::bind("127.0.0.1:0").unwrap();
    let sb = KernelUdp::bind("127.0.0.1:0").unwrap();
    let (ea, eb) = (sa.local_addr().unwrap(), sb.local_addr().unwrap());
    let na = UdpNic::from_socket(sa, vec![UdpPeer::new(eb, &["10.7.0.2/32"])], UdpNicConfig::default()).unwrap();
    let nb = UdpNic::from_socket(sb, vec![UdpPeer::new(ea, &["10.7.0.1/32"])], UdpNicConfig::default()).unwrap();
    let a = Stack::new(StackConfig::with_address("10.7.0.1/24"), Capture::new(na, &pcap).unwrap()).unwrap();
    let b = Stack::new(StackConfig::with_address("10.7.0.2/24"), nb).unwrap();
    let udp_target = UdpSocket::bind(&a, SocketAddr::from((A_IP, UDP_PORT))).unwrap();
    let drops_before = kernel_drops(ea).expect("A's socket in /proc/net/udp");

    // The transfer B → A, connected before the flood so its port is known.
    let listener = TcpListener::bind(&a, SocketAddr::from((A_IP, TCP_PORT))).unwrap();
    let acceptor = thread::spawn(move || {
        let served = listener.accept().unwrap().0;
        (listener, served)
    });
    let client = TcpStream::connect(&b, SocketAddr::from((A_IP, TCP_PORT))).unwrap();
    let b_port = client.local_addr().unwrap().port();
    let (listener, served) = acceptor.join().unwrap();

    // The stranger floods in a tight loop; the transfer starts once the
    // flood is under way and is paced to span most of it.
    let stranger = KernelUdp::bind("127.0.0.1:0").unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let flood = {
        let (stranger, sent) = (stranger.try_clone().unwrap(), sent.clone());
        thread::spawn(move || {
            let mut rng = Rng::new(0x5eed_0009);
            for _ in 0..FLOOD {
                let datagram = hostile(&mut rng, b_port);
                // A full kernel buffer drops silently; sendto itself succeeds.
                stranger.send_to(&datagram, ea).unwrap();
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    while sent.load(Ordering::Relaxed) < FLOOD / 10 {
        thread::yield_now();
    }
    let paced = Paced::new(client, TRANSFER, sent.clone(), FLOOD);
    let writer = thread::spawn(move || send_pattern(paced, 9, TRANSFER).unwrap());
    let received = read_exact_hash(&served, TRANSFER).unwrap();
    let transfer_done_at = sent.load(Ordering::Relaxed);
    assert_eq!(writer.join().unwrap(), received, "(e) the 16 MiB transfer arrived intact");
    flood.join().unwrap();
    assert!(transfer_done_at >= FLOOD * 8 / 10, "the transfer ran alongside the flood");
    eprintln!("transfer finished after {transfer_done_at} of {FLOOD} stranger datagrams");

    // Wait for A's NIC to drain its socket: every stranger datagram is then
    // either counted by the NIC or dropped by the kernel.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (unknown, kernel) = loop {
        let unknown = counter(&a, "udp", "rx_dropped_unknown_peer");
        let kernel = kernel_drops(ea).unwrap() - drops_before;
        if unknown + kernel >= FLOOD {
            break (unknown, kernel);
        }
        assert!(Instant::now() < deadline, "NIC never drained: {unknown} counted + {kernel} kernel drops");
        thread::sleep(Duration::from_millis(10));
    };
    // The kernel's drops may include some of B's datagrams too (retransmitted
    // by TCP), never more than B sent.
    let b_sent = counter(&b, "udp", "tx_packets");
    eprintln!("NIC counted {unknown} stranger datagrams, kernel dropped {kernel}, B sent {b_sent}");
    assert!(unknown > 0 && unknown <= FLOOD, "(c) {unknown}");
    assert!(unknown + kernel - FLOOD <= b_sent, "(c) {unknown} + {kernel} - {FLOOD} > {b_sent}");
    assert_eq!(counter(&a, "udp", "rx_dropped_not_ip"), 0, "garbage never got past the peer check");
    assert_eq!(counter(&a, "udp", "rx_dropped_spoofed_source"), 0, "B itself never spoofs");
    assert_eq!(counter(&a, "udp", "tx_dropped_no_peer"), 0, "(b) A sent to nobody but B");

    // (a) Nothing came back to the stranger.
    stranger.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut buf = [0u8; 2048];
    match stranger.recv_from(&mut buf) {
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
        other => panic!("(a) the stranger got an answer: {other:?}"),
    }
    // (d) No stranger datagram reached a socket, and no SYN a listener.
    udp_target.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let got = udp_target.recv_from(&mut buf);
    assert!(got.is_err(), "(d) a stranger's datagram reached a socket: {got:?}");
    listener.set_nonblocking(true).unwrap();
    let extra = listener.accept();
    assert!(extra.is_err(), "(d) a stranger's SYN made a connection: {extra:?}");

    // (b) The capture holds only the conversation between A and B.
    let a_sent = counter(&a, "udp", "tx_packets");
    drop((served, udp_target, listener, a, b));
    let data = std::fs::read(&pcap).unwrap();
    let _ = std::fs::remove_file(&pcap);
    let records = pcap_addresses(&data);
    let outgoing = records.iter().filter(|(src, _)| *src == A_IP).count() as u64;
    for (src, dst) in &records {
        let pair = (*src, *dst);
        assert!(pair == (A_IP, B_IP) || pair == (B_IP, A_IP), "(b) stray packet {src:?} -> {dst:?}");
    }
    assert!(outgoing >= a_sent, "(b) capture saw {outgoing} of A's {a_sent} packets");
    eprintln!("{} pcap records ({outgoing} sent by A), {:.1} s", records.len(), started.elapsed().as_secs_f64());
}
