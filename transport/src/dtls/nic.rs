//! DtlsNic: the DTLS link as a NIC. A kernel UDP socket carries DTLS
//! records; each record holds one overlay IP packet (the UdpNic framing);
//! the [`DtlsLink`] core decides what is sent and what reaches the stack.
//! Put a plebnet stack on it and every TCP connection across it is
//! TCP-over-DTLS: one connection per circuit, so a loss on one circuit
//! stalls only that circuit.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use plebnet::netstack::nic::Nic;
use plebnet::netstack::smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use plebnet::netstack::smoltcp::time::{Duration as SmolDuration, Instant as SmolInstant};
use plebnet::netstack::stats::CounterSource;

use super::config::DtlsConfig;
use super::error::DtlsError;
use super::link::{DtlsLink, DtlsLinkCounters, DtlsLinkLimits, DtlsPeer, LinkIo};
use super::repair::LinkRepair;

/// Datagrams read per receive pass.
const RX_BATCH: usize = 64;
/// Largest datagram read.
const RX_BUFFER: usize = 65_535;

/// Settings of a [`DtlsNic`].
#[derive(Debug, Clone)]
pub struct DtlsNicConfig {
    /// Largest overlay IP packet, in bytes (the datagrams are larger by the
    /// DTLS record overhead, 29 to 37 bytes with AES-GCM, and by 5 bytes of
    /// loss-repair header when [`repair`](Self::repair) is on).
    pub mtu: usize,
    /// Decrypted packets that may wait for the stack; beyond, dropped and
    /// counted.
    pub rx_queue_packets: usize,
    /// Datagrams that may wait while the kernel socket is full; beyond,
    /// dropped and counted.
    pub tx_queue_packets: usize,
    /// Kernel socket buffer asked for, each direction, in bytes.
    pub socket_buffer: usize,
    /// Handshake and redial limits.
    pub limits: DtlsLinkLimits,
    /// Loss repair on the link (on by default).
    pub repair: LinkRepair,
}

impl Default for DtlsNicConfig {
    fn default() -> Self {
        Self {
            mtu: 1400,
            rx_queue_packets: 4096,
            tx_queue_packets: 4096,
            socket_buffer: 4 << 20,
            limits: DtlsLinkLimits::default(),
            repair: LinkRepair::default(),
        }
    }
}

plebnet::netstack::counters! {
    /// What the DtlsNic's socket did (the link's own counters are separate).
    pub struct DtlsNicCounters {
        /// Kernel receive errors other than "nothing waiting".
        rx_errors,
        /// Decrypted packets dropped because the stack's queue was full.
        rx_dropped_queue_full,
        /// Times the kernel socket was full.
        tx_would_block,
        /// Datagrams dropped because the wait queue was full.
        tx_dropped_queue_full,
        /// Datagrams the kernel refused.
        tx_dropped_error,
        /// Overlay packets larger than the MTU.
        tx_dropped_too_big,
    }
}

/// The socket side that the link writes into.
#[derive(Debug)]
struct Wire {
    socket: UdpSocket,
    rx: VecDeque<Vec<u8>>,
    rx_limit: usize,
    tx: VecDeque<(SocketAddr, Vec<u8>)>,
    tx_limit: usize,
    blocked: bool,
    counters: Arc<DtlsNicCounters>,
}

impl Wire {
    /// Sends what waits, as far as the kernel takes it.
    fn flush(&mut self) {
        self.blocked = false;
        while let Some((to, datagram)) = self.tx.front() {
            match self.socket.send_to(datagram, to) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.counters.tx_would_block.inc();
                    self.blocked = true;
                    return;
                }
                Err(e) => {
                    log::debug!("dtls nic: send to {to} failed: {e}");
                    self.counters.tx_dropped_error.inc();
                }
            }
            self.tx.pop_front();
        }
    }
}

impl LinkIo for Wire {
    fn transmit(&mut self, to: SocketAddr, datagram: &[u8]) {
        if self.tx.is_empty() && !self.blocked {
            match self.socket.send_to(datagram, to) {
                Ok(_) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.counters.tx_would_block.inc();
                    self.blocked = true;
                }
                Err(e) => {
                    log::debug!("dtls nic: send to {to} failed: {e}");
                    self.counters.tx_dropped_error.inc();
                    return;
                }
            }
        }
        if self.tx.len() >= self.tx_limit {
            self.counters.tx_dropped_queue_full.inc();
        } else {
            self.tx.push_back((to, datagram.to_vec()));
        }
    }

    fn deliver(&mut self, packet: &[u8]) {
        if self.rx.len() >= self.rx_limit {
            self.counters.rx_dropped_queue_full.inc();
        } else {
            self.rx.push_back(packet.to_vec());
        }
    }
}

/// A NIC whose link is DTLS over a kernel UDP socket. See the module docs.
#[derive(Debug)]
pub struct DtlsNic {
    wire: Wire,
    link: DtlsLink,
    mtu: usize,
    buf: Vec<u8>,
    /// Where the stack writes each outgoing packet.
    tx_buf: Vec<u8>,
    /// The last (stack time, wall time) pair seen, to express the link's
    /// deadlines in the stack's clock.
    clock: Option<(SmolInstant, std::time::Instant)>,
}

impl DtlsNic {
    /// Binds a kernel UDP socket at `addr` and speaks DTLS to `peers` over
    /// it as `config.identity`.
    pub fn bind(
        addr: SocketAddr,
        config: DtlsConfig,
        peers: Vec<DtlsPeer>,
        nic: DtlsNicConfig,
    ) -> Result<Self, DtlsError> {
        let socket = UdpSocket::bind(addr).map_err(|e| DtlsError::Config(format!("DTLS NIC socket on {addr}: {e}")))?;
        Self::from_socket(socket, config, peers, nic)
    }

    /// Uses an already bound socket.
    pub fn from_socket(
        socket: UdpSocket,
        mut config: DtlsConfig,
        peers: Vec<DtlsPeer>,
        nic: DtlsNicConfig,
    ) -> Result<Self, DtlsError> {
        if !(plebnet::netstack::nic::MIN_MTU..=plebnet::netstack::nic::MAX_MTU - 64).contains(&nic.mtu) {
            return Err(DtlsError::Config(format!("DTLS NIC MTU {} is out of range", nic.mtu)));
        }
        socket.set_nonblocking(true).map_err(|e| DtlsError::Config(format!("DTLS NIC socket: {e}")))?;
        plebnet::netstack::nic::set_udp_buffers(&socket, nic.socket_buffer);
        // Handshake flights fit a minimal path; data records share a
        // datagram only up to one overlay packet's size.
        config.datagram_mtu = config.datagram_mtu.min(nic.mtu);
        let link = DtlsLink::new(config, peers, nic.limits, std::time::Instant::now())?.with_repair(nic.repair);
        Ok(Self {
            wire: Wire {
                socket,
                rx: VecDeque::new(),
                rx_limit: nic.rx_queue_packets.max(1),
                tx: VecDeque::new(),
                tx_limit: nic.tx_queue_packets.max(1),
                blocked: false,
                counters: Arc::default(),
            },
            link,
            mtu: nic.mtu,
            buf: vec![0; RX_BUFFER],
            tx_buf: Vec::new(),
            clock: None,
        })
    }

    /// The underlay address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.wire.socket.local_addr()
    }

    /// The link's counters (handshakes, drops by reason).
    pub fn link_counters(&self) -> Arc<DtlsLinkCounters> {
        self.link.counters()
    }

    /// The socket's counters.
    pub fn socket_counters(&self) -> Arc<DtlsNicCounters> {
        self.wire.counters.clone()
    }

    fn tick(&mut self, now: SmolInstant) -> std::time::Instant {
        let wall = std::time::Instant::now();
        self.clock = Some((now, wall));
        wall
    }

    /// Reads what the socket holds (one batch) through the link.
    fn pull(&mut self, now: SmolInstant) {
        let wall = self.tick(now);
        for _ in 0..RX_BATCH {
            match self.wire.socket.recv_from(&mut self.buf) {
                Ok((len, from)) => self.link.handle_datagram(wall, from, &self.buf[..len], &mut self.wire),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // ICMP errors of earlier sends surface here.
                    self.wire.counters.rx_errors.inc();
                    log::debug!("dtls nic: receive error: {e}");
                }
            }
        }
    }
}

/// A decrypted packet for the stack.
pub struct DtlsRx(Vec<u8>);

/// Permission to send one packet through the link.
pub struct DtlsTx<'a> {
    nic: &'a mut DtlsNic,
}

impl phy::RxToken for DtlsRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for DtlsTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        // One buffer serves every packet: the link encrypts it away at once.
        let mut packet = std::mem::take(&mut self.nic.tx_buf);
        packet.clear();
        packet.resize(len, 0);
        let r = f(&mut packet);
        if len > self.nic.mtu {
            self.nic.wire.counters.tx_dropped_too_big.inc();
        } else {
            self.nic.link.send_packet(std::time::Instant::now(), &packet, &mut self.nic.wire);
        }
        self.nic.tx_buf = packet;
        r
    }
}

impl Device for DtlsNic {
    type RxToken<'a> = DtlsRx;
    type TxToken<'a> = DtlsTx<'a>;

    fn receive(&mut self, now: SmolInstant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if self.wire.rx.is_empty() {
            self.pull(now);
        }
        let packet = self.wire.rx.pop_front()?;
        Some((DtlsRx(packet), DtlsTx { nic: self }))
    }

    fn transmit(&mut self, now: SmolInstant) -> Option<Self::TxToken<'_>> {
        self.tick(now);
        Some(DtlsTx { nic: self })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps.max_burst_size = Some(RX_BATCH);
        caps
    }
}

impl Nic for DtlsNic {
    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.wire.socket.as_raw_fd())
    }

    fn wants_writable(&self) -> bool {
        self.wire.blocked
    }

    fn flush(&mut self) {
        self.wire.flush();
    }

    fn poll_at(&self) -> Option<SmolInstant> {
        let deadline = self.link.poll_timeout()?;
        let Some((stack, wall)) = self.clock else {
            // Not driven yet: due at once, so the driver starts the link.
            return Some(SmolInstant::ZERO);
        };
        let ahead = deadline.saturating_duration_since(wall);
        Some(stack + SmolDuration::from_micros(ahead.as_micros() as u64))
    }

    fn service(&mut self, now: SmolInstant) {
        let wall = self.tick(now);
        self.link.handle_timeout(wall, &mut self.wire);
    }

    fn counters(&self) -> Vec<(String, Arc<dyn CounterSource>)> {
        vec![
            ("dtls".to_string(), self.link.counter_source()),
            ("dtls.socket".to_string(), self.wire.counters.clone() as Arc<dyn CounterSource>),
        ]
    }
}
