//! Multipath through nodes, in one process: node A's `forward` with `connect = "mp@B1,B2:9000"` carries each
//! kernel connection over a tunnel whose two legs go through A's two UDP interfaces (different overlay
//! prefixes) to node B's multipath `reverse`, which splices each tunnel stream to a kernel server. 16 MiB
//! each way, sha256 compared, both legs used (the nodes' stats). A peer that does not speak the protocol (a
//! plain TLS echo on B's stack) gets a single path, intact, with one warning. Configuration mistakes (a bad
//! `mp@` address, a missing certificate file, a bad pin) name their line and key.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex, Once};

use plebnet::config::{ConfigError, NodeConfig, PeerPin};
use plebnet::net::NetStack;
use plebnet::node::{Node, NodeOptions};
use plebnet_tests::cells::{echo_tls_bytes, join_bounded, spawn_bounded};
use plebnet_tests::{Scratch, drain_hash, send_pattern};
use plebnet_transport::multipath::NodeMultipath;
use plebnet_transport::tls::{Pin, TlsCellStream, self_signed, server_config};
use serde_json::Value;

const MIB: usize = 1 << 20;

/// PEM text of one DER block.
fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            let c = if i <= chunk.len() { ALPHABET[(n >> (18 - 6 * i) & 63) as usize] } else { b'=' };
            b64.push(c as char);
        }
    }
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|l| std::str::from_utf8(l).unwrap()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// A fresh certificate and key written as `node-b.crt` and `node-b.key` in `dir`; returns the SPKI pin a
/// forward needs, as the config writes it.
fn write_identity(dir: &Path) -> String {
    let (cert, key) = self_signed(&["node-b"]).unwrap();
    std::fs::write(dir.join("node-b.crt"), pem("CERTIFICATE", &cert)).unwrap();
    std::fs::write(dir.join("node-b.key"), pem("PRIVATE KEY", key.secret_der())).unwrap();
    PeerPin::from(Pin::spki_sha256(&cert).unwrap()).to_string()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Underlay ports: A's two interfaces, then B's.
struct Ports {
    a: [u16; 2],
    b: [u16; 2],
}

impl Ports {
    fn new() -> Ports {
        Ports { a: [free_udp_port(), free_udp_port()], b: [free_udp_port(), free_udp_port()] }
    }
}

/// Two UDP interfaces on loopback, `10.71.1.<me>/24` and `10.71.2.<me>/24`, each peered with the other
/// node's interface on the same prefix.
fn interfaces(me: u8, peer: u8, mine: [u16; 2], theirs: [u16; 2]) -> String {
    (0..2)
        .map(|i| {
            format!(
                "[[interface]]\nname = \"path{n}\"\nkind = \"udp\"\naddresses = [\"10.71.{n}.{me}/24\"]\n\
                 listen = \"127.0.0.1:{}\"\n\n[[interface.peer]]\nendpoint = \"127.0.0.1:{}\"\n\
                 prefixes = [\"10.71.{n}.{peer}/32\"]\n\n",
                mine[i],
                theirs[i],
                n = i + 1
            )
        })
        .collect()
}

/// Node A: a multipath forward from a kernel port to B's two addresses.
fn config_a(ports: &Ports, pin: &str) -> String {
    format!(
        "name = \"a\"\n\n{}[[service]]\nkind = \"forward\"\nlisten = \"127.0.0.1:0\"\n\
         connect = \"mp@10.71.1.2,10.71.2.2:9000\"\npin = \"{pin}\"\n",
        interfaces(1, 2, ports.a, ports.b)
    )
}

/// Node B: a multipath responder on both addresses, spliced to `kernel`.
fn config_b(ports: &Ports, kernel: SocketAddr) -> String {
    format!(
        "name = \"b\"\n\n[tls]\ncertificate = \"node-b.crt\"\nprivate_key = \"node-b.key\"\n\n{}[[service]]\n\
         kind = \"reverse\"\nlisten = \"mp@10.71.1.2,10.71.2.2:9000\"\nconnect = \"{kernel}\"\n",
        interfaces(2, 1, ports.b, ports.a)
    )
}

fn options() -> NodeOptions {
    NodeOptions { multipath: Some(Arc::new(NodeMultipath::default())), ..NodeOptions::default() }
}

fn start(dir: &Path, name: &str, text: &str) -> Node {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    let config = NodeConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
    Node::start(&config, &options()).unwrap_or_else(|e| panic!("node {name}: {e}"))
}

/// A kernel client through `forward`: sends `up` bytes (seed 1) while reading to the end; returns the
/// sha256 of what it sent and of what it received, and how much it received.
fn client(forward: SocketAddr, up: usize) -> ([u8; 32], (usize, [u8; 32])) {
    let conn = TcpStream::connect(forward).unwrap();
    let writer = conn.try_clone().unwrap();
    let sending = spawn_bounded("client upload", move || {
        let hash = send_pattern(&writer, 1, up).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
        hash
    });
    let received = drain_hash(&conn).unwrap();
    (join_bounded("client upload", &sending), received)
}

/// The multipath service's stats from a node's stats document.
fn multipath_stats(node: &Node) -> Value {
    node.stats()["services"][0]["multipath"].clone()
}

/// Acceptance: a kernel client uploads and downloads 16 MiB through A's mp@ forward and B's multipath
/// reverse to a kernel server; both directions arrive intact and both legs (both interfaces) carried data.
#[test]
fn mp_forward_carries_16_mib_each_way_over_both_legs() {
    let scratch = Scratch::new("mp-both");
    let pin = write_identity(&scratch.0);
    // The kernel server: takes the upload, hashing it, while it sends its own 16 MiB (seed 2).
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let kernel = server.local_addr().unwrap();
    let serving = spawn_bounded("kernel server", move || {
        let (conn, _) = server.accept().unwrap();
        let reader = conn.try_clone().unwrap();
        let upload = spawn_bounded("server reads", move || drain_hash(&reader).unwrap());
        let sent = send_pattern(&conn, 2, 16 * MIB).unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
        (join_bounded("server reads", &upload), sent)
    });
    let ports = Ports::new();
    let b = start(&scratch.0, "b", &config_b(&ports, kernel));
    let a = start(&scratch.0, "a", &config_a(&ports, &pin));

    let (uploaded, downloaded) = client(a.services[0].bound, 16 * MIB);
    let (server_got, server_sent) = join_bounded("kernel server", &serving);
    assert_eq!(server_got, (16 * MIB, uploaded), "the upload arrived changed");
    assert_eq!(downloaded, (16 * MIB, server_sent), "the download arrived changed");

    let (fa, fb) = (multipath_stats(&a), multipath_stats(&b));
    assert_eq!((fa["tunnels"].as_u64(), fa["single_path"].as_u64()), (Some(1), Some(0)), "{fa}");
    assert_eq!((fb["tunnels"].as_u64(), fb["legs_refused"].as_u64()), (Some(1), Some(0)), "{fb}");
    for (side, stats) in [("A", &fa), ("B", &fb)] {
        let paths = stats["paths"].as_array().unwrap();
        assert_eq!(paths.len(), 2, "{side}: {stats}");
        for p in paths {
            assert_eq!(p["legs"].as_u64(), Some(1), "{side}: one leg per path: {stats}");
            let carried = p["bytes_sent"].as_u64().unwrap() + p["bytes_received"].as_u64().unwrap();
            assert!(carried > 0, "{side}: leg to {} carried nothing: {stats}", p["path"]);
        }
    }
    // The legs really went through both interfaces of each node.
    for node in [&a, &b] {
        for iface in node.stats()["interfaces"].as_array().unwrap() {
            let rx = iface["counters"]["udp"]["rx_bytes"].as_u64().unwrap();
            assert!(rx > 64 * 1024, "{} {} received only {rx} bytes", node.name, iface["name"]);
        }
    }
}

/// Warnings logged by this test binary, for counting the fallback's line.
static WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct CaptureWarnings;

impl log::Log for CaptureWarnings {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            WARNINGS.lock().unwrap_or_else(|p| p.into_inner()).push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

fn capture_warnings() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        log::set_logger(&CaptureWarnings).unwrap();
        log::set_max_level(log::LevelFilter::Warn);
    });
}

/// Acceptance: B does not speak the multipath protocol — on its first address runs a plain TLS echo (no
/// ALPN). Each connection through A's mp@ forward falls back to that one TLS path and arrives intact; the
/// fallback is logged once, not once per connection.
#[test]
fn mp_forward_falls_back_to_one_path_for_a_plain_tls_peer() {
    capture_warnings();
    let scratch = Scratch::new("mp-fallback");
    let (cert, key) = self_signed(&["plain"]).unwrap();
    let pin = PeerPin::from(Pin::spki_sha256(&cert).unwrap()).to_string();
    let tls = Arc::new(server_config(cert, key).unwrap());
    let ports = Ports::new();
    let b = start(&scratch.0, "b", &format!("name = \"b\"\n\n{}", interfaces(2, 1, ports.b, ports.a)));
    let listener = b.interfaces[0].stack.tcp_listen("10.71.1.2:9000".parse().unwrap()).unwrap();
    let echo = spawn_bounded("plain TLS echo", move || {
        for _ in 0..2 {
            let (tcp, _) = listener.accept().unwrap();
            echo_tls_bytes(TlsCellStream::accept(tcp, tls.clone()).unwrap().into_byte_stream());
        }
    });
    let a = start(&scratch.0, "a", &config_a(&ports, &pin));
    for size in [8 * MIB, MIB] {
        let (sent, (got, hash)) = client(a.services[0].bound, size);
        assert_eq!((got, hash), (size, sent), "the echo arrived changed");
    }
    join_bounded("plain TLS echo", &echo);
    let stats = multipath_stats(&a);
    assert_eq!((stats["tunnels"].as_u64(), stats["single_path"].as_u64()), (Some(0), Some(2)), "{stats}");
    let warnings = WARNINGS.lock().unwrap().clone();
    let fallbacks: Vec<&String> = warnings.iter().filter(|w| w.contains("does not speak")).collect();
    assert_eq!(fallbacks.len(), 1, "one line for the fallback: {warnings:?}");
    assert!(fallbacks[0].contains("10.71.1.2:9000") && fallbacks[0].contains("single path"), "{fallbacks:?}");
}

/// `text` as `node.toml` in a scratch directory (with B's certificate files beside it), loaded.
fn load(tag: &str, text: &str) -> Result<NodeConfig, ConfigError> {
    let scratch = Scratch::new(&format!("mp-{tag}"));
    write_identity(&scratch.0);
    let path = scratch.0.join("node.toml");
    std::fs::write(&path, text).unwrap();
    NodeConfig::load(&path)
}

/// The line of `text` that contains `needle` (1-based).
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("no `{needle}` in the config")) + 1
}

/// Acceptance: configuration mistakes name the line and the key: a bad mp@ address, a missing certificate
/// file, a bad pin, and the other multipath rules.
#[test]
fn multipath_config_mistakes_name_line_and_key() {
    let ports = Ports::new();
    let pin = "spki-sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let good_a = config_a(&ports, pin);
    let good_b = config_b(&ports, "127.0.0.1:8000".parse().unwrap());
    let md5 = pin.replace("spki", "md5");
    load("good-a", &good_a).unwrap_or_else(|e| panic!("{e}"));
    load("good-b", &good_b).unwrap_or_else(|e| panic!("{e}"));
    for (tag, good, from, to, field, needle) in [
        (
            "addr",
            &good_a,
            "mp@10.71.1.2,10.71.2.2:9000",
            "mp@10.71.1.2,10.71.2.x:9000",
            "service[0].connect",
            "bad address \"10.71.2.x\"",
        ),
        (
            "port",
            &good_a,
            "mp@10.71.1.2,10.71.2.2:9000",
            "mp@10.71.1.2,10.71.2.2",
            "service[0].connect",
            "missing :PORT",
        ),
        (
            "twice",
            &good_b,
            "mp@10.71.1.2,10.71.2.2:9000",
            "mp@10.71.1.2,10.71.1.2:9000",
            "service[0].listen",
            "listed twice",
        ),
        (
            "reach",
            &good_a,
            "mp@10.71.1.2,10.71.2.2:9000",
            "mp@10.71.1.2,10.99.0.2:9000",
            "service[0].connect",
            "no interface or route reaches 10.99.0.2",
        ),
        (
            "own",
            &good_b,
            "mp@10.71.1.2,10.71.2.2:9000",
            "mp@10.71.1.2,10.71.2.3:9000",
            "service[0].listen",
            "10.71.2.3 is not an address of this node",
        ),
        (
            "nocert",
            &good_b,
            "certificate = \"node-b.crt\"",
            "certificate = \"missing.crt\"",
            "tls.certificate",
            "cannot read",
        ),
        (
            "nokey",
            &good_b,
            "private_key = \"node-b.key\"",
            "private_key = \"node-b.crt\"",
            "tls.private_key",
            "holds no private key",
        ),
        ("pin", &good_a, pin, "spki-sha256:0011", "service[0].pin", "is not a pin"),
        ("pinkind", &good_a, pin, md5.as_str(), "service[0].pin", "is not a pin"),
        ("scheduler", &good_a, "pin = ", "scheduler = \"fastest\"\npin = ", "scheduler", "unknown variant `fastest`"),
    ] {
        let text = good.replace(from, to);
        assert_ne!(&text, good, "{tag}");
        let e = load(tag, &text).unwrap_err();
        let line = line_of(&text, to.lines().next().unwrap());
        assert_eq!((e.position.map(|p| p.0), e.field.as_str()), (Some(line), field), "{tag}: {e}");
        let shown = e.to_string();
        assert!(shown.contains(needle), "{tag}: expected `{needle}` in: {shown}");
        assert!(shown.contains(&format!("node.toml:{line}:")), "{tag}: {shown}");
    }
    // Keys that are missing or out of place.
    for (tag, text, field, needle) in [
        ("nopin", good_a.replace(&format!("pin = \"{pin}\"\n"), ""), "service[0].pin", "needs `pin`"),
        (
            "notls",
            good_b.replace("[tls]\ncertificate = \"node-b.crt\"\nprivate_key = \"node-b.key\"\n", ""),
            "service[0].listen",
            "add a [tls] section",
        ),
        (
            "plainpin",
            good_a.replace("mp@10.71.1.2,10.71.2.2:9000", "10.71.1.2:9000"),
            "service[0].pin",
            "`pin` is for multipath forwards",
        ),
        (
            "mplisten",
            good_a.replace("listen = \"127.0.0.1:0\"", "listen = \"mp@127.0.0.1:80\""),
            "service[0].listen",
            "the mp@ form is for",
        ),
    ] {
        let e = load(tag, &text).unwrap_err();
        assert_eq!(e.field, field, "{tag}: {e}");
        assert!(e.position.is_some(), "{tag}: no line in {e}");
        assert!(e.to_string().contains(needle), "{tag}: expected `{needle}` in: {e}");
    }
}

/// A program that starts a node without plebnet-transport's multipath gets a clear error, not a panic.
#[test]
fn a_node_without_multipath_support_says_so() {
    let scratch = Scratch::new("mp-unsupported");
    let pin = write_identity(&scratch.0);
    let path = scratch.0.join("a.toml");
    std::fs::write(&path, config_a(&Ports::new(), &pin)).unwrap();
    let config = NodeConfig::load(&path).unwrap();
    let e = Node::start(&config, &NodeOptions::default()).unwrap_err().to_string();
    assert!(e.contains("service[0]") && e.contains("multipath"), "{e}");
}
