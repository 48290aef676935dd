//! The flow-table figures (issue 7), all over two plebnet stacks joined by
//! a MemLink (MTU 1500) in this process:
//!
//! * `conns_10k_vs_10_goodput`: bulk goodput of one connection while
//!   10,000 idle established connections exist between the two stacks,
//!   divided by the same with 10.
//! * `rss_per_idle_conn_kib`: growth of this process's resident memory per
//!   idle established connection, **both ends counted** (each connection
//!   is two sockets, one per stack, plus both applications' handles), with
//!   the default 256 KiB buffers, after each connection echoed 16 KiB and
//!   then idled until its buffer pages went back to the kernel.
//! * `connect_rate_vs_kernel`: connections opened and closed per second,
//!   one after another, over the MemLink, divided by the same over kernel
//!   loopback (std::net on 127.0.0.1) in the same run.

use std::error::Error;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::thread;
use std::time::Instant;

use plebnet::net::{NetStack, OsStack, Stack, StackConfig, TcpListener, TcpListenerApi, TcpStream};
use plebnet::netstack::nic::{MemLink, MemLinkConfig};
use serde_json::json;

use super::goodput::tcp_goodput;
use super::memlink::gbit;
use super::{Effort, Outcome, Stats};

/// Socket buffers of every connection in the goodput and connect-rate
/// figures (the bulk one too).
const BUFFER: usize = 64 * 1024;
/// Idle connections for the memory figure.
const RSS_CONNS: usize = 10_000;
/// Bytes each idle connection of the memory figure echoes once, so that
/// its buffers have been used as a real connection's would have: four
/// pages of each of its four buffers.
const RSS_ECHO: usize = 16 * 1024;

/// Two stacks over a MemLink: A 10.89.0.1 (listens), B 10.89.0.2, with
/// socket buffers of `buffer` bytes each way.
fn stacks(buffer: usize) -> Result<(Stack, Stack), Box<dyn Error>> {
    let (na, nb) = MemLink::pair(MemLinkConfig { mtu: 1500, queue_packets: 4096 });
    let config = |addr: &str| {
        let mut c = StackConfig::with_address(addr);
        c.tcp_rx_buffer = buffer;
        c.tcp_tx_buffer = buffer;
        c.default_backlog = 1024;
        c
    };
    Ok((Stack::new(config("10.89.0.1/24"), na)?, Stack::new(config("10.89.0.2/24"), nb)?))
}

/// Opens `n` connections from B to A (accepted on A), each echoing `echo`
/// bytes once (checked), and returns both ends.
fn open_idle(a: &Stack, b: &Stack, n: usize, echo: usize) -> Result<Vec<(TcpStream, TcpStream)>, Box<dyn Error>> {
    let listener = TcpListener::bind(a, "10.89.0.1:6000".parse()?)?;
    let acceptor = thread::spawn(move || -> std::io::Result<Vec<TcpStream>> {
        (0..n).map(|_| listener.accept().map(|(s, _)| s)).collect()
    });
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(TcpStream::connect(b, "10.89.0.1:6000".parse()?)?);
    }
    let served = acceptor.join().map_err(|_| "acceptor panicked")??;
    if echo > 0 {
        let msg: Vec<u8> = (0..echo).map(|i| i as u8).collect();
        let mut buf = vec![0u8; echo];
        for (mut c, mut s) in clients.iter().zip(&served) {
            c.write_all(&msg)?;
            s.read_exact(&mut buf)?;
            s.write_all(&buf)?;
            c.read_exact(&mut buf)?;
            if buf != msg {
                return Err("an idle connection's echo differs from what was sent".into());
            }
        }
    }
    Ok(clients.into_iter().zip(served).collect())
}

/// Goodput of one bulk connection (bits/s) while `idle` idle connections
/// exist between the two stacks.
fn goodput_beside(idle: usize, bytes: usize) -> Result<f64, Box<dyn Error>> {
    let (a, b) = stacks(BUFFER)?;
    let conns = open_idle(&a, &b, idle, 0)?;
    let goodput = tcp_goodput(&a, &b, "10.89.0.1:6001".parse()?, bytes)?;
    // The bulk connection's own socket on `a` (the receiving side, which
    // closes last) may already be gone; the idle ones must all be there.
    if a.connection_count() < idle {
        return Err(format!("only {} of {idle} idle connections left", a.connection_count()).into());
    }
    drop(conns);
    Ok(goodput)
}

/// `conns_10k_vs_10_goodput`.
pub fn conns_10k_vs_10_goodput(effort: Effort) -> Result<Outcome, Box<dyn Error>> {
    let (mut many, mut few) = (Vec::new(), Vec::new());
    for _ in 0..effort.runs {
        few.push(goodput_beside(10, effort.bytes)?);
        many.push(goodput_beside(10_000, effort.bytes)?);
    }
    let (m, f) = (Stats::of(&many), Stats::of(&few));
    let ratios: Vec<f64> = many.iter().zip(&few).map(|(m, f)| m / f).collect();
    Ok(Outcome::Measured(
        m.median / f.median,
        json!({
            "beside_10000_idle_gbit_s": gbit(m),
            "beside_10_idle_gbit_s": gbit(f),
            "per_run_ratio": Stats::of(&ratios),
            "bytes_per_run": effort.bytes,
            "socket_buffer": BUFFER,
            "link": "MemLink, MTU 1500",
        }),
    ))
}

/// Resident memory of this process, in bytes, after `malloc_trim` (the
/// figures measured before this one leave freed memory cached).
fn rss_bytes() -> Result<u64, Box<dyn Error>> {
    super::trim_heap();
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm.split_whitespace().nth(1).ok_or("short /proc/self/statm")?.parse()?;
    Ok(pages * 4096)
}

fn released_idle(stack: &Stack) -> u64 {
    stack.stack_counters().tcp_buffers_released_idle.get()
}

/// KiB of resident memory per connection, both ends: `(idle, busy)`, idle
/// after the connections' buffer pages went back, busy right after their
/// echo.
fn rss_per_conn_once() -> Result<(f64, f64), Box<dyn Error>> {
    let buffer = StackConfig::default().tcp_rx_buffer;
    let (a, b) = stacks(buffer)?;
    // Warm up the code paths and allocator, so they are not counted.
    drop(open_idle(&a, &b, 16, RSS_ECHO)?);
    let before = rss_bytes()?;
    let (released_a, released_b) = (released_idle(&a), released_idle(&b));
    let conns = open_idle(&a, &b, RSS_CONNS, RSS_ECHO)?;
    let busy = rss_bytes()?;
    // Wait for every connection to idle out on both stacks (a second or
    // two: `tcp_buffer_idle_release`).
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while released_idle(&a) < released_a + RSS_CONNS as u64 || released_idle(&b) < released_b + RSS_CONNS as u64 {
        if Instant::now() > deadline {
            return Err("idle connections did not give their buffer pages back within 30 s".into());
        }
        thread::sleep(std::time::Duration::from_millis(20));
    }
    let idle = rss_bytes()?;
    drop(conns);
    let per_conn = |rss: u64| rss.saturating_sub(before) as f64 / 1024.0 / RSS_CONNS as f64;
    Ok((per_conn(idle), per_conn(busy)))
}

/// `rss_per_idle_conn_kib`.
pub fn rss_per_idle_conn_kib(effort: Effort) -> Result<Outcome, Box<dyn Error>> {
    let samples = (0..effort.runs).map(|_| rss_per_conn_once()).collect::<Result<Vec<_>, _>>()?;
    let idle = Stats::of(&samples.iter().map(|s| s.0).collect::<Vec<_>>());
    let busy = Stats::of(&samples.iter().map(|s| s.1).collect::<Vec<_>>());
    Ok(Outcome::Measured(
        idle.median,
        json!({
            "kib_per_connection_both_ends": idle,
            "kib_per_socket": idle.median / 2.0,
            "kib_per_connection_right_after_echo": busy,
            "connections": RSS_CONNS,
            "echoed_bytes_each": RSS_ECHO,
            "socket_buffer": StackConfig::default().tcp_rx_buffer,
            "counted": "growth of the process's resident memory since before the connections were opened, \
                        divided by their number, once every connection's buffer pages went back to the \
                        kernel after tcp_buffer_idle_release; each connection is two plebnet sockets (one \
                        per stack) and both applications' stream handles",
        }),
    ))
}

/// Opens and closes `count` connections one after another from `client` to
/// a listener of `server` at `addr`: connect, accept, the client closes, the
/// server reads EOF and closes. Returns connections per second.
fn open_close_rate<S: NetStack>(server: &S, client: &S, addr: SocketAddr, count: usize) -> Result<f64, Box<dyn Error>> {
    let listener = server.tcp_listen(addr).map_err(|e| format!("listen {addr}: {e}"))?;
    let target = listener.local_addr()?;
    let started = Instant::now();
    let mut buf = [0u8; 1];
    for _ in 0..count {
        let c = client.tcp_connect(target).map_err(|e| format!("connect {target}: {e}"))?;
        let (mut s, _) = listener.accept()?;
        drop(c);
        if s.read(&mut buf)? != 0 {
            return Err("data on a connection that carried none".into());
        }
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// `connect_rate_vs_kernel`.
pub fn connect_rate_vs_kernel(effort: Effort) -> Result<Outcome, Box<dyn Error>> {
    // Closed connections linger in TIME-WAIT (smoltcp: 10 s, Linux: 60 s)
    // and keep their ephemeral port: stay well below either range.
    let count = if effort.bytes >= 256 << 20 { 3000 } else { 1500 };
    let (mut ours, mut kernel) = (Vec::new(), Vec::new());
    for _ in 0..effort.runs {
        kernel.push(open_close_rate(&OsStack, &OsStack, "127.0.0.1:0".parse()?, count)?);
        let (a, b) = stacks(BUFFER)?;
        ours.push(open_close_rate(&a, &b, "10.89.0.1:6002".parse()?, count)?);
    }
    let (o, k) = (Stats::of(&ours), Stats::of(&kernel));
    Ok(Outcome::Measured(
        o.median / k.median,
        json!({
            "plebnet_conns_per_s": o,
            "kernel_conns_per_s": k,
            "connections_per_run": count,
            "plebnet_link": "MemLink, MTU 1500",
            "kernel": "std::net over 127.0.0.1",
        }),
    ))
}
