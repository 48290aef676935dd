//! `plebnet demo`: a small relay network on loopback, unprivileged, with no configuration — a client, a
//! relay and an exit, each its own plebnet stack over a UdpNic. The client reaches the relay over a
//! multipath tunnel (one leg per relay address, TLS cell streams over plebnet TCP); the relay carries the
//! tunnel's stream over a TLS cell channel to the exit, which connects to a target served on its own
//! stack. The target sends `--size` MiB; halfway through, one leg is killed; the tunnel resends what that
//! leg had not delivered on the others. The summary compares the sha256 of what the target sent with what
//! the client received; the exit status is 0 only if they match.

mod circuit;
mod network;
mod roles;

use std::io::Read;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;
use plebnet::net::Stack;
use plebnet_transport::multipath::driver::{MultipathConnection, Tunnel, connect_multipath};
use plebnet_transport::multipath::{LegId, LegState, Scheduler, TunnelConfig};
use plebnet_transport::tls::client_config_pinned;
use sha2::{Digest, Sha256};

use crate::table;

/// Options of `plebnet demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Seed of the data and of the link impairment: same seed, same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// MiB the target sends through the relay network to the client.
    #[arg(long, default_value_t = 64)]
    size: u64,
    /// Packet loss on the client's links (both legs), as a fraction (0.02 = 2%), each direction.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Legs of the client's multipath tunnel (one per relay address, 1 to 4). With two or more, the leg
    /// that has carried the most is killed halfway through the transfer.
    #[arg(long, default_value_t = 2)]
    legs: usize,
    /// How the tunnel spreads data over its legs: wrr (weighted round-robin: aggregate), lowrtt (fastest leg
    /// with room), minrtt (fastest leg only) or redundant (every cell on every leg).
    #[arg(long, default_value = "wrr", value_parser = parse_scheduler)]
    scheduler: Scheduler,
    /// Flip this many bytes of the received stream after the transport
    /// (to prove the content check catches it); for tests.
    #[arg(long, default_value_t = 0, hide = true)]
    corrupt_after_transport: usize,
}

fn parse_scheduler(s: &str) -> Result<Scheduler, String> {
    Scheduler::parse(s).ok_or_else(|| format!("unknown scheduler {s:?}: use wrr, lowrtt, minrtt or redundant"))
}

/// What the client saw.
struct Received {
    bytes: u64,
    hash: [u8; 32],
    elapsed: f64,
    /// Longest gap between two reads that brought data, after the first byte.
    stall: Duration,
    /// Longest such gap from the kill until 4 MiB more had arrived: the failover's cost.
    failover_stall: Duration,
    killed: Option<(LegId, f64)>,
}

/// Runs the demo and returns its exit code.
pub fn run(args: &DemoArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if !(0.0..1.0).contains(&args.loss) {
        return Err(format!("--loss must be in [0, 1), got {}", args.loss).into());
    }
    if !(1..=4).contains(&args.legs) {
        return Err(format!("--legs must be 1 to 4, got {}", args.legs).into());
    }
    if args.size == 0 {
        return Err("--size must be at least 1 (MiB)".into());
    }
    let len = args.size << 20;
    let net = network::build(args.legs, args.loss, args.seed)?;
    println!("plebnet demo: client -> relay -> exit -> target, three userspace stacks over UDP on 127.0.0.1");
    println!(
        "  client 10.77.1.1 --{} leg(s)--> relay {} --TLS cell channel--> exit {} --TCP--> target :{}",
        args.legs,
        net.relay_addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        net.exit_addr,
        roles::TARGET_PORT
    );
    println!(
        "  {} MiB from the target; loss {:.1}% on the client's links; scheduler {:?}; seed {}",
        args.size,
        args.loss * 100.0,
        args.scheduler,
        args.seed
    );

    let (relay_tls, relay_pin) = roles::identity("relay.demo").map_err(|e| e.to_string())?;
    let (exit_tls, exit_pin) = roles::identity("exit.demo").map_err(|e| e.to_string())?;
    let target = roles::serve_target(&net.exit, net.exit_addr, args.seed, len).map_err(|e| e.to_string())?;
    roles::run_exit(net.exit.clone(), net.exit_addr, exit_tls).map_err(|e| e.to_string())?;
    let relay = roles::run_relay(net.relay.clone(), &net.relay_addrs, &relay_tls, net.exit_addr, exit_pin)
        .map_err(|e| e.to_string())?;

    let paths: Vec<SocketAddr> = net.relay_addrs.iter().map(|a| SocketAddr::new(*a, roles::RELAY_PORT)).collect();
    let tls = client_config_pinned(relay_pin);
    let MultipathConnection::Tunnel(tunnel) = connect_multipath(
        &net.client,
        &paths,
        "relay.demo",
        &tls,
        TunnelConfig { scheduler: args.scheduler, ..TunnelConfig::default() },
    )?
    else {
        return Err("the relay did not accept a multipath tunnel".into());
    };
    tunnel.wait_legs(args.legs, Duration::from_secs(20))?;
    let received = receive(&tunnel, args, len)?;
    let sent = target.join().map_err(|_| "the target panicked")??;
    let relay_tunnel = relay.tunnels.lock().unwrap_or_else(|p| p.into_inner()).first().cloned();
    let ok = received.bytes == len && received.hash == sent;
    summarize(&received, &sent, ok, &tunnel, relay_tunnel.as_ref(), &[&net.client, &net.relay, &net.exit]);
    if let Some(t) = &relay_tunnel {
        for e in t.events() {
            println!("  relay tunnel event: {e:?}");
        }
    }
    let channel = relay.exit.stats();
    println!(
        "  relay -> exit channel: {} cells out, {} in; tunnels refused by the relay: {}",
        channel.cells_out,
        channel.cells_in,
        relay.listener.stats().refused
    );
    if ok {
        println!("\n  RESULT: {} MiB arrived intact through the relay network (sha256 match)", args.size);
        Ok(ExitCode::SUCCESS)
    } else {
        println!("\n  RESULT: CONTENT MISMATCH — what arrived is not what the target sent");
        Ok(ExitCode::FAILURE)
    }
}

/// Reads the stream from the target, printing a progress line per second and killing the first leg
/// halfway.
fn receive(tunnel: &Tunnel, args: &DemoArgs, len: u64) -> Result<Received, Box<dyn std::error::Error>> {
    let target = format!("10.77.2.3:{}", roles::TARGET_PORT);
    let mut stream = tunnel.open_stream(&target)?;
    stream.shutdown_write()?;
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let progress = {
        let tunnel = tunnel.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            while let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(Duration::from_millis(250)) {
                print_progress(&tunnel, started.elapsed().as_secs_f64(), len);
            }
        })
    };
    let started = Instant::now();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let (mut bytes, mut corrupt) = (0u64, args.corrupt_after_transport);
    let (mut last, mut stall, mut killed) = (None::<Instant>, Duration::ZERO, None);
    let (mut failover_stall, mut failover_until) = (Duration::ZERO, 0u64);
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let now = Instant::now();
        if let Some(l) = last {
            stall = stall.max(now - l);
            if killed.is_some() && bytes < failover_until {
                failover_stall = failover_stall.max(now - l);
            }
        }
        last = Some(now);
        if corrupt > 0 {
            buf[0] ^= 0xFF;
            corrupt -= 1;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
        if killed.is_none() && args.legs > 1 && bytes >= len / 2 {
            let busiest = tunnel.leg_stats().into_iter().max_by_key(|l| l.data_bytes_received).map(|l| l.id);
            let leg = busiest.unwrap_or(LegId(0));
            tunnel.kill_leg(leg);
            let at = started.elapsed().as_secs_f64();
            println!("  {at:5.1}s  killed leg {} (the busiest) at {:.1} MiB", leg.0, bytes as f64 / 1048576.0);
            killed = Some((leg, at));
            failover_until = bytes + (4 << 20);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = done_tx.send(());
    let _ = progress.join();
    print_progress(tunnel, elapsed, len);
    Ok(Received { bytes, hash: hasher.finalize().into(), elapsed, stall, failover_stall, killed })
}

fn print_progress(tunnel: &Tunnel, at: f64, len: u64) {
    const WIDTH: usize = 20;
    let legs = tunnel.leg_stats();
    let total: u64 = legs.iter().map(|l| l.data_bytes_received).sum();
    let bars: Vec<String> = legs
        .iter()
        .map(|l| {
            let filled = ((l.data_bytes_received as f64 / len as f64) * WIDTH as f64).round() as usize;
            let state = if l.state == LegState::Closed { " dead" } else { "" };
            format!(
                "leg {} [{}{}] {:6.1} MiB{state}",
                l.id.0,
                "#".repeat(filled.min(WIDTH)),
                ".".repeat(WIDTH - filled.min(WIDTH)),
                l.data_bytes_received as f64 / 1048576.0
            )
        })
        .collect();
    println!("  {at:5.1}s  {}  total {:.1} MiB", bars.join("  "), total as f64 / 1048576.0);
}

fn hex8(h: &[u8; 32]) -> String {
    h[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn summarize(r: &Received, sent: &[u8; 32], ok: bool, client: &Tunnel, relay: Option<&Tunnel>, stacks: &[&Stack]) {
    let legs = client.leg_stats();
    let mut rows = vec![
        vec!["data".to_string(), format!("{:.1} MiB in {:.2} s", r.bytes as f64 / 1048576.0, r.elapsed)],
        vec!["goodput".to_string(), table::rate(r.bytes, r.elapsed)],
        vec![
            "failover stall".to_string(),
            match r.killed {
                Some((leg, at)) => format!(
                    "{:.0} ms (longest gap in delivery in the 4 MiB after leg {} was killed at {at:.1} s)",
                    r.failover_stall.as_secs_f64() * 1e3,
                    leg.0
                ),
                None => "no leg killed".to_string(),
            },
        ],
        vec!["longest gap overall".to_string(), format!("{:.0} ms", r.stall.as_secs_f64() * 1e3)],
    ];
    for l in &legs {
        rows.push(vec![
            format!("leg {} bytes", l.id.0),
            format!(
                "{:.1} MiB received ({}, rtt {})",
                l.data_bytes_received as f64 / 1048576.0,
                if l.state == LegState::Closed { "killed" } else { "up" },
                l.srtt.map_or("-".to_string(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
            ),
        ]);
    }
    let relay_stats = relay.map(Tunnel::stats).unwrap_or_default();
    let client_stats = client.stats();
    rows.push(vec![
        "reinjected cells".into(),
        format!("{} by the relay, {} by the client", relay_stats.reinjected_cells, client_stats.reinjected_cells),
    ]);
    rows.push(vec![
        "duplicate copies dropped".into(),
        format!("{} at the client (none delivered twice)", client_stats.duplicates_dropped),
    ]);
    rows.push(vec!["sha256 sent (target)".into(), hex8(sent)]);
    rows.push(vec!["sha256 received (client)".into(), hex8(&r.hash)]);
    rows.push(vec!["content".into(), if ok { "match" } else { "MISMATCH" }.into()]);
    println!("\n{}", table::render(&["summary", ""], &rows));

    let mut drops = Vec::new();
    for stack in stacks {
        for group in stack.counters() {
            for (name, value) in group.values {
                let interesting = name.contains("dropped")
                    || name.contains("corrupted")
                    || name.contains("duplicated")
                    || name.contains("reordered");
                if interesting && value > 0 {
                    drops.push(vec![
                        stack.name().to_string(),
                        group.layer.clone(),
                        name.to_string(),
                        value.to_string(),
                    ]);
                }
            }
        }
    }
    if drops.is_empty() {
        println!("\n  no packet was dropped anywhere");
    } else {
        println!("\n  drops by reason:\n{}", table::render(&["stack", "layer", "counter", "count"], &drops));
    }
}
