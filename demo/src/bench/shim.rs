//! `shim_iperf3_vs_api`: iperf3 between two processes running on plebnet
//! through the LD_PRELOAD shim (`plebnet run`, each with its own stack,
//! joined by UdpNics on loopback), divided by the plebnet Rust API's own
//! throughput in the same run: two stacks over a UdpNic pair on loopback
//! with the same MTU and buffers, one `TcpStream` bulk transfer of the same
//! size. What the shim (Unix socket pairs, pump threads, one extra copy
//! each way) keeps of what the stack can do.
//!
//! Each run moves `Effort::bytes` (`iperf3 -n`); iperf3's figure is the
//! receiver's (`end.sum_received.bits_per_second`; iperf3 stops counting
//! when the client says the test ended, so the bytes still in flight are
//! left out, as over kernel TCP).

use std::error::Error;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use plebnet::net::{Stack, StackConfig};
use serde_json::json;

use super::goodput::tcp_goodput;
use super::memlink::gbit;
use super::udp::{UDP_BUFFER, nic_pair};
use super::{Effort, Outcome, Stats};

/// The overlay MTU of both sides.
const MTU: usize = 1400;
/// How long one iperf3 run (or the server's start) may take.
const LIMIT: Duration = Duration::from_secs(120);

/// `shim_iperf3_vs_api`.
pub fn iperf3_vs_api(effort: Effort) -> Result<Outcome, Box<dyn Error>> {
    iperf3_vs_api_with(effort, &std::env::current_exe()?)
}

/// The figure, with `exe` as the `plebnet` binary that runs `plebnet run`.
fn iperf3_vs_api_with(effort: Effort, exe: &Path) -> Result<Outcome, Box<dyn Error>> {
    let found = Command::new("iperf3").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !found.is_ok_and(|s| s.success()) {
        return Ok(Outcome::Skipped("iperf3 is not installed (apt-get install iperf3)".to_string()));
    }
    let library = std::env::var_os("PLEBNET_PRELOAD")
        .map(PathBuf::from)
        .unwrap_or_else(|| exe.with_file_name("libplebnet_preload.so"));
    if !library.is_file() {
        return Ok(Outcome::Skipped(format!(
            "{} not found: build it with `cargo build -p plebnet-preload` (same profile as plebnet)",
            library.display()
        )));
    }
    let dir = std::env::temp_dir().join(format!("plebnet-bench-shim-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = measure(effort, exe, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let (shim, api) = result?;
    let (s, a) = (Stats::of(&shim), Stats::of(&api));
    Ok(Outcome::Measured(
        s.median / a.median,
        json!({
            "iperf3_shim_gbit_s": gbit(s),
            "api_tcp_gbit_s": gbit(a),
            "bytes_per_run": effort.bytes,
            "mtu": MTU,
            "tcp_buffer": UDP_BUFFER,
            "note": "iperf3 -c → iperf3 -s, each under `plebnet run` with its own stack (UdpNic on loopback); \
                     the API figure is one plebnet TcpStream between two stacks over a UdpNic pair",
        }),
    ))
}

/// `(iperf3 through the shim, API)` in bits per second, one of each per run.
fn measure(effort: Effort, exe: &Path, dir: &Path) -> Result<(Vec<f64>, Vec<f64>), Box<dyn Error>> {
    let (mut shim, mut api) = (Vec::new(), Vec::new());
    for run in 0..effort.runs {
        api.push(api_goodput(effort.bytes)?);
        shim.push(iperf3_goodput(exe, dir, run, effort.bytes)?);
    }
    Ok((shim, api))
}

/// One TCP connection between two stacks over a UdpNic pair at [`MTU`].
fn api_goodput(bytes: usize) -> Result<f64, Box<dyn Error>> {
    let (na, nb) = nic_pair(MTU)?;
    let config = |addr: &str| {
        let mut c = StackConfig::with_address(addr);
        c.tcp_rx_buffer = UDP_BUFFER;
        c.tcp_tx_buffer = UDP_BUFFER;
        c
    };
    let a = Stack::new(config("10.90.0.1/24"), na)?;
    let b = Stack::new(config("10.90.0.2/24"), nb)?;
    let addr: SocketAddr = "10.90.0.1:5201".parse()?;
    Ok(tcp_goodput(&a, &b, addr, bytes)?)
}

/// A node file for `plebnet run`: one UDP interface with the API side's
/// MTU and TCP buffers.
fn node_file(path: &Path, addr: &str, listen: u16, peer: &str, peer_port: u16) -> std::io::Result<()> {
    std::fs::write(
        path,
        format!(
            "name = \"bench\"\n\n[[interface]]\nname = \"udp0\"\nkind = \"udp\"\naddresses = [\"{addr}/24\"]\n\
             listen = \"127.0.0.1:{listen}\"\nmtu = {MTU}\n\n[[interface.peer]]\nendpoint = \"127.0.0.1:{peer_port}\"\n\
             prefixes = [\"{peer}/32\"]\n\n[tcp]\nrx_buffer = {UDP_BUFFER}\ntx_buffer = {UDP_BUFFER}\n"
        ),
    )
}

/// A child killed (by its PID) and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of a child's pipe, read by a thread.
fn lines(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// One `iperf3 -c -n BYTES` against `iperf3 -s`, both under `plebnet run`;
/// the receiver's bits per second.
fn iperf3_goodput(exe: &Path, dir: &Path, run: usize, bytes: usize) -> Result<f64, Box<dyn Error>> {
    let (pa, pb) = {
        let a = UdpSocket::bind("127.0.0.1:0")?;
        let b = UdpSocket::bind("127.0.0.1:0")?;
        (a.local_addr()?.port(), b.local_addr()?.port())
    };
    let (server_ip, client_ip) = ("10.90.1.1", "10.90.1.2");
    let server_conf = dir.join(format!("server-{run}.toml"));
    let client_conf = dir.join(format!("client-{run}.toml"));
    node_file(&server_conf, server_ip, pa, client_ip, pb)?;
    node_file(&client_conf, client_ip, pb, server_ip, pa)?;

    let mut server = Command::new(exe);
    server
        .arg("run")
        .arg("--config")
        .arg(&server_conf)
        .args(["--", "iperf3", "-s", "-1", "-B", server_ip, "-p", "5201", "--forceflush"])
        .env("PLEBNET_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut server = Proc(server.spawn().map_err(|e| format!("start iperf3 -s: {e}"))?);
    let out = lines(server.0.stdout.take().ok_or("no stdout")?);
    let deadline = Instant::now() + LIMIT;
    loop {
        let line = out
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| "iperf3 -s under plebnet run did not start listening")?;
        if line.contains("Server listening") {
            break;
        }
    }

    let mut client = Command::new(exe);
    client
        .arg("run")
        .arg("--config")
        .arg(&client_conf)
        .args(["--", "iperf3", "-c", server_ip, "-p", "5201", "-n", &bytes.to_string(), "--json"])
        .env("PLEBNET_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut client = Proc(client.spawn().map_err(|e| format!("start iperf3 -c: {e}"))?);
    let mut stdout = client.0.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(s) = client.0.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            return Err(format!("iperf3 -c did not finish within {LIMIT:?}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = reader.join().map_err(|_| "reader panicked")?;
    let report: serde_json::Value =
        serde_json::from_slice(&stdout).map_err(|e| format!("iperf3 -c ({status}) printed no JSON report: {e}"))?;
    if let Some(error) = report.get("error") {
        return Err(format!("iperf3 -c failed: {error}").into());
    }
    let received = &report["end"]["sum_received"];
    let (bps, got) = (received["bits_per_second"].as_f64(), received["bytes"].as_u64());
    match (bps, got) {
        // iperf3's server stops counting at the client's TEST_END, so what
        // was still in flight (socket buffers) is not counted: a little less
        // than was sent, as over kernel TCP.
        (Some(bps), Some(got)) if bps > 0.0 && got >= bytes as u64 / 2 => Ok(bps),
        _ => Err(format!("iperf3 -c: the receiver reports {received} for {bytes} bytes sent").into()),
    }
}
