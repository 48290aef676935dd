//! `TcpListener`: accepts connections, with a real backlog.
//!
//! smoltcp's listening socket turns into the connection it accepts, so a
//! listener here is a small pool of listening sockets that the driver keeps
//! topped up, plus a queue of connections that completed their handshake
//! (see `Core::maintain_listeners`). Up to `backlog` connections wait in that
//! queue; further SYNs are dropped and counted, never answered with RST.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use smoltcp::wire::{IpAddress, IpListenEndpoint};

use super::{SocketOptions, TcpStream, Wait, block_on};
use crate::stack::core::to_std;
use crate::wake::Event;
use crate::{Stack, TcpBuffers};

/// A TCP socket listening for connections, like [`std::net::TcpListener`].
#[derive(Debug)]
pub struct TcpListener {
    stack: Stack,
    id: u64,
    accept_event: Arc<Event>,
    options: SocketOptions,
    local: SocketAddr,
}

impl TcpListener {
    /// Listens on `addr` with the stack's default backlog. Port 0 picks a
    /// free port; an unspecified address listens on all of the stack's
    /// addresses (`0.0.0.0`: IPv4 only; `[::]`: both families).
    pub fn bind(stack: &Stack, addr: SocketAddr) -> io::Result<TcpListener> {
        let backlog = stack.shared().lock().config.default_backlog;
        Self::bind_with_backlog(stack, addr, backlog)
    }

    /// Listens on `addr` with room for `backlog` connections that completed
    /// their handshake but were not accepted yet.
    pub fn bind_with_backlog(stack: &Stack, addr: SocketAddr, backlog: usize) -> io::Result<TcpListener> {
        let buffers = stack.shared().lock().config.tcp_buffers();
        Self::bind_with(stack, addr, backlog, buffers)
    }

    /// Listens on `addr` with room for `backlog` connections, and gives the
    /// connections it accepts buffers of `buffers` instead of the stack's
    /// sizes. Sizes outside [`TcpBuffers::MIN`]..=[`TcpBuffers::MAX`] are
    /// refused with `InvalidInput`.
    pub fn bind_with(stack: &Stack, addr: SocketAddr, backlog: usize, buffers: TcpBuffers) -> io::Result<TcpListener> {
        let buffers = buffers.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut core = stack.shared().lock();
        let ip = addr.ip();
        let specific = (!ip.is_unspecified()).then(|| IpAddress::from(ip));
        if let Some(a) = specific {
            let own = ip.is_loopback() || core.config.addresses.iter().any(|c| c.addr == ip);
            if !own {
                return Err(io::Error::new(
                    io::ErrorKind::AddrNotAvailable,
                    format!("cannot listen on {addr}: {a} is not an address of stack `{}`", core.config.name),
                ));
            }
        }
        let port = core
            .ports
            .bind_tcp_listener(specific, addr.port())
            .map_err(|e| io::Error::new(io::ErrorKind::AddrInUse, format!("cannot listen on {addr}: {e}")))?;
        // 0.0.0.0 accepts only IPv4, as on Linux; [::] accepts both.
        let family = match ip {
            std::net::IpAddr::V4(v) if v.is_unspecified() => Some(true),
            _ if specific.is_some() => Some(ip.is_ipv4()),
            _ => None,
        };
        let endpoint = IpListenEndpoint { addr: specific, port };
        let (id, accept_event) = core.add_listener(endpoint, family, backlog, buffers);
        drop(core);
        stack.wake_driver();
        Ok(TcpListener {
            stack: stack.clone(),
            id,
            accept_event,
            options: SocketOptions::default(),
            local: SocketAddr::new(ip, port),
        })
    }

    /// Waits for a connection and returns it with the peer's address.
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let wait = Wait::io(self.options.nonblocking(), self.options.read_timeout());
        let stack = &self.stack;
        block_on(stack, &self.accept_event, wait, |core| {
            if !core.has_listener(self.id) {
                return Some(Err(io::Error::new(io::ErrorKind::NotConnected, "the listener was closed")));
            }
            let (handle, tuple) = core.take_accepted(self.id)?;
            let local = to_std(tuple.0, tuple.1);
            let peer = to_std(tuple.2, tuple.3);
            let stream = TcpStream::from_parts(stack.clone(), handle, None, Some(tuple), local, peer);
            Some(Ok((stream, peer)))
        })
    }

    /// An endless iterator over accepted connections.
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { listener: self }
    }

    /// The address the listener is bound to (with the chosen port).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    /// How long a blocking `accept` waits (`None`: forever); expiry
    /// reports `WouldBlock`, like `SO_RCVTIMEO` on a Linux listener.
    pub fn set_accept_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.options.set_read_timeout(timeout)
    }

    /// Non-blocking mode: `accept` returns `WouldBlock` when nobody waits.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.options.set_nonblocking(nonblocking);
        Ok(())
    }

    /// Stops listening now, from any thread: the port is free when this
    /// returns, connections not accepted yet are reset, and `accept` (also
    /// one blocked in another thread) fails with `NotConnected`. Dropping
    /// the listener does the same.
    pub fn close(&self) {
        let mut core = self.stack.shared().lock();
        core.close_listener(self.id);
        self.accept_event.notify();
        drop(core);
        self.stack.wake_driver();
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        self.close();
    }
}

/// Iterator returned by [`TcpListener::incoming`].
#[derive(Debug)]
pub struct Incoming<'a> {
    listener: &'a TcpListener,
}

impl Iterator for Incoming<'_> {
    type Item = io::Result<TcpStream>;
    fn next(&mut self) -> Option<Self::Item> {
        Some(self.listener.accept().map(|(s, _)| s))
    }
}
