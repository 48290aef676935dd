//! Multipath for a plebnet node: [`NodeMultipath`] implements the node's [`MultipathTransport`] with
//! [`connect_multipath_via`] (forwards) and a [`TunnelListener`] (responders).
//!
//! ```text
//!   forward, per kernel connection:  connect_multipath_via(paths, each through its interface's stack)
//!        ├─ Tunnel ─▶ one stream ─▶ TunnelOverlay   (closed after the peer has everything: wait_delivered)
//!        └─ SinglePath (the peer lacks the ALPN) ─▶ TLS byte halves ─▶ SinglePathOverlay, logged once
//!   responder:  TunnelListener on every address ─▶ tunnels ─▶ each stream ─▶ TunnelOverlay ─▶ the node
//! ```
//!
//! Each kernel connection gets its own tunnel: connections are isolated from each other, the decision to
//! fall back is taken per connection (a peer that learns the protocol is used at once), and a tunnel's
//! lifetime is its connection's.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread;
use std::time::Duration;

use plebnet::config::{MultipathScheduler, PeerPin, TlsIdentity};
use plebnet::net::{Stack, TcpListener, TcpStream};
use plebnet::node::{
    MultipathAcceptor, MultipathDialer, MultipathService, MultipathStats, MultipathTransport, OverlayStream, PathStats,
};
use rustls::ClientConfig;

use super::config::{Scheduler, TunnelConfig};
use super::driver::{MULTIPATH_ALPN, MultipathConnection, Tunnel, TunnelListener, TunnelStream, connect_multipath_via};
use crate::tls::{Pin, TlsByteReader, TlsByteWriter, client_config_pinned, server_config};

/// How long a finished connection waits for the peer to acknowledge the last of its data.
const FINISH_TIMEOUT: Duration = Duration::from_secs(30);

/// The multipath protocol for a [`plebnet::node::Node`]: give `Arc::new(NodeMultipath::default())` as
/// [`NodeOptions::multipath`](plebnet::node::NodeOptions::multipath).
#[derive(Debug, Clone, Default)]
pub struct NodeMultipath {
    /// The tunnels' settings; a forward's `scheduler` key replaces `scheduler`.
    pub config: TunnelConfig,
}

impl From<PeerPin> for Pin {
    fn from(pin: PeerPin) -> Pin {
        match pin {
            PeerPin::SpkiSha256(d) => Pin::SpkiSha256(d),
            PeerPin::CertSha256(d) => Pin::CertSha256(d),
        }
    }
}

impl From<Pin> for PeerPin {
    fn from(pin: Pin) -> PeerPin {
        match pin {
            Pin::SpkiSha256(d) => PeerPin::SpkiSha256(d),
            Pin::CertSha256(d) => PeerPin::CertSha256(d),
        }
    }
}

impl From<MultipathScheduler> for Scheduler {
    fn from(s: MultipathScheduler) -> Scheduler {
        match s {
            MultipathScheduler::MinRtt => Scheduler::MinRtt,
            MultipathScheduler::LowRtt => Scheduler::LowRtt,
            MultipathScheduler::Wrr => Scheduler::WeightedRoundRobin,
            MultipathScheduler::Redundant => Scheduler::Redundant,
        }
    }
}

impl MultipathTransport for NodeMultipath {
    fn dialer(
        &self,
        paths: Vec<(Stack, SocketAddr)>,
        pin: PeerPin,
        scheduler: MultipathScheduler,
    ) -> io::Result<Arc<dyn MultipathDialer>> {
        let Some((_, first)) = paths.first() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a multipath forward needs at least one path"));
        };
        // The pinned verifier ignores the name; an IP address sends no SNI.
        let server_name = first.ip().to_string();
        let registry = Registry::new(Side::Forward, paths.iter().map(|(_, a)| *a));
        Ok(Arc::new(Dialer {
            config: TunnelConfig { scheduler: scheduler.into(), ..self.config.clone() },
            tls: client_config_pinned(pin.into()),
            server_name,
            paths,
            registry: Arc::new(registry),
            single_path: AtomicBool::new(false),
        }))
    }

    fn responder(&self, listeners: Vec<TcpListener>, identity: &TlsIdentity) -> io::Result<Arc<dyn MultipathAcceptor>> {
        let tls = server_config(identity.certificate.clone(), identity.private_key.clone_key()).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("the [tls] certificate and private key: {e}"))
        })?;
        let addresses = listeners.iter().map(|l| l.local_addr()).collect::<io::Result<Vec<_>>>()?;
        let listener = TunnelListener::new(self.config.clone());
        for l in listeners {
            listener.serve(l, &tls)?;
        }
        let registry = Arc::new(Registry::new(Side::Responder, addresses));
        let (tx, rx) = mpsc::channel();
        let (l, r) = (listener.clone(), registry.clone());
        thread::Builder::new().name("plebnet-mp-accept".into()).spawn(move || accept_tunnels(&l, &r, &tx))?;
        Ok(Arc::new(Acceptor { rx: Mutex::new(rx), registry, listener }))
    }
}

/// Responder: takes each tunnel and hands every stream of it to the node.
fn accept_tunnels(listener: &TunnelListener, registry: &Arc<Registry>, tx: &mpsc::Sender<Box<dyn OverlayStream>>) {
    while let Ok(tunnel) = listener.accept() {
        let (registry, tx) = (registry.clone(), tx.clone());
        let spawned = thread::Builder::new().name("plebnet-mp-streams".into()).spawn(move || {
            let id = registry.open(tunnel.clone());
            while let Ok((stream, _target)) = tunnel.accept_stream() {
                let overlay = TunnelOverlay { _guard: None, stream, tunnel: tunnel.clone() };
                if tx.send(Box::new(overlay)).is_err() {
                    break;
                }
            }
            registry.close(id);
        });
        if let Err(e) = spawned {
            log::warn!("multipath: cannot start a tunnel's thread: {e}");
        }
    }
}

struct Dialer {
    config: TunnelConfig,
    tls: ClientConfig,
    server_name: String,
    paths: Vec<(Stack, SocketAddr)>,
    registry: Arc<Registry>,
    /// The last connection fell back to a single path (so the fallback is logged once, when it starts).
    single_path: AtomicBool,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let paths: Vec<SocketAddr> = self.paths.iter().map(|(_, a)| *a).collect();
        f.debug_struct("Dialer").field("paths", &paths).field("scheduler", &self.config.scheduler).finish()
    }
}

impl MultipathService for Dialer {
    fn stats(&self) -> MultipathStats {
        self.registry.stats()
    }
}

impl MultipathDialer for Dialer {
    fn connect(&self) -> io::Result<Box<dyn OverlayStream>> {
        match connect_multipath_via(&self.paths, &self.server_name, &self.tls, self.config.clone())? {
            MultipathConnection::Tunnel(tunnel) => {
                if self.single_path.swap(false, Ordering::Relaxed) {
                    log::warn!("multipath: the peer speaks {} again; connections use every path", alpn());
                }
                let guard = RegistryGuard { registry: self.registry.clone(), id: self.registry.open(tunnel.clone()) };
                let stream = tunnel.open_stream("forward")?;
                Ok(Box::new(TunnelOverlay { _guard: Some(guard), stream, tunnel }))
            }
            MultipathConnection::SinglePath(tls) => {
                self.registry.lock().single_path += 1;
                let sock = tls.get_ref().try_clone()?;
                if !self.single_path.swap(true, Ordering::Relaxed) {
                    let peer = sock.peer_addr().map_or_else(|_| "the peer".to_string(), |a| a.to_string());
                    log::warn!(
                        "multipath: {peer} does not speak {}; connections of this forward use a single path",
                        alpn()
                    );
                }
                let (reader, writer) = tls.split()?;
                Ok(Box::new(SinglePathOverlay { reader: Mutex::new(reader), writer: Mutex::new(writer), sock }))
            }
        }
    }
}

fn alpn() -> String {
    String::from_utf8_lossy(MULTIPATH_ALPN).into_owned()
}

struct Acceptor {
    rx: Mutex<mpsc::Receiver<Box<dyn OverlayStream>>>,
    registry: Arc<Registry>,
    listener: TunnelListener,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor").field("paths", &self.registry.addresses).finish()
    }
}

impl MultipathService for Acceptor {
    fn stats(&self) -> MultipathStats {
        MultipathStats { legs_refused: self.listener.stats().refused, ..self.registry.stats() }
    }
}

impl MultipathAcceptor for Acceptor {
    fn accept(&self) -> io::Result<Box<dyn OverlayStream>> {
        let rx = self.rx.lock().unwrap_or_else(|p| p.into_inner());
        rx.recv().map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the multipath listener stopped"))
    }
}

/// One tunnel stream as the node's overlay stream. Its tunnel closes when the last handle goes.
struct TunnelOverlay {
    /// Forward: takes the tunnel off the registry first, so that the tunnel closes with this.
    _guard: Option<RegistryGuard>,
    stream: TunnelStream,
    tunnel: Tunnel,
}

impl OverlayStream for TunnelOverlay {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.stream).read(buf)
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.stream).write(buf)
    }

    fn shutdown_write(&self) -> io::Result<()> {
        self.stream.shutdown_write()
    }

    fn abort(&self) {
        self.stream.reset();
    }

    fn finish(&self) -> io::Result<()> {
        self.tunnel.wait_delivered(FINISH_TIMEOUT)
    }
}

/// A TLS session with a peer that does not speak multipath, as the node's overlay stream.
struct SinglePathOverlay {
    reader: Mutex<TlsByteReader<TcpStream>>,
    writer: Mutex<TlsByteWriter<TcpStream>>,
    sock: TcpStream,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl OverlayStream for SinglePathOverlay {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        locked(&self.reader).read(buf)
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        locked(&self.writer).write(buf)
    }

    fn shutdown_write(&self) -> io::Result<()> {
        locked(&self.writer).shutdown_write()
    }

    fn abort(&self) {
        let _ = self.sock.shutdown(Shutdown::Both);
    }

    fn finish(&self) -> io::Result<()> {
        // TCP delivers what the socket took; closing it is graceful.
        Ok(())
    }
}

/// Which address of a leg names its path: the peer's on the forward, our own on the responder (both are
/// the responder's overlay addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Forward,
    Responder,
}

/// A service's tunnels, live and finished, for its stats.
struct Registry {
    side: Side,
    addresses: Vec<SocketAddr>,
    inner: Mutex<RegistryInner>,
}

#[derive(Default)]
struct RegistryInner {
    tunnels: u64,
    single_path: u64,
    next_id: u64,
    live: Vec<(u64, Tunnel)>,
    /// What finished tunnels carried, per path.
    done: Vec<PathStats>,
}

/// Takes a tunnel off its registry when dropped.
struct RegistryGuard {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for RegistryGuard {
    fn drop(&mut self) {
        self.registry.close(self.id);
    }
}

impl Registry {
    fn new(side: Side, addresses: impl IntoIterator<Item = SocketAddr>) -> Registry {
        let addresses: Vec<SocketAddr> = addresses.into_iter().collect();
        let done = addresses.iter().map(|a| PathStats { path: a.to_string(), ..PathStats::default() }).collect();
        Registry { side, addresses, inner: Mutex::new(RegistryInner { done, ..RegistryInner::default() }) }
    }

    fn lock(&self) -> MutexGuard<'_, RegistryInner> {
        locked(&self.inner)
    }

    /// Counts and keeps a new tunnel; returns its ID for [`close`](Self::close).
    fn open(&self, tunnel: Tunnel) -> u64 {
        let mut inner = self.lock();
        inner.tunnels += 1;
        inner.next_id += 1;
        let id = inner.next_id;
        inner.live.push((id, tunnel));
        id
    }

    /// Folds a finished tunnel's legs into the totals and lets go of it.
    fn close(&self, id: u64) {
        let mut inner = self.lock();
        if let Some(i) = inner.live.iter().position(|(t, _)| *t == id) {
            let (_, tunnel) = inner.live.swap_remove(i);
            self.fold(&tunnel, &mut inner.done);
        }
    }

    /// Adds what `tunnel`'s legs carried to `paths`.
    fn fold(&self, tunnel: &Tunnel, paths: &mut Vec<PathStats>) {
        let legs = tunnel.leg_stats();
        for a in tunnel.leg_addresses() {
            let addr = if self.side == Side::Forward { a.peer } else { a.local };
            let label = addr.map_or_else(|| "unknown".to_string(), |a| a.to_string());
            let i = match paths.iter().position(|p| p.path == label) {
                Some(i) => i,
                None => {
                    paths.push(PathStats { path: label, ..PathStats::default() });
                    paths.len() - 1
                }
            };
            let entry = &mut paths[i];
            entry.legs += 1;
            if let Some(l) = legs.get(a.leg.0 as usize) {
                entry.bytes_sent += l.data_bytes_sent;
                entry.bytes_received += l.data_bytes_received;
            }
        }
    }

    fn stats(&self) -> MultipathStats {
        let inner = self.lock();
        let mut paths = inner.done.clone();
        for (_, tunnel) in &inner.live {
            self.fold(tunnel, &mut paths);
        }
        MultipathStats {
            tunnels: inner.tunnels,
            single_path: inner.single_path,
            live_tunnels: inner.live.len() as u64,
            legs_refused: 0,
            paths,
        }
    }
}
