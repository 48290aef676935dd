//! Shared test helpers and the NetStack suite: tests written once against
//! [`NetStack`] and run on the kernel's stack and on plebnet stacks.
#![allow(missing_docs)]

pub mod cells;
pub mod http;
pub mod netns;
pub mod suite;
pub mod tap;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};

use plebnet::net::{NetStack, Stack, StackConfig};
use plebnet::netstack::nic::{Impair, ImpairConfig, MemLink, MemLinkConfig, UdpNic, UdpNicConfig, UdpPeer};
use plebnet::netstack::rng::Rng;
use sha2::{Digest, Sha256};

/// Where a suite runs: a server stack, a client stack, and the server's
/// address as the client sees it.
pub struct Env<S: NetStack> {
    pub server: S,
    pub client: S,
    pub server_ip: IpAddr,
}

impl<S: NetStack> Env<S> {
    pub fn server_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.server_ip, port)
    }
}

/// The kernel, over 127.0.0.1.
pub fn os_env() -> Env<plebnet::net::OsStack> {
    Env { server: plebnet::net::OsStack, client: plebnet::net::OsStack, server_ip: "127.0.0.1".parse().unwrap() }
}

/// Two plebnet stacks joined by a clean MemLink.
/// Two stacks joined by kernel UDP on `underlay` (e.g. `127.0.0.1` or
/// `::1`): A is 10.7.0.1 / fd07::1, B is 10.7.0.2 / fd07::2.
pub fn udp_stack_pair(underlay: IpAddr, config: UdpNicConfig) -> (Stack, Stack) {
    let sa = std::net::UdpSocket::bind((underlay, 0)).unwrap();
    let sb = std::net::UdpSocket::bind((underlay, 0)).unwrap();
    let (ea, eb) = (sa.local_addr().unwrap(), sb.local_addr().unwrap());
    let na = UdpNic::from_socket(sa, vec![UdpPeer::new(eb, &["10.7.0.2/32", "fd07::2/128"])], config.clone()).unwrap();
    let nb = UdpNic::from_socket(sb, vec![UdpPeer::new(ea, &["10.7.0.1/32", "fd07::1/128"])], config).unwrap();
    let ca = StackConfig::with_address("10.7.0.1/24").address("fd07::1/64").named("a");
    let cb = StackConfig::with_address("10.7.0.2/24").address("fd07::2/64").named("b");
    (Stack::new(ca, na).unwrap(), Stack::new(cb, nb).unwrap())
}

/// Two stacks over kernel UDP on 127.0.0.1, talking IPv4.
pub fn udp_pair_env() -> Env<Stack> {
    let (a, b) = udp_stack_pair("127.0.0.1".parse().unwrap(), UdpNicConfig::default());
    Env { server: a, client: b, server_ip: "10.7.0.1".parse().unwrap() }
}

/// Two stacks over kernel UDP on ::1 (IPv6 underlay), talking IPv6.
pub fn udp_pair_v6_env() -> Env<Stack> {
    let (a, b) = udp_stack_pair("::1".parse().unwrap(), UdpNicConfig::default());
    Env { server: a, client: b, server_ip: "fd07::1".parse().unwrap() }
}

pub fn pair_env() -> Env<Stack> {
    let (a, b) = stack_pair(None);
    Env { server: a, client: b, server_ip: "10.7.0.1".parse().unwrap() }
}

/// Two plebnet stacks joined by a clean MemLink, over IPv6.
pub fn pair_v6_env() -> Env<Stack> {
    let (a, b) = stack_pair(None);
    Env { server: a, client: b, server_ip: "fd07::1".parse().unwrap() }
}

/// One plebnet stack talking to itself over ::1.
pub fn loopback_v6_env() -> Env<Stack> {
    let (a, _b) = stack_pair(None);
    Env { server: a.clone(), client: a, server_ip: "::1".parse().unwrap() }
}

/// One plebnet stack talking to itself over its own overlay address.
pub fn own_address_env() -> Env<Stack> {
    let (a, _b) = stack_pair(None);
    Env { server: a.clone(), client: a, server_ip: "10.7.0.1".parse().unwrap() }
}

/// One plebnet stack talking to itself over 127.0.0.1.
pub fn loopback_env() -> Env<Stack> {
    let (a, _b) = stack_pair(None);
    Env { server: a.clone(), client: a, server_ip: "127.0.0.1".parse().unwrap() }
}

/// Two stacks, 10.7.0.1 (+ fd07::1) and 10.7.0.2 (+ fd07::2), over a MemLink
/// whose both ingress sides are impaired with `impair` if given.
pub fn stack_pair(impair: Option<ImpairConfig>) -> (Stack, Stack) {
    stack_pair_with(impair, |_| {})
}

/// [`stack_pair`] with a hook to adjust both stacks' configuration.
pub fn stack_pair_with(impair: Option<ImpairConfig>, adjust: impl Fn(&mut StackConfig)) -> (Stack, Stack) {
    let (na, nb) = MemLink::pair(MemLinkConfig::default());
    let mut ca = StackConfig::with_address("10.7.0.1/24").address("fd07::1/64").named("a");
    let mut cb = StackConfig::with_address("10.7.0.2/24").address("fd07::2/64").named("b");
    adjust(&mut ca);
    adjust(&mut cb);
    match impair {
        None => (Stack::new(ca, na).unwrap(), Stack::new(cb, nb).unwrap()),
        Some(cfg) => {
            let cfg_b = ImpairConfig { seed: cfg.seed.wrapping_add(1), ..cfg.clone() };
            (Stack::new(ca, Impair::new(na, cfg)).unwrap(), Stack::new(cb, Impair::new(nb, cfg_b)).unwrap())
        }
    }
}

/// [`stack_pair_with`] with stack A's NIC wrapped in a [`tap::Tap`]: the
/// handle injects packets into A as if they came from the link.
pub fn tapped_pair(adjust: impl Fn(&mut StackConfig)) -> (Stack, Stack, tap::TapHandle) {
    let (na, nb) = MemLink::pair(MemLinkConfig::default());
    let mut ca = StackConfig::with_address("10.7.0.1/24").address("fd07::1/64").named("a");
    let mut cb = StackConfig::with_address("10.7.0.2/24").address("fd07::2/64").named("b");
    adjust(&mut ca);
    adjust(&mut cb);
    let (na, handle) = tap::Tap::new(na);
    (Stack::new(ca, na).unwrap(), Stack::new(cb, nb).unwrap(), handle)
}

/// Datagrams the kernel dropped on the IPv4 UDP socket bound to `addr`
/// (the last column of /proc/net/udp), if the file lists it.
pub fn kernel_drops(addr: std::net::SocketAddr) -> Option<u64> {
    let std::net::SocketAddr::V4(v4) = addr else { return None };
    let local = format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port());
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&local.as_str())).then(|| fields.last()?.parse().ok())?
    })
}

/// A writer that keeps pace with a flood running on another thread: byte
/// `k` of a `len`-byte transfer waits until the flood's counter has reached
/// `k / len` of 90% of its `total`, so the transfer spans the flood.
pub struct Paced<W: Write> {
    inner: W,
    written: u64,
    len: u64,
    flood: std::sync::Arc<std::sync::atomic::AtomicU64>,
    total: u64,
}

impl<W: Write> Paced<W> {
    /// Paces `inner` (which will carry `len` bytes) against `flood`, which
    /// counts up to `total`.
    pub fn new(inner: W, len: usize, flood: std::sync::Arc<std::sync::atomic::AtomicU64>, total: u64) -> Self {
        Self { inner, written: 0, len: len as u64, flood, total }
    }
}

impl<W: Write> Write for Paced<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let due = u128::from(self.written) * u128::from(self.total) * 9 / 10 / u128::from(self.len.max(1));
        while u128::from(self.flood.load(std::sync::atomic::Ordering::Relaxed)) < due {
            std::thread::yield_now();
        }
        let n = self.inner.write(&buf[..buf.len().min(16 * 1024)])?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Waits, yielding the CPU, until `done` holds; panics after `limit`.
pub fn wait_until(limit: std::time::Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::yield_now();
    }
}

/// `len` deterministic pseudo-random bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Streams `len` pattern bytes into `w` in chunks and returns their hash.
pub fn send_pattern(mut w: impl Write, seed: u64, len: usize) -> std::io::Result<[u8; 32]> {
    let mut rng = Rng::new(seed);
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        for word in chunk[..n].chunks_mut(8) {
            let bytes = rng.next_u64().to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
        w.write_all(&chunk[..n])?;
        hasher.update(&chunk[..n]);
        left -= n;
    }
    Ok(hasher.finalize().into())
}

/// Reads until EOF and returns `(bytes, sha256)`.
pub fn drain_hash(mut r: impl Read) -> std::io::Result<(usize, [u8; 32])> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok((total, hasher.finalize().into()));
        }
        hasher.update(&buf[..n]);
        total += n;
    }
}

/// Reads exactly `len` bytes and returns their hash (no wait for EOF).
pub fn read_exact_hash(mut r: impl Read, len: usize) -> std::io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = r.read(&mut buf[..left.min(64 * 1024)])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("EOF with {left} bytes missing"),
            ));
        }
        hasher.update(&buf[..n]);
        left -= n;
    }
    Ok(hasher.finalize().into())
}

/// A scratch directory, `plebnet-<tag>-<pid>` under the system's temporary
/// directory, emptied when made and removed when dropped.
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    /// Makes the directory (removing what an earlier run left there).
    pub fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("plebnet-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
