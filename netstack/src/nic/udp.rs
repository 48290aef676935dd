//! UdpNic: the unprivileged NIC. Each overlay IP packet travels as one
//! datagram over a kernel UDP socket, with no header of its own — the framing
//! of Linux foo-over-UDP and of `socat TUN:… UDP:…`, so third-party peers can
//! speak it.
//!
//! * **Batched**: received datagrams come in with one `recvmmsg` per batch,
//!   sent ones leave with one `sendmmsg` per batch; where the kernel has UDP
//!   GSO and GRO, runs of equal-sized packets to one peer travel as one
//!   super-datagram through the kernel and are cut apart at the edges.
//! * **Peers only**: a datagram from an endpoint that is not in the peer
//!   table, or whose inner source address that peer may not use, is dropped
//!   and counted before the stack sees it.
//! * **Bounded**: when the kernel says `WouldBlock`, packets wait in a queue
//!   of at most `tx_queue_packets`; beyond that they are dropped and counted,
//!   so memory never grows (TCP retransmits; the counters tell).

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::Nic;
use super::packet_buf::PacketBuf;
use super::udp_peers::{PeerTable, PeerTableError, UdpDrop, UdpPeer, canonical, packet_destination};
use crate::stats::CounterSource;
use crate::sys::udp::{self as sys_udp, InMeta, OutGroup};

/// The smallest received packet that `receive_into` hands over by swapping
/// buffers instead of copying.
const SWAP_AT_LEAST: usize = 16 * 1024;
/// The most bytes `receive_into` zeroes to make the stack's spare buffer as
/// long as the receive buffer it replaces; beyond that it copies instead.
const SWAP_GROWTH_AT_MOST: usize = 4 * 1024;

/// Smallest MTU accepted: IPv6's minimum link MTU.
pub const MIN_MTU: usize = 1280;
/// Largest MTU accepted: the biggest UDP payload over IPv4.
pub const MAX_MTU: usize = 65_507;
/// Segments the kernel accepts in one GSO send (`UDP_MAX_SEGMENTS`).
const GSO_MAX_SEGMENTS: usize = 64;
/// Bytes the kernel accepts in one GSO send.
const GSO_MAX_BYTES: usize = 65_000;
/// Receive buffer for a GRO super-datagram.
const GRO_BUFFER: usize = 65_535;

/// Settings of a [`UdpNic`].
#[derive(Debug, Clone)]
pub struct UdpNicConfig {
    /// Largest overlay IP packet, in bytes ([`MIN_MTU`]..=[`MAX_MTU`]).
    pub mtu: usize,
    /// Datagrams per `recvmmsg` / `sendmmsg`.
    pub batch: usize,
    /// Packets that may wait while the kernel socket is full.
    pub tx_queue_packets: usize,
    /// Kernel socket buffer size asked for, each direction, in bytes.
    pub socket_buffer: usize,
    /// Use UDP GSO/GRO when the kernel offers them.
    pub offload: bool,
}

impl Default for UdpNicConfig {
    fn default() -> Self {
        Self { mtu: 1400, batch: 64, tx_queue_packets: 4096, socket_buffer: 4 << 20, offload: true }
    }
}

/// Why a [`UdpNic`] could not be made.
#[derive(Debug, thiserror::Error)]
pub enum UdpNicError {
    /// The kernel socket could not be opened or bound.
    #[error("UDP NIC socket on {addr}: {source}")]
    Socket {
        /// The address asked for.
        addr: String,
        /// What the kernel said.
        source: io::Error,
    },
    /// The MTU is outside what the NIC carries.
    #[error("UDP NIC MTU {0} is outside {MIN_MTU}..={MAX_MTU}")]
    Mtu(usize),
    /// The peer table is inconsistent.
    #[error("UDP NIC peers: {0}")]
    Peers(#[from] PeerTableError),
}

crate::counters! {
    /// What a UdpNic did.
    pub struct UdpNicCounters {
        /// Overlay packets handed to the stack.
        rx_packets,
        /// Bytes of those packets.
        rx_bytes,
        /// Datagrams as the kernel returned them (a GRO super-datagram is one).
        rx_datagrams,
        /// `recvmmsg` calls that returned data.
        rx_syscalls,
        /// Datagrams from an underlay endpoint that is not a peer.
        rx_dropped_unknown_peer,
        /// Packets whose inner source address their peer may not use.
        rx_dropped_spoofed_source,
        /// Datagrams too short to hold an IP header.
        rx_dropped_not_ip,
        /// Packets larger than the MTU, or cut by a too-small buffer.
        rx_dropped_too_big,
        /// Receive errors other than "nothing waiting".
        rx_errors,
        /// Overlay packets given to the kernel.
        tx_packets,
        /// Bytes of those packets.
        tx_bytes,
        /// `sendmmsg` calls.
        tx_syscalls,
        /// Datagrams sent as one GSO super-datagram.
        tx_gso_batches,
        /// Times the kernel socket was full.
        tx_would_block,
        /// Packets to an overlay address no peer carries.
        tx_dropped_no_peer,
        /// Packets dropped because the wait queue was full.
        tx_dropped_queue_full,
        /// Packets larger than the MTU.
        tx_dropped_too_big,
        /// Packets the kernel refused (e.g. unreachable underlay).
        tx_dropped_error,
    }
}

/// The receive side: a batch of kernel buffers and a cursor into it.
#[derive(Debug)]
struct RxSide {
    bufs: Vec<Vec<u8>>,
    meta: Vec<InMeta>,
    /// Buffers filled by the last `recvmmsg`.
    filled: usize,
    /// The buffer being handed out, and the offset of its next segment.
    index: usize,
    offset: usize,
}

/// The transmit side: packets waiting for the next `sendmmsg`.
#[derive(Debug)]
struct TxSide {
    fd: RawFd,
    /// The socket is IPv6 (dual-stack): IPv4 peers need mapped addresses.
    v6_socket: bool,
    queue: VecDeque<(SocketAddr, PacketBuf)>,
    free: Vec<PacketBuf>,
    limit: usize,
    batch: usize,
    gso: bool,
    /// The kernel said WouldBlock; wait for writability.
    blocked: bool,
}

/// A NIC that carries overlay packets as UDP datagrams to its peers.
#[derive(Debug)]
pub struct UdpNic {
    socket: UdpSocket,
    peers: PeerTable,
    mtu: usize,
    rx: RxSide,
    tx: TxSide,
    counters: Arc<UdpNicCounters>,
}

impl UdpNic {
    /// Binds a kernel UDP socket at `addr` (e.g. `127.0.0.1:0`) and talks
    /// to `peers` over it.
    pub fn bind(addr: SocketAddr, peers: Vec<UdpPeer>, config: UdpNicConfig) -> Result<Self, UdpNicError> {
        let socket = UdpSocket::bind(addr).map_err(|source| UdpNicError::Socket { addr: addr.to_string(), source })?;
        Self::from_socket(socket, peers, config)
    }

    /// Uses an already bound socket, e.g. one opened inside another network
    /// namespace.
    pub fn from_socket(socket: UdpSocket, peers: Vec<UdpPeer>, config: UdpNicConfig) -> Result<Self, UdpNicError> {
        if !(MIN_MTU..=MAX_MTU).contains(&config.mtu) {
            return Err(UdpNicError::Mtu(config.mtu));
        }
        let local = socket.local_addr().map_err(|source| UdpNicError::Socket { addr: "?".into(), source })?;
        socket.set_nonblocking(true).map_err(|source| UdpNicError::Socket { addr: local.to_string(), source })?;
        let peers = PeerTable::new(peers)?;
        let fd = socket.as_raw_fd();
        sys_udp::set_buffers(fd, config.socket_buffer);
        let gso = config.offload && sys_udp::gso_supported(fd);
        let gro = config.offload && sys_udp::enable_gro(fd);
        let batch = config.batch.clamp(1, 1024);
        let (rx_count, rx_size) = if gro { (batch.min(32), GRO_BUFFER) } else { (batch, config.mtu) };
        log::debug!("udp nic {local}: mtu {} batch {batch} gso {gso} gro {gro}", config.mtu);
        Ok(Self {
            mtu: config.mtu,
            rx: RxSide {
                bufs: (0..rx_count).map(|_| vec![0; rx_size]).collect(),
                meta: vec![InMeta::default(); rx_count],
                filled: 0,
                index: 0,
                offset: 0,
            },
            tx: TxSide {
                fd,
                v6_socket: local.is_ipv6(),
                queue: VecDeque::new(),
                free: Vec::new(),
                limit: config.tx_queue_packets.max(1),
                batch,
                gso,
                blocked: false,
            },
            socket,
            peers,
            counters: Arc::default(),
        })
    }

    /// The underlay address the NIC's socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The NIC's counters.
    pub fn stats(&self) -> Arc<UdpNicCounters> {
        self.counters.clone()
    }

    /// The next acceptable packet as (buffer index, offset, length), reading
    /// from the kernel when the current batch is used up.
    fn next_packet(&mut self) -> Option<(usize, usize, usize)> {
        loop {
            if self.rx.index >= self.rx.filled {
                if !self.refill() {
                    return None;
                }
                continue;
            }
            let i = self.rx.index;
            let meta = self.rx.meta[i];
            let seg = if meta.segment == 0 { meta.len } else { meta.segment };
            let off = self.rx.offset;
            let len = seg.min(meta.len - off);
            if off + len >= meta.len {
                self.rx.index += 1;
                self.rx.offset = 0;
            } else {
                self.rx.offset += len;
            }
            if off == 0 {
                self.counters.rx_datagrams.inc();
                if meta.truncated {
                    self.counters.rx_dropped_too_big.inc();
                    self.rx.index = i + 1;
                    self.rx.offset = 0;
                    continue;
                }
            }
            let packet = &self.rx.bufs[i][off..off + len];
            if let Err(drop) = self.peers.admit(meta.src, packet, self.mtu) {
                match drop {
                    UdpDrop::UnknownPeer => self.counters.rx_dropped_unknown_peer.inc(),
                    UdpDrop::TooBig => self.counters.rx_dropped_too_big.inc(),
                    UdpDrop::NotIp => self.counters.rx_dropped_not_ip.inc(),
                    UdpDrop::SpoofedSource => self.counters.rx_dropped_spoofed_source.inc(),
                }
                continue;
            }
            self.counters.rx_packets.inc();
            self.counters.rx_bytes.add(len as u64);
            return Some((i, off, len));
        }
    }

    /// One `recvmmsg`; false if nothing was waiting.
    fn refill(&mut self) -> bool {
        self.rx.index = 0;
        self.rx.offset = 0;
        self.rx.filled = 0;
        match sys_udp::recv_batch(self.tx.fd, &mut self.rx.bufs, &mut self.rx.meta) {
            Ok(n) => {
                self.counters.rx_syscalls.inc();
                self.rx.filled = n;
                n > 0
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => {
                // ICMP errors from earlier sends surface here; nothing to
                // deliver, and the socket stays usable.
                self.counters.rx_errors.inc();
                log::debug!("udp nic: receive error: {e}");
                false
            }
        }
    }
}

impl TxSide {
    /// Sends everything queued, as far as the kernel takes it.
    fn flush(&mut self, counters: &UdpNicCounters) {
        self.blocked = false;
        while !self.queue.is_empty() {
            let (packets, groups) = self.plan();
            let packet_refs: Vec<&[u8]> = packets.iter().map(|&i| self.queue[i].1.packet()).collect();
            let result = sys_udp::send_batch(self.fd, &packet_refs, &groups);
            counters.tx_syscalls.inc();
            let (sent_groups, failed) = match result {
                Ok(n) => (n, false),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    counters.tx_would_block.inc();
                    self.blocked = true;
                    return;
                }
                Err(e) if self.gso && groups[0].segment > 0 && e.raw_os_error() == Some(libc::EIO) => {
                    // The route cannot segment (no checksum offload): go on
                    // without GSO.
                    log::info!("udp nic: GSO refused ({e}); sending datagrams one by one");
                    self.gso = false;
                    continue;
                }
                Err(e) => {
                    log::debug!("udp nic: send to {} failed: {e}", groups[0].dest);
                    (1, true)
                }
            };
            let done: usize = groups[..sent_groups].iter().map(|g| g.count).sum();
            for g in &groups[..sent_groups] {
                if g.count > 1 && g.segment > 0 {
                    counters.tx_gso_batches.inc();
                }
            }
            for _ in 0..done {
                let (_, buf) = self.queue.pop_front().expect("planned packets are queued");
                if failed {
                    counters.tx_dropped_error.inc();
                } else {
                    counters.tx_packets.inc();
                    counters.tx_bytes.add(buf.len() as u64);
                }
                if self.free.len() < self.batch * 2 {
                    self.free.push(buf);
                }
            }
        }
    }

    /// Groups the head of the queue into datagrams for one `sendmmsg`:
    /// queue indices in send order, and the groups over them.
    fn plan(&self) -> (Vec<usize>, Vec<OutGroup>) {
        let mut packets = Vec::new();
        let mut groups: Vec<OutGroup> = Vec::new();
        for (i, (dest, buf)) in self.queue.iter().enumerate() {
            if groups.len() >= self.batch && groups.last().is_none_or(|g| !self.extends(g, i, *dest, buf.len())) {
                break;
            }
            packets.push(i);
            match groups.last_mut() {
                Some(g) if self.extends(g, i, *dest, buf.len()) => g.count += 1,
                _ => {
                    let dest = if self.v6_socket { to_mapped(*dest) } else { *dest };
                    groups.push(OutGroup { dest, start: i, count: 1, segment: buf.len() as u16 });
                }
            }
        }
        for g in &mut groups {
            if g.count == 1 {
                g.segment = 0;
            }
        }
        (packets, groups)
    }

    /// True if packet `i` (to `dest`, `len` bytes) can join GSO group `g`.
    fn extends(&self, g: &OutGroup, i: usize, dest: SocketAddr, len: usize) -> bool {
        if !self.gso || g.count >= GSO_MAX_SEGMENTS || (g.count + 1) * usize::from(g.segment) > GSO_MAX_BYTES {
            return false;
        }
        // Same peer, and every packet but the group's last exactly `segment`
        // long: the previous packet must be full-size, this one no longer.
        let prev_len = self.queue[i - 1].1.len();
        canonical(dest) == canonical(self.queue[g.start].0)
            && prev_len == usize::from(g.segment)
            && len <= usize::from(g.segment)
    }
}

/// Asks the kernel for `bytes` of buffer each way on `socket`, as a UdpNic
/// does for its own (best effort: beyond `rmem_max`/`wmem_max` the kernel
/// grants it only to privileged processes).
pub fn set_udp_buffers(socket: &UdpSocket, bytes: usize) {
    sys_udp::set_buffers(socket.as_raw_fd(), bytes);
}

/// The IPv4-mapped spelling of an IPv4 endpoint, for a dual-stack socket.
fn to_mapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) => SocketAddr::new(a.ip().to_ipv6_mapped().into(), a.port()),
        v6 => v6,
    }
}

/// A received packet: a slice of the batch buffer.
pub struct UdpRx<'a> {
    packet: &'a [u8],
}

/// Permission to queue one packet for sending.
pub struct UdpTx<'a> {
    tx: &'a mut TxSide,
    peers: &'a PeerTable,
    mtu: usize,
    counters: &'a UdpNicCounters,
}

impl phy::RxToken for UdpRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.packet)
    }
}

impl phy::TxToken for UdpTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.fill_then_send(len, |b| (f(b), true))
    }
}

impl UdpTx<'_> {
    /// The packet `fill` writes is queued for its peer if `fill` says so.
    fn fill_then_send<R>(self, len: usize, fill: impl FnOnce(&mut [u8]) -> (R, bool)) -> R {
        let mut buf = self.tx.free.pop().unwrap_or_default();
        let (r, send) = fill(buf.prepare(len));
        if !send {
            self.tx.free.push(buf);
            return r;
        }
        let dest = packet_destination(buf.packet()).and_then(|dst| self.peers.route(dst));
        if len > self.mtu {
            self.counters.tx_dropped_too_big.inc();
        } else if let Some(dest) = dest {
            if self.tx.queue.len() >= self.tx.limit {
                self.counters.tx_dropped_queue_full.inc();
            } else {
                self.tx.queue.push_back((dest, buf));
                if self.tx.queue.len() >= self.tx.batch && !self.tx.blocked {
                    self.tx.flush(self.counters);
                }
                return r;
            }
        } else {
            self.counters.tx_dropped_no_peer.inc();
        }
        self.tx.free.push(buf);
        r
    }
}

impl Device for UdpNic {
    type RxToken<'a> = UdpRx<'a>;
    type TxToken<'a> = UdpTx<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let (i, off, len) = self.next_packet()?;
        let rx = UdpRx { packet: &self.rx.bufs[i][off..off + len] };
        let tx = UdpTx { tx: &mut self.tx, peers: &self.peers, mtu: self.mtu, counters: &self.counters };
        Some((rx, tx))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        Some(UdpTx { tx: &mut self.tx, peers: &self.peers, mtu: self.mtu, counters: &self.counters })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps.max_burst_size = Some(self.tx.batch);
        caps
    }
}

impl Nic for UdpNic {
    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.tx.fd)
    }

    fn wants_writable(&self) -> bool {
        self.tx.blocked
    }

    fn flush(&mut self) {
        self.tx.flush(&self.counters);
    }

    fn counters(&self) -> Vec<(String, Arc<dyn CounterSource>)> {
        vec![("udp".to_string(), self.counters.clone() as Arc<dyn CounterSource>)]
    }

    /// A large datagram that fills a receive buffer by itself (a packet at
    /// a jumbo MTU) is handed over by swapping buffers: the stack's spare
    /// takes its place in the receive batch. Smaller packets, and segments
    /// of a coalesced (GRO) datagram, are copied.
    fn receive_into(&mut self, _now: Instant, out: &mut Vec<u8>) -> bool {
        let Some((i, off, len)) = self.next_packet() else { return false };
        let slot = self.rx.bufs[i].len();
        let whole = off == 0 && len == self.rx.meta[i].len;
        // Swapping costs zeroing the spare up to the slot's length: worth it
        // only when that is little next to the copy it saves.
        if whole && len >= SWAP_AT_LEAST && out.len() + SWAP_GROWTH_AT_MOST >= slot {
            std::mem::swap(&mut self.rx.bufs[i], out);
            out.truncate(len);
            self.rx.bufs[i].resize(slot, 0);
        } else {
            out.clear();
            out.extend_from_slice(&self.rx.bufs[i][off..off + len]);
        }
        true
    }

    /// smoltcp writes straight into the buffer that is queued for sending.
    fn fill_then_send<R>(
        token: UdpTx<'_>,
        _scratch: &mut Vec<u8>,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> (R, bool),
    ) -> R {
        token.fill_then_send(len, fill)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4-looking packet of `len` bytes from 10.9.0.2, body `fill`.
    fn packet(len: usize, fill: u8) -> Vec<u8> {
        let mut p = vec![fill; len];
        p[0] = 0x45;
        p[12..16].copy_from_slice(&[10, 9, 0, 2]);
        p[16..20].copy_from_slice(&[10, 9, 0, 1]);
        p
    }

    #[test]
    fn large_datagrams_are_swapped_in_small_ones_copied_and_the_batch_stays_usable() {
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let at = socket.local_addr().unwrap();
        let config = UdpNicConfig { mtu: 65_000, ..UdpNicConfig::default() };
        let mut nic =
            UdpNic::from_socket(socket, vec![UdpPeer::new(peer.local_addr().unwrap(), &["10.9.0.2/32"])], config)
                .unwrap();
        let sent: Vec<Vec<u8>> =
            [(30_000, 1), (100, 2), (30_000, 3), (40_000, 4), (64_000, 5)].iter().map(|&(n, f)| packet(n, f)).collect();
        for p in &sent {
            peer.send_to(p, at).unwrap();
        }
        // A spare as long as a receive buffer takes the swap; an empty one
        // (or a short one) gets a copy. Either way `out` is exactly the packet.
        let mut long = vec![0xEE; 65_535];
        let mut short = Vec::new();
        assert!(nic.receive_into(Instant::ZERO, &mut long));
        assert_eq!(long, sent[0]);
        assert!(nic.receive_into(Instant::ZERO, &mut short));
        assert_eq!(short, sent[1]);
        assert!(nic.receive_into(Instant::ZERO, &mut short));
        assert_eq!(short, sent[2]);
        let mut again = vec![0xEE; 65_535];
        assert!(nic.receive_into(Instant::ZERO, &mut again));
        assert_eq!(again, sent[3]);
        assert!(nic.receive_into(Instant::ZERO, &mut long));
        assert_eq!(long, sent[4]);
        assert!(!nic.receive_into(Instant::ZERO, &mut long));
        // The buffers swapped into the batch receive the next datagrams whole.
        let more: Vec<Vec<u8>> = (0..8u8).map(|i| packet(50_000 + usize::from(i), 10 + i)).collect();
        for p in &more {
            peer.send_to(p, at).unwrap();
        }
        for p in &more {
            assert!(nic.receive_into(Instant::ZERO, &mut long));
            assert_eq!(&long, p);
        }
        assert_eq!(nic.counters.rx_packets.get(), 13);
    }
}
