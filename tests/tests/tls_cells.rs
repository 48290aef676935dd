//! TLS cell streams over plebnet stacks and over the kernel: full-duplex transfers with key updates on both
//! sides at once (no deadlock, every byte hashed), a byte flipped in transit (the reader reports the failed
//! authentication, delivers only an untouched prefix, and the writer dies too), and a wrong certificate pin.

use std::io;
use std::net::Shutdown;
use std::thread;
use std::time::Instant;

use plebnet::net::{NetStack, OsStack, TcpStreamApi};
use plebnet_tests::cells::{CellSource, hash_cell, join_bounded, spawn_bounded, tcp_pair, tls_pair};
use plebnet_tests::{stack_pair, stack_pair_with};
use plebnet_transport::cell::{Cell, Command, FIXED_CELL_LEN};
use plebnet_transport::tls::{
    CellReader, CellWriter, Pin, TlsCellStream, client_config_pinned, self_signed, server_config,
};
use sha2::{Digest, Sha256};

/// Hash of the first `count` cells of `CellSource::new(seed)`.
fn hash_of_first(seed: u64, count: usize) -> [u8; 32] {
    let mut source = CellSource::new(seed);
    let mut hasher = Sha256::new();
    for _ in 0..count {
        hash_cell(&mut hasher, &source.next_cell());
    }
    hasher.finalize().into()
}

/// Writes `bytes` worth of cells from `seed`, updating keys every MiB, then closes; returns the hash.
fn write_side<S: TcpStreamApi>(mut w: CellWriter<S>, seed: u64, bytes: usize) -> io::Result<([u8; 32], usize)> {
    let mut source = CellSource::new(seed);
    let mut hasher = Sha256::new();
    let cells = bytes / FIXED_CELL_LEN;
    let mut updates = 0;
    for i in 1..=cells {
        let cell = source.next_cell();
        w.write_cell(&cell)?;
        hash_cell(&mut hasher, &cell);
        if (i * FIXED_CELL_LEN) >> 20 != ((i - 1) * FIXED_CELL_LEN) >> 20 {
            w.update_keys()?;
            updates += 1;
        }
    }
    w.close()?;
    Ok((hasher.finalize().into(), updates))
}

/// Reads cells until the peer's close_notify; returns their hash and count.
fn read_side<S: TcpStreamApi>(mut r: CellReader<S>) -> io::Result<([u8; 32], usize)> {
    let mut hasher = Sha256::new();
    let mut count = 0;
    while let Some(cell) = r.read_cell()? {
        hash_cell(&mut hasher, &cell);
        count += 1;
    }
    Ok((hasher.finalize().into(), count))
}

/// Both sides split; on each, one thread writes `bytes` of cells (key update every MiB) while another reads.
fn full_duplex<S: TcpStreamApi>(client: TlsCellStream<S>, server: TlsCellStream<S>, bytes: usize) {
    let started = Instant::now();
    let (cr, cw) = client.split().unwrap();
    let (sr, sw) = server.split().unwrap();
    let c_write = spawn_bounded("client writer", move || write_side(cw, 1, bytes));
    let s_write = spawn_bounded("server writer", move || write_side(sw, 2, bytes));
    let c_read = spawn_bounded("client reader", move || read_side(cr));
    let s_read = spawn_bounded("server reader", move || read_side(sr));
    let (c_sent, updates) = join_bounded("client writer", &c_write).unwrap();
    let (s_sent, _) = join_bounded("server writer", &s_write).unwrap();
    let (s_got, s_count) = join_bounded("server reader", &s_read).unwrap();
    let (c_got, c_count) = join_bounded("client reader", &c_read).unwrap();
    assert_eq!(s_count, bytes / FIXED_CELL_LEN, "cells client -> server");
    assert_eq!(c_count, bytes / FIXED_CELL_LEN, "cells server -> client");
    assert_eq!(c_sent, s_got, "client -> server content");
    assert_eq!(s_sent, c_got, "server -> client content");
    assert_eq!(updates, (bytes / FIXED_CELL_LEN * FIXED_CELL_LEN) >> 20, "one key update per MiB");
    eprintln!("{} MiB each way with {updates} key updates per side in {:?}", bytes >> 20, started.elapsed());
}

#[test]
fn full_duplex_64_mib_with_key_updates_over_plebnet() {
    let (a, b) = stack_pair(None);
    let (c, s) = tcp_pair(&a, &b, "10.7.0.1:4430".parse().unwrap());
    let (client, server) = tls_pair(c, s, false);
    assert_eq!(client.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    full_duplex(client, server, 64 << 20);
}

/// Small socket buffers keep both writers blocked in socket writes most of the time, so the readers' key
/// update answers must get out while the writers hold the socket-write lock.
#[test]
fn full_duplex_16_mib_with_key_updates_over_plebnet_with_small_buffers() {
    let (a, b) = stack_pair_with(None, |c| {
        c.tcp_rx_buffer = 8 * 1024;
        c.tcp_tx_buffer = 8 * 1024;
    });
    let (c, s) = tcp_pair(&a, &b, "10.7.0.1:4434".parse().unwrap());
    let (client, server) = tls_pair(c, s, false);
    full_duplex(client, server, 16 << 20);
}

#[test]
fn full_duplex_8_mib_with_key_updates_over_the_kernel() {
    let (c, s) = tcp_pair(&OsStack, &OsStack, "127.0.0.1:0".parse().unwrap());
    let (client, server) = tls_pair(c, s, true);
    full_duplex(client, server, 8 << 20);
}

/// Copies `from` to `to`, flipping the byte at `flip_at` (if given); shuts both down when done.
fn forward<S: TcpStreamApi>(mut from: S, mut to: S, flip_at: Option<usize>) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut offset = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(at) = flip_at.filter(|&at| (offset..offset + n).contains(&at)) {
            buf[at - offset] ^= 0x20;
        }
        offset += n;
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

#[test]
fn tampered_record_fails_authentication_and_kills_both_halves() {
    const FLIP_AT: usize = 100_000;
    const CELLS: usize = 1024; // ~514 KiB, well past the flipped byte
    let (a, b) = stack_pair(None);
    // The real server and a proxy both on stack a; the proxy flips one client -> server byte.
    let server_listener = a.tcp_listen("10.7.0.1:4431".parse().unwrap()).unwrap();
    let proxy_listener = a.tcp_listen("10.7.0.1:4432".parse().unwrap()).unwrap();
    let a2 = a.clone();
    let _proxy = spawn_bounded("proxy", move || {
        let (from_client, _) = proxy_listener.accept().unwrap();
        let to_server = a2.tcp_connect("10.7.0.1:4431".parse().unwrap()).unwrap();
        let (fc, ts) = (from_client.try_clone().unwrap(), to_server.try_clone().unwrap());
        let up = thread::spawn(move || forward(fc, ts, Some(FLIP_AT)));
        forward(to_server, from_client, None);
        up.join().unwrap();
    });

    let (cert, key) = self_signed(&["relay.test"]).unwrap();
    let pin = Pin::cert_sha256(&cert);
    let config = server_config(cert, key).unwrap();
    let server = spawn_bounded("server", move || -> io::Result<_> {
        let (sock, _) = server_listener.accept()?;
        let (mut reader, mut writer) = TlsCellStream::accept(sock, config)?.split()?;
        let mut hasher = Sha256::new();
        let mut count = 0;
        let err = loop {
            match reader.read_cell() {
                Ok(Some(cell)) => {
                    hash_cell(&mut hasher, &cell);
                    count += 1;
                }
                Ok(None) => panic!("clean close after {count} cells: the flipped byte went unnoticed"),
                Err(err) => break err,
            }
        };
        let again = reader.read_cell().expect_err("the reader stays failed");
        let cell = Cell { circ_id: 9, command: Command::RELAY, payload: vec![7; 10].into() };
        let write_err = writer.write_cell(&cell).and_then(|()| writer.flush()).expect_err("the writer is dead too");
        let digest: [u8; 32] = hasher.finalize().into();
        Ok((err, again, write_err, count, digest))
    });

    let sock = b.tcp_connect("10.7.0.1:4432".parse().unwrap()).unwrap();
    let client = TlsCellStream::connect(sock, "relay.test", client_config_pinned(pin)).unwrap();
    let (_client_reader, mut client_writer) = client.split().unwrap();
    let writing = spawn_bounded("client writer", move || -> io::Result<()> {
        let mut source = CellSource::new(3);
        for _ in 0..CELLS {
            client_writer.write_cell(&source.next_cell())?;
        }
        client_writer.close()
    });

    let (err, again, write_err, count, digest) = join_bounded("server", &server).unwrap();
    eprintln!("server reader: {err}\nserver writer: {write_err}\n{count} cells delivered before the error");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("TLS record failed authentication"), "{err}");
    assert!(err.to_string().contains("cannot decrypt peer's message"), "rustls's own words are kept: {err}");
    assert_eq!(again.to_string(), err.to_string());
    assert!(write_err.to_string().contains("TLS record failed authentication"), "{write_err}");
    assert!(count > 0 && count * FIXED_CELL_LEN < FLIP_AT, "{count} cells delivered");
    assert_eq!(digest, hash_of_first(3, count), "delivered cells are an unaltered prefix of those sent");
    // The client's writer may finish or fail (the server stopped reading); it must not hang.
    let _ = join_bounded("client writer", &writing);
}

#[test]
fn wrong_pin_fails_the_handshake() {
    let (a, b) = stack_pair(None);
    let (c, s) = tcp_pair(&a, &b, "10.7.0.1:4433".parse().unwrap());
    let (cert, key) = self_signed(&["relay.test"]).unwrap();
    let (other_cert, _) = self_signed(&["relay.test"]).unwrap();
    let config = server_config(cert.clone(), key).unwrap();
    let server = spawn_bounded("tls accept", move || TlsCellStream::accept(s, config).map(|_| ()));
    let err = TlsCellStream::connect(c, "relay.test", client_config_pinned(Pin::cert_sha256(&other_cert)))
        .expect_err("a wrong pin must fail the handshake");
    let message = err.to_string();
    assert!(message.contains("certificate does not match the pinned fingerprint"), "{message}");
    let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert!(message.contains(&hex(&Sha256::digest(other_cert.as_ref()))), "names the pinned fingerprint: {message}");
    assert!(message.contains(&hex(&Sha256::digest(cert.as_ref()))), "names the presented one: {message}");
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    let server_err = join_bounded("tls accept", &server).expect_err("the server sees the client's alert");
    assert!(server_err.to_string().contains("received fatal alert"), "the client told the server why: {server_err}");
    eprintln!("client: {message}\nserver: {server_err}");
}
