//! TCP buffer memory follows use (issue 7, item 4): pages become resident
//! as data passes, go back to the kernel when a connection idles or enters
//! TIME-WAIT, and come back when data does, with every byte intact.
//! Buffer sizes can be set per socket.

use std::io::{Read, Write};
use std::thread;
use std::time::Duration;

use plebnet::net::{Stack, TcpBuffers, TcpListener, TcpStream};
use plebnet::netstack::nic::ImpairConfig;
use plebnet_tests::{pattern, read_exact_hash, sha256, stack_pair_with, wait_until};

const CONNS: usize = 32;
const BUFFER: usize = 256 * 1024;
/// Each connection's upload and echo: its whole buffer, once each way.
const LEN: usize = BUFFER;

fn counter(stack: &Stack, name: &str) -> u64 {
    stack.counters().iter().find(|g| g.layer == "stack").and_then(|g| g.get(name)).unwrap()
}

/// Every connection uploads `len` bytes of its own content, the server
/// echoes them, and the echo must hash equal.
fn echo_all(clients: &[TcpStream], served: &[TcpStream], len: usize, seed: u64) {
    thread::scope(|scope| {
        for (i, s) in served.iter().enumerate() {
            scope.spawn(move || {
                let mut buf = vec![0u8; len];
                (&*s).read_exact(&mut buf).unwrap_or_else(|e| panic!("server {i}: {e}"));
                (&*s).write_all(&buf).unwrap();
            });
        }
        for (i, c) in clients.iter().enumerate() {
            scope.spawn(move || {
                let data = pattern(seed + i as u64, len);
                (&*c).write_all(&data).unwrap();
                let mut back = vec![0u8; len];
                (&*c).read_exact(&mut back).unwrap_or_else(|e| panic!("client {i}: {e}"));
                assert_eq!(sha256(&back), sha256(&data), "connection {i}: the echo differs");
            });
        }
    });
}

#[test]
fn idle_connections_give_their_buffer_pages_back_and_get_them_again() {
    let (a, b) = stack_pair_with(None, |c| {
        c.tcp_rx_buffer = BUFFER;
        c.tcp_tx_buffer = BUFFER;
        c.tcp_buffer_idle_release = Duration::from_millis(200);
    });
    let listener = TcpListener::bind(&a, "10.7.0.1:7400".parse().unwrap()).unwrap();
    let acceptor = thread::spawn(move || (0..CONNS).map(|_| listener.accept().unwrap().0).collect::<Vec<_>>());
    let clients: Vec<TcpStream> =
        (0..CONNS).map(|_| TcpStream::connect(&b, "10.7.0.1:7400".parse().unwrap()).unwrap()).collect();
    let served = acceptor.join().unwrap();
    assert_eq!(a.tcp_buffer_resident_bytes() + b.tcp_buffer_resident_bytes(), 0, "no data yet, no pages");

    echo_all(&clients, &served, LEN, 1);
    // Each byte crossed a send and a receive buffer on each stack, so at
    // least one buffer's worth per connection and stack is resident (the
    // release interval is far longer than the transfer).
    let busy = a.tcp_buffer_resident_bytes() + b.tcp_buffer_resident_bytes();
    assert!(busy >= 2 * CONNS * LEN / 2, "only {busy} bytes resident after the transfer");

    // Idle: every connection gives its pages back, on both stacks.
    wait_until(Duration::from_secs(20), "idle release", || {
        counter(&a, "tcp_buffers_released_idle") >= CONNS as u64
            && counter(&b, "tcp_buffers_released_idle") >= CONNS as u64
    });
    assert_eq!(a.tcp_buffer_resident_bytes() + b.tcp_buffer_resident_bytes(), 0, "idle connections hold no pages");

    // The connections carry on as before, with their full windows.
    echo_all(&clients, &served, LEN, 1000);
    assert!(a.tcp_buffer_resident_bytes() > 0, "pages come back with data");
    for info in a.tcp_socket_info().iter().filter(|i| i.remote.is_some()) {
        assert_eq!((info.recv_capacity, info.send_capacity), (BUFFER, BUFFER));
    }

    // Closing: the client (B) closes first and holds TIME-WAIT; it gives
    // its pages back on entering it, long before an idle sweep would.
    let before = counter(&b, "tcp_buffers_released_time_wait");
    drop(clients);
    let close_wait = |s: &Stack| s.tcp_socket_info().iter().filter(|i| i.state == "CLOSE-WAIT").count();
    wait_until(Duration::from_secs(20), "A's sockets in CLOSE-WAIT", || close_wait(&a) == CONNS);
    drop(served);
    wait_until(Duration::from_secs(20), "TIME-WAIT release", || {
        counter(&b, "tcp_buffers_released_time_wait") >= before + CONNS as u64
    });
    wait_until(Duration::from_secs(20), "A's sockets to close", || a.connection_count() == 0);
    assert!(b.connection_count() > 0, "B's connections are still in TIME-WAIT");
    assert_eq!(b.tcp_buffer_resident_bytes(), 0, "TIME-WAIT holds no buffer pages");
    assert_eq!(a.tcp_buffer_resident_bytes(), 0, "closed sockets' regions were given back");
}

#[test]
fn a_busy_connection_keeps_its_pages_while_idle_ones_release() {
    let (a, b) = stack_pair_with(None, |c| c.tcp_buffer_idle_release = Duration::from_millis(100));
    let listener = TcpListener::bind(&a, "10.7.0.1:7401".parse().unwrap()).unwrap();
    let acceptor = thread::spawn(move || (0..2).map(|_| listener.accept().unwrap().0).collect::<Vec<_>>());
    let idle = TcpStream::connect(&b, "10.7.0.1:7401".parse().unwrap()).unwrap();
    let busy = TcpStream::connect(&b, "10.7.0.1:7401".parse().unwrap()).unwrap();
    let served = acceptor.join().unwrap();
    echo_all(std::slice::from_ref(&idle), &served[..1], 64 * 1024, 7);
    // The busy connection streams 64 MiB while the idle one releases:
    // releasing must never touch a buffer that holds data.
    let total = 64 << 20;
    let data = pattern(9, total);
    let expected = sha256(&data);
    let sink = served[1].try_clone().unwrap();
    let reader = thread::spawn(move || read_exact_hash(&sink, total).unwrap());
    let released_before = counter(&b, "tcp_buffers_released_idle");
    for chunk in data.chunks(1 << 20) {
        (&busy).write_all(chunk).unwrap();
    }
    assert_eq!(reader.join().unwrap(), expected, "the busy transfer arrived intact");
    wait_until(Duration::from_secs(20), "the idle connection's release", || {
        counter(&b, "tcp_buffers_released_idle") > released_before
    });
}

#[test]
fn buffer_sizes_can_be_set_per_socket_and_are_checked() {
    let (a, b) = stack_pair_with(None, |_| {});
    let small = TcpBuffers { rx: 8 * 1024, tx: 16 * 1024 };
    let listener = TcpListener::bind_with(&a, "10.7.0.1:7402".parse().unwrap(), 8, small).unwrap();
    let acceptor = thread::spawn(move || listener.accept().unwrap().0);
    let large = TcpBuffers { rx: 1 << 20, tx: 512 * 1024 };
    let client = TcpStream::connect_with_buffers(&b, "10.7.0.1:7402".parse().unwrap(), large, None).unwrap();
    let server = acceptor.join().unwrap();
    let capacities = |stack: &Stack| {
        stack.tcp_socket_info().iter().filter(|i| i.remote.is_some()).map(|i| (i.recv_capacity, i.send_capacity)).next()
    };
    assert_eq!(capacities(&a), Some((small.rx, small.tx)));
    assert_eq!(capacities(&b), Some((large.rx, large.tx)));
    // A 4 MiB transfer through the small receive buffer is intact.
    let data = pattern(3, 4 << 20);
    let reader = thread::spawn(move || read_exact_hash(&server, 4 << 20).unwrap());
    (&client).write_all(&data).unwrap();
    assert_eq!(reader.join().unwrap(), sha256(&data));

    for bad in [TcpBuffers { rx: 100, tx: 4096 }, TcpBuffers { rx: 4096, tx: TcpBuffers::MAX + 1 }] {
        let e = TcpStream::connect_with_buffers(&b, "10.7.0.1:7402".parse().unwrap(), bad, None).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("buffer of"), "{e}");
        let e = TcpListener::bind_with(&a, "10.7.0.1:7403".parse().unwrap(), 8, bad).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    }
}

#[test]
fn releasing_never_discards_out_of_order_data() {
    // A lossy, reordering link: receivers keep data beyond a hole in their
    // receive buffer (where `recv_queue` does not count it) while they wait
    // a retransmission timeout (smoltcp's minimum is 1 s) with nothing to
    // read. With a 2 ms release interval they look idle all that time.
    let impair = ImpairConfig { seed: 77, loss: 0.05, reorder: 0.1, ..Default::default() };
    let (a, b) = stack_pair_with(Some(impair), |c| {
        c.tcp_rx_buffer = 64 * 1024;
        c.tcp_tx_buffer = 64 * 1024;
        c.tcp_buffer_idle_release = Duration::from_millis(2);
    });
    let listener = TcpListener::bind(&a, "10.7.0.1:7404".parse().unwrap()).unwrap();
    let acceptor = thread::spawn(move || (0..4).map(|_| listener.accept().unwrap().0).collect::<Vec<_>>());
    let clients: Vec<TcpStream> =
        (0..4).map(|_| TcpStream::connect(&b, "10.7.0.1:7404".parse().unwrap()).unwrap()).collect();
    let served = acceptor.join().unwrap();
    let len = 2 << 20;
    thread::scope(|scope| {
        for (i, (c, s)) in clients.iter().zip(&served).enumerate() {
            let data = pattern(500 + i as u64, len);
            let expected = sha256(&data);
            let reader = scope.spawn(move || read_exact_hash(s, len).unwrap());
            scope.spawn(move || (&*c).write_all(&data).unwrap());
            scope.spawn(move || assert_eq!(reader.join().unwrap(), expected, "connection {i}: data lost or changed"));
        }
    });
    let losses = a.counters().iter().chain(b.counters().iter()).filter_map(|g| g.get("dropped_loss")).sum::<u64>();
    assert!(losses > 0, "the link lost nothing: the test proves nothing");
    wait_until(Duration::from_secs(20), "the settled receivers to release", || {
        counter(&a, "tcp_buffers_released_idle") >= 4
    });
}
