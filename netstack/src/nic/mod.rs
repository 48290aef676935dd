//! Virtual NICs and the middlewares that wrap them.
//!
//! A NIC is a smoltcp [`Device`] plus the few things a driver thread needs to
//! sleep correctly: a way to be woken when a packet arrives
//! ([`Nic::attach`] for in-memory NICs, [`Nic::readiness_fd`] for kernel
//! ones), and a deadline for timed work of its own ([`Nic::poll_at`], used by
//! middlewares that delay packets). Middlewares such as [`Impair`] are NICs
//! that own another NIC, so any NIC can be made lossy.

use std::os::fd::RawFd;
use std::sync::Arc;

use smoltcp::phy::Device;
use smoltcp::time::Instant;

use crate::stats::CounterSource;
use crate::wake::DriverWaker;

mod capture;
mod impair;
mod impair_pipe;
mod impair_proxy;
mod memlink;
mod packet_buf;
mod tuntap;
mod udp;
mod udp_peers;
mod vnet;

pub use capture::{Capture, CaptureCounters, CaptureRx, CaptureTx};
pub use impair::{Impair, ImpairConfig, ImpairCounters};
pub use impair_pipe::ImpairPipe;
pub use impair_proxy::ImpairProxy;
pub use memlink::{MemLink, MemLinkConfig, MemLinkCounters, MemNic};
pub use tuntap::{TunTapConfig, TunTapCounters, TunTapError, TunTapKind, TunTapNic, TunTapRx, TunTapTx};
pub use udp::{MAX_MTU, MIN_MTU, UdpNic, UdpNicConfig, UdpNicCounters, UdpNicError, UdpRx, UdpTx, set_udp_buffers};
pub use udp_peers::{PeerTable as UdpPeerTable, PeerTableError, UdpDrop, UdpPeer};

/// A virtual network interface that a stack driver can own.
///
/// Contract for implementors:
/// * `receive`/`transmit` never block;
/// * a packet that cannot be delivered or sent is dropped *and counted* in
///   one of the [`counters`](Nic::counters);
/// * when a packet becomes receivable, the NIC either makes
///   [`readiness_fd`](Nic::readiness_fd) readable or rings the waker given to
///   [`attach`](Nic::attach).
pub trait Nic: Device + Send + 'static {
    /// Gives the NIC the doorbell of the driver that owns it. In-memory NICs
    /// hand it to their peer so that a transmit wakes this driver.
    fn attach(&mut self, waker: DriverWaker) {
        let _ = waker;
    }

    /// A descriptor that is readable when packets are waiting, for NICs
    /// backed by the kernel.
    fn readiness_fd(&self) -> Option<RawFd> {
        None
    }

    /// The NIC's Ethernet (MAC) address, for NICs whose medium is Ethernet.
    fn ethernet_address(&self) -> Option<[u8; 6]> {
        None
    }

    /// True while the NIC waits for its descriptor to become writable
    /// (the kernel refused a send); the driver then also polls for that.
    fn wants_writable(&self) -> bool {
        false
    }

    /// Sends whatever the NIC batched up. The driver calls this after every
    /// poll of the interface, so a batch never waits for a timer.
    fn flush(&mut self) {}

    /// When the NIC next needs [`service`](Nic::service) (delayed packets).
    fn poll_at(&self) -> Option<Instant> {
        None
    }

    /// Does timed work that is due at `now`, such as releasing delayed packets.
    fn service(&mut self, now: Instant) {
        let _ = now;
    }

    /// The NIC's counters, and those of any NIC it wraps, by layer name.
    fn counters(&self) -> Vec<(String, Arc<dyn CounterSource>)> {
        Vec::new()
    }

    /// Takes the next received packet into `buf`, replacing what it held;
    /// false when none is waiting. The stack keeps a packet for a while
    /// after taking it (it screens it before smoltcp sees it), so it needs
    /// the bytes in a buffer of its own. The default copies them there; a
    /// NIC that owns whole-packet buffers overrides this to swap `buf` with
    /// its own instead.
    fn receive_into(&mut self, now: Instant, buf: &mut Vec<u8>) -> bool
    where
        Self: Sized,
    {
        let Some((rx, _)) = self.receive(now) else { return false };
        smoltcp::phy::RxToken::consume(rx, |frame| {
            buf.clear();
            buf.extend_from_slice(frame);
        });
        true
    }

    /// Uses `token` for one packet of `len` bytes that `fill` writes, and
    /// sends it only if `fill` says so (the second half of its result).
    /// The stack learns a packet's destination only once smoltcp has
    /// written it, and keeps the packets addressed to itself. The default
    /// builds the packet in `scratch` and copies it into the token; a NIC
    /// whose token writes into a buffer of its own overrides this, so that
    /// smoltcp writes straight into that buffer.
    fn fill_then_send<R>(
        token: Self::TxToken<'_>,
        scratch: &mut Vec<u8>,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> (R, bool),
    ) -> R
    where
        Self: Sized,
    {
        let frame = packet_buf::prepare_vec(scratch, len);
        let (r, send) = fill(frame);
        if send {
            smoltcp::phy::TxToken::consume(token, len, |b| b.copy_from_slice(frame));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default hooks, through a middleware that keeps them: the packet
    /// is built aside and copied, a kept packet is not sent, and a
    /// received one replaces whatever the buffer held.
    #[test]
    fn default_hooks_copy_exactly_and_send_only_what_is_meant_to_go() {
        let (a, mut b) = MemLink::pair(MemLinkConfig::default());
        let mut a = Impair::new(a, ImpairConfig::default());
        let mut scratch = vec![0xAB; 2000];
        let kept = Impair::<MemNic>::fill_then_send(a.transmit(Instant::ZERO).unwrap(), &mut scratch, 60, |p| {
            p.fill(1);
            (p.len(), false)
        });
        assert_eq!(kept, 60);
        Impair::<MemNic>::fill_then_send(a.transmit(Instant::ZERO).unwrap(), &mut scratch, 300, |p| {
            assert!(p[..packet_buf::HEADER_ROOM].iter().all(|&x| x == 0), "header room starts zeroed");
            p.fill(2);
            ((), true)
        });
        let mut out = vec![0xEE; 1500];
        assert!(b.receive_into(Instant::ZERO, &mut out));
        assert_eq!(out, vec![2; 300]);
        assert!(!b.receive_into(Instant::ZERO, &mut out));
        let mut b = Impair::new(b, ImpairConfig::default());
        Impair::<MemNic>::fill_then_send(a.transmit(Instant::ZERO).unwrap(), &mut scratch, 20, |p| {
            p.fill(3);
            ((), true)
        });
        assert!(b.receive_into(Instant::ZERO, &mut out));
        assert_eq!(out, vec![3; 20]);
    }
}
