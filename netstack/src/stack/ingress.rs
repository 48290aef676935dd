//! Validation of packets arriving from a NIC, before smoltcp sees them.
//!
//! smoltcp drops bad packets silently; plebnet checks them here instead, so
//! every drop has a reason and a counter. smoltcp is then told not to verify
//! checksums again (see `StackDevice::capabilities`), so every transport
//! header smoltcp will read must have been checked here: that includes the
//! one behind an IPv6 Hop-by-Hop header, the only extension header smoltcp
//! looks past.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    Icmpv4Packet, Icmpv6Packet, IpAddress, IpProtocol, Ipv4Packet, Ipv6ExtHeader, Ipv6HopByHopHeader, Ipv6HopByHopRepr,
    Ipv6Packet, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket,
};

/// Why an arriving packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Truncated, wrong version, impossible lengths; TCP segments smoltcp's
    /// parser refuses (impossible flag combinations such as SYN+FIN or
    /// SYN+RST, options that do not parse, port 0); UDP to port 0.
    Malformed,
    /// IP header or transport checksum wrong (or absent, for UDP over IPv6).
    Checksum,
    /// A loopback source or destination arriving from outside.
    Martian,
    /// An IPv4 fragment. smoltcp is built without reassembly (no
    /// `proto-ipv4-fragmentation`) and would drop it silently.
    Fragment,
}

/// What the stack needs to know about an acceptable packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Accepted {
    /// For a TCP segment with SYN and without ACK: its 4-tuple, as
    /// `(local addr, local port, remote addr, remote port)`.
    pub(crate) syn: Option<FourTuple>,
    /// For any TCP segment: what the RFC 5961 checks need.
    pub(crate) tcp: Option<TcpMeta>,
}

/// The header fields of an arriving TCP segment that the SYN guard and the
/// RFC 5961 checks look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TcpMeta {
    /// `(local addr, local port, remote addr, remote port)`.
    pub(crate) tuple: FourTuple,
    pub(crate) seq: TcpSeqNumber,
    pub(crate) syn: bool,
    pub(crate) ack: bool,
    pub(crate) rst: bool,
    /// For a segment that carries data: the sequence number just past it.
    pub(crate) data_end: Option<TcpSeqNumber>,
}

/// `(local address, local port, remote address, remote port)`.
pub(crate) type FourTuple = (IpAddress, u16, IpAddress, u16);

/// Checks one IP packet. `looped` packets came from this stack itself, so
/// loopback addresses in them are expected rather than martian.
pub(crate) fn inspect(packet: &[u8], looped: bool) -> Result<Accepted, Refusal> {
    match packet.first().map(|b| b >> 4) {
        Some(4) => inspect_v4(packet, looped),
        Some(6) => inspect_v6(packet, looped),
        _ => Err(Refusal::Malformed),
    }
}

fn inspect_v4(packet: &[u8], looped: bool) -> Result<Accepted, Refusal> {
    let ip = Ipv4Packet::new_checked(packet).map_err(|_| Refusal::Malformed)?;
    if !ip.verify_checksum() {
        return Err(Refusal::Checksum);
    }
    let (src, dst) = (IpAddress::Ipv4(ip.src_addr()), IpAddress::Ipv4(ip.dst_addr()));
    if !looped && (ip.src_addr().is_loopback() || ip.dst_addr().is_loopback()) {
        return Err(Refusal::Martian);
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Err(Refusal::Fragment);
    }
    let payload = ip.payload();
    match ip.next_header() {
        IpProtocol::Tcp => inspect_tcp(payload, src, dst),
        IpProtocol::Udp => inspect_udp(payload, src, dst),
        IpProtocol::Icmp => {
            let icmp = Icmpv4Packet::new_checked(payload).map_err(|_| Refusal::Malformed)?;
            if !icmp.verify_checksum() {
                return Err(Refusal::Checksum);
            }
            Ok(Accepted::default())
        }
        _ => Ok(Accepted::default()),
    }
}

fn inspect_v6(packet: &[u8], looped: bool) -> Result<Accepted, Refusal> {
    let ip = Ipv6Packet::new_checked(packet).map_err(|_| Refusal::Malformed)?;
    let (src, dst) = (IpAddress::Ipv6(ip.src_addr()), IpAddress::Ipv6(ip.dst_addr()));
    if !looped && (ip.src_addr().is_loopback() || ip.dst_addr().is_loopback()) {
        return Err(Refusal::Martian);
    }
    let (next_header, payload) = skip_hop_by_hop(ip.next_header(), ip.payload())?;
    match next_header {
        IpProtocol::Tcp => inspect_tcp(payload, src, dst),
        IpProtocol::Udp => {
            // RFC 8200 8.1: a zero UDP checksum is not allowed over IPv6
            // (smoltcp's `verify_checksum` accepts it for either version).
            if UdpPacket::new_checked(payload).is_ok_and(|udp| udp.checksum() == 0) {
                return Err(Refusal::Checksum);
            }
            inspect_udp(payload, src, dst)
        }
        IpProtocol::Icmpv6 => {
            let icmp = Icmpv6Packet::new_checked(payload).map_err(|_| Refusal::Malformed)?;
            if !icmp.verify_checksum(&ip.src_addr(), &ip.dst_addr()) {
                return Err(Refusal::Checksum);
            }
            Ok(Accepted::default())
        }
        // Other extension headers are left to smoltcp, which answers them
        // with a Parameter Problem and never reads what follows them.
        _ => Ok(Accepted::default()),
    }
}

/// smoltcp reads past a Hop-by-Hop header right after the IPv6 header (and
/// past no other extension header): returns the protocol and payload it
/// will then process, refusing a Hop-by-Hop header smoltcp cannot parse
/// (it would drop the packet silently).
fn skip_hop_by_hop(next_header: IpProtocol, payload: &[u8]) -> Result<(IpProtocol, &[u8]), Refusal> {
    if next_header != IpProtocol::HopByHop {
        return Ok((next_header, payload));
    }
    let ext = Ipv6ExtHeader::new_checked(payload).map_err(|_| Refusal::Malformed)?;
    let hbh = Ipv6HopByHopHeader::new_checked(ext.payload()).map_err(|_| Refusal::Malformed)?;
    Ipv6HopByHopRepr::parse(&hbh).map_err(|_| Refusal::Malformed)?;
    let len = (usize::from(ext.header_len()) + 1) * 8;
    Ok((ext.next_header(), &payload[len..]))
}

fn inspect_tcp(payload: &[u8], src: IpAddress, dst: IpAddress) -> Result<Accepted, Refusal> {
    let tcp = TcpPacket::new_checked(payload).map_err(|_| Refusal::Malformed)?;
    if !tcp.verify_checksum(&src, &dst) {
        return Err(Refusal::Checksum);
    }
    // What smoltcp's parser would refuse silently: flags, options, ports.
    TcpRepr::parse(&tcp, &src, &dst, &ChecksumCapabilities::ignored()).map_err(|_| Refusal::Malformed)?;
    let tuple = (dst, tcp.dst_port(), src, tcp.src_port());
    let syn = (tcp.syn() && !tcp.ack() && !tcp.rst()).then_some(tuple);
    let data = tcp.payload().len();
    let data_end = (data > 0).then(|| tcp.seq_number() + usize::from(tcp.syn()) + data);
    let meta = TcpMeta { tuple, seq: tcp.seq_number(), syn: tcp.syn(), ack: tcp.ack(), rst: tcp.rst(), data_end };
    Ok(Accepted { syn, tcp: Some(meta) })
}

fn inspect_udp(payload: &[u8], src: IpAddress, dst: IpAddress) -> Result<Accepted, Refusal> {
    let udp = UdpPacket::new_checked(payload).map_err(|_| Refusal::Malformed)?;
    if !udp.verify_checksum(&src, &dst) {
        return Err(Refusal::Checksum);
    }
    if udp.dst_port() == 0 {
        return Err(Refusal::Malformed);
    }
    Ok(Accepted::default())
}

/// The destination address of an IP packet, if it has a readable header.
pub(crate) fn destination(packet: &[u8]) -> Option<IpAddress> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let b: [u8; 4] = packet[16..20].try_into().ok()?;
            Some(IpAddress::Ipv4(b.into()))
        }
        6 if packet.len() >= 40 => {
            let b: [u8; 16] = packet[24..40].try_into().ok()?;
            Some(IpAddress::Ipv6(b.into()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid IPv4/UDP packet 10.0.0.2:1000 -> 10.0.0.1:53.
    fn udp_v4() -> Vec<u8> {
        use smoltcp::wire::{Ipv4Address, Ipv4Repr, UdpRepr};
        let src = Ipv4Address::new(10, 0, 0, 2);
        let dst = Ipv4Address::new(10, 0, 0, 1);
        let udp = UdpRepr { src_port: 1000, dst_port: 53 };
        let ip =
            Ipv4Repr { src_addr: src, dst_addr: dst, next_header: IpProtocol::Udp, payload_len: 8 + 4, hop_limit: 64 };
        let mut buf = vec![0; 20 + 12];
        let caps = ChecksumCapabilities::default();
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]), &caps);
        udp.emit(
            &mut UdpPacket::new_unchecked(&mut buf[20..]),
            &src.into(),
            &dst.into(),
            4,
            |p| p.copy_from_slice(b"ping"),
            &caps,
        );
        buf
    }

    #[test]
    fn valid_packet_passes() {
        assert_eq!(inspect(&udp_v4(), false), Ok(Accepted::default()));
        assert_eq!(destination(&udp_v4()), Some(IpAddress::v4(10, 0, 0, 1)));
    }

    #[test]
    fn every_single_bit_flip_is_caught_or_harmless() {
        let good = udp_v4();
        for bit in 0..good.len() * 8 {
            let mut p = good.clone();
            p[bit / 8] ^= 1 << (bit % 8);
            // A flip may still form a valid packet (e.g. in the TTL, which the
            // IP checksum covers, so not there); it must never panic, and a
            // flip in the payload must be refused.
            let r = inspect(&p, false);
            if bit / 8 >= 28 {
                assert_eq!(r, Err(Refusal::Checksum), "payload bit {bit}");
            }
        }
    }

    #[test]
    fn garbage_is_malformed() {
        assert_eq!(inspect(&[], false), Err(Refusal::Malformed));
        assert_eq!(inspect(&[0x45, 0, 0], false), Err(Refusal::Malformed));
        assert_eq!(inspect(&[0x10; 40], false), Err(Refusal::Malformed));
    }

    /// An IPv6/UDP packet fd00::2:1000 -> fd00::1:53, with a Hop-by-Hop
    /// header (PadN) in front of UDP if `hbh`.
    fn udp_v6(hbh: bool) -> Vec<u8> {
        use smoltcp::wire::{Ipv6Address, Ipv6Repr, UdpRepr};
        let src = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
        let dst = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
        let ext: &[u8] = if hbh { &[17, 0, 1, 4, 0, 0, 0, 0] } else { &[] };
        let next_header = if hbh { IpProtocol::HopByHop } else { IpProtocol::Udp };
        let ip = Ipv6Repr { src_addr: src, dst_addr: dst, next_header, payload_len: ext.len() + 12, hop_limit: 64 };
        let mut buf = vec![0; 40 + ext.len() + 12];
        ip.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..]));
        buf[40..40 + ext.len()].copy_from_slice(ext);
        let udp = UdpRepr { src_port: 1000, dst_port: 53 };
        let mut packet = UdpPacket::new_unchecked(&mut buf[40 + ext.len()..]);
        let caps = ChecksumCapabilities::default();
        udp.emit(&mut packet, &src.into(), &dst.into(), 4, |p| p.copy_from_slice(b"ping"), &caps);
        buf
    }

    /// An IPv4/TCP SYN 10.0.0.2:1000 -> 10.0.0.1:80 with `flags` ORed into
    /// its flags byte and `options` (a multiple of 4 bytes) after its header.
    fn syn_v4(flags: u8, options: &[u8]) -> Vec<u8> {
        use smoltcp::wire::{Ipv4Address, Ipv4Repr};
        let (src, dst) = (Ipv4Address::new(10, 0, 0, 2), Ipv4Address::new(10, 0, 0, 1));
        let mut tcp = vec![0u8; 20 + options.len()];
        tcp[0..2].copy_from_slice(&1000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[12] = ((20 + options.len()) / 4) as u8 * 16;
        tcp[13] = 0x02 | flags;
        tcp[20..].copy_from_slice(options);
        let mut segment = TcpPacket::new_unchecked(&mut tcp[..]);
        segment.fill_checksum(&src.into(), &dst.into());
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.len(),
            hop_limit: 64,
        };
        let mut buf = vec![0; 20];
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]), &ChecksumCapabilities::default());
        buf.extend_from_slice(&tcp);
        buf
    }

    #[test]
    fn ipv4_fragments_are_refused() {
        for (more, offset) in [(true, 0), (false, 64), (true, 8)] {
            let mut p = udp_v4();
            let mut ip = Ipv4Packet::new_unchecked(&mut p[..]);
            ip.set_more_frags(more);
            ip.set_frag_offset(offset);
            ip.fill_checksum();
            assert_eq!(inspect(&p, false), Err(Refusal::Fragment));
        }
    }

    #[test]
    fn udp_behind_hop_by_hop_is_checked() {
        assert_eq!(inspect(&udp_v6(false), false), Ok(Accepted::default()));
        assert_eq!(inspect(&udp_v6(true), false), Ok(Accepted::default()));
        let mut bad = udp_v6(true);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(inspect(&bad, false), Err(Refusal::Checksum));
        let mut truncated = udp_v6(true);
        truncated[41] = 3; // the Hop-by-Hop header claims 32 bytes
        assert_eq!(inspect(&truncated, false), Err(Refusal::Malformed));
    }

    #[test]
    fn zero_udp_checksum_is_refused_over_ipv6_only() {
        for hbh in [false, true] {
            let mut p = udp_v6(hbh);
            let at = p.len() - 12 + 6;
            p[at..at + 2].copy_from_slice(&[0, 0]);
            assert_eq!(inspect(&p, false), Err(Refusal::Checksum), "hop-by-hop {hbh}");
        }
        let mut p = udp_v4();
        p[26..28].copy_from_slice(&[0, 0]);
        assert_eq!(inspect(&p, false), Ok(Accepted::default()), "RFC 768: no checksum");
    }

    #[test]
    fn tcp_smoltcp_would_refuse_is_malformed() {
        assert!(inspect(&syn_v4(0, &[2, 4, 5, 0xb4]), false).unwrap().syn.is_some());
        // SYN+FIN, SYN+RST, an option of length 0, an MSS of length 3.
        for (flags, options) in [(0x01, &[][..]), (0x04, &[]), (0, &[99, 0, 0, 0]), (0, &[2, 3, 0, 0])] {
            assert_eq!(inspect(&syn_v4(flags, options), false), Err(Refusal::Malformed), "{flags:#x} {options:?}");
        }
    }

    #[test]
    fn loopback_from_outside_is_martian() {
        let mut p = udp_v4();
        p[12..16].copy_from_slice(&[127, 0, 0, 1]);
        // Fix the IP checksum so only the martian rule can refuse it.
        let mut ip = Ipv4Packet::new_unchecked(&mut p[..]);
        ip.fill_checksum();
        assert_eq!(inspect(&p, false), Err(Refusal::Martian));
    }
}
