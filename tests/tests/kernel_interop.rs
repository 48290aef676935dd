//! Interop with real peers nobody here wrote, each in a network namespace
//! the test creates (root only; see `plebnet_tests::netns::privileged`):
//!
//! * the Linux kernel over **tap**: the kernel's curl downloads and uploads
//!   20 MiB from an HTTP server on plebnet, and plebnet's client fetches
//!   20 MiB from `python3 -m http.server` on the kernel side;
//! * the kernel over **tun**: curl downloads 20 MiB from plebnet;
//! * **socat** as a UDP peer: `socat TUN:… UDP:…` hands kernel packets to a
//!   plebnet UdpNic, and curl fetches 20 MiB across it.
//!
//! Every transfer compares sha256 of what arrived with what was sent.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::Stdio;

use plebnet::net::{Stack, StackConfig};
use plebnet::netstack::nic::{TunTapConfig, TunTapNic, UdpNic, UdpNicConfig, UdpPeer};
use plebnet_tests::netns::{Netns, privileged};
use plebnet_tests::{http, pattern, sha256};

const SIZE: usize = 20 << 20;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A plebnet HTTP server holding one 20 MiB blob; returns the blob's hash.
fn serve_blob(stack: &Stack, addr: SocketAddr) -> [u8; 32] {
    let blob = pattern(0xb10b, SIZE);
    let digest = sha256(&blob);
    http::serve(stack, addr, HashMap::from([("blob".to_string(), blob)])).unwrap();
    digest
}

/// curl inside `ns` downloads `url`; returns the sha256 of the body.
fn curl_download(ns: &Netns, url: &str) -> String {
    let out = ns.command(&["sh", "-c", &format!("curl -sS --fail --max-time 120 {url} | sha256sum")]).output().unwrap();
    assert!(out.status.success(), "curl {url}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

#[test]
fn kernel_curl_over_tap_both_ways_and_plebnet_client_against_python() {
    if !privileged("kernel_curl_over_tap") {
        return;
    }
    let mut ns = Netns::create("tap");
    let nic = ns.enter(|| TunTapNic::open(TunTapConfig::tap("pltap0")).expect("open tap"));
    ns.exec(&["ip", "addr", "add", "10.61.0.1/24", "dev", "pltap0"]);
    ns.exec(&["ip", "-6", "addr", "add", "fd61::1/64", "dev", "pltap0", "nodad"]);
    ns.exec(&["ip", "link", "set", "pltap0", "up"]);
    let offload = nic.offload();
    let config = StackConfig::with_address("10.61.0.2/24").address("fd61::2/64").named("tap");
    let stack = Stack::new(config, nic).unwrap();
    let digest = serve_blob(&stack, "10.61.0.2:80".parse().unwrap());
    assert_eq!(serve_blob(&stack, "[fd61::2]:80".parse().unwrap()), digest);

    // Kernel downloads from plebnet, over IPv4 and IPv6 (ARP and NDP).
    assert_eq!(curl_download(&ns, "http://10.61.0.2/blob"), hex(&digest), "download over tap differs");
    assert_eq!(curl_download(&ns, "-g http://[fd61::2]/blob"), hex(&digest), "IPv6 download over tap differs");

    // Kernel uploads to plebnet, which answers the hash of what arrived.
    let upload = pattern(0x0b10, SIZE);
    let file = std::env::temp_dir().join(format!("plebnet-tap-upload-{}", std::process::id()));
    std::fs::write(&file, &upload).unwrap();
    let out = ns
        .command(&["curl", "-sS", "--fail", "--max-time", "120", "-T", file.to_str().unwrap(), "http://10.61.0.2/up"])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "curl upload: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), hex(&sha256(&upload)), "upload over tap differs");

    // With offload the transfers crossed the tap as super-segments.
    let tap = stack.counters().into_iter().find(|g| g.layer == "tap").unwrap();
    eprintln!("tap counters (offload {offload}): {:?}", tap.values);
    if offload {
        assert!(tap.get("tx_gso_segments").unwrap() > 0, "{tap:?}");
        assert!(tap.get("rx_packets").unwrap() < (SIZE / 1460) as u64, "received super-segments: {tap:?}");
    }

    // plebnet's client fetches from Python's http.server on the kernel side.
    let dir = std::env::temp_dir().join(format!("plebnet-tap-served-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let served = pattern(0x5e7e, SIZE);
    std::fs::write(dir.join("file.bin"), &served).unwrap();
    let mut py = ns.command(&["python3", "-u", "-m", "http.server", "8000", "--bind", "10.61.0.1", "--directory"]);
    py.arg(&dir).stdout(Stdio::piped()).stderr(Stdio::null());
    let child = ns.spawn(py);
    // http.server prints "Serving HTTP on ..." once it listens.
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.contains("Serving HTTP"), "python said: {first}");
    let (status, len, got) = http::get(&stack, "10.61.0.1:8000".parse().unwrap(), "/file.bin").unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!((status, len), (200, SIZE));
    assert_eq!(got, sha256(&served), "plebnet client download differs");

    // The stack reaches its own address and 127.0.0.1 over Ethernet too
    // (ARP for itself is answered inside the stack, never on the wire).
    assert_eq!(serve_blob(&stack, "127.0.0.1:80".parse().unwrap()), digest);
    for own in ["10.61.0.2:80", "127.0.0.1:80"] {
        let (status, len, got) = http::get(&stack, own.parse().unwrap(), "/blob").unwrap();
        assert_eq!((status, len, got), (200, SIZE, digest), "loopback fetch from {own}");
    }
}

#[test]
fn kernel_curl_over_tun() {
    if !privileged("kernel_curl_over_tun") {
        return;
    }
    let ns = Netns::create("tun");
    let nic = ns.enter(|| TunTapNic::open(TunTapConfig::tun("pltun0")).expect("open tun"));
    ns.exec(&["ip", "addr", "add", "10.62.0.1/24", "dev", "pltun0"]);
    ns.exec(&["ip", "link", "set", "pltun0", "up"]);
    let stack = Stack::new(StackConfig::with_address("10.62.0.2/24").named("tun"), nic).unwrap();
    let digest = serve_blob(&stack, "10.62.0.2:80".parse().unwrap());
    assert_eq!(curl_download(&ns, "http://10.62.0.2/blob"), hex(&digest), "download over tun differs");
}

#[test]
fn socat_tun_is_a_udp_peer() {
    if !privileged("socat_tun_is_a_udp_peer") {
        return;
    }
    let mut ns = Netns::create("socat");
    // In a fresh namespace every port is free, so fixed ones are safe.
    let (plebnet_ep, socat_ep): (SocketAddr, SocketAddr) =
        ("127.0.0.1:5000".parse().unwrap(), "127.0.0.1:5001".parse().unwrap());
    let socket = ns.enter(move || std::net::UdpSocket::bind(plebnet_ep).unwrap());
    let config = UdpNicConfig { mtu: 1500, ..Default::default() };
    let nic = UdpNic::from_socket(socket, vec![UdpPeer::new(socat_ep, &["10.60.0.1/32"])], config).unwrap();
    let stack = Stack::new(StackConfig::with_address("10.60.0.2/24").named("socat-peer"), nic).unwrap();
    let digest = serve_blob(&stack, "10.60.0.2:80".parse().unwrap());

    let mut socat = ns.command(&[
        "socat",
        "-b",
        "65536",
        "TUN:10.60.0.1/24,tun-name=plsocat0,tun-type=tun,iff-no-pi,iff-up",
        &format!("UDP:{plebnet_ep},sourceport={}", socat_ep.port()),
    ]);
    socat.stdout(Stdio::null()).stderr(Stdio::inherit());
    ns.spawn(socat);
    // socat has made the device once it shows up; wait for that, bounded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !ns.command(&["ip", "link", "show", "plsocat0"]).output().unwrap().status.success() {
        assert!(std::time::Instant::now() < deadline, "socat never created its tun device");
        std::thread::park_timeout(std::time::Duration::from_millis(20));
    }
    assert_eq!(curl_download(&ns, "http://10.60.0.2/blob"), hex(&digest), "download through socat differs");
    let udp = stack.counters().into_iter().find(|g| g.layer == "udp").unwrap();
    assert!(udp.get("rx_packets").unwrap() > 1000, "{udp:?}");
    assert_eq!(udp.get("rx_dropped_unknown_peer"), Some(0), "{udp:?}");
}
