//! The multipath figures, each over real plebnet stacks: one client and one server stack per path, joined
//! by their own MemLink (their own NICs) whose both directions go through the impairment middleware.
//!
//! * `multipath_aggregate_vs_single`: two paths, each rate-limited to the same R; goodput of a two-leg
//!   tunnel (weighted round-robin) divided by a one-leg tunnel over one such path, same run.
//! * `multipath_failover_stall_s`: two paths at 10 ms RTT (and R); the leg carrying the data (LowRTT keeps one leg
//!   busy) is killed halfway through a download; the figure is the longest gap in delivered bytes in the
//!   4 MiB after the kill.

use std::error::Error;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use plebnet::net::{NetStack, Stack, StackConfig};
use plebnet::netstack::nic::{Impair, ImpairConfig, MemLink, MemLinkConfig};
use plebnet_transport::multipath::driver::{Tunnel, TunnelListener, multipath_client_config};
use plebnet_transport::multipath::{LegOptions, Scheduler, TunnelConfig};
use plebnet_transport::tls::{Pin, TlsCellStream, client_config_pinned, self_signed, server_config};
use serde_json::json;

use super::{Effort, Outcome, Stats};

const PORT: u16 = 9000;
/// Each path's rate in the aggregation figure, bits per second.
const RATE_BPS: u64 = 200_000_000;

struct Path {
    client: Stack,
    server: Stack,
}

fn path(i: u8, delay: Duration, rate_bps: Option<u64>) -> Result<Path, Box<dyn Error>> {
    let (na, nb) = MemLink::pair(MemLinkConfig { mtu: 9000, queue_packets: 4096 });
    let impair = |seed| ImpairConfig { seed, delay, rate_bps, queue_bytes: 4 << 20, ..ImpairConfig::default() };
    let client =
        Stack::new(StackConfig::with_address("10.66.0.1/24").named(&format!("client{i}")), Impair::new(na, impair(1)))?;
    let server =
        Stack::new(StackConfig::with_address("10.66.0.2/24").named(&format!("server{i}")), Impair::new(nb, impair(2)))?;
    Ok(Path { client, server })
}

/// A tunnel over `paths` (one leg each): (client end, server end).
fn tunnel_over(paths: &[Path], scheduler: Scheduler) -> Result<(Tunnel, Tunnel), Box<dyn Error>> {
    let (cert, key) = self_signed(&["bench.test"])?;
    let pin = Pin::spki_sha256(&cert).ok_or("no SPKI")?;
    let tls = server_config(cert, key)?;
    let config = TunnelConfig { scheduler, ..TunnelConfig::default() };
    let listener = TunnelListener::new(config.clone());
    let addr: SocketAddr = format!("10.66.0.2:{PORT}").parse()?;
    for p in paths {
        listener.serve(p.server.tcp_listen(addr)?, &tls)?;
    }
    let client = Tunnel::initiator(config)?;
    for p in paths {
        let tcp = p.client.tcp_connect(addr)?;
        tcp.set_nodelay(true)?;
        let tls = TlsCellStream::connect(tcp, "bench.test", multipath_client_config(&client_config_pinned(pin)))?;
        client.add_leg(tls, LegOptions::default())?;
    }
    client.wait_legs(paths.len(), Duration::from_secs(20))?;
    let server = listener.accept_timeout(Duration::from_secs(20))?;
    server.wait_legs(paths.len(), Duration::from_secs(20))?;
    Ok((client, server))
}

/// What one download saw.
struct Download {
    secs: f64,
    /// Longest gap between reads in the 4 MiB after the kill.
    gap: Duration,
    /// Seconds from the start when the leg was killed.
    killed_at: Option<f64>,
    /// (seconds, bytes received per leg) every 10 ms.
    trace: Vec<(f64, Vec<u64>)>,
}

/// The server sends `len` bytes to the client on one stream; with `kill`, the busiest leg is killed on the
/// client's side when half has arrived.
fn download(client: &Tunnel, server: &Tunnel, len: usize, kill: bool) -> Result<Download, Box<dyn Error>> {
    let server = server.clone();
    let sender = thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = server.accept_stream()?;
        let chunk = vec![0x5au8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n])?;
            left -= n;
        }
        s.shutdown_write()
    });
    let mut stream = client.open_stream("bench")?;
    let started = Instant::now();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let sampler = {
        let client = client.clone();
        thread::spawn(move || {
            let mut trace = Vec::new();
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(Duration::from_millis(10))
            {
                let legs = client.leg_stats().iter().map(|l| l.data_bytes_received).collect();
                trace.push((started.elapsed().as_secs_f64(), legs));
            }
            trace
        })
    };
    let mut killed_at = None;
    let mut buf = vec![0u8; 64 * 1024];
    let (mut got, mut last, mut gap, mut watch_until) = (0usize, None::<Instant>, Duration::ZERO, 0usize);
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0x5a) {
            return Err("corrupted data in the multipath benchmark".into());
        }
        let now = Instant::now();
        if let Some(l) = last
            && got < watch_until
        {
            gap = gap.max(now - l);
        }
        last = Some(now);
        got += n;
        if kill && watch_until == 0 && got >= len / 2 {
            let busiest = client.leg_stats().into_iter().max_by_key(|l| l.data_bytes_received).map(|l| l.id);
            client.kill_leg(busiest.ok_or("no leg")?);
            watch_until = got + (4 << 20);
            killed_at = Some(started.elapsed().as_secs_f64());
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = stop.send(());
    let trace = sampler.join().map_err(|_| "sampler panicked")?;
    sender.join().map_err(|_| "sender panicked")??;
    if got != len {
        return Err(format!("multipath benchmark: {got} of {len} bytes arrived").into());
    }
    Ok(Download { secs, gap, killed_at, trace })
}

/// Per-leg throughput (Mbit/s over 50 ms windows) through the failover, as a PNG: one line per leg, the
/// kill marked by a vertical line.
fn plot_failover(d: &Download, dir: &std::path::Path) -> Result<(), Box<dyn Error>> {
    let legs = d.trace.iter().map(|(_, b)| b.len()).max().unwrap_or(0);
    let step = 5; // samples of 10 ms per window
    let series: Vec<Vec<(f64, f64)>> = (0..legs)
        .map(|leg| {
            d.trace
                .windows(step + 1)
                .step_by(step)
                .map(|w| {
                    let (t0, b0) = &w[0];
                    let (t1, b1) = &w[step];
                    let bytes = b1.get(leg).copied().unwrap_or(0).saturating_sub(b0.get(leg).copied().unwrap_or(0));
                    (*t1, bytes as f64 * 8.0 / (t1 - t0) / 1e6)
                })
                .collect()
        })
        .collect();
    std::fs::create_dir_all(dir)?;
    let mut canvas = super::plot::Canvas::new(800, 400);
    canvas.chart(&series, &d.killed_at.into_iter().collect::<Vec<_>>());
    let path = dir.join("multipath_failover.png");
    canvas.write_png(&path)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// `multipath_aggregate_vs_single`.
pub fn aggregate_vs_single(effort: Effort) -> Result<Outcome, Box<dyn Error>> {
    let len = effort.bytes / 2;
    let delay = Duration::from_millis(5);
    let (mut two, mut one) = (Vec::new(), Vec::new());
    for _ in 0..effort.runs {
        let paths = [path(1, delay, Some(RATE_BPS))?, path(2, delay, Some(RATE_BPS))?];
        let (c, s) = tunnel_over(&paths, Scheduler::WeightedRoundRobin)?;
        two.push(len as f64 * 8.0 / download(&c, &s, len, false)?.secs);
        let single = [path(3, delay, Some(RATE_BPS))?];
        let (c, s) = tunnel_over(&single, Scheduler::WeightedRoundRobin)?;
        one.push(len as f64 * 8.0 / download(&c, &s, len, false)?.secs);
    }
    let ratios: Vec<f64> = two.iter().zip(&one).map(|(t, o)| t / o).collect();
    let (t, o) = (Stats::of(&two), Stats::of(&one));
    Ok(Outcome::Measured(
        t.median / o.median,
        json!({
            "two_legs_mbit_s": mbit(t),
            "one_leg_mbit_s": mbit(o),
            "per_run_ratio": Stats::of(&ratios),
            "path_rate_mbit_s": RATE_BPS / 1_000_000,
            "path_rtt_ms": 10,
            "bytes_per_run": len,
            "scheduler": "weighted round-robin",
        }),
    ))
}

/// `multipath_failover_stall_s`.
pub fn failover_stall(effort: Effort) -> Result<Outcome, Box<dyn Error>> {
    let len = effort.bytes / 2;
    let mut stalls = Vec::new();
    for run in 0..effort.runs {
        let delay = Duration::from_millis(5);
        let paths = [path(1, delay, Some(RATE_BPS))?, path(2, delay, Some(RATE_BPS))?];
        let (c, s) = tunnel_over(&paths, Scheduler::LowRtt)?;
        let d = download(&c, &s, len, true)?;
        if run == 0
            && let Some(dir) = effort.plot
        {
            plot_failover(&d, dir)?;
        }
        stalls.push(d.gap.as_secs_f64());
    }
    let st = Stats::of(&stalls);
    Ok(Outcome::Measured(
        st.median,
        json!({
            "stall_s": st,
            "path_rtt_ms": 10,
            "path_rate_mbit_s": RATE_BPS / 1_000_000,
            "bytes_per_run": len,
            "how": "the leg carrying the data is killed (its socket shut) when half has arrived; longest gap between reads in the next 4 MiB",
        }),
    ))
}

fn mbit(s: Stats) -> serde_json::Value {
    json!({ "median": s.median / 1e6, "min": s.min / 1e6, "max": s.max / 1e6 })
}
