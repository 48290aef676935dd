//! TCP hardening in plebnet's layer in front of smoltcp (issue 7): RFC 5961
//! RST and SYN checks with rate-limited challenge ACKs.
//!
//! Spoofed segments are injected into stack A's receive path through a
//! [`plebnet_tests::tap::Tap`] around its MemLink end, interleaved with the
//! real traffic from stack B.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use plebnet::net::{TcpListener, TcpStream};
use plebnet::netstack::rng::Rng;
use plebnet::netstack::smoltcp::wire::TcpControl;
use plebnet_tests::tap::tcp_v4;
use plebnet_tests::{drain_hash, read_exact_hash, send_pattern, tapped_pair, wait_until};
use sha2::{Digest, Sha256};

const A_IP: [u8; 4] = [10, 7, 0, 1];
const B_IP: [u8; 4] = [10, 7, 0, 2];

/// 100,000 RSTs with the connection's 4-tuple and random sequence numbers
/// inside A's receive window (never exactly RCV.NXT) hit A while it sends
/// to B: every one is challenged, none is delivered, challenge ACKs stay
/// within the rate limit, and what B receives hashes like what A sent.
/// SYNs on the connection are challenged too. Then one RST at exactly
/// RCV.NXT resets the connection: A's blocked read fails with
/// ConnectionReset.
#[test]
fn in_window_rsts_are_challenged_and_only_an_exact_rst_resets() {
    const PORT: u16 = 7000;
    const FLOOD: u64 = 100_000;
    const MIN_SENT: usize = 16 << 20;
    const HELLO: usize = 1 << 20;
    let (a, b, tap) = tapped_pair(|_| {});
    let listener = TcpListener::bind(&a, "10.7.0.1:7000".parse().unwrap()).unwrap();
    let client = TcpStream::connect(&b, "10.7.0.1:7000".parse().unwrap()).unwrap();
    let (server, peer) = listener.accept().unwrap();
    let b_port = peer.port();

    // B -> A first, read by A: RCV.NXT then depends on what A has read.
    let hello_writer = {
        let client = client.clone();
        std::thread::spawn(move || send_pattern(&client, 1, HELLO).unwrap())
    };
    assert_eq!(read_exact_hash(&server, HELLO).unwrap(), hello_writer.join().unwrap());
    // Computed from the wire, not asked of the stack under test.
    let irs = tap.syn_seq(b_port, PORT).expect("B's SYN was seen");
    let rcv_nxt = irs.wrapping_add(1).wrapping_add(HELLO as u32);

    // A -> B, until the flood is over and at least MIN_SENT went.
    let flood_over = Arc::new(AtomicBool::new(false));
    let sender = {
        let (server, flood_over) = (server.clone(), flood_over.clone());
        std::thread::spawn(move || {
            let mut rng = Rng::new(2);
            let mut hasher = Sha256::new();
            let mut chunk = vec![0u8; 64 * 1024];
            let mut sent = 0usize;
            while sent < MIN_SENT || !flood_over.load(Ordering::Acquire) {
                chunk.iter_mut().for_each(|b| *b = rng.next_u64() as u8);
                (&server).write_all(&chunk).unwrap();
                hasher.update(&chunk);
                sent += chunk.len();
            }
            server.shutdown(Shutdown::Write).unwrap();
            let hash: [u8; 32] = hasher.finalize().into();
            // Now wait for the exact RST.
            server.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let mut one = [0u8; 1];
            let read = (&server).read(&mut one).map_err(|e| e.kind());
            (sent, hash, read)
        })
    };
    let receiver = {
        let client = client.clone();
        std::thread::spawn(move || drain_hash(&client).unwrap())
    };

    let started = Instant::now();
    let mut rng = Rng::new(3);
    for _ in 0..FLOOD {
        // Inside the window (A's 256 KiB buffer is empty), never RCV.NXT.
        let seq = rcv_nxt.wrapping_add(1 + (rng.next_u64() % 60_000) as u32);
        let ack = rng.next_u64().is_multiple_of(2).then(|| rng.next_u64() as u32);
        tap.inject(tcp_v4(B_IP, b_port, A_IP, PORT, TcpControl::Rst, seq, ack));
    }
    tap.drain();
    let counters = a.stack_counters();
    let judged = || {
        counters.rst_challenged.get() + counters.rst_dropped_out_of_window.get() + counters.rx_dropped_held_full.get()
    };
    wait_until(Duration::from_secs(30), "all RSTs judged", || judged() >= FLOOD);
    let flood_time = started.elapsed();
    flood_over.store(true, Ordering::Release);

    let (got_len, got_hash) = receiver.join().unwrap();
    assert_eq!(counters.rst_challenged.get(), FLOOD);
    assert_eq!(counters.rst_accepted.get(), 0);
    assert_eq!(counters.rx_dropped_held_full.get(), 0);
    let (sent, challenges) = (counters.challenge_acks_sent.get(), counters.challenge_acks_suppressed.get());
    assert_eq!(sent + challenges, FLOOD, "every challenge is sent or counted as suppressed");
    let allowed = 1000 + (flood_time.as_secs_f64() * 1000.0).ceil() as u64;
    assert!(sent <= allowed, "{sent} challenge ACKs in {flood_time:?} (limit 1000/s)");
    assert!(sent >= 1000.min(FLOOD), "the first second's challenge ACKs go out: {sent}");

    // SYNs on the established connection: challenged, not delivered.
    for i in 0..10u32 {
        tap.inject(tcp_v4(B_IP, b_port, A_IP, PORT, TcpControl::Syn, rcv_nxt.wrapping_add(i * 1000), None));
    }
    tap.drain();
    wait_until(Duration::from_secs(10), "SYNs judged", || counters.syn_challenged.get() >= 10);

    // The exact RST resets the connection.
    tap.inject(tcp_v4(B_IP, b_port, A_IP, PORT, TcpControl::Rst, rcv_nxt, None));
    let (sent_len, sent_hash, read) = sender.join().unwrap();
    assert_eq!((got_len, got_hash), (sent_len, sent_hash), "B received exactly what A sent");
    assert!(sent_len >= MIN_SENT);
    assert_eq!(read, Err(ErrorKind::ConnectionReset), "the exact RST reset the connection");
    assert_eq!(counters.rst_accepted.get(), 1);
    assert_eq!(counters.syn_challenged.get(), 10);
    eprintln!(
        "rst flood: {FLOOD} RSTs in {flood_time:?} during a {} MiB transfer; challenge ACKs sent {sent}, suppressed {challenges}",
        sent_len >> 20
    );
}

/// RSTs outside the receive window are dropped silently (no challenge ACK),
/// and the connection keeps working.
#[test]
fn out_of_window_rsts_are_dropped_silently() {
    let (a, b, tap) = tapped_pair(|_| {});
    let listener = TcpListener::bind(&a, "10.7.0.1:7001".parse().unwrap()).unwrap();
    let mut client = TcpStream::connect(&b, "10.7.0.1:7001".parse().unwrap()).unwrap();
    let (mut server, peer) = listener.accept().unwrap();
    let irs = tap.syn_seq(peer.port(), 7001).unwrap();
    let rcv_nxt = irs.wrapping_add(1);
    for offset in [-1i64, -100_000, 1 << 20, 1 << 30] {
        let seq = (i64::from(rcv_nxt) + offset) as u32;
        tap.inject(tcp_v4(B_IP, peer.port(), A_IP, 7001, TcpControl::Rst, seq, None));
    }
    tap.drain();
    let counters = a.stack_counters();
    wait_until(Duration::from_secs(10), "RSTs judged", || counters.rst_dropped_out_of_window.get() >= 4);
    assert_eq!(counters.rst_challenged.get(), 0);
    assert_eq!(counters.challenge_acks_sent.get(), 0);
    client.write_all(b"still open").unwrap();
    let mut buf = [0u8; 10];
    server.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still open");
    server.write_all(b"both ways!").unwrap();
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"both ways!");
}

/// The challenge ACK rate limit is the stack's `tcp_challenge_ack_limit`:
/// with 5 per second, a burst of 50 in-window RSTs gets at most 5 answers
/// plus what the bucket refilled meanwhile.
#[test]
fn challenge_acks_follow_the_configured_limit() {
    let (a, b, tap) = tapped_pair(|c| c.tcp_challenge_ack_limit = 5);
    let listener = TcpListener::bind(&a, "10.7.0.1:7002".parse().unwrap()).unwrap();
    let _client = TcpStream::connect(&b, "10.7.0.1:7002".parse().unwrap()).unwrap();
    let (_server, peer) = listener.accept().unwrap();
    let rcv_nxt = tap.syn_seq(peer.port(), 7002).unwrap().wrapping_add(1);
    let started = Instant::now();
    for i in 0..50u32 {
        tap.inject(tcp_v4(B_IP, peer.port(), A_IP, 7002, TcpControl::Rst, rcv_nxt.wrapping_add(10 + i), None));
    }
    tap.drain();
    let counters = a.stack_counters();
    wait_until(Duration::from_secs(10), "RSTs judged", || counters.rst_challenged.get() >= 50);
    let allowed = 5 + (started.elapsed().as_secs_f64() * 5.0).ceil() as u64;
    let sent = counters.challenge_acks_sent.get();
    assert!((5..=allowed).contains(&sent), "sent {sent}, allowed {allowed}");
    assert_eq!(sent + counters.challenge_acks_suppressed.get(), 50);
}

/// Resident memory of this process, in bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// While 10 connections move 16 MiB each into A, 100,000 spoofed SYNs from
/// random addresses and ports hit A's listening port: the backlog (128)
/// fills with half-open connections, further SYNs are dropped and counted
/// (no RST), the oldest half-open ones make room, the 10 transfers arrive
/// intact, resident memory stays bounded, and a new connection succeeds
/// after the flood.
#[test]
fn a_syn_flood_leaves_transfers_intact_memory_bounded_and_the_listener_usable() {
    const PORT: u16 = 8000;
    const FLOOD: u64 = 100_000;
    const CONNS: usize = 10;
    const LEN: usize = 16 << 20;
    let (a, b, tap) = tapped_pair(|c| {
        c.tcp_rx_buffer = 64 * 1024;
        c.tcp_tx_buffer = 64 * 1024;
    });
    let listener = TcpListener::bind(&a, "10.7.0.1:8000".parse().unwrap()).unwrap();
    let mut transfers = Vec::new();
    for i in 0..CONNS {
        let client = TcpStream::connect(&b, "10.7.0.1:8000".parse().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let writer = std::thread::spawn(move || {
            let hash = send_pattern(&client, 100 + i as u64, LEN).unwrap();
            client.shutdown(Shutdown::Write).unwrap();
            hash
        });
        let reader = std::thread::spawn(move || drain_hash(&server).unwrap());
        transfers.push((writer, reader));
    }
    let rss_before = rss_bytes();
    let started = Instant::now();
    let mut rng = Rng::new(7);
    let mut peak = rss_before;
    for i in 0..FLOOD {
        let src = [10, 7, 0, 3 + (rng.next_u64() % 250) as u8];
        let port = 1024 + (rng.next_u64() % 60_000) as u16;
        tap.inject(tcp_v4(src, port, A_IP, PORT, TcpControl::Syn, rng.next_u64() as u32, None));
        if i % 10_000 == 0 {
            peak = peak.max(rss_bytes());
        }
    }
    tap.drain();
    let flood_time = started.elapsed();
    for (i, (writer, reader)) in transfers.into_iter().enumerate() {
        let sent = writer.join().unwrap();
        let (len, got) = reader.join().unwrap();
        assert_eq!((len, got), (LEN, sent), "transfer {i}");
    }
    peak = peak.max(rss_bytes());
    let growth = peak.saturating_sub(rss_before);
    assert!(growth < 64 << 20, "resident memory grew by {} MiB", growth >> 20);

    let counters = a.stack_counters();
    assert!(counters.syn_dropped_backlog_full.get() > 0, "the backlog filled");
    assert_eq!(counters.rx_dropped_held_full.get(), 0);
    let connect_started = Instant::now();
    let mut c = TcpStream::connect_timeout(&b, "10.7.0.1:8000".parse().unwrap(), Duration::from_secs(20)).unwrap();
    let (mut s, _) = listener.accept().unwrap();
    c.write_all(b"after the flood").unwrap();
    let mut buf = [0u8; 15];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"after the flood");
    // Whether spoofed half-open connections had to be evicted (only those older than 500 ms are) depends on
    // timing; the count is printed, the test asserts what matters: the listener took the new connection.
    eprintln!(
        "syn flood: {FLOOD} SYNs in {flood_time:?}; backlog drops {}, half-open evicted {}; RSS growth {} KiB; \
         new connection after the flood in {:?}",
        counters.syn_dropped_backlog_full.get(),
        counters.syn_half_open_evicted.get(),
        growth >> 10,
        connect_started.elapsed()
    );
}
