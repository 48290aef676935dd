//! The UdpNic figures:
//!
//! * `udp_mtu1400_tcp_vs_raw_udp` — TCP goodput between two stacks over
//!   UdpNics at MTU 1400 on loopback, divided by a raw blast of 1400-byte
//!   datagrams through the same UdpNic I/O path (same batching, same
//!   GSO/GRO) with no stack at all: what TCP keeps of what the NIC can move.
//! * `udp_jumbo_tcp_vs_kernel_tcp` — the same TCP transfer at MTU 65000,
//!   divided by kernel TCP over loopback (std::net) in the same run.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use plebnet::net::{OsStack, Stack, StackConfig};
use plebnet::netstack::nic::{Nic, UdpNic, UdpNicConfig, UdpPeer};
use plebnet::netstack::smoltcp::phy::{Device, RxToken, TxToken};
use plebnet::netstack::smoltcp::time::Instant as SmolInstant;
use serde_json::json;

use super::goodput::tcp_goodput;
use super::memlink::gbit;
use super::{Effort, Outcome, Stats};

/// TCP buffers of the stacks in these figures: Linux autotunes its
/// loopback connections up to `net.ipv4.tcp_rmem`'s maximum (6 MiB by
/// default, 32 MiB on our bench machine), so plebnet gets 4 MiB.
pub(super) const UDP_BUFFER: usize = 4 << 20;

/// Two UdpNics on loopback that are each other's peer (A 10.90.0.1, B 10.90.0.2).
pub(super) fn nic_pair(mtu: usize) -> Result<(UdpNic, UdpNic), Box<dyn std::error::Error>> {
    let sa = UdpSocket::bind("127.0.0.1:0")?;
    let sb = UdpSocket::bind("127.0.0.1:0")?;
    let (ea, eb) = (sa.local_addr()?, sb.local_addr()?);
    let config = UdpNicConfig { mtu, ..Default::default() };
    let a = UdpNic::from_socket(sa, vec![UdpPeer::new(eb, &["10.90.0.2/32"])], config.clone())?;
    let b = UdpNic::from_socket(sb, vec![UdpPeer::new(ea, &["10.90.0.1/32"])], config)?;
    Ok((a, b))
}

/// One TCP connection between two stacks over a UdpNic pair.
pub(super) fn stack_goodput(mtu: usize, bytes: usize) -> Result<f64, Box<dyn std::error::Error>> {
    let (na, nb) = nic_pair(mtu)?;
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

/// Waits up to `timeout` for `fd` to be readable (or writable too).
fn wait_fd(fd: RawFd, writable: bool, timeout: Duration) -> bool {
    let events = if writable { libc::POLLIN | libc::POLLOUT } else { libc::POLLIN };
    let mut p = libc::pollfd { fd, events, revents: 0 };
    // SAFETY: one live pollfd, length 1.
    unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) > 0 }
}

/// A 20-byte IPv4 header from 10.90.0.1 to 10.90.0.2 on a `len`-byte packet.
fn ipv4_header(buf: &mut [u8]) {
    let len = buf.len() as u16;
    buf[..20].copy_from_slice(&[0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 10, 90, 0, 1, 10, 90, 0, 2]);
    buf[2..4].copy_from_slice(&len.to_be_bytes());
}

/// Blasts `bytes` of `size`-byte datagrams from one UdpNic to another and
/// returns the bits per second that arrived (lost datagrams do not count).
fn raw_blast(size: usize, bytes: usize) -> Result<f64, Box<dyn std::error::Error>> {
    let (mut tx, mut rx) = nic_pair(size)?;
    let count = bytes / size;
    let receiver = std::thread::spawn(move || {
        let fd = rx.readiness_fd().expect("udp nic has an fd");
        let (mut got, mut first, mut last) = (0usize, None, Instant::now());
        loop {
            match rx.receive(SmolInstant::ZERO) {
                Some((token, _)) => {
                    let n = token.consume(|b| b.len());
                    if n < size {
                        break; // an end marker
                    }
                    got += n;
                    last = Instant::now();
                    first.get_or_insert(last);
                }
                // Silence after traffic: the markers were lost.
                None if !wait_fd(fd, false, Duration::from_millis(200)) && first.is_some() => break,
                None => {}
            }
        }
        let secs = first.map(|f| (last - f).as_secs_f64()).unwrap_or(0.0);
        (got, secs)
    });
    let fd = tx.readiness_fd().expect("udp nic has an fd");
    for i in 0..count + 16 {
        let len = if i < count { size } else { 64 };
        let token = tx.transmit(SmolInstant::ZERO).expect("udp nic always gives a token");
        token.consume(len, ipv4_header);
        while tx.wants_writable() {
            wait_fd(fd, true, Duration::from_millis(10));
            tx.flush();
        }
    }
    tx.flush();
    let (got, secs) = receiver.join().map_err(|_| "receiver panicked")?;
    if secs <= 0.0 || got < bytes / 2 {
        return Err(format!("raw blast delivered only {got} of {bytes} bytes").into());
    }
    Ok(got as f64 * 8.0 / secs)
}

/// `udp_mtu1400_tcp_vs_raw_udp`.
pub fn mtu1400_tcp_vs_raw_udp(effort: Effort) -> Result<Outcome, Box<dyn std::error::Error>> {
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..effort.runs {
        raw.push(raw_blast(1400, effort.bytes)?);
        ours.push(stack_goodput(1400, effort.bytes)?);
    }
    let (o, r) = (Stats::of(&ours), Stats::of(&raw));
    Ok(Outcome::Measured(
        o.median / r.median,
        json!({
            "plebnet_tcp_gbit_s": gbit(o),
            "raw_udp_gbit_s": gbit(r),
            "bytes_per_run": effort.bytes,
            "datagram": 1400,
            "socket_buffer": UDP_BUFFER,
            "note": "TCP goodput counts payload bytes; the raw blast counts whole 1400-byte datagrams that arrived",
        }),
    ))
}

/// `udp_jumbo_tcp_vs_kernel_tcp`.
pub fn jumbo_tcp_vs_kernel_tcp(effort: Effort) -> Result<Outcome, Box<dyn std::error::Error>> {
    let (mut ours, mut kernel) = (Vec::new(), Vec::new());
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    for _ in 0..effort.runs {
        kernel.push(tcp_goodput(&OsStack, &OsStack, loopback, effort.bytes)?);
        ours.push(stack_goodput(65_000, effort.bytes)?);
    }
    let (o, k) = (Stats::of(&ours), Stats::of(&kernel));
    Ok(Outcome::Measured(
        o.median / k.median,
        json!({
            "plebnet_tcp_gbit_s": gbit(o),
            "kernel_tcp_gbit_s": gbit(k),
            "bytes_per_run": effort.bytes,
            "mtu": 65_000,
            "socket_buffer": UDP_BUFFER,
        }),
    ))
}
