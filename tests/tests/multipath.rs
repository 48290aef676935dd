//! Multipath tunnels over real plebnet stacks: legs on different NICs joined by the responder in either
//! order, a leg killed mid-transfer with nothing lost, `connect_multipath` over two addresses (also when the
//! first does not connect), and its fallback to a single path for a peer that does not speak the protocol.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use plebnet::net::{NetStack, Stack};
use plebnet_netstack::nic::ImpairConfig;
use plebnet_tests::cells::{echo_tls_bytes, join_bounded, server_side, spawn_bounded};
use plebnet_tests::{drain_hash, send_pattern, stack_pair};
use plebnet_transport::multipath::driver::{
    MultipathConnection, Tunnel, TunnelListener, connect_multipath, multipath_client_config,
};
use plebnet_transport::multipath::{LegOptions, LegState, TunnelConfig};
use plebnet_transport::tls::{Pin, TlsCellStream, client_config_pinned};

const MIB: usize = 1 << 20;
const PORT: u16 = 9000;

/// One path: a client stack and a server stack over their own MemLink (their own NICs).
fn path(one_way_ms: u64, loss: f64, seed: u64) -> (Stack, Stack) {
    let impair = ImpairConfig { seed, loss, delay: Duration::from_millis(one_way_ms), ..ImpairConfig::default() };
    stack_pair(Some(impair))
}

/// A TunnelListener serving port 9000 on every server stack.
fn listener_on(servers: &[&Stack], config: &rustls::ServerConfig) -> TunnelListener {
    let listener = TunnelListener::new(TunnelConfig::default());
    for s in servers {
        listener.serve(s.tcp_listen(SocketAddr::new("10.7.0.2".parse().unwrap(), PORT)).unwrap(), config).unwrap();
    }
    listener
}

fn leg_over(client: &Stack, pin: &Pin) -> TlsCellStream<<Stack as NetStack>::TcpStream> {
    let tcp = client.tcp_connect(SocketAddr::new("10.7.0.2".parse().unwrap(), PORT)).unwrap();
    TlsCellStream::connect(tcp, "relay.test", multipath_client_config(&client_config_pinned(*pin))).unwrap()
}

/// Sends `len` bytes on a new stream of `client` and checks what `server` receives; `midway` runs when half
/// has been sent.
fn transfer(client: &Tunnel, server: &Tunnel, len: usize, seed: u64, midway: impl FnOnce() + Send + 'static) {
    let server = server.clone();
    let receiver = spawn_bounded("receive", move || {
        let (s, target) = server.accept_stream().unwrap();
        assert_eq!(target, "sink");
        drain_hash(s).unwrap()
    });
    // open_stream returns once the peer accepted the stream.
    let mut stream = client.open_stream("sink").unwrap();
    let mut first = Vec::new();
    let sent_first = send_pattern(&mut first, seed, len).unwrap();
    let half = len / 2;
    stream.write_all(&first[..half]).unwrap();
    midway();
    stream.write_all(&first[half..]).unwrap();
    stream.shutdown_write().unwrap();
    let (got, hash) = join_bounded("receive", &receiver);
    assert_eq!(got, len);
    assert_eq!(hash, sent_first, "content differs");
}

/// Acceptance: legs arriving on two different NICs of the responder, in either order and with the second
/// leg delayed, form one tunnel — and it carries a stream intact over both.
#[test]
fn legs_on_two_nics_join_into_one_tunnel_in_either_order() {
    for creator_delayed in [false, true] {
        // Path 1 is slow (150 ms one way) when the creating leg must arrive after the joining one.
        let (c1, s1) = path(if creator_delayed { 150 } else { 2 }, 0.0, 1);
        let (c2, s2) = path(2, 0.0, 2);
        let (config, pin) = server_side(true);
        let listener = listener_on(&[&s1, &s2], &config);
        let client = Tunnel::initiator(TunnelConfig::default()).unwrap();
        client.add_leg(leg_over(&c1, &pin), LegOptions::default()).unwrap();
        let server = listener.accept_timeout(Duration::from_secs(20)).unwrap();
        if !creator_delayed {
            // The second leg comes later: only once the first carries a stream.
            let acceptor = server.clone();
            let accepted = spawn_bounded("accept probe", move || acceptor.accept_stream().map(|(_, t)| t));
            drop(client.open_stream("probe").unwrap());
            assert_eq!(join_bounded("accept probe", &accepted).unwrap(), "probe");
        }
        client.add_leg(leg_over(&c2, &pin), LegOptions::default()).unwrap();
        client.wait_legs(2, Duration::from_secs(20)).unwrap();
        server.wait_legs(2, Duration::from_secs(20)).unwrap();
        assert_eq!(listener.stats().tunnels, 1, "both legs joined one tunnel");
        assert_eq!(listener.stats().refused, 0);
        transfer(&client, &server, 8 * MIB, 3, || {});
        let legs = server.leg_stats();
        assert!(legs.iter().all(|l| l.data_bytes_received > 0), "both legs carried data: {legs:?}");
    }
}

/// Acceptance (over real stacks): a leg killed halfway through a transfer over two paths with different
/// delays and 1 % loss loses nothing and duplicates nothing; the tunnel carries on with the other leg.
#[test]
fn a_killed_leg_loses_nothing_over_real_stacks() {
    let size = std::env::var("PLEBNET_MP_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(16) * MIB;
    for seed in 0..3u64 {
        let (c1, s1) = path(5, 0.01, 10 + seed);
        let (c2, s2) = path(20, 0.01, 20 + seed);
        let (config, pin) = server_side(true);
        let listener = listener_on(&[&s1, &s2], &config);
        let client = Tunnel::initiator(TunnelConfig::default()).unwrap();
        let legs = [
            client.add_leg(leg_over(&c1, &pin), LegOptions::default()).unwrap(),
            client.add_leg(leg_over(&c2, &pin), LegOptions::default()).unwrap(),
        ];
        let server = listener.accept_timeout(Duration::from_secs(20)).unwrap();
        client.wait_legs(2, Duration::from_secs(20)).unwrap();
        let victim = legs[seed as usize % 2];
        let killer = client.clone();
        transfer(&client, &server, size, seed, move || killer.kill_leg(victim));
        assert_eq!(client.leg_stats()[victim.0 as usize].state, LegState::Closed);
        assert_eq!(client.stats().legs_closed, 1, "only the killed leg closed");
        let (sent, got) = (client.stats(), server.stats());
        assert_eq!(got.messages_delivered, sent.messages_sent, "every message delivered exactly once");
    }
}

/// `connect_multipath` over a server's IPv4 and IPv6 addresses (two paths on one NIC) builds one tunnel.
#[test]
fn connect_multipath_uses_every_address() {
    let _ = env_logger::builder().is_test(true).try_init();
    let (client, server) = stack_pair(None);
    let (config, pin) = server_side(true);
    let listener = TunnelListener::new(TunnelConfig::default());
    let paths: Vec<SocketAddr> =
        vec![format!("10.7.0.2:{PORT}").parse().unwrap(), format!("[fd07::2]:{PORT}").parse().unwrap()];
    for p in &paths {
        listener.serve(server.tcp_listen(*p).unwrap(), &config).unwrap();
    }
    let tls = client_config_pinned(pin);
    let MultipathConnection::Tunnel(tunnel) =
        connect_multipath(&client, &paths, "relay.test", &tls, TunnelConfig::default()).unwrap()
    else {
        panic!("the peer speaks multipath");
    };
    tunnel.wait_legs(2, Duration::from_secs(20)).unwrap();
    let responder = listener.accept_timeout(Duration::from_secs(20)).unwrap();
    transfer(&tunnel, &responder, 4 * MIB, 9, || {});
}

/// A first path that does not connect (nothing listens there) is left out: the next one decides and carries
/// the tunnel.
#[test]
fn connect_multipath_skips_a_path_that_does_not_connect() {
    let (client, server) = stack_pair(None);
    let (config, pin) = server_side(true);
    let listener = TunnelListener::new(TunnelConfig::default());
    let good: SocketAddr = format!("[fd07::2]:{PORT}").parse().unwrap();
    listener.serve(server.tcp_listen(good).unwrap(), &config).unwrap();
    let paths = vec![format!("10.7.0.2:{}", PORT + 1).parse().unwrap(), good];
    let tls = client_config_pinned(pin);
    let MultipathConnection::Tunnel(tunnel) =
        connect_multipath(&client, &paths, "relay.test", &tls, TunnelConfig::default()).unwrap()
    else {
        panic!("the peer speaks multipath");
    };
    tunnel.wait_legs(1, Duration::from_secs(20)).unwrap();
    let responder = listener.accept_timeout(Duration::from_secs(20)).unwrap();
    transfer(&tunnel, &responder, MIB, 11, || {});
    assert_eq!(tunnel.leg_addresses().iter().map(|l| l.peer).collect::<Vec<_>>(), vec![Some(good)]);
}

/// Acceptance: a peer that does not speak the multipath protocol (a TLS server without its ALPN) gets a
/// plain single-path stream, and the transfer is intact.
#[test]
fn connect_multipath_falls_back_to_one_path() {
    let (client, server) = stack_pair(None);
    let (config, pin) = server_side(true);
    let config = Arc::new(config);
    let listener = server.tcp_listen(format!("10.7.0.2:{PORT}").parse().unwrap()).unwrap();
    let echo = spawn_bounded("plain TLS echo", move || {
        let (tcp, _) = plebnet::net::TcpListenerApi::accept(&listener).unwrap();
        echo_tls_bytes(TlsCellStream::accept(tcp, config).unwrap().into_byte_stream());
    });
    let paths: Vec<SocketAddr> =
        vec![format!("10.7.0.2:{PORT}").parse().unwrap(), format!("[fd07::2]:{PORT}").parse().unwrap()];
    let conn =
        connect_multipath(&client, &paths, "relay.test", &client_config_pinned(pin), TunnelConfig::default()).unwrap();
    let MultipathConnection::SinglePath(mut s) = conn else { panic!("the peer does not speak multipath") };
    let data = plebnet_tests::pattern(5, MIB);
    let mut echoed = Vec::new();
    for chunk in data.chunks(64 * 1024) {
        s.write_all(chunk).unwrap();
        s.flush().unwrap();
        let mut got = vec![0u8; chunk.len()];
        s.read_exact(&mut got).unwrap();
        echoed.extend_from_slice(&got);
    }
    s.shutdown_write().unwrap();
    assert_eq!(s.read(&mut [0u8; 1]).unwrap(), 0);
    join_bounded("plain TLS echo", &echo);
    assert_eq!(plebnet_tests::sha256(&echoed), plebnet_tests::sha256(&data));
}
