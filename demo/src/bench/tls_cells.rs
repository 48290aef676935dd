//! `tls_cells_vs_kernel_tls`: 514-byte cells per second through one TLS cell stream over plebnet TCP (two
//! stacks over UdpNics at MTU 65000 on loopback), divided by the same through TLS over kernel TCP on
//! 127.0.0.1 in the same run.
//!
//! Each run: connect, TLS handshake (untimed), split both ends; one thread writes N cells
//! (N = bytes per run / 514) and closes, the other reads until all N arrived, checking their count and a
//! running hash of every payload. Cells/s = N / time from the first write to the last cell read.

use std::error::Error;
use std::net::SocketAddr;
use std::thread;
use std::time::Instant;

use plebnet::net::{NetStack, OsStack, Stack, StackConfig, TcpListenerApi};
use plebnet_transport::cell::{Cell, Command, FIXED_CELL_LEN, FIXED_PAYLOAD_LEN};
use plebnet_transport::tls::{Pin, TlsCellStream, client_config_pinned, self_signed, server_config};
use serde_json::json;

use super::memlink::gbit;
use super::udp::{UDP_BUFFER, nic_pair};
use super::{Effort, Outcome, Stats};

/// MTU of the plebnet side's UdpNics.
const MTU: usize = 65_000;
/// Distinct payloads the writer cycles through.
const PAYLOADS: usize = 61;

/// A cheap order-sensitive hash step (FxHash's multiply-rotate): enough to catch a lost, repeated, reordered
/// or altered cell without making the reader's CPU the bottleneck.
fn mix(h: u64, word: u64) -> u64 {
    (h.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95)
}

fn payload_hash(payload: &[u8]) -> u64 {
    let mut words = payload.chunks_exact(8);
    let mut h = words.by_ref().fold(0, |h, w| mix(h, u64::from_le_bytes(w.try_into().expect("8 bytes"))));
    for &b in words.remainder() {
        h = mix(h, b.into());
    }
    h
}

/// `PAYLOADS` RELAY cells with pseudo-random full payloads, and each payload's hash.
fn cell_ring() -> (Vec<Cell>, Vec<u64>) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let cells: Vec<Cell> = (0..PAYLOADS)
        .map(|_| {
            let payload: Vec<u8> = (0..FIXED_PAYLOAD_LEN)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            Cell { circ_id: 1, command: Command::RELAY, payload: payload.into() }
        })
        .collect();
    let hashes = cells.iter().map(|c| payload_hash(&c.payload)).collect();
    (cells, hashes)
}

/// Moves `count` cells over one TLS cell stream from a client on `client` to a server on `server` listening
/// at `listen`; returns cells per second and the negotiated TLS version.
fn cells_per_sec<N: NetStack>(
    server: &N,
    client: &N,
    listen: SocketAddr,
    count: usize,
) -> Result<(f64, String), Box<dyn Error>> {
    let (cert, key) = self_signed(&["bench.test"])?;
    let pin = Pin::cert_sha256(&cert);
    let tls_server = server_config(cert, key)?;
    let listener = server.tcp_listen(listen).map_err(|e| format!("listen {listen}: {e}"))?;
    let target = listener.local_addr()?;
    let sock = client.tcp_connect(target).map_err(|e| format!("connect {target}: {e}"))?;
    let (served, _) = listener.accept()?;
    let accepting = thread::spawn(move || TlsCellStream::accept(served, tls_server));
    let tls_client = TlsCellStream::connect(sock, "bench.test", client_config_pinned(pin))?;
    let tls_served = accepting.join().map_err(|_| "TLS accept panicked")??;
    let version = tls_client.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default();
    let (_client_reader, mut writer) = tls_client.split()?;
    let (mut reader, _server_writer) = tls_served.split()?;

    let (ring, hashes) = cell_ring();
    let expected = (0..count).fold(0, |h, i| mix(h, hashes[i % PAYLOADS]));
    let started = Instant::now();
    let writing = thread::spawn(move || -> std::io::Result<()> {
        for i in 0..count {
            writer.write_cell(&ring[i % PAYLOADS])?;
        }
        writer.close()
    });
    let (mut got, mut hash) = (0, 0);
    while got < count {
        let cell = reader.read_cell()?.ok_or_else(|| format!("stream ended after {got} of {count} cells"))?;
        hash = mix(hash, payload_hash(&cell.payload));
        got += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    writing.join().map_err(|_| "cell writer panicked")??;
    if reader.read_cell()?.is_some() {
        return Err(format!("more than the {count} cells sent arrived").into());
    }
    if hash != expected {
        return Err(format!("the {count} cells arrived but their payloads differ from those sent").into());
    }
    Ok((count as f64 / secs, version))
}

/// Two plebnet stacks over UdpNics at MTU 65000 (A 10.90.0.1, B 10.90.0.2).
fn jumbo_stacks() -> Result<(Stack, Stack), Box<dyn Error>> {
    let (na, nb) = nic_pair(MTU)?;
    let config = |addr: &str| {
        let mut c = StackConfig::with_address(addr);
        c.tcp_rx_buffer = UDP_BUFFER;
        c.tcp_tx_buffer = UDP_BUFFER;
        c
    };
    Ok((Stack::new(config("10.90.0.1/24"), na)?, Stack::new(config("10.90.0.2/24"), nb)?))
}

/// Cells/s to payload bits/s.
fn payload_bits(cells: Stats) -> Stats {
    let bits = (FIXED_PAYLOAD_LEN * 8) as f64;
    Stats { median: cells.median * bits, min: cells.min * bits, max: cells.max * bits, runs: cells.runs }
}

/// `tls_cells_vs_kernel_tls`.
pub fn cells_vs_kernel_tls(effort: Effort) -> Result<Outcome, Box<dyn Error>> {
    let count = effort.bytes / FIXED_CELL_LEN;
    let (mut ours, mut kernel, mut version) = (Vec::new(), Vec::new(), String::new());
    for _ in 0..effort.runs {
        kernel.push(cells_per_sec(&OsStack, &OsStack, "127.0.0.1:0".parse()?, count)?.0);
        let (a, b) = jumbo_stacks()?;
        let (rate, v) = cells_per_sec(&a, &b, "10.90.0.1:5202".parse()?, count)?;
        ours.push(rate);
        version = v;
    }
    let (o, k) = (Stats::of(&ours), Stats::of(&kernel));
    Ok(Outcome::Measured(
        o.median / k.median,
        json!({
            "plebnet_cells_per_s": o,
            "kernel_cells_per_s": k,
            "plebnet_payload_gbit_s": gbit(payload_bits(o)),
            "kernel_payload_gbit_s": gbit(payload_bits(k)),
            "cells_per_run": count,
            "cell_bytes": FIXED_CELL_LEN,
            "tls": version,
            "mtu": MTU,
            "socket_buffer": UDP_BUFFER,
        }),
    ))
}
