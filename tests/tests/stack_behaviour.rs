//! Stack-level behaviour: an idle driver sleeps, pings are answered, and
//! bad packets are counted rather than silently lost.

use std::io::{Read, Write};
use std::time::Duration;

use plebnet::net::{TcpListener, TcpStream};
use plebnet_tests::stack_pair;

#[test]
fn an_idle_stack_wakes_only_a_handful_of_times_per_second() {
    let (a, b) = stack_pair(None);
    let listener = TcpListener::bind(&a, "10.7.0.1:5000".parse().unwrap()).unwrap();
    let mut c = TcpStream::connect(&b, "10.7.0.1:5000".parse().unwrap()).unwrap();
    let (mut s, _) = listener.accept().unwrap();
    c.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    s.read_exact(&mut one).unwrap();
    // Let delayed ACKs and the like settle, then watch a quiet period.
    std::thread::sleep(Duration::from_millis(300));
    let before = [a.stack_counters().driver_wakeups.get(), b.stack_counters().driver_wakeups.get()];
    std::thread::sleep(Duration::from_secs(2));
    let after = [a.stack_counters().driver_wakeups.get(), b.stack_counters().driver_wakeups.get()];
    for (i, name) in ["a", "b"].iter().enumerate() {
        let wakeups = after[i] - before[i];
        assert!(wakeups <= 10, "idle stack {name} woke {wakeups} times in 2 s");
    }
    assert_eq!(a.stack_counters().driver_spin_guard.get(), 0);
}

#[test]
fn pings_are_answered_over_both_families_and_loopback() {
    let (a, b) = stack_pair(None);
    for dst in ["10.7.0.1", "fd07::1", "127.0.0.1", "::1", "10.7.0.2"] {
        let rtt = b.ping(dst.parse().unwrap(), Duration::from_secs(5)).unwrap_or_else(|e| panic!("ping {dst}: {e}"));
        assert!(rtt < Duration::from_secs(1), "{dst}: {rtt:?}");
    }
    let err = a.ping("10.7.0.77".parse().unwrap(), Duration::from_millis(300)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
}

#[test]
fn stacks_shut_down_when_the_last_handle_goes() {
    let (a, b) = stack_pair(None);
    let listener = TcpListener::bind(&a, "10.7.0.1:5001".parse().unwrap()).unwrap();
    let stream = TcpStream::connect(&b, "10.7.0.1:5001".parse().unwrap()).unwrap();
    drop((a, b));
    // The sockets keep their stacks alive and usable.
    let (mut s, _) = listener.accept().unwrap();
    (&stream).write_all(b"still here").unwrap();
    let mut buf = [0u8; 10];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");
    drop((s, stream, listener));
}

/// The recovery assist acts under loss when on, touches nothing when off,
/// and the content arrives intact either way.
#[test]
fn the_recovery_assist_can_be_switched_off() {
    use plebnet::netstack::nic::ImpairConfig;
    for assist in [true, false] {
        let loss = ImpairConfig { seed: 3, loss: 0.05, ..Default::default() };
        let (a, b) = plebnet_tests::stack_pair_with(Some(loss), |c| {
            c.tcp_recovery_assist = assist;
            c.tcp_rx_buffer = 64 * 1024;
            c.tcp_tx_buffer = 64 * 1024;
        });
        let listener = TcpListener::bind(&a, "10.7.0.1:5002".parse().unwrap()).unwrap();
        let client = TcpStream::connect(&b, "10.7.0.1:5002".parse().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let len = 1 << 20;
        let writer = std::thread::spawn(move || plebnet_tests::send_pattern(&client, 9, len).unwrap());
        let got = plebnet_tests::read_exact_hash(&server, len).unwrap();
        assert_eq!(got, writer.join().unwrap(), "assist {assist}: content");
        let injected =
            b.stack_counters().recovery_acks_injected.get() + a.stack_counters().recovery_acks_injected.get();
        if assist {
            assert!(injected > 0, "under 5% loss the assist should have acted");
        } else {
            assert_eq!(injected, 0, "a disabled assist injects nothing");
        }
    }
}

/// `TcpListener::close` from another thread: an `accept` blocked in a
/// thread fails at once, connections are refused, and the port is free for
/// a new listener right away (the preload shim relies on this when a
/// program closes a listener and listens again, as iperf3 does).
#[test]
fn closing_a_listener_wakes_its_accept_refuses_connections_and_frees_the_port() {
    let (a, b) = stack_pair(None);
    let addr = "10.7.0.1:5002".parse().unwrap();
    let listener = std::sync::Arc::new(TcpListener::bind(&a, addr).unwrap());
    let waiting = listener.clone();
    let blocked = std::thread::spawn(move || waiting.accept().map(|_| ()).unwrap_err().kind());
    listener.close();
    assert_eq!(blocked.join().unwrap(), std::io::ErrorKind::NotConnected);
    let refused = TcpStream::connect(&b, addr).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused, "{refused}");
    let again = TcpListener::bind(&a, addr).unwrap();
    let mut c = TcpStream::connect(&b, addr).unwrap();
    let (mut s, _) = again.accept().unwrap();
    c.write_all(b"new").unwrap();
    let mut buf = [0u8; 3];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"new");
    drop(listener); // a second close (on drop) is harmless
}

#[test]
fn an_orphan_whose_peer_never_closes_is_aborted_after_the_linger_limit() {
    let (a, b) = plebnet_tests::stack_pair_with(None, |c| c.orphan_linger = Duration::from_millis(300));
    let listener = TcpListener::bind(&a, "10.7.0.1:5010".parse().unwrap()).unwrap();
    let c = TcpStream::connect(&b, "10.7.0.1:5010".parse().unwrap()).unwrap();
    let (s, _) = listener.accept().unwrap();
    // B closes and lets go; A never closes: B's connection waits in
    // FIN-WAIT-2, which has no timer of its own, on a stack with nothing
    // else to do.
    drop(c);
    plebnet_tests::wait_until(Duration::from_secs(10), "A to see the FIN", || {
        a.tcp_socket_info().iter().any(|i| i.state == "CLOSE-WAIT")
    });
    assert_eq!(b.connection_count(), 1);
    plebnet_tests::wait_until(Duration::from_secs(10), "the orphan's abort", || b.connection_count() == 0);
    assert_eq!(b.stack_counters().orphans_aborted.get(), 1);
    // A learns of it by the RST: its stream reads the reset, not a hang.
    let mut buf = [0u8; 1];
    let end = (&s).read(&mut buf);
    assert!(
        matches!(&end, Ok(0)) || end.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{end:?}"
    );
}
