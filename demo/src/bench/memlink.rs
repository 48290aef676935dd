//! `memlink_tcp_vs_raw_smoltcp`: bulk TCP goodput through the plebnet API
//! (two stacks, two driver threads, application threads using blocking
//! sockets) over a MemLink, divided by a raw smoltcp pair polled directly in
//! one loop with the same buffers and MTU.

use std::io::{Read, Write};
use std::thread;
use std::time::Instant;

use plebnet::net::{Stack, StackConfig, TcpListener, TcpStream};
use plebnet::netstack::nic::{MemLink, MemLinkConfig};
use serde_json::json;

use super::{Better, Effort, Figure, Stats, raw_smoltcp};

/// Socket buffers used by both sides of the comparison.
pub const BUFFER: usize = 256 * 1024;
/// MTU used by both sides of the comparison.
pub const MTU: usize = 1500;

/// Goodput of one plebnet connection moving `bytes`, in bits per second.
pub fn plebnet_goodput(bytes: usize) -> Result<f64, Box<dyn std::error::Error>> {
    let (na, nb) = MemLink::pair(MemLinkConfig { mtu: MTU, queue_packets: 4096 });
    let config = |addr: &str| {
        let mut c = StackConfig::with_address(addr);
        c.tcp_rx_buffer = BUFFER;
        c.tcp_tx_buffer = BUFFER;
        c
    };
    let a = Stack::new(config("10.88.0.1/24"), na)?;
    let b = Stack::new(config("10.88.0.2/24"), nb)?;
    let listener = TcpListener::bind(&a, "10.88.0.1:5201".parse()?)?;
    let client = TcpStream::connect(&b, "10.88.0.1:5201".parse()?)?;
    let (mut server, _) = listener.accept()?;
    let started = Instant::now();
    let writer = thread::spawn(move || -> std::io::Result<()> {
        let chunk = vec![0x5au8; 64 * 1024];
        let mut client = client;
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            client.write_all(&chunk[..n])?;
            left -= n;
        }
        client.shutdown(std::net::Shutdown::Write)
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    loop {
        let n = server.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let secs = started.elapsed().as_secs_f64();
    writer.join().map_err(|_| "writer panicked")??;
    if got != bytes {
        return Err(format!("plebnet moved {got} of {bytes} bytes").into());
    }
    Ok(bytes as f64 * 8.0 / secs)
}

/// The figure: runs both sides `effort.runs` times, interleaved.
pub fn tcp_vs_raw_smoltcp(effort: Effort) -> Result<Figure, Box<dyn std::error::Error>> {
    let mut ours = Vec::new();
    let mut raw = Vec::new();
    for _ in 0..effort.runs {
        raw.push(raw_smoltcp::goodput(effort.bytes, BUFFER, MTU)?);
        ours.push(plebnet_goodput(effort.bytes)?);
    }
    let ratios: Vec<f64> = ours.iter().zip(&raw).map(|(o, r)| o / r).collect();
    let (o, r, q) = (Stats::of(&ours), Stats::of(&raw), Stats::of(&ratios));
    Ok(Figure {
        name: "memlink_tcp_vs_raw_smoltcp",
        value: Some(o.median / r.median),
        unit: "ratio",
        goal: 0.9,
        better: Better::Higher,
        status: "measured",
        detail: json!({
            "plebnet_gbit_s": gbit(o),
            "raw_smoltcp_gbit_s": gbit(r),
            "per_run_ratio": q,
            "bytes_per_run": effort.bytes,
            "mtu": MTU,
            "socket_buffer": BUFFER,
        }),
    })
}

fn gbit(s: Stats) -> serde_json::Value {
    json!({ "median": s.median / 1e9, "min": s.min / 1e9, "max": s.max / 1e9, "runs": s.runs })
}
