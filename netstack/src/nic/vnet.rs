//! Segmentation offload for tun/tap: the `virtio_net_hdr` the kernel puts in
//! front of every packet when a device is opened with `IFF_VNET_HDR`.
//!
//! With offload on (`TUNSETOFFLOAD` with checksum and TSO), the kernel hands
//! the stack whole TCP super-segments of up to 64 KiB, with the checksum
//! left for the device to finish, and accepts super-segments back, cutting
//! them to the wire MSS itself. One read or write then moves up to ~45
//! segments' worth of data, and smoltcp processes one segment instead of 45 —
//! what gVisor's netstack and the kernel's own virtio devices do.
//!
//! Everything here is sans-IO and works on a packet with a link header of
//! `link` bytes (14 for tap, 0 for tun).

/// Size of `struct virtio_net_hdr_v1` (with `num_buffers`), set with
/// `TUNSETVNETHDRSZ`.
pub(crate) const HEADER: usize = 12;

const F_NEEDS_CSUM: u8 = 1;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const TCP: u8 = 6;
/// TCP option kind of the maximum segment size.
const OPT_MSS: u8 = 2;

/// The parts of a received header that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Received {
    /// Where the partial checksum's range starts, if the kernel left the
    /// checksum for us (`VIRTIO_NET_HDR_F_NEEDS_CSUM`).
    pub(crate) csum: Option<(usize, usize)>,
}

/// Reads the header (little-endian: tun's default on little-endian hosts).
pub(crate) fn parse(header: &[u8]) -> Received {
    let u16_at = |i: usize| usize::from(u16::from_le_bytes([header[i], header[i + 1]]));
    let csum = (header[0] & F_NEEDS_CSUM != 0).then(|| (u16_at(6), u16_at(8)));
    Received { csum }
}

/// Ones' complement sum of `data` added to `sum`.
fn sum16(data: &[u8], mut sum: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Finishes a checksum the kernel left partial: the field at
/// `start + offset` holds the pseudo-header sum; the device sums from
/// `start` to the end and stores the complement. False if out of range.
pub(crate) fn complete_checksum(packet: &mut [u8], start: usize, offset: usize) -> bool {
    let at = start + offset;
    if at + 2 > packet.len() || start > packet.len() {
        return false;
    }
    let sum = fold(sum16(&packet[start..], 0));
    packet[at..at + 2].copy_from_slice(&(!sum).to_be_bytes());
    true
}

/// The IP version, IP header length and TCP header offset of a TCP packet
/// (no IPv6 extension headers), or `None`.
fn tcp_offsets(ip: &[u8]) -> Option<(u8, usize)> {
    match ip.first()? >> 4 {
        4 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            (ip.len() >= ihl + 20 && ihl >= 20 && ip[9] == TCP).then_some((4, ihl))
        }
        6 => (ip.len() >= 60 && ip[6] == TCP).then_some((6, 40)),
        _ => None,
    }
}

/// The header to write in front of an outgoing packet. A TCP segment longer
/// than `wire_mtu` goes as a super-segment that the kernel cuts into
/// segments that fit it (same headers, payload `wire_mtu` minus headers);
/// its checksum is already complete.
pub(crate) fn for_transmit(packet: &[u8], link: usize, wire_mtu: usize) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    let Some(ip) = packet.get(link..) else { return h };
    let Some((version, ihl)) = tcp_offsets(ip) else { return h };
    let tcp_len = usize::from(ip[ihl + 12] >> 4) * 4;
    let headers = link + ihl + tcp_len;
    let Some(wire_mss) = wire_mtu.checked_sub(ihl + tcp_len).filter(|m| *m > 0) else { return h };
    if packet.len() <= headers + wire_mss {
        return h;
    }
    h[1] = if version == 4 { GSO_TCPV4 } else { GSO_TCPV6 };
    h[2..4].copy_from_slice(&(headers as u16).to_le_bytes());
    h[4..6].copy_from_slice(&(wire_mss as u16).to_le_bytes());
    h
}

/// In a SYN from the kernel, raises the MSS option to `mss` (so smoltcp
/// sends super-segments for the kernel to cut) and recomputes the TCP
/// checksum. Returns true if it changed the packet.
pub(crate) fn raise_syn_mss(packet: &mut [u8], link: usize, mss: u16) -> bool {
    let Some(ip) = packet.get_mut(link..) else { return false };
    let Some((version, ihl)) = tcp_offsets(ip) else { return false };
    let flags = ip[ihl + 13];
    if flags & 0x02 == 0 {
        return false;
    }
    let tcp_len = usize::from(ip[ihl + 12] >> 4) * 4;
    if tcp_len < 20 || ip.len() < ihl + tcp_len {
        return false;
    }
    let mut i = ihl + 20;
    let end = ihl + tcp_len;
    let mut changed = false;
    while i < end {
        match ip[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let len = usize::from(*ip.get(i + 1).unwrap_or(&0));
                if len < 2 || i + len > end {
                    break;
                }
                if kind == OPT_MSS && len == 4 && u16::from_be_bytes([ip[i + 2], ip[i + 3]]) < mss {
                    ip[i + 2..i + 4].copy_from_slice(&mss.to_be_bytes());
                    changed = true;
                }
                i += len;
            }
        }
    }
    if changed {
        // Pseudo-header: addresses, protocol, TCP length.
        let segment = ip.len() - ihl;
        let (src, dst) = if version == 4 { (12..16, 16..20) } else { (8..24, 24..40) };
        let mut sum = sum16(&ip[src], 0);
        sum = sum16(&ip[dst], sum);
        sum += u32::from(TCP) + segment as u32;
        ip[ihl + 16..ihl + 18].copy_from_slice(&[0, 0]);
        let sum = fold(sum16(&ip[ihl..], sum));
        ip[ihl + 16..ihl + 18].copy_from_slice(&(!sum).to_be_bytes());
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        IpAddress, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    };

    /// An IPv4 TCP packet with `payload`, SYN with MSS 1460 if `syn`.
    fn tcp_packet(payload: &[u8], syn: bool) -> Vec<u8> {
        let (src, dst) = (Ipv4Address::new(10, 0, 0, 1), Ipv4Address::new(10, 0, 0, 2));
        let tcp = TcpRepr {
            src_port: 1,
            dst_port: 2,
            control: if syn { TcpControl::Syn } else { TcpControl::None },
            seq_number: TcpSeqNumber(7),
            ack_number: None,
            window_len: 1000,
            window_scale: None,
            max_seg_size: syn.then_some(1460),
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let mut buf = vec![0u8; ip.buffer_len() + tcp.buffer_len()];
        let caps = ChecksumCapabilities::default();
        let mut p = Ipv4Packet::new_unchecked(&mut buf);
        ip.emit(&mut p, &caps);
        tcp.emit(&mut TcpPacket::new_unchecked(p.payload_mut()), &src.into(), &dst.into(), &caps);
        buf
    }

    fn tcp_checksum_ok(packet: &[u8]) -> bool {
        let ip = Ipv4Packet::new_checked(packet).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        tcp.verify_checksum(&IpAddress::Ipv4(ip.src_addr()), &IpAddress::Ipv4(ip.dst_addr()))
    }

    #[test]
    fn completes_a_partial_checksum() {
        let mut p = tcp_packet(&[7u8; 999], false);
        assert!(tcp_checksum_ok(&p));
        // What the kernel sends with NEEDS_CSUM: the pseudo-header sum only.
        let pseudo = {
            let mut s = sum16(&p[12..20], 0);
            s += 6 + (p.len() - 20) as u32;
            fold(s)
        };
        p[36..38].copy_from_slice(&pseudo.to_be_bytes());
        assert!(!tcp_checksum_ok(&p));
        assert!(complete_checksum(&mut p, 20, 16));
        assert!(tcp_checksum_ok(&p));
        assert!(!complete_checksum(&mut p, 20, 9999));
    }

    #[test]
    fn big_segments_go_as_gso() {
        let small = tcp_packet(&[0; 1000], false);
        assert_eq!(for_transmit(&small, 0, 1500), [0; HEADER]);
        let big = tcp_packet(&[0; 30_000], false);
        let h = for_transmit(&big, 0, 1500);
        assert_eq!(h[1], GSO_TCPV4);
        assert_eq!(u16::from_le_bytes([h[2], h[3]]), 40);
        assert_eq!(u16::from_le_bytes([h[4], h[5]]), 1460);
        assert_eq!(for_transmit(&[0x45; 10], 0, 1500), [0; HEADER], "junk gets a plain header");
    }

    #[test]
    fn raises_the_mss_of_syns_only() {
        let mut syn = tcp_packet(&[], true);
        assert!(raise_syn_mss(&mut syn, 0, 65_000));
        assert!(tcp_checksum_ok(&syn));
        let tcp = TcpPacket::new_checked(&syn[20..]).unwrap();
        let repr = TcpRepr::parse(
            &tcp,
            &IpAddress::v4(10, 0, 0, 1),
            &IpAddress::v4(10, 0, 0, 2),
            &ChecksumCapabilities::default(),
        )
        .unwrap();
        assert_eq!(repr.max_seg_size, Some(65_000));
        let mut data = tcp_packet(&[1; 10], false);
        assert!(!raise_syn_mss(&mut data, 0, 65_000));
    }

    #[test]
    fn parses_needs_csum() {
        let mut h = [0u8; HEADER];
        assert_eq!(parse(&h), Received { csum: None });
        h[0] = F_NEEDS_CSUM;
        h[6..8].copy_from_slice(&34u16.to_le_bytes());
        h[8..10].copy_from_slice(&16u16.to_le_bytes());
        assert_eq!(parse(&h), Received { csum: Some((34, 16)) });
    }
}
