//! Validation of packets arriving from a NIC, before smoltcp sees them.
//!
//! smoltcp drops bad packets silently; plebnet checks them here instead, so
//! every drop has a reason and a counter. smoltcp is then told not to verify
//! checksums again (see `StackDevice::capabilities`).

use smoltcp::wire::{
    Icmpv4Packet, Icmpv6Packet, IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, TcpSeqNumber, UdpPacket,
};

/// Why an arriving packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Truncated, wrong version, impossible lengths.
    Malformed,
    /// IP header or transport checksum wrong.
    Checksum,
    /// A loopback source or destination arriving from outside.
    Martian,
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
        // Transport headers are checked after reassembly, by smoltcp.
        return Ok(Accepted::default());
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
    let payload = ip.payload();
    match ip.next_header() {
        IpProtocol::Tcp => inspect_tcp(payload, src, dst),
        IpProtocol::Udp => inspect_udp(payload, src, dst),
        IpProtocol::Icmpv6 => {
            let icmp = Icmpv6Packet::new_checked(payload).map_err(|_| Refusal::Malformed)?;
            if !icmp.verify_checksum(&ip.src_addr(), &ip.dst_addr()) {
                return Err(Refusal::Checksum);
            }
            Ok(Accepted::default())
        }
        // Extension-header chains are left to smoltcp's parser.
        _ => Ok(Accepted::default()),
    }
}

fn inspect_tcp(payload: &[u8], src: IpAddress, dst: IpAddress) -> Result<Accepted, Refusal> {
    let tcp = TcpPacket::new_checked(payload).map_err(|_| Refusal::Malformed)?;
    if !tcp.verify_checksum(&src, &dst) {
        return Err(Refusal::Checksum);
    }
    let tuple = (dst, tcp.dst_port(), src, tcp.src_port());
    let syn = (tcp.syn() && !tcp.ack() && !tcp.rst()).then_some(tuple);
    let meta = TcpMeta { tuple, seq: tcp.seq_number(), syn: tcp.syn(), ack: tcp.ack(), rst: tcp.rst() };
    Ok(Accepted { syn, tcp: Some(meta) })
}

fn inspect_udp(payload: &[u8], src: IpAddress, dst: IpAddress) -> Result<Accepted, Refusal> {
    let udp = UdpPacket::new_checked(payload).map_err(|_| Refusal::Malformed)?;
    if !udp.verify_checksum(&src, &dst) {
        return Err(Refusal::Checksum);
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
        use smoltcp::phy::ChecksumCapabilities;
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
