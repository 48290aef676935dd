//! The NetStack suite. Each function takes an [`Env`] and panics on failure;
//! `tests/netstack_suite.rs` runs every one on every stack.

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use plebnet::net::{NetStack, TcpListenerApi, TcpStreamApi, UdpSocketApi};

use crate::{Env, drain_hash, send_pattern, sha256};

fn listen<S: NetStack>(env: &Env<S>) -> (S::TcpListener, SocketAddr) {
    let l = env.server.tcp_listen(env.server_addr(0)).expect("listen");
    let port = l.local_addr().unwrap().port();
    (l, env.server_addr(port))
}

/// 1 MiB each way through an echo server; the hash of what came back equals
/// the hash of what was sent.
pub fn tcp_echo_roundtrip<S: NetStack>(env: &Env<S>) {
    let (listener, addr) = listen(env);
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).unwrap();
        }
    });
    let mut c = env.client.tcp_connect(addr).unwrap();
    let mut writer = c.try_clone().unwrap();
    let sent = thread::spawn(move || {
        let h = send_pattern(&mut writer, 11, 1 << 20).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
        h
    });
    let (n, got) = drain_hash(&mut c).unwrap();
    assert_eq!(n, 1 << 20);
    assert_eq!(got, sent.join().unwrap());
    server.join().unwrap();
}

/// Five clients connect before anyone accepts; all five are then accepted
/// and each one's first byte arrives on its own connection.
pub fn backlog_holds_pending_connections<S: NetStack>(env: &Env<S>) {
    let (listener, addr) = listen(env);
    let clients: Vec<_> = (0..5u8)
        .map(|i| {
            let mut c = env.client.tcp_connect(addr).unwrap();
            c.write_all(&[i]).unwrap();
            c
        })
        .collect();
    let mut seen = HashSet::new();
    for _ in 0..5 {
        let (mut s, peer) = listener.accept().unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        assert!(seen.insert(b[0]), "byte {} arrived twice", b[0]);
        let client = &clients[b[0] as usize];
        assert_eq!(client.local_addr().unwrap(), peer);
    }
    assert_eq!(seen.len(), 5);
}

/// A port nobody listens on refuses the connection.
pub fn connect_to_closed_port_is_refused<S: NetStack>(env: &Env<S>) {
    let (listener, addr) = listen(env);
    drop(listener);
    let err = env.client.tcp_connect_timeout(addr, Duration::from_secs(10)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
}

/// A second listener on the same port is refused with AddrInUse.
pub fn bind_of_used_port_is_addr_in_use<S: NetStack>(env: &Env<S>) {
    let (_listener, addr) = listen(env);
    let err = env.server.tcp_listen(addr).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AddrInUse, "{err}");
    let udp = env.server.udp_bind(env.server_addr(0)).unwrap();
    let err = env.server.udp_bind(udp.local_addr().unwrap()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AddrInUse, "{err}");
}

/// Non-blocking accept and read say WouldBlock; data then arrives.
pub fn nonblocking_mode_would_block<S: NetStack>(env: &Env<S>) {
    let (listener, addr) = listen(env);
    listener.set_nonblocking(true).unwrap();
    assert_eq!(listener.accept().unwrap_err().kind(), ErrorKind::WouldBlock);
    let mut c = env.client.tcp_connect(addr).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => thread::yield_now(),
            Err(e) => panic!("accept: {e}"),
        }
    };
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).unwrap_err().kind(), ErrorKind::WouldBlock);
    c.write_all(b"hello").unwrap();
    let mut got = Vec::new();
    while got.len() < 5 {
        match s.read(&mut buf) {
            Ok(0) => panic!("unexpected EOF"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => thread::yield_now(),
            Err(e) => panic!("read: {e}"),
        }
    }
    assert_eq!(got, b"hello");
}

/// A read timeout expires with WouldBlock (Linux's EAGAIN) after roughly the
/// timeout, and the stream still works afterwards.
pub fn read_timeout_expires<S: NetStack>(env: &Env<S>) {
    let (listener, addr) = listen(env);
    let mut c = env.client.tcp_connect(addr).unwrap();
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let started = Instant::now();
    let err = s.read(&mut [0u8; 8]).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(180));
    c.write_all(b"late").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"late");
}

/// shutdown(Write) gives the peer EOF while the other direction still works;
/// writing after it is BrokenPipe.
pub fn half_close<S: NetStack>(env: &Env<S>) {
    let (listener, addr) = listen(env);
    let mut c = env.client.tcp_connect(addr).unwrap();
    let (mut s, _) = listener.accept().unwrap();
    c.write_all(b"request").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut req = Vec::new();
    s.read_to_end(&mut req).unwrap();
    assert_eq!(req, b"request");
    s.write_all(b"response").unwrap();
    drop(s);
    let mut resp = Vec::new();
    c.read_to_end(&mut resp).unwrap();
    assert_eq!(resp, b"response");
    let err = c.write(b"more").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BrokenPipe, "{err}");
}

/// Closing with unread data resets the connection; the peer's read says so.
pub fn close_with_unread_data_resets<S: NetStack>(env: &Env<S>) {
    let (listener, addr) = listen(env);
    let mut c = env.client.tcp_connect(addr).unwrap();
    let (mut s, _) = listener.accept().unwrap();
    c.write_all(b"never read").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap(); // the data has surely arrived
    drop(s);
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let err = c.read(&mut [0u8; 8]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
}

/// Addresses agree on both ends.
pub fn addresses_match<S: NetStack>(env: &Env<S>) {
    let (listener, addr) = listen(env);
    let c = env.client.tcp_connect(addr).unwrap();
    let (s, peer) = listener.accept().unwrap();
    assert_eq!(c.peer_addr().unwrap(), addr);
    assert_eq!(s.local_addr().unwrap(), addr);
    assert_eq!(s.peer_addr().unwrap(), peer);
    assert_eq!(c.local_addr().unwrap(), peer);
    c.set_nodelay(true).unwrap();
    assert!(c.nodelay().unwrap());
}

/// UDP: send_to/recv_from, connect/send/recv, truncation, WouldBlock.
pub fn udp_datagrams<S: NetStack>(env: &Env<S>) {
    let server = env.server.udp_bind(env.server_addr(0)).unwrap();
    let server_addr = server.local_addr().unwrap();
    let client = env.client.udp_bind(SocketAddr::new(unspecified(env), 0)).unwrap();
    for i in 0..20u8 {
        let msg = vec![i; 100 + i as usize];
        client.send_to(&msg, server_addr).unwrap();
        let mut buf = [0u8; 2048];
        let (n, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &msg[..]);
        server.send_to(&buf[..n], from).unwrap();
        let (m, back_from) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..m], &msg[..]);
        assert_eq!(back_from, server_addr);
    }
    client.connect(server_addr).unwrap();
    assert_eq!(client.peer_addr().unwrap(), server_addr);
    client.send(&[7u8; 100]).unwrap();
    let mut small = [0u8; 10];
    let (n, from) = server.recv_from(&mut small).unwrap();
    assert_eq!((n, small), (10, [7u8; 10]), "a long datagram is truncated to the buffer");
    server.send_to(b"reply", from).unwrap();
    let mut buf = [0u8; 16];
    let n = client.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"reply");
    server.set_nonblocking(true).unwrap();
    assert_eq!(server.recv_from(&mut buf).unwrap_err().kind(), ErrorKind::WouldBlock);
    server.set_nonblocking(false).unwrap();
    server.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let err = server.recv_from(&mut buf).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "{err}");
}

fn unspecified<S: NetStack>(env: &Env<S>) -> std::net::IpAddr {
    if env.server_ip.is_ipv4() { "0.0.0.0".parse().unwrap() } else { "::".parse().unwrap() }
}

/// Seed 001: with a reader blocked on an empty stream, a writer on a clone
/// still moves 16 MiB; then the same with the roles of the ends reversed.
pub fn full_duplex_on_clones<S: NetStack>(env: &Env<S>) {
    const LEN: usize = 16 << 20;
    let (listener, addr) = listen(env);
    let c = env.client.tcp_connect(addr).unwrap();
    let (s, _) = listener.accept().unwrap();
    for (mut a, mut b) in [(c.try_clone().unwrap(), s.try_clone().unwrap()), (s, c)] {
        // `a`'s reader blocks on nothing; `a`'s writer sends LEN bytes to `b`.
        let mut reader = a.try_clone().unwrap();
        let blocked = thread::spawn(move || {
            let mut byte = [0u8; 1];
            let n = reader.read(&mut byte).unwrap();
            (n, byte[0])
        });
        let mut sink = b.try_clone().unwrap();
        let receiver = thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut hasher = sha2::Sha256::default();
            let mut total = 0;
            while total < LEN {
                let n = sink.read(&mut buf).unwrap();
                assert!(n > 0, "EOF after {total} bytes");
                sha2::Digest::update(&mut hasher, &buf[..n]);
                total += n;
            }
            <[u8; 32]>::from(sha2::Digest::finalize(hasher))
        });
        let sent = send_pattern(&mut a, 21, LEN).unwrap();
        assert_eq!(receiver.join().unwrap(), sent);
        // Release the blocked reader with one byte and check it got it.
        b.write_all(&[0xAB]).unwrap();
        assert_eq!(blocked.join().unwrap(), (1, 0xAB));
    }
}

/// Small helper so tests can check a single hash.
pub fn hash_of(data: &[u8]) -> [u8; 32] {
    sha256(data)
}
