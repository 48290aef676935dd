//! `UdpSocket`: datagrams with std::net semantics.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::stack::shards::Handle;
use smoltcp::socket::udp;
use smoltcp::wire::{IpAddress, IpEndpoint, IpListenEndpoint};

use super::{SocketOptions, Wait, block_on};
use crate::Stack;
use crate::stack::core::{Core, to_std};
use crate::wake::SocketSignal;

/// Largest UDP payload IPv4 can carry.
const MAX_PAYLOAD: usize = 65_507;

/// A UDP socket on a plebnet stack, like [`std::net::UdpSocket`].
#[derive(Debug)]
pub struct UdpSocket {
    stack: Stack,
    handle: Handle,
    signal: Arc<SocketSignal>,
    options: SocketOptions,
    bound: Option<IpAddress>,
    local: SocketAddr,
    peer: Mutex<Option<SocketAddr>>,
}

impl UdpSocket {
    /// Binds to `addr`; port 0 picks a free port.
    pub fn bind(stack: &Stack, addr: SocketAddr) -> io::Result<UdpSocket> {
        let mut core = stack.shared().lock();
        let ip = addr.ip();
        let bound = (!ip.is_unspecified()).then(|| IpAddress::from(ip));
        if bound.is_some() && !ip.is_loopback() && !core.config.addresses.iter().any(|c| c.addr == ip) {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("cannot bind {addr}: {ip} is not an address of stack `{}`", core.config.name),
            ));
        }
        let port = core
            .ports
            .bind_udp(bound, addr.port())
            .map_err(|e| io::Error::new(io::ErrorKind::AddrInUse, format!("cannot bind {addr}: {e}")))?;
        let cfg = &core.config;
        let buffer =
            || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; cfg.udp_packets], vec![0u8; cfg.udp_buffer]);
        let mut socket = udp::Socket::new(buffer(), buffer());
        if let Err(e) = socket.bind(IpListenEndpoint { addr: bound, port }) {
            core.ports.release_udp(bound, port);
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("cannot bind {addr}: {e}")));
        }
        let handle = core.sockets.add_pinned(socket);
        Ok(UdpSocket {
            stack: stack.clone(),
            handle,
            signal: SocketSignal::new(),
            options: SocketOptions::default(),
            bound,
            local: SocketAddr::new(ip, port),
            peer: Mutex::new(None),
        })
    }

    /// Sends one datagram to `addr`; returns the payload length.
    pub fn send_to(&self, buf: &[u8], addr: SocketAddr) -> io::Result<usize> {
        if buf.len() > MAX_PAYLOAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a {}-byte datagram exceeds UDP's {MAX_PAYLOAD}-byte limit", buf.len()),
            ));
        }
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("cannot send to {addr}")));
        }
        let wait = Wait::io(self.options.nonblocking(), self.options.write_timeout());
        let remote = IpEndpoint::new(addr.ip().into(), addr.port());
        block_on(&self.stack, &self.signal.tx, wait, |core| {
            if let Err(e) = check_reachable(core, addr.ip()) {
                return Some(Err(e));
            }
            let socket = core.sockets.get_mut::<udp::Socket>(self.handle);
            if buf.len() > socket.payload_send_capacity() {
                return Some(Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "a {}-byte datagram is larger than the socket's {}-byte send buffer",
                        buf.len(),
                        socket.payload_send_capacity()
                    ),
                )));
            }
            match socket.send_slice(buf, remote) {
                Ok(()) => Some(Ok(buf.len())),
                Err(udp::SendError::BufferFull) => {
                    socket.register_send_waker(&self.signal.tx_waker);
                    None
                }
                Err(udp::SendError::Unaddressable) => Some(Err(io::Error::new(
                    io::ErrorKind::NetworkUnreachable,
                    format!("cannot send to {addr}: unaddressable"),
                ))),
            }
        })
    }

    /// Receives one datagram; a datagram longer than `buf` is truncated,
    /// the rest discarded, as with std.
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let peer = *self.peer.lock().unwrap_or_else(|e| e.into_inner());
        let wait = Wait::io(self.options.nonblocking(), self.options.read_timeout());
        block_on(&self.stack, &self.signal.rx, wait, |core| {
            let socket = core.sockets.get_mut::<udp::Socket>(self.handle);
            loop {
                match socket.recv() {
                    Ok((data, meta)) => {
                        let from = to_std(meta.endpoint.addr, meta.endpoint.port);
                        if peer.is_some_and(|p| p != from) {
                            continue; // connected sockets only hear their peer
                        }
                        let n = data.len().min(buf.len());
                        buf[..n].copy_from_slice(&data[..n]);
                        return Some(Ok((n, from)));
                    }
                    Err(_) => {
                        socket.register_recv_waker(&self.signal.rx_waker);
                        return None;
                    }
                }
            }
        })
    }

    /// Sets the default destination and only accepts datagrams from it.
    pub fn connect(&self, addr: SocketAddr) -> io::Result<()> {
        check_reachable(&self.stack.shared().lock(), addr.ip())?;
        *self.peer.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
        Ok(())
    }

    /// Sends to the connected peer.
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        let peer = self.peer_addr()?;
        self.send_to(buf, peer)
    }

    /// Receives from the connected peer.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.peer_addr()?;
        self.recv_from(buf).map(|(n, _)| n)
    }

    /// The connected peer.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.peer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "the UDP socket is not connected"))
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    /// Non-blocking mode.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.options.set_nonblocking(nonblocking);
        Ok(())
    }

    /// Read timeout; expiry reports `WouldBlock`.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.options.set_read_timeout(timeout)
    }

    /// Write timeout; expiry reports `WouldBlock`.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.options.set_write_timeout(timeout)
    }
}

fn check_reachable(core: &Core, ip: IpAddr) -> io::Result<()> {
    if !ip.is_loopback() && !core.has_family(ip) {
        let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
        return Err(io::Error::new(
            io::ErrorKind::NetworkUnreachable,
            format!("cannot reach {ip}: stack `{}` has no {family} address", core.config.name),
        ));
    }
    if !core.can_reach(ip) {
        return Err(io::Error::new(
            io::ErrorKind::NetworkUnreachable,
            format!("no route to {ip} on stack `{}`", core.config.name),
        ));
    }
    Ok(())
}

impl Drop for UdpSocket {
    fn drop(&mut self) {
        let mut core = self.stack.shared().lock();
        core.sockets.remove(self.handle);
        core.ports.release_udp(self.bound, self.local.port());
    }
}
