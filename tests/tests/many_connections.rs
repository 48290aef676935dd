//! 10,000 concurrent TCP connections between two stacks over a MemLink
//! (issue 7): all established at once, each echoes 1 KiB of its own
//! content, and every reply is compared byte for byte.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use plebnet::net::{TcpListener, TcpStream};
use plebnet_tests::{pattern, stack_pair_with};

const CONNS: usize = 10_000;
const LEN: usize = 1024;

#[test]
fn ten_thousand_concurrent_connections_each_echo_1_kib() {
    let started = Instant::now();
    let (a, b) = stack_pair_with(None, |c| {
        c.tcp_rx_buffer = 4096;
        c.tcp_tx_buffer = 4096;
        c.default_backlog = 1024;
    });
    let listener = TcpListener::bind(&a, "10.7.0.1:7300".parse().unwrap()).unwrap();
    let acceptor = std::thread::spawn(move || {
        let mut served = Vec::with_capacity(CONNS);
        for _ in 0..CONNS {
            served.push(listener.accept().unwrap().0);
        }
        served
    });
    let mut clients = Vec::with_capacity(CONNS);
    for i in 0..CONNS {
        let c = TcpStream::connect_timeout(&b, "10.7.0.1:7300".parse().unwrap(), Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        clients.push(c);
    }
    let served = acceptor.join().unwrap();
    let connected = started.elapsed();
    assert_eq!(a.connection_count(), CONNS);
    assert_eq!(b.connection_count(), CONNS);

    // The server echoes each connection's 1 KiB in accept order.
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; LEN];
        for mut s in &served {
            s.read_exact(&mut buf).unwrap();
            s.write_all(&buf).unwrap();
        }
        served
    });
    let content: Vec<Vec<u8>> = (0..CONNS).map(|i| pattern(i as u64, LEN)).collect();
    for (mut c, data) in clients.iter().zip(&content) {
        c.write_all(data).unwrap();
    }
    let mut reply = [0u8; LEN];
    for (i, (mut c, data)) in clients.iter().zip(&content).enumerate() {
        c.read_exact(&mut reply).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert!(reply[..] == data[..], "connection {i}: the reply differs from what was sent");
    }
    let served = echo.join().unwrap();
    let echoed = started.elapsed() - connected;
    assert_eq!(a.connection_count(), CONNS, "all connections stayed up");
    let ca = a.stack_counters();
    eprintln!(
        "{CONNS} connections: established in {connected:?}, 1 KiB echoed on each in {echoed:?}; \
         A: {} driver iterations, {} packets in; B: {} driver iterations",
        ca.driver_iterations.get(),
        ca.rx_packets.get(),
        b.stack_counters().driver_iterations.get()
    );
    drop((clients, served));
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
}
