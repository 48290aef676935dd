//! What both sides of the tap figure share: a network namespace the bench
//! creates (and deletes) itself, a fresh tap device in it, and the kernel
//! TCP peer (std::net on a thread that entered the namespace).
//!
//! ```text
//!   namespace plebnet-bench-tap-<pid>
//!   ┌──────────────────────────────────────────────┐
//!   │ kernel TCP 10.63.0.1 ── plbtap0 ── /dev/net/tun fd ──> plebnet or raw smoltcp (10.63.0.2)
//!   └──────────────────────────────────────────────┘
//! ```

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use plebnet::netstack::nic::{TunTapConfig, TunTapNic};

/// Name of the tap device inside the namespace.
const TAP: &str = "plbtap0";
/// The kernel's address on the tap.
pub const KERNEL_ADDR: Ipv4Addr = Ipv4Addr::new(10, 63, 0, 1);
/// The userspace side's address (plebnet or raw smoltcp), with its prefix.
pub const USER_CIDR: &str = "10.63.0.2/24";
/// Longest any one measurement may take before it fails.
pub const TIME_LIMIT: Duration = Duration::from_secs(60);

/// Which way the bytes flow, seen from the userspace stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The kernel peer writes, the userspace stack reads until EOF.
    Read,
    /// The userspace stack writes, the kernel peer sinks.
    Write,
}

/// What is missing for the tap figure, if anything (it needs root,
/// `/dev/net/tun` and iproute2's `ip`).
pub fn missing_privilege() -> Option<String> {
    // SAFETY: geteuid takes no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let tun = std::path::Path::new("/dev/net/tun").exists();
    let ip = Command::new("ip").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    let missing: Vec<&str> = [(root, "root"), (tun, "/dev/net/tun"), (ip, "the `ip` command (iproute2)")]
        .into_iter()
        .filter_map(|(ok, what)| (!ok).then_some(what))
        .collect();
    (!missing.is_empty()).then(|| format!("needs root, /dev/net/tun and iproute2; missing: {}", missing.join(", ")))
}

/// Runs `ip args…` and fails with its stderr if it fails.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if !out.status.success() {
        return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

/// A network namespace, deleted when dropped (also on error paths).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates `plebnet-bench-tap-<pid>` with its loopback up.
    pub fn create() -> Result<Netns, String> {
        Self::create_tagged("tap")
    }

    /// Creates `plebnet-bench-<tag>-<pid>` with its loopback up.
    pub fn create_tagged(tag: &str) -> Result<Netns, String> {
        let name = format!("plebnet-bench-{tag}-{}", std::process::id());
        // A namespace left by a crashed earlier run of this PID.
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Starts `f` on a thread that has entered the namespace, so sockets and
    /// devices it creates live there (and stay there when used elsewhere).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, String> + Send + 'static,
    ) -> Result<thread::JoinHandle<Result<T, String>>, String> {
        let path = format!("/var/run/netns/{}", self.name);
        let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        let thread = thread::Builder::new().name("bench-netns".into()).spawn(move || {
            // SAFETY: setns with a descriptor of a namespace file we hold
            // open; it changes only this thread's network namespace.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns: {}", std::io::Error::last_os_error()));
            }
            f()
        });
        thread.map_err(|e| format!("cannot start a thread: {e}"))
    }

    /// Opens a fresh tap `plbtap0` in the namespace (MTU 1500) with the
    /// kernel's address on it, up. It disappears when the NIC is dropped.
    /// `offload` is plebnet's checksum/segmentation offload; the raw smoltcp
    /// baseline runs without it, as smoltcp's own tap device does.
    pub fn open_tap(&self, offload: bool) -> Result<TunTapNic, String> {
        let config = TunTapConfig { offload, ..TunTapConfig::tap(TAP) };
        let nic = self
            .spawn(move || TunTapNic::open(config).map_err(|e| e.to_string()))?
            .join()
            .map_err(|_| "the tap-opening thread panicked")??;
        ip(&["-n", &self.name, "addr", "add", &format!("{KERNEL_ADDR}/24"), "dev", TAP])?;
        ip(&["-n", &self.name, "link", "set", TAP, "up"])?;
        Ok(nic)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// What the kernel peer did with its one connection.
#[derive(Debug, Clone, Copy)]
pub struct PeerReport {
    /// Bytes it read (sink) or wrote (source).
    pub bytes: usize,
    /// When the sink had read every expected byte, or the source had
    /// written its last one.
    pub done: Instant,
}

/// The kernel TCP peer of one measurement: a listener in the namespace
/// that serves a single connection, sinking to EOF or writing a fixed
/// amount and closing.
#[derive(Debug)]
pub struct KernelPeer {
    /// Where to connect.
    pub addr: SocketAddr,
    report: Receiver<Result<PeerReport, String>>,
}

impl KernelPeer {
    /// Starts the peer for `direction` (the userspace stack's): it writes
    /// `bytes` for [`Direction::Read`] and expects `bytes` for
    /// [`Direction::Write`]. Call after [`Netns::open_tap`].
    pub fn start(ns: &Netns, direction: Direction, bytes: usize) -> Result<KernelPeer, String> {
        let (addr_tx, addr_rx) = mpsc::channel();
        let (report_tx, report) = mpsc::channel();
        ns.spawn(move || {
            let bound = TcpListener::bind((KERNEL_ADDR, 0)).and_then(|l| Ok((l.local_addr()?, l)));
            match bound {
                Ok((addr, listener)) => {
                    let _ = addr_tx.send(Ok(addr));
                    let _ = report_tx.send(serve(&listener, direction, bytes));
                }
                Err(e) => {
                    let _ = addr_tx.send(Err(format!("kernel peer bind {KERNEL_ADDR}: {e}")));
                }
            }
            Ok(())
        })?;
        let addr = addr_rx.recv_timeout(TIME_LIMIT).map_err(|_| "the kernel peer did not start")??;
        Ok(KernelPeer { addr, report })
    }

    /// The report, if the peer has finished.
    pub fn try_report(&self) -> Option<Result<PeerReport, String>> {
        self.report.try_recv().ok()
    }

    /// Waits for the report, at most [`TIME_LIMIT`].
    pub fn wait(&self) -> Result<PeerReport, String> {
        match self.report.recv_timeout(TIME_LIMIT) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Err(format!("the kernel peer did not finish in {TIME_LIMIT:?}")),
            Err(RecvTimeoutError::Disconnected) => Err("the kernel peer thread died".to_string()),
        }
    }
}

/// Accepts one connection (within [`TIME_LIMIT`]) and serves it.
fn serve(listener: &TcpListener, direction: Direction, bytes: usize) -> Result<PeerReport, String> {
    let deadline = Instant::now() + TIME_LIMIT;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                let mut p = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one live pollfd, length 1.
                unsafe { libc::poll(&mut p, 1, 100) };
            }
            Err(e) => return Err(format!("kernel peer accept: {e}")),
        }
    };
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(TIME_LIMIT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(TIME_LIMIT)).map_err(|e| e.to_string())?;
    match direction {
        Direction::Write => sink(&mut stream, bytes, deadline),
        Direction::Read => source(&mut stream, bytes, deadline),
    }
}

/// Reads to EOF; `done` is when the `expected`-th byte arrived.
fn sink(stream: &mut TcpStream, expected: usize, deadline: Instant) -> Result<PeerReport, String> {
    let mut buf = vec![0u8; 1 << 20];
    let (mut got, mut done) = (0usize, None);
    loop {
        let n = stream.read(&mut buf).map_err(|e| format!("kernel sink read after {got} bytes: {e}"))?;
        if n == 0 {
            break;
        }
        got += n;
        if got >= expected {
            done.get_or_insert_with(Instant::now);
        }
        if Instant::now() > deadline {
            return Err(format!("kernel sink: only {got} of {expected} bytes in {TIME_LIMIT:?}"));
        }
    }
    Ok(PeerReport { bytes: got, done: done.unwrap_or_else(Instant::now) })
}

/// Writes `bytes`, then closes.
fn source(stream: &mut TcpStream, bytes: usize, deadline: Instant) -> Result<PeerReport, String> {
    let chunk = vec![0x5au8; 1 << 20];
    let mut sent = 0;
    while sent < bytes {
        let n = (bytes - sent).min(chunk.len());
        stream.write_all(&chunk[..n]).map_err(|e| format!("kernel source write after {sent} bytes: {e}"))?;
        sent += n;
        if Instant::now() > deadline {
            return Err(format!("kernel source: only {sent} of {bytes} bytes in {TIME_LIMIT:?}"));
        }
    }
    Ok(PeerReport { bytes: sent, done: Instant::now() })
}
