//! TLS cell streams split into async halves (`split_async`): on each side one executor thread runs a reader
//! task and a writer task joined together, 16 MiB each way with key updates on both sides every MiB. Two
//! tasks on one thread can only both progress if each has its own wake-up and neither ever blocks the
//! thread, so a stolen or lost wake-up shows up as a deadlock (bounded by a timeout), a wrong byte as a
//! hash mismatch.

use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Instant;

use futures::executor::block_on;
use futures::future::join;
use plebnet::netstack::{Stack, TcpStream};
use plebnet_tests::cells::{self, CellSource, hash_cell, join_bounded, spawn_bounded, tcp_pair};
use plebnet_tests::{stack_pair, stack_pair_with};
use plebnet_transport::cell::FIXED_CELL_LEN;
use plebnet_transport::tls::{AsyncCellReader, AsyncCellWriter, TlsCellStream};
use sha2::{Digest, Sha256};

/// A TLS-over-plebnet pair `(client, server)`, handshaken (blocking) across stacks `b` -> `a`.
fn tls_pair(a: &Stack, b: &Stack, listen: SocketAddr) -> (TlsCellStream<TcpStream>, TlsCellStream<TcpStream>) {
    let (c, s) = tcp_pair(a, b, listen);
    cells::tls_pair(c, s, false)
}

/// Writes `bytes` worth of cells from `seed`, updating keys every MiB, then closes; returns hash and updates.
async fn write_side(mut w: AsyncCellWriter<TcpStream>, seed: u64, bytes: usize) -> io::Result<([u8; 32], usize)> {
    let mut source = CellSource::new(seed);
    let mut hasher = Sha256::new();
    let mut updates = 0;
    for i in 1..=bytes / FIXED_CELL_LEN {
        let cell = source.next_cell();
        w.write_cell(&cell).await?;
        hash_cell(&mut hasher, &cell);
        if (i * FIXED_CELL_LEN) >> 20 != ((i - 1) * FIXED_CELL_LEN) >> 20 {
            w.update_keys().await?;
            updates += 1;
        }
    }
    w.close().await?;
    Ok((hasher.finalize().into(), updates))
}

/// Reads cells until the peer's close_notify; returns their hash and count.
async fn read_side(mut r: AsyncCellReader<TcpStream>) -> io::Result<([u8; 32], usize)> {
    let mut hasher = Sha256::new();
    let mut count = 0;
    while let Some(cell) = r.read_cell().await? {
        hash_cell(&mut hasher, &cell);
        count += 1;
    }
    Ok((hasher.finalize().into(), count))
}

type SideResult = (io::Result<([u8; 32], usize)>, io::Result<([u8; 32], usize)>);

/// One side: its reader and writer as two tasks joined on one executor thread.
fn run_side(name: &str, tls: TlsCellStream<TcpStream>, seed: u64, bytes: usize) -> mpsc::Receiver<SideResult> {
    let (reader, writer) = tls.split_async().unwrap();
    spawn_bounded(name, move || block_on(join(write_side(writer, seed, bytes), read_side(reader))))
}

fn full_duplex_async(client: TlsCellStream<TcpStream>, server: TlsCellStream<TcpStream>, bytes: usize) {
    let started = Instant::now();
    let c = run_side("client tasks", client, 1, bytes);
    let s = run_side("server tasks", server, 2, bytes);
    let (c_write, c_read) = join_bounded("client tasks", &c);
    let (s_write, s_read) = join_bounded("server tasks", &s);
    let ((c_sent, updates), (s_sent, s_updates)) = (c_write.unwrap(), s_write.unwrap());
    let ((c_got, c_count), (s_got, s_count)) = (c_read.unwrap(), s_read.unwrap());
    let cells = bytes / FIXED_CELL_LEN;
    assert_eq!(s_count, cells, "cells client -> server");
    assert_eq!(c_count, cells, "cells server -> client");
    assert_eq!(c_sent, s_got, "client -> server content");
    assert_eq!(s_sent, c_got, "server -> client content");
    assert_eq!(updates, (cells * FIXED_CELL_LEN) >> 20, "one key update per MiB");
    assert_eq!(s_updates, updates);
    eprintln!("async: {} MiB each way with {updates} key updates per side in {:?}", bytes >> 20, started.elapsed());
}

#[test]
fn async_full_duplex_16_mib_with_key_updates_over_plebnet() {
    let (a, b) = stack_pair(None);
    let (client, server) = tls_pair(&a, &b, "10.7.0.1:4440".parse().unwrap());
    assert_eq!(client.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    full_duplex_async(client, server, 16 << 20);
}

/// Small socket buffers keep both writer tasks waiting for room most of the time, so the reader tasks' key
/// update answers must get out while the writers are parked on the send event.
#[test]
fn async_full_duplex_16_mib_with_key_updates_over_plebnet_with_small_buffers() {
    let (a, b) = stack_pair_with(None, |c| {
        c.tcp_rx_buffer = 8 * 1024;
        c.tcp_tx_buffer = 8 * 1024;
    });
    let (client, server) = tls_pair(&a, &b, "10.7.0.1:4441".parse().unwrap());
    full_duplex_async(client, server, 16 << 20);
}
