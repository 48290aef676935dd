//! Reading, editing and building the TCP segments that the device's helpers
//! (the recovery assist, the FIN keeper) look at or make up themselves.
//!
//! Both helpers sit between smoltcp and the NIC, so they see raw IP packets
//! and must produce packets the peer accepts: correct lengths, IP and TCP
//! checksums. Keeping that in one place means one set of parsing rules and
//! one emitter, built on smoltcp's own `IpRepr`/`TcpRepr`.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IpAddress, IpProtocol, IpRepr, Ipv4Packet, Ipv6Packet, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

/// The parts of a TCP segment the recovery assist looks at, options parsed.
pub(crate) struct Segment<'a> {
    pub(crate) src: IpAddress,
    pub(crate) dst: IpAddress,
    pub(crate) tcp: TcpRepr<'a>,
}

/// The IP addresses and TCP bytes of an unfragmented IPv4 or IPv6 packet
/// carrying TCP; `None` for anything else.
fn tcp_bytes(packet: &[u8]) -> Option<(IpAddress, IpAddress, &[u8])> {
    match packet.first()? >> 4 {
        4 => {
            let ip = Ipv4Packet::new_checked(packet).ok()?;
            if ip.next_header() != IpProtocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
                return None;
            }
            let hl = ip.header_len() as usize;
            let total = ip.total_len() as usize;
            Some((IpAddress::Ipv4(ip.src_addr()), IpAddress::Ipv4(ip.dst_addr()), packet.get(hl..total)?))
        }
        6 => {
            let ip = Ipv6Packet::new_checked(packet).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            let end = 40 + ip.payload_len() as usize;
            Some((IpAddress::Ipv6(ip.src_addr()), IpAddress::Ipv6(ip.dst_addr()), packet.get(40..end)?))
        }
        _ => None,
    }
}

/// Parses a whole TCP segment, options included (checksum not verified:
/// ingress validation did that, and egress packets are our own).
pub(crate) fn parse(packet: &[u8]) -> Option<Segment<'_>> {
    let (src, dst, bytes) = tcp_bytes(packet)?;
    let tcp = TcpPacket::new_checked(bytes).ok()?;
    let tcp = TcpRepr::parse(&tcp, &src, &dst, &ChecksumCapabilities::ignored()).ok()?;
    Some(Segment { src, dst, tcp })
}

/// The fixed TCP header fields of a segment, read without parsing options:
/// cheap enough to run on every packet that passes the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) src: IpAddress,
    pub(crate) dst: IpAddress,
    pub(crate) src_port: u16,
    pub(crate) dst_port: u16,
    pub(crate) seq: TcpSeqNumber,
    /// The acknowledgment number, if the ACK flag is set.
    pub(crate) ack: Option<TcpSeqNumber>,
    /// The raw (possibly scaled) window field.
    pub(crate) window: u16,
    pub(crate) syn: bool,
    pub(crate) fin: bool,
    pub(crate) rst: bool,
    pub(crate) payload_len: usize,
}

/// Reads the fixed header of a TCP segment; `None` if `packet` is not one.
pub(crate) fn peek(packet: &[u8]) -> Option<Header> {
    let (src, dst, bytes) = tcp_bytes(packet)?;
    let tcp = TcpPacket::new_checked(bytes).ok()?;
    Some(Header {
        src,
        dst,
        src_port: tcp.src_port(),
        dst_port: tcp.dst_port(),
        seq: tcp.seq_number(),
        ack: tcp.ack().then(|| tcp.ack_number()),
        window: tcp.window_len(),
        syn: tcp.syn(),
        fin: tcp.fin(),
        rst: tcp.rst(),
        payload_len: tcp.payload().len(),
    })
}

/// Edits the TCP header of `packet` with `edit`, then refreshes its checksum.
/// `packet` must be an IP packet carrying TCP (one that [`parse`] accepted).
pub(crate) fn rewrite(packet: &mut [u8], edit: impl FnOnce(&mut TcpPacket<&mut [u8]>)) {
    let (src, dst, offset, end) = match packet[0] >> 4 {
        4 => {
            let ip = Ipv4Packet::new_unchecked(&packet[..]);
            let hl = ip.header_len() as usize;
            (IpAddress::Ipv4(ip.src_addr()), IpAddress::Ipv4(ip.dst_addr()), hl, ip.total_len() as usize)
        }
        _ => {
            let ip = Ipv6Packet::new_unchecked(&packet[..]);
            (IpAddress::Ipv6(ip.src_addr()), IpAddress::Ipv6(ip.dst_addr()), 40, 40 + ip.payload_len() as usize)
        }
    };
    let mut tcp = TcpPacket::new_unchecked(&mut packet[offset..end]);
    edit(&mut tcp);
    tcp.fill_checksum(&src, &dst);
}

/// A TCP segment without payload or options (a pure ACK, a bare FIN|ACK)
/// that the device makes up itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bare {
    pub(crate) src: IpAddress,
    pub(crate) dst: IpAddress,
    pub(crate) src_port: u16,
    pub(crate) dst_port: u16,
    /// `None` or `Fin`; the ACK flag is always set.
    pub(crate) control: TcpControl,
    pub(crate) seq: TcpSeqNumber,
    pub(crate) ack: TcpSeqNumber,
    pub(crate) window: u16,
}

impl Bare {
    /// Emits the segment as an IP packet into `buf` (replacing its contents),
    /// with both checksums filled in.
    pub(crate) fn emit_into(&self, buf: &mut Vec<u8>) {
        let tcp = TcpRepr {
            src_port: self.src_port,
            dst_port: self.dst_port,
            control: self.control,
            seq_number: self.seq,
            ack_number: Some(self.ack),
            window_len: self.window,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None, None, None],
            timestamp: None,
            payload: &[],
        };
        let ip = IpRepr::new(self.src, self.dst, IpProtocol::Tcp, tcp.header_len(), 64);
        buf.clear();
        buf.resize(ip.header_len() + tcp.header_len(), 0);
        let caps = ChecksumCapabilities::default();
        ip.emit(&mut buf[..], &caps);
        let hl = ip.header_len();
        tcp.emit(&mut TcpPacket::new_unchecked(&mut buf[hl..]), &self.src, &self.dst, &caps);
    }

    /// The segment as a new IP packet.
    pub(crate) fn to_packet(self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.emit_into(&mut buf);
        buf
    }
}

/// A TCP segment for unit tests: `len` payload bytes of `fill`, window
/// `window`, no options, both checksums filled in.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn test_segment(
    (src, src_port): (IpAddress, u16),
    (dst, dst_port): (IpAddress, u16),
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    window: u16,
    len: usize,
    fill: u8,
) -> Vec<u8> {
    let payload = vec![fill; len];
    let tcp = TcpRepr {
        src_port,
        dst_port,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: window,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &payload,
    };
    let ip = IpRepr::new(src, dst, IpProtocol::Tcp, tcp.buffer_len(), 64);
    let mut buf = vec![0u8; ip.header_len() + tcp.buffer_len()];
    let caps = ChecksumCapabilities::default();
    ip.emit(&mut buf[..], &caps);
    let hl = ip.header_len();
    tcp.emit(&mut TcpPacket::new_unchecked(&mut buf[hl..]), &src, &dst, &caps);
    buf
}
