//! Multipath services of a node: a `forward` whose `connect` is `mp@A,B:PORT`, and a `reverse` whose
//! `listen` is.
//!
//! The multipath protocol lives in plebnet-transport, which depends on this crate, so the node cannot call
//! it directly. It takes it instead as a [`MultipathTransport`] trait object in
//! [`NodeOptions::multipath`](super::NodeOptions::multipath); the `plebnet` command fills that with
//! `plebnet_transport::multipath::NodeMultipath`. The node keeps what is node business: which interface
//! each leg goes through, the kernel side, the counters, and the splicing.
//!
//! ```text
//!   kernel client ─▶ forward listener ─▶ MultipathDialer::connect ─▶ OverlayStream ═ legs, one per address,
//!                    (kernel)             (a tunnel, or one TLS path)                each through the stack
//!                                                                                    of its interface
//!   kernel server ◀─ splice_overlay ◀─ OverlayStream ◀─ MultipathAcceptor::accept ◀═ legs on several
//!                                                       (legs joined into tunnels)    addresses / interfaces
//! ```

use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use plebnet_netstack::{Stack, TcpListener};
use serde::Serialize;

use super::services::{ServiceCounters, serve_tcp, spawn_named};
use super::splice::splice_overlay;
use crate::config::{MultipathScheduler, PeerPin, TlsIdentity};
use crate::net::{NetStack, OsStack};

/// What a node needs from a multipath protocol implementation.
pub trait MultipathTransport: Send + Sync + fmt::Debug {
    /// Prepares a multipath forward to a responder at `paths`: each of its overlay addresses with the stack
    /// of the interface that reaches it, one leg each.
    fn dialer(
        &self,
        paths: Vec<(Stack, SocketAddr)>,
        pin: PeerPin,
        scheduler: MultipathScheduler,
    ) -> io::Result<Arc<dyn MultipathDialer>>;

    /// Starts a responder presenting `identity` that takes legs from `listeners` (one per overlay address,
    /// each on its interface's stack) and joins them into tunnels.
    fn responder(&self, listeners: Vec<TcpListener>, identity: &TlsIdentity) -> io::Result<Arc<dyn MultipathAcceptor>>;
}

/// A running multipath forward or responder, for the node's stats.
pub trait MultipathService: Send + Sync + fmt::Debug {
    /// Its counters now (live tunnels included).
    fn stats(&self) -> MultipathStats;
}

/// The connecting side of a multipath forward.
pub trait MultipathDialer: MultipathService {
    /// Makes one connection to the responder: a tunnel with one stream, or a single TLS path if the
    /// responder does not speak the multipath protocol (logged once, when that starts).
    fn connect(&self) -> io::Result<Box<dyn OverlayStream>>;
}

/// The accepting side of a multipath responder.
pub trait MultipathAcceptor: MultipathService {
    /// Waits for the next stream of any tunnel. An error means the responder stopped.
    fn accept(&self) -> io::Result<Box<dyn OverlayStream>>;
}

/// A connection over the overlay that the node splices with a kernel connection: one thread reads while
/// another writes.
pub trait OverlayStream: Send + Sync {
    /// Reads what arrived, blocking; 0 at the end of the peer's data.
    fn read(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes some of `buf`, blocking until at least one byte is taken.
    fn write(&self, buf: &[u8]) -> io::Result<usize>;
    /// Ends the sending direction; the peer reads the end after the data written.
    fn shutdown_write(&self) -> io::Result<()>;
    /// Resets both directions, so that neither end waits forever.
    fn abort(&self);
    /// Called once both directions have ended: waits (bounded) until the peer has everything sent, so that
    /// dropping the stream afterwards loses nothing.
    fn finish(&self) -> io::Result<()>;
}

/// Counters of a multipath forward or responder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MultipathStats {
    /// Connections carried over a multipath tunnel (forward), or tunnels accepted (responder).
    pub tunnels: u64,
    /// Forward: connections that fell back to a single TLS path because the peer does not speak the
    /// multipath protocol.
    pub single_path: u64,
    /// Tunnels open now.
    pub live_tunnels: u64,
    /// Responder: legs refused (not multipath, unknown nonce, failed handshake).
    pub legs_refused: u64,
    /// Per overlay address: the legs that went there and what they carried.
    pub paths: Vec<PathStats>,
}

/// One overlay address of a multipath service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PathStats {
    /// The address: the responder's, on both sides.
    pub path: String,
    /// Legs opened over it.
    pub legs: u64,
    /// Stream bytes sent on those legs.
    pub bytes_sent: u64,
    /// Stream bytes received on them.
    pub bytes_received: u64,
}

/// The error when a configuration asks for multipath and nobody supplied it.
pub(super) fn unsupported() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "multipath services need plebnet-transport's multipath (NodeOptions::multipath); this program started \
         the node without it, `plebnet node` has it",
    )
}

/// A multipath forward: a kernel TCP listener at `listen`; each connection is carried by a connection
/// `dialer` makes.
pub(super) fn forward(
    listen: SocketAddr,
    dialer: Arc<dyn MultipathDialer>,
    counters: Arc<ServiceCounters>,
) -> io::Result<SocketAddr> {
    let listener = OsStack.tcp_listen(listen)?;
    let bound = listener.local_addr()?;
    serve_tcp("mp-forward", listener, counters, move |inbound| {
        let overlay = match dialer.connect() {
            Ok(o) => o,
            Err(e) => {
                // The far side is unreachable: reset the caller rather than pretending the connection worked.
                let _ = inbound.shutdown(Shutdown::Both);
                return Err(e);
            }
        };
        let _ = inbound.set_nodelay(true);
        let done = splice_overlay(inbound, overlay)?;
        Ok(done.a_to_b + done.b_to_a)
    })?;
    Ok(bound)
}

/// A multipath responder's other half: each stream `acceptor` takes is carried to the kernel address
/// `connect`.
pub(super) fn reverse(
    acceptor: Arc<dyn MultipathAcceptor>,
    connect: SocketAddr,
    counters: Arc<ServiceCounters>,
) -> io::Result<()> {
    spawn_named("plebnet-mp-reverse".into(), move || {
        loop {
            let overlay = match acceptor.accept() {
                Ok(s) => s,
                Err(e) => {
                    log::warn!("multipath reverse to {connect}: stopped: {e}");
                    return;
                }
            };
            counters.accepted.fetch_add(1, Ordering::Relaxed);
            let counters = counters.clone();
            let spawned = spawn_named("plebnet-mp-reverse".into(), move || {
                let carried = match OsStack.tcp_connect(connect) {
                    Ok(outbound) => {
                        let _ = outbound.set_nodelay(true);
                        splice_overlay(outbound, overlay)
                    }
                    Err(e) => {
                        // The peer must see an error, never a clean end of a connection that never was.
                        overlay.abort();
                        Err(e)
                    }
                };
                match carried {
                    Ok(done) => counters.bytes.fetch_add(done.a_to_b + done.b_to_a, Ordering::Relaxed),
                    Err(e) => {
                        log::debug!("multipath reverse to {connect}: {e}");
                        counters.failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            });
            if let Err(e) = spawned {
                log::warn!("cannot start a connection thread: {e}");
            }
        }
    })
}
