//! TunNic and TapNic: the kernel's own virtual interfaces, for hosts where
//! plebnet may use root. A tun device carries IP packets; a tap device
//! carries Ethernet frames, and smoltcp answers ARP and neighbour
//! discovery on it. On the kernel side they are ordinary interfaces, so the
//! host's programs (curl, a web server) talk to plebnet through them.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::EthernetAddress;

use super::Nic;
use crate::stats::CounterSource;
use crate::sys;

/// Ethernet header bytes a tap frame adds to each IP packet.
const ETHERNET_HEADER: usize = 14;

/// Which kind of kernel device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunTapKind {
    /// Layer 3: IP packets.
    Tun,
    /// Layer 2: Ethernet frames.
    Tap,
}

/// Settings of a [`TunTapNic`].
#[derive(Debug, Clone)]
pub struct TunTapConfig {
    /// tun or tap.
    pub kind: TunTapKind,
    /// Device name (e.g. `plebtap0`); empty lets the kernel choose.
    pub name: String,
    /// Largest IP packet, in bytes (the kernel side should match it).
    pub mtu: usize,
    /// The tap's own MAC address; `None` picks a random locally
    /// administered one. Ignored for tun.
    pub mac: Option<[u8; 6]>,
}

impl TunTapConfig {
    /// A tun device called `name`, MTU 1500.
    pub fn tun(name: &str) -> Self {
        Self { kind: TunTapKind::Tun, name: name.to_string(), mtu: 1500, mac: None }
    }

    /// A tap device called `name`, MTU 1500, random MAC.
    pub fn tap(name: &str) -> Self {
        Self { kind: TunTapKind::Tap, name: name.to_string(), mtu: 1500, mac: None }
    }
}

/// Why a tun/tap device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunTapError {
    /// The process lacks CAP_NET_ADMIN.
    #[error(
        "opening {kind:?} device `{name}` needs CAP_NET_ADMIN (run as root, or grant the capability); \
         the UDP NIC (interface kind \"udp\") needs no privilege"
    )]
    NotPermitted {
        /// tun or tap.
        kind: TunTapKind,
        /// The device asked for.
        name: String,
    },
    /// `/dev/net/tun` is missing.
    #[error("/dev/net/tun is missing (no tun driver in this kernel or container); use the UDP NIC instead")]
    NoDriver,
    /// Anything else the kernel refused.
    #[error("opening {kind:?} device `{name}`: {source}")]
    Other {
        /// tun or tap.
        kind: TunTapKind,
        /// The device asked for.
        name: String,
        /// What the kernel said.
        source: io::Error,
    },
}

crate::counters! {
    /// What a tun/tap NIC did.
    pub struct TunTapCounters {
        /// Packets (frames, for tap) read from the kernel.
        rx_packets,
        /// Bytes of those.
        rx_bytes,
        /// Reads that failed for a reason other than "nothing waiting".
        rx_errors,
        /// Packets written to the kernel.
        tx_packets,
        /// Bytes of those.
        tx_bytes,
        /// Writes the kernel refused (e.g. the interface is down).
        tx_dropped_error,
    }
}

/// A NIC over a kernel tun or tap device.
#[derive(Debug)]
pub struct TunTapNic {
    fd: OwnedFd,
    name: String,
    kind: TunTapKind,
    mtu: usize,
    mac: EthernetAddress,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    counters: Arc<TunTapCounters>,
}

impl TunTapNic {
    /// Creates or attaches to the device.
    pub fn open(config: TunTapConfig) -> Result<Self, TunTapError> {
        let tap = config.kind == TunTapKind::Tap;
        let (fd, name) = sys::tun::open(&config.name, tap).map_err(|source| match source.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => {
                TunTapError::NotPermitted { kind: config.kind, name: config.name.clone() }
            }
            Some(libc::ENOENT) | Some(libc::ENODEV) => TunTapError::NoDriver,
            _ => TunTapError::Other { kind: config.kind, name: config.name.clone(), source },
        })?;
        let mac = config.mac.unwrap_or_else(|| {
            let r = crate::rng::Rng::from_entropy().next_u64().to_le_bytes();
            // Locally administered, unicast.
            [0x02, r[0], r[1], r[2], r[3], r[4]]
        });
        let frame = config.mtu + if tap { ETHERNET_HEADER } else { 0 };
        Ok(Self {
            fd,
            name,
            kind: config.kind,
            mtu: config.mtu,
            mac: EthernetAddress(mac),
            rx_buf: vec![0; frame],
            tx_buf: Vec::with_capacity(frame),
            counters: Arc::default(),
        })
    }

    /// The kernel's name for the device.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tap's MAC address (meaningless for tun).
    pub fn mac(&self) -> [u8; 6] {
        self.mac.0
    }

    /// The NIC's counters.
    pub fn stats(&self) -> Arc<TunTapCounters> {
        self.counters.clone()
    }
}

/// A packet read from the device.
pub struct TunTapRx<'a> {
    packet: &'a [u8],
}

/// Permission to write one packet to the device.
pub struct TunTapTx<'a> {
    fd: RawFd,
    buf: &'a mut Vec<u8>,
    counters: &'a TunTapCounters,
}

impl phy::RxToken for TunTapRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.packet)
    }
}

impl phy::TxToken for TunTapTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.buf.clear();
        self.buf.resize(len, 0);
        let r = f(self.buf);
        match sys::tun::write_packet(self.fd, self.buf) {
            Ok(()) => {
                self.counters.tx_packets.inc();
                self.counters.tx_bytes.add(len as u64);
            }
            Err(e) => {
                self.counters.tx_dropped_error.inc();
                log::debug!("tun/tap write failed: {e}");
            }
        }
        r
    }
}

impl Device for TunTapNic {
    type RxToken<'a> = TunTapRx<'a>;
    type TxToken<'a> = TunTapTx<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let fd = self.fd.as_raw_fd();
        let n = match sys::tun::read_packet(fd, &mut self.rx_buf) {
            Ok(Some(n)) => n,
            Ok(None) => return None,
            Err(e) => {
                self.counters.rx_errors.inc();
                log::debug!("tun/tap {}: read failed: {e}", self.name);
                return None;
            }
        };
        self.counters.rx_packets.inc();
        self.counters.rx_bytes.add(n as u64);
        let rx = TunTapRx { packet: &self.rx_buf[..n] };
        let tx = TunTapTx { fd, buf: &mut self.tx_buf, counters: &self.counters };
        Some((rx, tx))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        Some(TunTapTx { fd: self.fd.as_raw_fd(), buf: &mut self.tx_buf, counters: &self.counters })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        match self.kind {
            TunTapKind::Tun => {
                caps.medium = Medium::Ip;
                caps.max_transmission_unit = self.mtu;
            }
            TunTapKind::Tap => {
                caps.medium = Medium::Ethernet;
                caps.max_transmission_unit = self.mtu + ETHERNET_HEADER;
            }
        }
        caps
    }
}

impl Nic for TunTapNic {
    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }

    fn ethernet_address(&self) -> Option<[u8; 6]> {
        (self.kind == TunTapKind::Tap).then_some(self.mac.0)
    }

    fn counters(&self) -> Vec<(String, Arc<dyn CounterSource>)> {
        let layer = match self.kind {
            TunTapKind::Tun => "tun",
            TunTapKind::Tap => "tap",
        };
        vec![(layer.to_string(), self.counters.clone() as Arc<dyn CounterSource>)]
    }
}
