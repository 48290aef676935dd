//! Foundation acceptance: two stacks over a MemLink impaired with 5% loss,
//! 5% reordering, 1% duplication and 0.1% corruption. Eight connections
//! each move 32 MiB in both directions at once; every hash must match. UDP
//! over the same link arrives intact or not at all. Closing under the same
//! impairment completes on both sides, with and without the recovery assist.

use std::net::{Shutdown, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use plebnet::net::Stack;
use plebnet::net::{TcpListener, TcpStream, UdpSocket};
use plebnet::netstack::nic::ImpairConfig;
use plebnet_tests::{drain_hash, read_exact_hash, send_pattern, stack_pair, stack_pair_with};

fn impairment(seed: u64) -> ImpairConfig {
    ImpairConfig { seed, loss: 0.05, reorder: 0.05, duplicate: 0.01, corrupt: 0.001, ..Default::default() }
}

/// Size per direction per connection; `PLEBNET_IMPAIRED_MIB` overrides it
/// for quick local runs, never downwards in CI.
fn mib() -> usize {
    std::env::var("PLEBNET_IMPAIRED_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(32)
}

#[test]
fn eight_connections_both_directions_under_impairment() {
    const CONNS: usize = 8;
    let len = mib() << 20;
    // smoltcp recovers from loss go-back-N style with a 1 s minimum RTO; a
    // 64 KiB window keeps each loss episode short (docs/architecture.md).
    let (a, b) = stack_pair_with(Some(impairment(2024)), |c| {
        c.tcp_rx_buffer = 64 * 1024;
        c.tcp_tx_buffer = 64 * 1024;
    });
    let listener = TcpListener::bind(&a, "10.7.0.1:7000".parse().unwrap()).unwrap();
    let started = Instant::now();
    // Progress on stderr, for whoever watches a slow run; not used to decide anything.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let monitor = {
        let (a, b, done) = (a.clone(), b.clone(), done.clone());
        thread::spawn(move || {
            let mut last = (0, 0);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                thread::park_timeout(Duration::from_secs(5));
                let rx = a.stack_counters().rx_bytes.get() + b.stack_counters().rx_bytes.get();
                eprintln!("{:>6.1?}: {} MiB received by both stacks", started.elapsed(), rx >> 20);
                last = if rx == last.0 { (rx, last.1 + 1) } else { (rx, 0) };
                if last.1 == 2 {
                    for s in [&a, &b] {
                        s.describe_tcp_sockets().iter().for_each(|l| eprintln!("  {} {l}", s.name()));
                        s.counters().iter().for_each(|g| eprintln!("  {} {}: {:?}", s.name(), g.layer, g.values));
                    }
                }
            }
        })
    };
    let server = thread::spawn(move || (0..CONNS).map(|_| listener.accept().unwrap().0).collect::<Vec<_>>());
    let clients: Vec<TcpStream> =
        (0..CONNS).map(|_| TcpStream::connect(&b, "10.7.0.1:7000".parse().unwrap()).unwrap()).collect();
    let mut servers = server.join().unwrap();
    // Handshakes complete in any order under loss: pair by address.
    let servers: Vec<TcpStream> = clients
        .iter()
        .map(|c| {
            let local = c.local_addr().unwrap();
            let i = servers.iter().position(|s| s.peer_addr().unwrap() == local).expect("accepted stream for client");
            servers.swap_remove(i)
        })
        .collect();

    let mut jobs = Vec::new();
    for (i, (c, s)) in clients.into_iter().zip(servers).enumerate() {
        for (dir, from, to) in [("b->a", c.clone(), s.clone()), ("a->b", s, c)] {
            let seed = (i as u64) << 8 | u64::from(dir == "a->b");
            let writer = thread::spawn(move || send_pattern(&from, seed, len).unwrap());
            // Exactly `len` bytes, then the hash: this test is about the
            // content. Closing under this much loss is a known weak spot
            // (docs/architecture.md), kept out of this assertion.
            let reader = thread::spawn(move || (len, read_exact_hash(&to, len).unwrap()));
            jobs.push((i, dir, writer, reader));
        }
    }
    for (i, dir, writer, reader) in jobs {
        let sent = writer.join().unwrap();
        let (n, got) = reader.join().unwrap();
        assert_eq!(n, len, "connection {i} {dir}: byte count");
        assert_eq!(got, sent, "connection {i} {dir}: sha256 differs");
    }
    let elapsed = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    monitor.thread().unpark();
    monitor.join().unwrap();
    let total = (2 * CONNS * len) as f64;
    eprintln!(
        "moved {} MiB in {:.1?} ({:.1} Mbit/s)",
        total as usize >> 20,
        elapsed,
        total * 8.0 / elapsed.as_secs_f64() / 1e6
    );
    for stack in [&a, &b] {
        for g in stack.counters() {
            eprintln!("{} {}: {:?}", stack.name(), g.layer, g.values);
        }
    }
    let ingress = a.counters().into_iter().find(|g| g.layer == "impair.ingress").unwrap();
    assert!(
        ingress.get("dropped_loss").unwrap() > 0 && ingress.get("corrupted").unwrap() > 0,
        "the impairment was active"
    );
}

#[test]
fn udp_datagrams_arrive_intact_or_not_at_all() {
    let (a, b) = stack_pair(Some(impairment(7)));
    let rx = UdpSocket::bind(&a, "10.7.0.1:9000".parse().unwrap()).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let tx = UdpSocket::bind(&b, "0.0.0.0:0".parse().unwrap()).unwrap();
    let dst: SocketAddr = "10.7.0.1:9000".parse().unwrap();
    const N: u32 = 2000;
    let sender = thread::spawn(move || {
        for i in 0..N {
            let mut msg = i.to_be_bytes().to_vec();
            msg.extend(plebnet_tests::pattern(u64::from(i), 1000));
            tx.send_to(&msg, dst).unwrap();
            if i % 50 == 0 {
                thread::sleep(Duration::from_millis(1)); // stay under the socket buffers
            }
        }
    });
    let mut got = std::collections::HashSet::new();
    let mut buf = [0u8; 2048];
    while let Ok((n, _)) = rx.recv_from(&mut buf) {
        assert_eq!(n, 1004, "datagram length changed");
        let i = u32::from_be_bytes(buf[..4].try_into().unwrap());
        assert!(i < N, "datagram with impossible index {i}");
        assert_eq!(&buf[4..n], &plebnet_tests::pattern(u64::from(i), 1000)[..], "datagram {i} altered");
        got.insert(i);
    }
    sender.join().unwrap();
    // About 5% lost; corruption is caught by checksums, never delivered.
    assert!(got.len() > (N as usize) * 80 / 100, "only {} of {N} arrived", got.len());
    assert!(got.len() < N as usize, "with 5% loss some datagrams must be missing");
    let stack = a.counters().into_iter().find(|g| g.layer == "stack").unwrap();
    eprintln!("{:?}", stack.values);
}

/// Impairment seeds per close test: `PLEBNET_CLOSE_RUNS` (default 1) runs,
/// from `PLEBNET_CLOSE_SEED` (default 31) upwards, for soak runs.
fn close_seeds() -> std::ops::Range<u64> {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let first = env("PLEBNET_CLOSE_SEED").unwrap_or(31);
    first..first + env("PLEBNET_CLOSE_RUNS").unwrap_or(1).max(1)
}

/// TCP sockets of `stack` that are not listening, as diagnostic lines.
fn connections(stack: &Stack) -> Vec<String> {
    stack.describe_tcp_sockets().into_iter().filter(|l| !l.contains(" LISTEN ")).collect()
}

/// Eight connections; each side writes `len` bytes, shuts its sending side and
/// reads to EOF; the hashes must match, then both stacks must be left with no
/// connection at all (every close handshake finished, TIME-WAIT included)
/// within 60 s, and none may have been reset or aborted.
fn close_handshake_under_impairment(assist: bool, len: usize) {
    const CONNS: usize = 8;
    for seed in close_seeds() {
        let started = Instant::now();
        let (a, b) = stack_pair_with(Some(impairment(seed)), |c| {
            c.tcp_rx_buffer = 64 * 1024;
            c.tcp_tx_buffer = 64 * 1024;
            c.tcp_recovery_assist = assist;
        });
        let listener = TcpListener::bind(&a, "10.7.0.1:7001".parse().unwrap()).unwrap();
        let server = thread::spawn(move || {
            let accepted = (0..CONNS).map(|_| listener.accept().unwrap().0).collect::<Vec<_>>();
            (listener, accepted)
        });
        let clients: Vec<TcpStream> =
            (0..CONNS).map(|_| TcpStream::connect(&b, "10.7.0.1:7001".parse().unwrap()).unwrap()).collect();
        let (listener, mut accepted) = server.join().unwrap();
        let mut jobs = Vec::new();
        for (i, c) in clients.into_iter().enumerate() {
            let local = c.local_addr().unwrap();
            let j = accepted.iter().position(|s| s.peer_addr().unwrap() == local).expect("accepted stream for client");
            let s = accepted.swap_remove(j);
            for (dir, from, to) in [("b->a", c.clone(), s.clone()), ("a->b", s, c)] {
                let pattern_seed = seed << 16 | (i as u64) << 1 | u64::from(dir == "a->b");
                let writer = thread::spawn(move || {
                    let sent = send_pattern(&from, pattern_seed, len)?;
                    from.shutdown(Shutdown::Write)?;
                    Ok::<_, std::io::Error>(sent)
                });
                let reader = thread::spawn(move || drain_hash(&to));
                jobs.push((i, dir, writer, reader));
            }
        }
        for (i, dir, writer, reader) in jobs {
            let sent = writer.join().unwrap().unwrap_or_else(|e| panic!("seed {seed} conn {i} {dir}: write: {e}"));
            let (n, got) = reader.join().unwrap().unwrap_or_else(|e| panic!("seed {seed} conn {i} {dir}: read: {e}"));
            assert_eq!(n, len, "seed {seed} connection {i} {dir}: byte count");
            assert_eq!(got, sent, "seed {seed} connection {i} {dir}: sha256 differs");
        }
        let transferred = started.elapsed();
        // Every stream handle is gone (the jobs owned them): the sockets are
        // orphans now, removed once their close has completed.
        drop(listener);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left: Vec<String> = [&a, &b]
                .iter()
                .flat_map(|s| connections(s).into_iter().map(move |l| format!("{} {l}", s.name())))
                .collect();
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                for s in [&a, &b] {
                    s.counters().iter().for_each(|g| eprintln!("  {} {}: {:?}", s.name(), g.layer, g.values));
                }
                panic!("seed {seed}, assist {assist}: close handshakes stalled for 60 s:\n{}", left.join("\n"));
            }
            thread::park_timeout(Duration::from_millis(20));
        }
        let stack = |s: &Stack| s.counters().into_iter().find(|g| g.layer == "stack").unwrap();
        let (ca, cb) = (stack(&a), stack(&b));
        eprintln!(
            "seed {seed} assist {assist}: data in {transferred:.1?}, all closed in {:.1?}; fin_resent a={} b={}",
            started.elapsed(),
            ca.get("fin_resent").unwrap(),
            cb.get("fin_resent").unwrap(),
        );
        for c in [&ca, &cb] {
            assert_eq!(c.get("orphans_aborted"), Some(0), "seed {seed}: a closing connection was aborted");
        }
    }
}

#[test]
fn close_handshake_completes_under_impairment() {
    close_handshake_under_impairment(true, 4 << 20);
}

#[test]
fn close_handshake_completes_under_impairment_without_assist() {
    // Without the assist smoltcp recovers go-back-N with a 1 s minimum RTO
    // (1.5-4.5 minutes for 4 MiB); the close path under test does not
    // depend on the size, so this variant moves 512 KiB per direction.
    close_handshake_under_impairment(false, 512 << 10);
}
