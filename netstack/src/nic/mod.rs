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
}
