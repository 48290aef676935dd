//! `memlink_tcp_vs_raw_smoltcp`: bulk TCP goodput through the plebnet API
//! (two stacks, two driver threads, application threads using blocking
//! sockets) over a MemLink, divided by a raw smoltcp pair polled directly in
//! one loop with the same buffers and MTU.

use plebnet::net::{Stack, StackConfig};
use plebnet::netstack::nic::{MemLink, MemLinkConfig};
use serde_json::json;

use super::goodput::tcp_goodput;
use super::{Effort, Outcome, Stats, raw_smoltcp};

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
    Ok(tcp_goodput(&a, &b, "10.88.0.1:5201".parse()?, bytes)?)
}

/// The figure: runs both sides `effort.runs` times, interleaved.
pub fn tcp_vs_raw_smoltcp(effort: Effort) -> Result<Outcome, Box<dyn std::error::Error>> {
    let mut ours = Vec::new();
    let mut raw = Vec::new();
    for _ in 0..effort.runs {
        raw.push(raw_smoltcp::goodput(effort.bytes, BUFFER, MTU)?);
        ours.push(plebnet_goodput(effort.bytes)?);
    }
    let ratios: Vec<f64> = ours.iter().zip(&raw).map(|(o, r)| o / r).collect();
    let (o, r, q) = (Stats::of(&ours), Stats::of(&raw), Stats::of(&ratios));
    Ok(Outcome::Measured(
        o.median / r.median,
        json!({
            "plebnet_gbit_s": gbit(o),
            "raw_smoltcp_gbit_s": gbit(r),
            "per_run_ratio": q,
            "bytes_per_run": effort.bytes,
            "mtu": MTU,
            "socket_buffer": BUFFER,
        }),
    ))
}

pub fn gbit(s: Stats) -> serde_json::Value {
    json!({ "median": s.median / 1e9, "min": s.min / 1e9, "max": s.max / 1e9, "runs": s.runs })
}
