//! ICMP echo (ping) from a stack; answering pings is built in.

use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::icmp;
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr, IpAddress};

use super::{Wait, block_on};
use crate::Stack;
use crate::wake::SocketSignal;

impl Stack {
    /// Sends one ICMP echo request to `dst` and waits for the matching
    /// reply; returns the round-trip time.
    pub fn ping(&self, dst: IpAddr, timeout: Duration) -> io::Result<Duration> {
        let ident = (std::process::id() as u16) ^ (self.shared().counters.driver_iterations.get() as u16);
        let payload = *b"plebnet-ping-0123456789";
        let signal = SocketSignal::new();
        let handle = {
            let mut core = self.shared().lock();
            let src = match dst {
                IpAddr::V4(_) => core.iface.ipv4_addr().map(IpAddress::Ipv4),
                IpAddr::V6(_) => core.config.addresses.iter().find(|c| c.addr.is_ipv6()).map(|c| c.addr.into()),
            };
            let src = if dst.is_loopback() { Some(IpAddress::from(dst)) } else { src };
            let Some(src) = src else {
                return Err(io::Error::new(
                    io::ErrorKind::NetworkUnreachable,
                    format!("stack `{}` has no address of {dst}'s family", self.name()),
                ));
            };
            let buffer = || icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0u8; 1024]);
            let mut socket = icmp::Socket::new(buffer(), buffer());
            socket.bind(icmp::Endpoint::Ident(ident)).map_err(|e| io::Error::other(format!("ping: {e}")))?;
            let dst_ip = IpAddress::from(dst);
            let caps = ChecksumCapabilities::default();
            let result = match dst {
                IpAddr::V4(_) => {
                    let repr = Icmpv4Repr::EchoRequest { ident, seq_no: 1, data: &payload };
                    socket
                        .send(repr.buffer_len(), dst_ip)
                        .map(|buf| repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &caps))
                }
                IpAddr::V6(d) => {
                    let IpAddress::Ipv6(s) = src else { unreachable!("family checked above") };
                    let repr = Icmpv6Repr::EchoRequest { ident, seq_no: 1, data: &payload };
                    socket
                        .send(repr.buffer_len(), dst_ip)
                        .map(|buf| repr.emit(&s, &d, &mut Icmpv6Packet::new_unchecked(buf), &caps))
                }
            };
            result.map_err(|e| io::Error::other(format!("ping {dst}: {e}")))?;
            core.sockets.add_pinned(socket)
        };
        self.wake_driver();
        let started = Instant::now();
        let wait = Wait {
            nonblocking: false,
            deadline: Some(started + timeout),
            on_timeout: || io::Error::new(io::ErrorKind::TimedOut, "no echo reply before the timeout"),
        };
        let result = block_on(self, &signal.rx, wait, |core| {
            let socket = core.sockets.get_mut::<icmp::Socket>(handle);
            while let Ok((data, from)) = socket.recv() {
                if from == IpAddress::from(dst) && is_reply(data, ident, &payload) {
                    return Some(Ok(started.elapsed()));
                }
            }
            socket.register_recv_waker(&signal.rx_waker);
            None
        });
        self.shared().lock().sockets.remove(handle);
        result
    }
}

/// True if `data` is an echo reply (v4 type 0 or v6 type 129) with our
/// identifier and payload.
fn is_reply(data: &[u8], ident: u16, payload: &[u8]) -> bool {
    data.len() == 8 + payload.len()
        && (data[0] == 0 || data[0] == 129)
        && data[4..6] == ident.to_be_bytes()
        && &data[8..] == payload
}
