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

use super::packet_buf::PacketBuf;
use super::{Nic, vnet};
use crate::stats::CounterSource;
use crate::sys;

/// Ethernet header bytes a tap frame adds to each IP packet.
const ETHERNET_HEADER: usize = 14;
/// The IP MTU smoltcp sees with offload: it builds super-segments this big
/// and the kernel cuts them to the device's real MTU.
const OFFLOAD_MTU: usize = 65_000;

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
    /// Checksum and TCP segmentation offload with the kernel (virtio-net
    /// headers): TCP moves in super-segments of up to 64 KiB each way. Falls
    /// back to plain packets if the kernel refuses.
    pub offload: bool,
}

impl TunTapConfig {
    /// A tun device called `name`, MTU 1500.
    pub fn tun(name: &str) -> Self {
        Self { kind: TunTapKind::Tun, name: name.to_string(), mtu: 1500, mac: None, offload: true }
    }

    /// A tap device called `name`, MTU 1500, random MAC.
    pub fn tap(name: &str) -> Self {
        Self { kind: TunTapKind::Tap, name: name.to_string(), mtu: 1500, mac: None, offload: true }
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
        /// Super-segments written for the kernel to cut (offload).
        tx_gso_segments,
        /// Packets whose checksum the kernel left for us to finish.
        rx_checksums_completed,
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
    /// Packets carry a virtio-net header.
    vnet: bool,
    /// The kernel does checksum and segmentation offload.
    offload: bool,
    rx_buf: Vec<u8>,
    tx_buf: PacketBuf,
    counters: Arc<TunTapCounters>,
}

impl TunTapNic {
    /// Creates or attaches to the device.
    pub fn open(config: TunTapConfig) -> Result<Self, TunTapError> {
        let tap = config.kind == TunTapKind::Tap;
        let opened = sys::tun::open(&config.name, tap, config.offload, vnet::HEADER).map_err(|source| match source
            .raw_os_error()
        {
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
        let link = if tap { ETHERNET_HEADER } else { 0 };
        let ip_mtu = if opened.offload { OFFLOAD_MTU.max(config.mtu) } else { config.mtu };
        let buffer = ip_mtu + link + if opened.vnet { vnet::HEADER } else { 0 };
        if config.offload && !opened.offload {
            log::info!("{}: the kernel refused offload; one packet per read and write", opened.name);
        }
        Ok(Self {
            fd: opened.fd,
            name: opened.name,
            kind: config.kind,
            mtu: config.mtu,
            mac: EthernetAddress(mac),
            vnet: opened.vnet,
            offload: opened.offload,
            rx_buf: vec![0; buffer],
            tx_buf: PacketBuf::default(),
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

    /// True if the kernel does checksum and segmentation offload for us.
    pub fn offload(&self) -> bool {
        self.offload
    }

    fn link_len(&self) -> usize {
        if self.kind == TunTapKind::Tap { ETHERNET_HEADER } else { 0 }
    }
}

/// A packet read from the device.
pub struct TunTapRx<'a> {
    packet: &'a [u8],
}

/// Permission to write one packet to the device.
pub struct TunTapTx<'a> {
    fd: RawFd,
    buf: &'a mut PacketBuf,
    counters: &'a TunTapCounters,
    /// Room for a virtio-net header in front of the packet (0 or 12).
    vnet: usize,
    /// Cut super-segments for a device of this MTU (offload), or 0.
    gso_mtu: usize,
    link: usize,
}

impl phy::RxToken for TunTapRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.packet)
    }
}

impl phy::TxToken for TunTapTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let frame = self.buf.prepare(self.vnet + len);
        let r = f(&mut frame[self.vnet..]);
        if self.gso_mtu > 0 {
            let header = vnet::for_transmit(&frame[self.vnet..], self.link, self.gso_mtu);
            if header[1] != 0 {
                self.counters.tx_gso_segments.inc();
            }
            frame[..vnet::HEADER].copy_from_slice(&header);
        }
        match sys::tun::write_packet(self.fd, self.buf.packet()) {
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

impl TunTapNic {
    fn tx_token(&mut self) -> TunTapTx<'_> {
        TunTapTx {
            fd: self.fd.as_raw_fd(),
            vnet: if self.vnet { vnet::HEADER } else { 0 },
            gso_mtu: if self.offload { self.mtu } else { 0 },
            link: self.link_len(),
            buf: &mut self.tx_buf,
            counters: &self.counters,
        }
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
        let start = if self.vnet { vnet::HEADER } else { 0 };
        if n < start {
            self.counters.rx_errors.inc();
            return None;
        }
        if self.vnet {
            let header = vnet::parse(&self.rx_buf[..vnet::HEADER]);
            let link = self.link_len();
            let packet = &mut self.rx_buf[start..n];
            if let Some((csum_start, csum_offset)) = header.csum
                && vnet::complete_checksum(packet, csum_start, csum_offset)
            {
                self.counters.rx_checksums_completed.inc();
            }
            if self.offload {
                // Let smoltcp send super-segments: the kernel cuts them.
                vnet::raise_syn_mss(packet, link, (OFFLOAD_MTU - 60) as u16);
            }
        }
        self.counters.rx_packets.inc();
        self.counters.rx_bytes.add((n - start) as u64);
        let tx = TunTapTx {
            fd,
            vnet: if self.vnet { vnet::HEADER } else { 0 },
            gso_mtu: if self.offload { self.mtu } else { 0 },
            link: self.link_len(),
            buf: &mut self.tx_buf,
            counters: &self.counters,
        };
        let rx = TunTapRx { packet: &self.rx_buf[start..n] };
        Some((rx, tx))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        Some(self.tx_token())
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        let ip_mtu = if self.offload { OFFLOAD_MTU.max(self.mtu) } else { self.mtu };
        caps.medium = if self.kind == TunTapKind::Tap { Medium::Ethernet } else { Medium::Ip };
        caps.max_transmission_unit = ip_mtu + self.link_len();
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
