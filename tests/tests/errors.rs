//! Error paths: each failure gives the std::net error kind and a message
//! that says what to do, never a panic or a hang.

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use plebnet::net::{Stack, StackConfig, TcpListener, TcpStream, UdpSocket};
use plebnet::netstack::nic::{Impair, ImpairConfig, MemLink, MemLinkConfig};

fn v4_only_pair(loss: f64) -> (Stack, Stack) {
    let (na, nb) = MemLink::pair(MemLinkConfig::default());
    let drop_all = ImpairConfig { loss, ..Default::default() };
    let a = Stack::new(StackConfig::with_address("10.9.0.1/24"), Impair::new(na, drop_all.clone())).unwrap();
    let b = Stack::new(StackConfig::with_address("10.9.0.2/24"), Impair::new(nb, drop_all)).unwrap();
    (a, b)
}

#[test]
fn connect_over_a_dead_link_times_out_within_the_timeout() {
    let (a, b) = v4_only_pair(1.0);
    let _listener = TcpListener::bind(&a, "10.9.0.1:80".parse().unwrap()).unwrap();
    let started = Instant::now();
    let err = TcpStream::connect_timeout(&b, "10.9.0.1:80".parse().unwrap(), Duration::from_millis(1500)).unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    assert!(took >= Duration::from_millis(1400) && took < Duration::from_secs(5), "took {took:?}");
    assert!(err.to_string().contains("10.9.0.1:80"), "{err}");
}

#[test]
fn ipv6_on_an_ipv4_only_stack_is_a_clear_error() {
    let (_a, b) = v4_only_pair(0.0);
    let err = TcpStream::connect(&b, "[fd00::1]:80".parse().unwrap()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NetworkUnreachable);
    assert!(err.to_string().contains("no IPv6 address"), "{err}");
    let udp = UdpSocket::bind(&b, "0.0.0.0:0".parse().unwrap()).unwrap();
    let err = udp.send_to(b"x", "[fd00::1]:53".parse().unwrap()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NetworkUnreachable, "{err}");
}

#[test]
fn unroutable_destination_is_network_unreachable() {
    let (_a, b) = v4_only_pair(0.0);
    let err = TcpStream::connect(&b, "192.0.2.1:80".parse().unwrap()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NetworkUnreachable);
    assert!(err.to_string().contains("no route"), "{err}");
}

#[test]
fn foreign_addresses_and_bad_arguments_are_refused() {
    let (a, _b) = v4_only_pair(0.0);
    let err = TcpListener::bind(&a, "10.9.0.99:80".parse().unwrap()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AddrNotAvailable, "{err}");
    let err = UdpSocket::bind(&a, "10.9.0.99:80".parse().unwrap()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AddrNotAvailable, "{err}");
    let err = TcpStream::connect(&a, "10.9.0.2:0".parse().unwrap()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = TcpStream::connect_timeout(&a, "10.9.0.2:1".parse().unwrap(), Duration::ZERO).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let udp = UdpSocket::bind(&a, "0.0.0.0:0".parse().unwrap()).unwrap();
    let err = udp.send_to(&vec![0; 70_000], "10.9.0.2:9".parse().unwrap()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert_eq!(udp.send(b"x").unwrap_err().kind(), ErrorKind::NotConnected);
}

#[test]
fn invalid_configurations_are_rejected_with_a_reason() {
    let (na, _nb) = MemLink::pair(MemLinkConfig::default());
    let err = Stack::new(StackConfig::with_address("127.0.0.2/8"), na).unwrap_err();
    assert!(err.to_string().contains("loopback is built in"), "{err}");
    let (na, _nb) = MemLink::pair(MemLinkConfig::default());
    let mut cfg = StackConfig::with_address("10.0.0.1/24");
    cfg.routes.push(plebnet::netstack::Route { dest: "0.0.0.0/0".parse().unwrap(), via: "10.1.0.1".parse().unwrap() });
    let err = Stack::new(cfg, na).unwrap_err();
    assert!(err.to_string().contains("next hop"), "{err}");
}

#[test]
fn routes_reach_beyond_the_attached_prefix() {
    let (na, nb) = MemLink::pair(MemLinkConfig::default());
    let mut ca = StackConfig::with_address("10.9.0.1/24").address("172.31.5.5/32");
    ca.routes.push(plebnet::netstack::Route { dest: "0.0.0.0/0".parse().unwrap(), via: "10.9.0.2".parse().unwrap() });
    let mut cb = StackConfig::with_address("10.9.0.2/24");
    cb.routes
        .push(plebnet::netstack::Route { dest: "172.31.5.0/24".parse().unwrap(), via: "10.9.0.1".parse().unwrap() });
    let a = Stack::new(ca, na).unwrap();
    let b = Stack::new(cb, nb).unwrap();
    let listener = TcpListener::bind(&a, "172.31.5.5:443".parse().unwrap()).unwrap();
    let mut c = TcpStream::connect(&b, "172.31.5.5:443".parse().unwrap()).unwrap();
    let (mut s, _) = listener.accept().unwrap();
    std::io::Write::write_all(&mut c, b"routed").unwrap();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut s, &mut buf).unwrap();
    assert_eq!(&buf, b"routed");
}
