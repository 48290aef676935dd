//! Curves rather than figures, measured with `--plot`: plebnet's TCP
//! goodput against the link MTU (UdpNic on loopback) and against loss
//! (MemLink with the impairment middleware on both ends), each as a PNG,
//! and the kernel-over-veth baseline (root only). Their numbers go into the
//! JSON in the detail of the figure they belong to.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use plebnet::net::{Stack, StackConfig};
use plebnet::netstack::nic::{Impair, ImpairConfig, MemLink, MemLinkConfig};
use serde_json::{Value, json};

use super::goodput::tcp_goodput;
use super::tap_setup::{Netns, ip, missing_privilege};
use super::udp::stack_goodput;

const MTUS: [usize; 7] = [1280, 1400, 4000, 9000, 16_000, 32_000, 65_000];
const LOSSES: [f64; 6] = [0.0, 0.001, 0.005, 0.01, 0.02, 0.05];

fn plot(dir: &Path, file: &str, points: &[(f64, f64)]) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    let mut canvas = super::plot::Canvas::new(800, 400);
    canvas.chart(&[points.to_vec()], &[]);
    let path = dir.join(file);
    canvas.write_png(&path)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// Goodput (Gbit/s) of one connection over a UdpNic pair at each MTU.
pub fn by_mtu(bytes: usize, dir: &Path) -> Result<Value, Box<dyn std::error::Error>> {
    let mut points = Vec::new();
    for mtu in MTUS {
        let g = stack_goodput(mtu, bytes)? / 1e9;
        eprintln!("  goodput at MTU {mtu}: {g:.2} Gbit/s");
        points.push((mtu as f64, g));
    }
    plot(dir, "goodput_vs_mtu.png", &points)?;
    Ok(json!(points.iter().map(|(m, g)| json!({ "mtu": m, "gbit_s": g })).collect::<Vec<_>>()))
}

/// Goodput (Mbit/s) of one connection over a MemLink (MTU 1500) whose two
/// ends drop packets at each rate.
pub fn by_loss(bytes: usize, dir: &Path) -> Result<Value, Box<dyn std::error::Error>> {
    let mut points = Vec::new();
    for (i, loss) in LOSSES.into_iter().enumerate() {
        let (na, nb) = MemLink::pair(MemLinkConfig { mtu: 1500, queue_packets: 4096 });
        let impair = |seed| ImpairConfig { seed, loss, ..ImpairConfig::default() };
        let a = Stack::new(StackConfig::with_address("10.89.0.1/24"), Impair::new(na, impair(2 * i as u64 + 1)))?;
        let b = Stack::new(StackConfig::with_address("10.89.0.2/24"), Impair::new(nb, impair(2 * i as u64 + 2)))?;
        // Less data where loss makes it slow, so each point takes seconds.
        let len = if loss >= 0.02 { bytes / 8 } else { bytes };
        let g = tcp_goodput(&a, &b, "10.89.0.1:5201".parse()?, len)? / 1e6;
        eprintln!("  goodput at {:.1}% loss: {g:.0} Mbit/s", loss * 100.0);
        points.push((loss * 100.0, g));
    }
    plot(dir, "goodput_vs_loss.png", &points)?;
    Ok(json!(points.iter().map(|(l, g)| json!({ "loss_percent": l, "mbit_s": g })).collect::<Vec<_>>()))
}

/// Kernel TCP between two namespaces joined by a veth pair (MTU 1500):
/// bits per second, or why it was skipped.
pub fn kernel_veth(bytes: usize) -> Value {
    if let Some(why) = missing_privilege() {
        return json!({ "status": "skipped", "reason": why });
    }
    match veth_goodput(bytes) {
        Ok(bps) => json!({ "status": "measured", "gbit_s": bps / 1e9, "bytes": bytes }),
        Err(e) => json!({ "status": "failed", "reason": e }),
    }
}

fn veth_goodput(bytes: usize) -> Result<f64, String> {
    let (a, b) = (Netns::create_tagged("veth-a")?, Netns::create_tagged("veth-b")?);
    ip(&["link", "add", "plbva", "netns", a.name(), "type", "veth", "peer", "name", "plbvb", "netns", b.name()])?;
    ip(&["-n", a.name(), "addr", "add", "10.64.0.1/24", "dev", "plbva"])?;
    ip(&["-n", b.name(), "addr", "add", "10.64.0.2/24", "dev", "plbvb"])?;
    ip(&["-n", a.name(), "link", "set", "plbva", "up"])?;
    ip(&["-n", b.name(), "link", "set", "plbvb", "up"])?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = b.spawn(move || {
        let listener = TcpListener::bind("10.64.0.2:5201").map_err(|e| e.to_string())?;
        let _ = ready_tx.send(());
        let (mut s, _) = listener.accept().map_err(|e| e.to_string())?;
        let (mut buf, mut got, started) = (vec![0u8; 256 << 10], 0usize, Instant::now());
        loop {
            let n = s.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok(got as f64 * 8.0 / started.elapsed().as_secs_f64())
    })?;
    ready_rx.recv_timeout(Duration::from_secs(10)).map_err(|_| "the veth server did not start")?;
    let client = a.spawn(move || {
        let target: SocketAddr = "10.64.0.2:5201".parse().expect("valid");
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(10)).map_err(|e| e.to_string())?;
        let chunk = vec![0x5au8; 256 << 10];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n]).map_err(|e| e.to_string())?;
            left -= n;
        }
        Ok(())
    })?;
    client.join().map_err(|_| "veth client panicked")??;
    server.join().map_err(|_| "veth server panicked")?
}
