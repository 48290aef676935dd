//! Connection limits (issue 7): `StackConfig::max_connections` and
//! `max_connections_per_peer`. Beyond them a local connect fails at once
//! with `QuotaExceeded` and a message naming the limit, and a remote SYN is
//! dropped unanswered and counted; once a connection is gone, the next one
//! succeeds. The ephemeral port range running out is not a failure while
//! ports sit in TIME-WAIT: they are reused.
//!
//! Stack A is 10.7.0.1 / fd07::1, B is 10.7.0.2 / fd07::2: B's two
//! addresses are two different peers for A.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use plebnet::net::{Stack, StackConfig, TcpListener, TcpStream};
use plebnet_tests::{stack_pair_with, wait_until};

const V4: &str = "10.7.0.1:7100";
const V6: &str = "[fd07::1]:7100";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Connects from `client` to `to` and accepts on `listener`; checks that
/// bytes pass both ways.
fn open(client: &Stack, listener: &TcpListener, to: &str) -> (TcpStream, TcpStream) {
    let mut c = TcpStream::connect_timeout(client, addr(to), Duration::from_secs(10)).unwrap();
    let (mut s, _) = listener.accept().unwrap();
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    s.write_all(b"pong").unwrap();
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    (c, s)
}

/// Closes a connection with `first` closing first, so that `second`'s
/// stack (the passive closer) is rid of its socket as soon as its FIN is
/// acknowledged, without TIME-WAIT.
fn close(first: TcpStream, mut second: TcpStream) {
    drop(first);
    let mut rest = Vec::new();
    second.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

fn limited(max: Option<usize>, per_peer: Option<usize>) -> impl Fn(&mut StackConfig) {
    move |c| {
        if c.name == "b" {
            c.max_connections = max;
            c.max_connections_per_peer = per_peer;
        }
    }
}

fn limited_a(max: Option<usize>, per_peer: Option<usize>) -> impl Fn(&mut StackConfig) {
    move |c| {
        if c.name == "a" {
            c.max_connections = max;
            c.max_connections_per_peer = per_peer;
        }
    }
}

#[test]
fn a_local_connect_beyond_max_connections_fails_clearly_until_one_closes() {
    let (a, b) = stack_pair_with(None, limited(Some(3), None));
    let listener = TcpListener::bind(&a, addr("[::]:7100")).unwrap();
    let mut conns = vec![open(&b, &listener, V4), open(&b, &listener, V6), open(&b, &listener, V4)];
    assert_eq!(b.connection_count(), 3);
    for to in [V4, V6] {
        let e = TcpStream::connect(&b, addr(to)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::QuotaExceeded, "{e}");
        let msg = e.to_string();
        assert!(msg.contains("max_connections") && msg.contains('3') && msg.contains("`b`"), "{msg}");
        assert!(!msg.contains("max_connections_per_peer"), "{msg}");
    }
    assert_eq!(b.connection_count(), 3, "a refused connect holds nothing");
    // A closes first: B's socket goes through LAST-ACK, not TIME-WAIT.
    let (c, s) = conns.remove(0);
    close(s, c);
    wait_until(Duration::from_secs(10), "B's socket gone", || b.connection_count() == 2);
    let (c, s) = open(&b, &listener, V4);
    assert_eq!(b.connection_count(), 3);
    drop((c, s, conns));
}

#[test]
fn a_local_connect_beyond_max_connections_per_peer_fails_clearly_until_one_closes() {
    let (a, b) = stack_pair_with(None, limited(None, Some(2)));
    let listener = TcpListener::bind(&a, addr("[::]:7100")).unwrap();
    let mut v4 = vec![open(&b, &listener, V4), open(&b, &listener, V4)];
    let e = TcpStream::connect(&b, addr(V4)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::QuotaExceeded, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("max_connections_per_peer") && msg.contains("10.7.0.1:7100"), "{msg}");
    // Another address of the same stack is another peer.
    let v6 = [open(&b, &listener, V6), open(&b, &listener, V6)];
    assert_eq!(TcpStream::connect(&b, addr(V6)).unwrap_err().kind(), ErrorKind::QuotaExceeded);
    let (c, s) = v4.remove(0);
    close(s, c);
    wait_until(Duration::from_secs(10), "B's socket gone", || b.connection_count() == 3);
    let again = open(&b, &listener, V4);
    drop((again, v4, v6));
}

#[test]
fn syns_beyond_max_connections_are_dropped_counted_and_admitted_again_after_a_close() {
    let (a, b) = stack_pair_with(None, limited_a(Some(3), None));
    let listener = TcpListener::bind(&a, addr("[::]:7100")).unwrap();
    assert_eq!(a.connection_count(), 0, "listening sockets are not connections");
    let mut conns = vec![open(&b, &listener, V4), open(&b, &listener, V6), open(&b, &listener, V4)];
    assert_eq!(a.connection_count(), 3);
    let counters = a.stack_counters();
    let e = TcpStream::connect_timeout(&b, addr(V4), Duration::from_millis(500)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut, "A drops the SYN unanswered, no RST: {e}");
    assert!(counters.syn_dropped_conn_limit.get() >= 1);
    assert_eq!(counters.syn_dropped_peer_limit.get(), 0);
    assert_eq!(a.connection_count(), 3);
    // B closes first: A's socket goes through LAST-ACK.
    let (c, s) = conns.remove(0);
    close(c, s);
    wait_until(Duration::from_secs(10), "A's socket gone", || a.connection_count() == 2);
    let again = open(&b, &listener, V6);
    assert_eq!(a.connection_count(), 3);
    drop((again, conns));
}

#[test]
fn syns_beyond_max_connections_per_peer_are_dropped_counted_and_admitted_again_after_a_close() {
    let (a, b) = stack_pair_with(None, limited_a(None, Some(2)));
    let listener = TcpListener::bind(&a, addr("[::]:7100")).unwrap();
    let mut v4 = vec![open(&b, &listener, V4), open(&b, &listener, V4)];
    let counters = a.stack_counters();
    let e = TcpStream::connect_timeout(&b, addr(V4), Duration::from_millis(500)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    assert!(counters.syn_dropped_peer_limit.get() >= 1);
    assert_eq!(counters.syn_dropped_conn_limit.get(), 0);
    // B's IPv6 address is another peer for A.
    let v6 = open(&b, &listener, V6);
    let (c, s) = v4.remove(0);
    close(c, s);
    wait_until(Duration::from_secs(10), "A's socket gone", || a.connection_count() == 2);
    let again = open(&b, &listener, V4);
    drop((again, v4, v6));
}

#[test]
fn a_limit_of_zero_is_a_configuration_error() {
    let (na, _nb) = plebnet::netstack::nic::MemLink::pair(Default::default());
    let mut c = StackConfig::with_address("10.7.0.1/24");
    c.max_connections = Some(0);
    let e = Stack::new(c, na).unwrap_err().to_string();
    assert!(e.contains("max_connections"), "{e}");
}

/// Every ephemeral port held by a connection in TIME-WAIT: the next connect
/// takes back the oldest ports (their connections closed over a second
/// ago), as Linux's `tcp_tw_reuse` does, instead of failing.
#[test]
fn ports_in_time_wait_are_reused_when_the_range_runs_out() {
    const PORTS: usize = 16_384;
    let (a, b) = stack_pair_with(None, |c| c.default_backlog = 1024);
    let listener = TcpListener::bind(&a, addr("10.7.0.1:7190")).unwrap();
    let mut buf = [0u8; 1];
    let first_close = std::time::Instant::now();
    for i in 0..PORTS {
        let c = TcpStream::connect_timeout(&b, addr("10.7.0.1:7190"), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        let (s, _) = listener.accept().unwrap();
        drop(c);
        assert_eq!((&s).read(&mut buf).unwrap(), 0, "connection {i}: EOF expected");
    }
    // B closed first each time: its sockets hold every port in TIME-WAIT
    // (10 s in smoltcp), and none has been reused yet.
    assert_eq!(b.stack_counters().time_wait_reused.get(), 0);
    wait_until(Duration::from_secs(30), "B's connections to reach TIME-WAIT", || {
        b.tcp_socket_info().iter().filter(|i| i.state == "TIME-WAIT").count() >= PORTS - 64
    });
    // Reuse needs a second in TIME-WAIT (the rule under test, not a wait
    // for another thread): on a machine fast enough to close them all
    // sooner, let the oldest reach that age.
    if let Some(rest) = Duration::from_millis(1100).checked_sub(first_close.elapsed()) {
        std::thread::sleep(rest);
    }
    let mut c = TcpStream::connect_timeout(&b, addr("10.7.0.1:7190"), Duration::from_secs(10))
        .expect("a port in TIME-WAIT is reused");
    let (mut s, _) = listener.accept().unwrap();
    c.write_all(b"after").unwrap();
    let mut got = [0u8; 5];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"after");
    assert!(b.stack_counters().time_wait_reused.get() >= 1);
}
