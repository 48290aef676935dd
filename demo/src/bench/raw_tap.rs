//! The tap figure's baseline: one smoltcp `Interface` straight over the
//! [`TunTapNic`] and one TCP socket to the kernel peer, driven by a single
//! loop with no threads, locks or plebnet layers — the shape of smoltcp's
//! `examples/benchmark.rs`: poll the interface, move bytes, and when there
//! is nothing to do sleep in `poll(2)` on the tap descriptor until the
//! interface's next deadline. Bytes are copied through a 64 KiB application
//! buffer (`send_slice`/`recv_slice`), as a plebnet application copies them.

use std::time::{Duration as StdDuration, Instant as StdInstant};

use plebnet::netstack::nic::{Nic, TunTapNic};
use plebnet::netstack::rng::Rng;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

use super::tap_setup::{Direction, KernelPeer, TIME_LIMIT, USER_CIDR};

/// Longest sleep between polls, so the loop notices the kernel peer's
/// report and the time limit even when the tap is silent.
const MAX_WAIT: StdDuration = StdDuration::from_millis(50);

/// Sleeps until the tap has a frame or `timeout` passes.
fn wait_readable(fd: std::os::fd::RawFd, timeout: StdDuration) {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one live pollfd, length 1.
    unsafe { libc::poll(&mut p, 1, ms) };
}

/// Moves `bytes` over one raw smoltcp connection to `peer` in `direction`
/// with `buffer`-byte socket buffers; returns the goodput in bits per
/// second. Reading is timed from the first byte to EOF at this end; writing
/// from the established connection to the kernel sink having read it all.
pub fn goodput(
    mut nic: TunTapNic,
    peer: &KernelPeer,
    direction: Direction,
    bytes: usize,
    buffer: usize,
) -> Result<f64, String> {
    let fd = nic.readiness_fd().ok_or("the tap NIC has no descriptor")?;
    let epoch = StdInstant::now();
    let now = || Instant::from_micros(epoch.elapsed().as_micros() as i64);
    let mut rng = Rng::from_entropy();
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(nic.mac())));
    config.random_seed = rng.next_u64();
    let mut iface = Interface::new(config, &mut nic, now());
    let cidr: plebnet::net::Cidr = USER_CIDR.parse().map_err(|e| format!("{e}"))?;
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(cidr.addr.into(), cidr.prefix));
    });
    let socket = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; buffer]), tcp::SocketBuffer::new(vec![0; buffer]));
    let mut sockets = SocketSet::new(Vec::new());
    let handle = sockets.add(socket);
    let remote = (IpAddress::from(peer.addr.ip()), peer.addr.port());
    let local_port = 49152 + (rng.next_u64() % 16384) as u16;
    sockets
        .get_mut::<tcp::Socket>(handle)
        .connect(iface.context(), remote, local_port)
        .map_err(|e| format!("raw smoltcp connect: {e}"))?;

    let mut chunk = vec![0x5au8; 64 * 1024];
    let (mut moved, mut started, mut established) = (0usize, None, false);
    let deadline = StdInstant::now() + TIME_LIMIT;
    let finished = loop {
        let t = now();
        iface.poll(t, &mut nic, &mut sockets);
        let s = sockets.get_mut::<tcp::Socket>(handle);
        established |= s.state() == tcp::State::Established;
        match direction {
            Direction::Write => {
                if s.may_send() {
                    started.get_or_insert_with(StdInstant::now);
                    while moved < bytes {
                        match s.send_slice(&chunk[..(bytes - moved).min(chunk.len())]) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => moved += n,
                        }
                    }
                    if moved == bytes {
                        s.close();
                    }
                }
                if let Some(report) = peer.try_report() {
                    let report = report?;
                    if report.bytes != bytes || moved != bytes {
                        return Err(format!(
                            "raw smoltcp wrote {moved} bytes; the kernel read {} of {bytes}",
                            report.bytes
                        ));
                    }
                    break report.done;
                }
            }
            Direction::Read => {
                while let Ok(n) = s.recv_slice(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    started.get_or_insert_with(StdInstant::now);
                    moved += n;
                }
                if established && !s.may_recv() {
                    break StdInstant::now();
                }
            }
        }
        if StdInstant::now() > deadline {
            return Err(format!("raw smoltcp over tap: only {moved} of {bytes} bytes in {TIME_LIMIT:?}"));
        }
        match iface.poll_delay(t, &sockets) {
            Some(d) if d == smoltcp::time::Duration::ZERO => {}
            Some(d) => wait_readable(fd, StdDuration::from_micros(d.total_micros()).min(MAX_WAIT)),
            None => wait_readable(fd, MAX_WAIT),
        }
    };
    if direction == Direction::Read {
        let report = peer.wait()?;
        if report.bytes != bytes || moved != bytes {
            return Err(format!("raw smoltcp read {moved} bytes; the kernel wrote {} of {bytes}", report.bytes));
        }
    }
    let started = started.ok_or("raw smoltcp moved no data")?;
    Ok(bytes as f64 * 8.0 / finished.duration_since(started).as_secs_f64())
}
