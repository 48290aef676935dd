//! The UdpNic over kernel UDP on loopback: bulk transfers at ordinary and
//! jumbo MTU (hash-checked), and the peer table's refusal of strangers and
//! of peers that claim someone else's overlay address.

use std::net::{SocketAddr, UdpSocket as KernelUdp};
use std::thread;
use std::time::Duration;

use plebnet::net::{Stack, StackConfig, TcpListener, TcpStream, UdpSocket};
use plebnet::netstack::nic::{UdpNic, UdpNicConfig, UdpPeer};
use plebnet::netstack::smoltcp::phy::ChecksumCapabilities;
use plebnet::netstack::smoltcp::wire::{IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr};
use plebnet_tests::{read_exact_hash, send_pattern, udp_stack_pair};

fn counter(stack: &Stack, layer: &str, name: &str) -> u64 {
    stack.counters().iter().find(|g| g.layer == layer).and_then(|g| g.get(name)).unwrap()
}

/// Moves `len` bytes each way at once over one connection; hashes must match.
fn both_ways(a: &Stack, b: &Stack, server: SocketAddr, len: usize) {
    let listener = TcpListener::bind(a, server).unwrap();
    let acceptor = thread::spawn(move || listener.accept().unwrap().0);
    let client = TcpStream::connect(b, server).unwrap();
    let served = acceptor.join().unwrap();
    let mut pairs = Vec::new();
    for (stream, seed) in [(client, 1u64), (served, 2u64)] {
        let reader = stream.try_clone().unwrap();
        let writer = thread::spawn(move || send_pattern(&stream, seed, len).unwrap());
        let reading = thread::spawn(move || read_exact_hash(&reader, len).unwrap());
        pairs.push((writer, reading));
    }
    let (w_client, r_client) = pairs.remove(0);
    let (w_server, r_server) = pairs.remove(0);
    assert_eq!(w_client.join().unwrap(), r_server.join().unwrap(), "client → server content differs");
    assert_eq!(w_server.join().unwrap(), r_client.join().unwrap(), "server → client content differs");
}

#[test]
fn bulk_transfer_at_mtu_1400() {
    let (a, b) = udp_stack_pair("127.0.0.1".parse().unwrap(), UdpNicConfig::default());
    both_ways(&a, &b, "10.7.0.1:9000".parse().unwrap(), 32 << 20);
    assert!(counter(&a, "udp", "rx_packets") > 20_000);
    assert_eq!(counter(&a, "udp", "rx_dropped_unknown_peer"), 0);
    assert_eq!(counter(&b, "udp", "tx_dropped_no_peer"), 0);
}

#[test]
fn bulk_transfer_at_jumbo_mtu_over_ipv6_underlay() {
    let config = UdpNicConfig { mtu: 65_000, ..Default::default() };
    let (a, b) = udp_stack_pair("::1".parse().unwrap(), config);
    both_ways(&a, &b, "[fd07::1]:9000".parse().unwrap(), 32 << 20);
    assert!(counter(&b, "udp", "rx_bytes") > 32 << 20);
}

#[test]
fn bulk_transfer_without_offload() {
    let config = UdpNicConfig { offload: false, batch: 8, ..Default::default() };
    let (a, b) = udp_stack_pair("127.0.0.1".parse().unwrap(), config);
    both_ways(&a, &b, "10.7.0.1:9000".parse().unwrap(), 8 << 20);
    assert_eq!(counter(&a, "udp", "tx_gso_batches"), 0);
}

/// An IPv4/UDP packet from `src` to `dst` carrying `payload`.
fn udp_packet(src: [u8; 4], dst: [u8; 4], dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let (src, dst) = (Ipv4Address::from(src), Ipv4Address::from(dst));
    let udp = UdpRepr { src_port: 4444, dst_port };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Udp,
        payload_len: udp.header_len() + payload.len(),
        hop_limit: 64,
    };
    let mut buf = vec![0u8; ip.buffer_len() + ip.payload_len];
    let caps = ChecksumCapabilities::default();
    let mut packet = Ipv4Packet::new_unchecked(&mut buf);
    ip.emit(&mut packet, &caps);
    let mut datagram = UdpPacket::new_unchecked(packet.payload_mut());
    udp.emit(&mut datagram, &src.into(), &dst.into(), payload.len(), |b| b.copy_from_slice(payload), &caps);
    buf
}

#[test]
fn strangers_and_spoofed_sources_reach_nothing() {
    // Stack A's only peer is `peer` (owning 10.9.0.2/32).
    let peer = KernelUdp::bind("127.0.0.1:0").unwrap();
    let stranger = KernelUdp::bind("127.0.0.1:0").unwrap();
    let nic = UdpNic::bind(
        "127.0.0.1:0".parse().unwrap(),
        vec![UdpPeer::new(peer.local_addr().unwrap(), &["10.9.0.2/32"])],
        UdpNicConfig::default(),
    )
    .unwrap();
    let nic_addr = nic.local_addr().unwrap();
    let a = Stack::new(StackConfig::with_address("10.9.0.1/24"), nic).unwrap();
    let socket = UdpSocket::bind(&a, "10.9.0.1:5353".parse().unwrap()).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(300))).unwrap();

    // A valid-looking packet, but from an underlay address that is no peer.
    let genuine = udp_packet([10, 9, 0, 2], [10, 9, 0, 1], 5353, b"from a stranger");
    for _ in 0..100 {
        stranger.send_to(&genuine, nic_addr).unwrap();
    }
    // From the real peer, but claiming an overlay source it does not own.
    let spoofed = udp_packet([10, 9, 0, 77], [10, 9, 0, 1], 5353, b"spoofed source");
    for _ in 0..50 {
        peer.send_to(&spoofed, nic_addr).unwrap();
    }
    // Then one legitimate datagram, which must be the only thing delivered.
    let legit = udp_packet([10, 9, 0, 2], [10, 9, 0, 1], 5353, b"legit");
    peer.send_to(&legit, nic_addr).unwrap();

    let mut buf = [0u8; 64];
    let (n, from) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"legit");
    assert_eq!(from, "10.9.0.2:4444".parse().unwrap());
    let more = socket.recv_from(&mut buf);
    assert!(more.is_err(), "nothing else may arrive, got {more:?}");
    // The legitimate datagram came after the others on the same socket
    // queue, so every drop is counted by now.
    assert_eq!(counter(&a, "udp", "rx_dropped_unknown_peer"), 100);
    assert_eq!(counter(&a, "udp", "rx_dropped_spoofed_source"), 50);
    assert_eq!(counter(&a, "udp", "rx_packets"), 1);
}

#[test]
fn packets_nobody_carries_are_counted() {
    let (a, _b) = udp_stack_pair("127.0.0.1".parse().unwrap(), UdpNicConfig::default());
    // 10.7.0.9 is on A's prefix but no peer carries it.
    let socket = UdpSocket::bind(&a, "10.7.0.1:0".parse().unwrap()).unwrap();
    for _ in 0..10 {
        socket.send_to(b"nobody", "10.7.0.9:9".parse().unwrap()).unwrap();
    }
    // Sends are asynchronous: the stack drops them once it polls, so wait
    // for its counter rather than for time.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while counter(&a, "udp", "tx_dropped_no_peer") < 10 {
        assert!(std::time::Instant::now() < deadline, "drops never counted");
        thread::yield_now();
    }
}

#[test]
fn bad_nic_settings_are_refused() {
    let e = UdpNic::bind("127.0.0.1:0".parse().unwrap(), vec![], UdpNicConfig { mtu: 500, ..Default::default() })
        .unwrap_err();
    assert!(e.to_string().contains("MTU 500"), "{e}");
    let e = UdpNic::bind(
        "127.0.0.1:0".parse().unwrap(),
        vec![
            UdpPeer::new("127.0.0.1:1".parse().unwrap(), &["10.0.0.0/8"]),
            UdpPeer::new("127.0.0.1:2".parse().unwrap(), &["10.1.0.0/16"]),
        ],
        UdpNicConfig::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("overlaps"), "{e}");
}

#[test]
fn capture_writes_every_packet_as_pcap() {
    use plebnet::netstack::nic::Capture;
    let path = std::env::temp_dir().join(format!("plebnet-capture-{}.pcap", std::process::id()));
    let sa = KernelUdp::bind("127.0.0.1:0").unwrap();
    let sb = KernelUdp::bind("127.0.0.1:0").unwrap();
    let (ea, eb) = (sa.local_addr().unwrap(), sb.local_addr().unwrap());
    let na = UdpNic::from_socket(sa, vec![UdpPeer::new(eb, &["10.7.0.2/32"])], UdpNicConfig::default()).unwrap();
    let nb = UdpNic::from_socket(sb, vec![UdpPeer::new(ea, &["10.7.0.1/32"])], UdpNicConfig::default()).unwrap();
    let a = Stack::new(StackConfig::with_address("10.7.0.1/24"), Capture::new(na, &path).unwrap()).unwrap();
    let b = Stack::new(StackConfig::with_address("10.7.0.2/24"), nb).unwrap();
    both_ways(&a, &b, "10.7.0.1:9000".parse().unwrap(), 1 << 20);
    let (sent, received) = (counter(&a, "udp", "tx_packets"), counter(&a, "udp", "rx_packets"));
    let written = counter(&a, "capture", "packets_written");
    drop((a, b));

    let data = std::fs::read(&path).unwrap();
    // A reader nobody here wrote: tcpdump parses every record as IPv4/TCP
    // (installed by scripts/test.sh as root; skipped where it is missing).
    let tcpdump = std::process::Command::new("tcpdump").args(["-nn", "-r"]).arg(&path).output();
    let _ = std::fs::remove_file(&path);
    match tcpdump {
        Ok(out) => {
            assert!(out.status.success(), "tcpdump: {}", String::from_utf8_lossy(&out.stderr));
            let text = String::from_utf8_lossy(&out.stdout);
            let tcp_lines = text.lines().filter(|l| l.contains(" IP 10.7.0.") && l.contains("Flags [")).count();
            assert_eq!(tcp_lines, text.lines().count(), "every record is an IPv4 TCP segment:\n{text}");
            assert!(tcp_lines as u64 >= written, "tcpdump saw {tcp_lines} of {written} packets");
        }
        Err(e) => eprintln!("tcpdump not run ({e}); the pcap structure is still checked below"),
    }
    assert_eq!(&data[0..4], &0xa1b2_c3d4u32.to_le_bytes(), "pcap magic");
    assert_eq!(u32::from_le_bytes(data[20..24].try_into().unwrap()), 101, "link type RAW");
    let mut at = 24;
    let mut records = 0u64;
    while at < data.len() {
        let incl = u32::from_le_bytes(data[at + 8..at + 12].try_into().unwrap()) as usize;
        let orig = u32::from_le_bytes(data[at + 12..at + 16].try_into().unwrap()) as usize;
        assert_eq!(incl, orig);
        let packet = &data[at + 16..at + 16 + incl];
        assert_eq!(packet[0] >> 4, 4, "every record is an IPv4 packet");
        assert_eq!(u16::from_be_bytes([packet[2], packet[3]]) as usize, incl, "IP total length matches");
        at += 16 + incl;
        records += 1;
    }
    assert_eq!(at, data.len(), "no torn record");
    // Everything counted as written is in the file (the stack flushes after
    // every poll and on drop), and that is every packet the NIC moved up to
    // the moment we read the counters.
    assert!(records >= written && written >= sent + received - 2, "{records} {written} {sent} {received}");
}
