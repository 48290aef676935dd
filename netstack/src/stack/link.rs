//! The link layer under the stack's device wrapper: IP NICs hand over bare
//! IP packets, Ethernet NICs (tap) frames. This module finds the IP packet
//! in a frame and decides which frames never leave the stack (loopback),
//! including the ARP and neighbour-discovery exchanges smoltcp performs
//! when it talks to one of its own addresses over Ethernet.

use smoltcp::phy::Medium;
use smoltcp::wire::IpAddress;

/// Bytes of an Ethernet header (no VLAN tags: plebnet sends none).
pub(crate) const ETHERNET_HEADER: usize = 14;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_ARP: u16 = 0x0806;

/// What a received frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Payload {
    /// An IP packet starting at this offset of the frame.
    Ip(usize),
    /// ARP, for smoltcp to handle whole.
    Arp,
    /// Anything else (other ethertypes, runt frames).
    Unsupported,
}

/// The link layer of a stack's NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    /// Bare IP packets.
    Ip,
    /// Ethernet frames.
    Ethernet,
}

impl Link {
    pub(crate) fn of(medium: Medium) -> Link {
        match medium {
            Medium::Ethernet => Link::Ethernet,
            _ => Link::Ip,
        }
    }

    /// Where the IP packet is in `frame`.
    pub(crate) fn payload(self, frame: &[u8]) -> Payload {
        match self {
            Link::Ip => Payload::Ip(0),
            Link::Ethernet => {
                if frame.len() < ETHERNET_HEADER {
                    return Payload::Unsupported;
                }
                match u16::from_be_bytes([frame[12], frame[13]]) {
                    ETHERTYPE_IPV4 | ETHERTYPE_IPV6 => Payload::Ip(ETHERNET_HEADER),
                    ETHERTYPE_ARP => Payload::Arp,
                    _ => Payload::Unsupported,
                }
            }
        }
    }

    /// The address a frame is really for, when deciding loopback: the IP
    /// destination, the target of an ARP request or reply, or the target of
    /// an IPv6 neighbour solicitation (sent to a multicast address).
    pub(crate) fn loop_target(self, frame: &[u8]) -> Option<IpAddress> {
        match self.payload(frame) {
            Payload::Ip(off) => {
                let packet = &frame[off..];
                let dst = super::ingress::destination(packet)?;
                Some(neighbour_solicitation_target(packet).unwrap_or(dst))
            }
            // ARP for IPv4 over Ethernet: target protocol address at 24..28
            // of the ARP packet.
            Payload::Arp => {
                let arp = &frame[ETHERNET_HEADER..];
                (arp.len() >= 28).then(|| IpAddress::v4(arp[24], arp[25], arp[26], arp[27]))
            }
            Payload::Unsupported => None,
        }
    }
}

/// For an ICMPv6 neighbour solicitation (no extension headers), the
/// address it asks about.
fn neighbour_solicitation_target(packet: &[u8]) -> Option<IpAddress> {
    const ICMPV6: u8 = 58;
    const NEIGHBOUR_SOLICITATION: u8 = 135;
    if packet.first()? >> 4 != 6
        || packet.len() < 40 + 24
        || packet[6] != ICMPV6
        || packet[40] != NEIGHBOUR_SOLICITATION
    {
        return None;
    }
    let target: [u8; 16] = packet[48..64].try_into().ok()?;
    Some(IpAddress::Ipv6(target.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn finds_payloads() {
        assert_eq!(Link::Ip.payload(&[0x45]), Payload::Ip(0));
        assert_eq!(Link::Ethernet.payload(&frame(0x0800, &[0x45])), Payload::Ip(14));
        assert_eq!(Link::Ethernet.payload(&frame(0x86dd, &[0x60])), Payload::Ip(14));
        assert_eq!(Link::Ethernet.payload(&frame(0x0806, &[])), Payload::Arp);
        assert_eq!(Link::Ethernet.payload(&frame(0x88cc, &[])), Payload::Unsupported);
        assert_eq!(Link::Ethernet.payload(&[0; 13]), Payload::Unsupported);
    }

    #[test]
    fn arp_and_solicitation_targets() {
        let mut arp = vec![0u8; 28];
        arp[24..28].copy_from_slice(&[10, 61, 0, 2]);
        assert_eq!(Link::Ethernet.loop_target(&frame(0x0806, &arp)), Some(IpAddress::v4(10, 61, 0, 2)));

        let mut ns = vec![0u8; 64];
        ns[0] = 0x60;
        ns[6] = 58;
        ns[24..40].copy_from_slice(&[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 2]);
        ns[40] = 135;
        ns[48..64].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        let target = Link::Ethernet.loop_target(&frame(0x86dd, &ns)).unwrap();
        assert_eq!(target.to_string(), "fd00::2");
    }
}
