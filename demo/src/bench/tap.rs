//! `tap_tcp_vs_raw_smoltcp`: bulk TCP goodput of plebnet (its driver thread
//! and blocking sockets) over a tap device against the kernel's TCP,
//! divided by a minimal raw smoltcp loop ([`raw_tap`]) over the same kind
//! of tap against the same kernel peer, in both directions.
//!
//! Every measurement gets a fresh tap in one namespace per figure (the
//! tap disappears with its NIC), MTU 1500, [`BUFFER`]-byte socket buffers
//! on both userspace sides, and a fresh kernel listener. Runs interleave
//! raw and plebnet, reading then writing. Each direction's ratio is
//! median(plebnet) / median(raw); the figure is the geometric mean of the
//! read and write ratios, so a gain in one direction cannot hide a loss in
//! the other by more than it is worth.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Instant;

use plebnet::net::{Stack, StackConfig, TcpStream};
use plebnet::netstack::nic::TunTapNic;
use serde_json::json;

use super::memlink::gbit;
use super::raw_tap;
use super::tap_setup::{Direction, KernelPeer, Netns, TIME_LIMIT, USER_CIDR, missing_privilege};
use super::{Effort, Outcome, Stats};

/// The figure's name.
const NAME: &str = "tap_tcp_vs_raw_smoltcp";
/// TCP socket buffers of both userspace sides (plebnet's default).
pub const BUFFER: usize = 256 * 1024;
/// The tap's MTU (the default of [`plebnet::netstack::nic::TunTapConfig::tap`]).
const MTU: usize = 1500;

/// One plebnet connection to `peer` moving `bytes` in `direction`; bits
/// per second, timed as [`raw_tap::goodput`] times the baseline.
fn plebnet_goodput(nic: TunTapNic, peer: &KernelPeer, direction: Direction, bytes: usize) -> Result<f64, String> {
    let mut config = StackConfig::with_address(USER_CIDR);
    config.tcp_rx_buffer = BUFFER;
    config.tcp_tx_buffer = BUFFER;
    let stack = Stack::new(config, nic).map_err(|e| format!("plebnet stack: {e}"))?;
    let mut stream =
        TcpStream::connect_timeout(&stack, peer.addr, TIME_LIMIT).map_err(|e| format!("connect {}: {e}", peer.addr))?;
    stream.set_read_timeout(Some(TIME_LIMIT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(TIME_LIMIT)).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + TIME_LIMIT;
    let mut chunk = vec![0x5au8; 64 * 1024];
    let mut moved = 0usize;
    let (started, finished) = match direction {
        Direction::Write => {
            let started = Instant::now();
            while moved < bytes && Instant::now() < deadline {
                let n = (bytes - moved).min(chunk.len());
                stream.write_all(&chunk[..n]).map_err(|e| format!("plebnet write after {moved} bytes: {e}"))?;
                moved += n;
            }
            stream.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
            let report = peer.wait()?;
            if report.bytes != bytes || moved != bytes {
                return Err(format!("plebnet wrote {moved} bytes; the kernel read {} of {bytes}", report.bytes));
            }
            (started, report.done)
        }
        Direction::Read => {
            let mut started = None;
            while Instant::now() < deadline {
                let n = stream.read(&mut chunk).map_err(|e| format!("plebnet read after {moved} bytes: {e}"))?;
                if n == 0 {
                    break;
                }
                started.get_or_insert_with(Instant::now);
                moved += n;
            }
            let finished = Instant::now();
            let report = peer.wait()?;
            if report.bytes != bytes || moved != bytes {
                return Err(format!("plebnet read {moved} bytes; the kernel wrote {} of {bytes}", report.bytes));
            }
            (started.ok_or("plebnet read no data")?, finished)
        }
    };
    Ok(bytes as f64 * 8.0 / finished.duration_since(started).as_secs_f64())
}

/// One measurement on a fresh tap and kernel listener in `ns`.
fn measure(ns: &Netns, direction: Direction, raw: bool, bytes: usize) -> Result<f64, String> {
    let nic = ns.open_tap(!raw)?;
    let peer = KernelPeer::start(ns, direction, bytes)?;
    let result = if raw {
        raw_tap::goodput(nic, &peer, direction, bytes, BUFFER)
    } else {
        plebnet_goodput(nic, &peer, direction, bytes)
    };
    let side = if raw { "raw smoltcp" } else { "plebnet" };
    result.map_err(|e| format!("{NAME}, {side} {direction:?} over tap: {e}"))
}

/// Goodput samples of one direction, in bits per second, run by run.
#[derive(Default)]
struct Samples {
    plebnet: Vec<f64>,
    raw: Vec<f64>,
}

impl Samples {
    /// median(plebnet) / median(raw), and the JSON detail of the direction.
    fn summarize(&self) -> (f64, serde_json::Value) {
        let (o, r) = (Stats::of(&self.plebnet), Stats::of(&self.raw));
        let per_run: Vec<f64> = self.plebnet.iter().zip(&self.raw).map(|(o, r)| o / r).collect();
        let ratio = o.median / r.median;
        let detail = json!({
            "ratio": ratio,
            "plebnet_gbit_s": gbit(o),
            "raw_smoltcp_gbit_s": gbit(r),
            "per_run_ratio": Stats::of(&per_run),
        });
        (ratio, detail)
    }
}

/// The figure, or a "skipped" one when this host cannot make taps.
pub fn tcp_vs_raw_smoltcp(effort: Effort) -> Result<Outcome, Box<dyn std::error::Error>> {
    if let Some(reason) = missing_privilege() {
        return Ok(Outcome::Skipped(reason));
    }
    let ns = Netns::create()?;
    let (mut read, mut write) = (Samples::default(), Samples::default());
    for _ in 0..effort.runs {
        for (direction, samples) in [(Direction::Read, &mut read), (Direction::Write, &mut write)] {
            samples.raw.push(measure(&ns, direction, true, effort.bytes)?);
            samples.plebnet.push(measure(&ns, direction, false, effort.bytes)?);
        }
    }
    let ((read_ratio, read), (write_ratio, write)) = (read.summarize(), write.summarize());
    let detail = json!({
        "value": "geometric mean of the read and write ratios; each is median(plebnet) / median(raw smoltcp)",
        "read": read,
        "write": write,
        "bytes_per_run": effort.bytes,
        "mtu": MTU,
        "socket_buffer": BUFFER,
        "peer": "kernel TCP (std::net) in a private network namespace, over tap plbtap0",
        "offload": "plebnet opens the tap with virtio-net headers (checksum + TCP segmentation offload: \
                    super-segments up to 64 KiB each way); the raw smoltcp loop uses plain frames, as smoltcp's \
                    own tap device does",
    });
    Ok(Outcome::Measured((read_ratio * write_ratio).sqrt(), detail))
}
