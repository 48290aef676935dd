//! The driver: a [`TunnelCore`] run over real TLS cell streams, with blocking streams for the application.
//!
//! ```text
//!   app threads ── TunnelStream::read / write ──┐
//!                                                ▼
//!   per leg: reader thread ─ handle_cell ─▶ Mutex<TunnelCore> ◀─ poll_transmit ─ writer thread (per leg)
//!                                                ▲
//!   timer thread ─ handle_timeout at poll_timeout┘      one Condvar: every change wakes whoever waits
//! ```
//!
//! The core is the only state; threads only move cells between it and the sockets, and never hold its lock
//! during socket I/O. When the core closes a leg (a protocol error, a silent leg, removal) the driver shuts
//! that leg's socket down, which ends its reader thread; its writer thread sees the leg closed and exits.
//!
//! Connecting: [`connect_multipath`] (or [`connect_multipath_via`], with a stack per path) opens a TLS cell
//! stream per path, offering ALPN [`MULTIPATH_ALPN`]. A server that does not select it does not speak the
//! protocol: the first path is returned as a plain TLS byte stream ([`MultipathConnection::SinglePath`]) and
//! one line is logged. Accepting: a [`TunnelListener`] takes legs from any number of TCP listeners (different
//! addresses, NICs) and joins them into tunnels by nonce with a [`Joiner`].

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::{Duration, Instant};

use plebnet::net::{TcpListenerApi, TcpStreamApi};
use rustls::ServerConfig;

use super::config::{LegOptions, TunnelConfig};
use super::core::{TunnelCore, TunnelEvent, TunnelStats};
use super::error::{ProtocolError, TunnelError};
use super::join::{JoinDecision, Joiner};
use super::leg::{LegId, LegState, LegStats};
use super::wire::NONCE_LEN;
use crate::cell::Cell;
use crate::tls::{CellReader, CellWriter, TlsCellStream};

pub use super::connect::{
    MultipathConnection, connect_multipath, connect_multipath_via, multipath_client_config, multipath_server_config,
    parse_multipath_address,
};

/// The ALPN protocol name that says "this TLS session is a multipath leg".
pub const MULTIPATH_ALPN: &[u8] = b"plebnet-mp/1";

/// Cells a writer thread takes from the core per lock.
const WRITE_BATCH: usize = 64;

type Abort = Box<dyn Fn() + Send>;

struct Inner {
    core: TunnelCore,
    /// Shuts each leg's socket down.
    aborts: HashMap<LegId, Abort>,
    /// Events kept for [`Tunnel::events`], bounded.
    log: VecDeque<TunnelEvent>,
    /// Each leg's socket addresses, in leg order.
    addresses: Vec<LegAddresses>,
}

/// Where one leg runs: its socket's local and peer addresses (`None` where the socket could not tell).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegAddresses {
    /// The leg.
    pub leg: LegId,
    /// This side's address.
    pub local: Option<SocketAddr>,
    /// The peer's address.
    pub peer: Option<SocketAddr>,
}

struct Shared {
    inner: Mutex<Inner>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Acts on the core's events (shutting closed legs' sockets) and wakes every waiter.
    fn settle(&self, inner: &mut Inner) {
        while let Some(event) = inner.core.poll_event() {
            match &event {
                TunnelEvent::LegUp { leg, rtt } => log::info!("multipath: {leg} up, handshake rtt {rtt:?}"),
                TunnelEvent::LegClosed { leg, error } => {
                    log::info!("multipath: {leg} closed: {error}");
                    if let Some(abort) = inner.aborts.remove(leg) {
                        abort();
                    }
                }
                TunnelEvent::Closed(error) => {
                    log::info!("multipath: tunnel closed: {error}");
                    for (_, abort) in inner.aborts.drain() {
                        abort();
                    }
                }
            }
            if inner.log.len() >= 256 {
                inner.log.pop_front();
            }
            inner.log.push_back(event);
        }
        self.changed.notify_all();
    }
}

/// A multipath tunnel: legs are added with [`add_leg`](Tunnel::add_leg), streams opened with
/// [`open_stream`](Tunnel::open_stream) or taken with [`accept_stream`](Tunnel::accept_stream).
///
/// Clones share the tunnel. It closes when the last clone is dropped (or on [`close`](Tunnel::close)), or
/// when its last leg dies.
#[derive(Clone)]
pub struct Tunnel {
    shared: Arc<Shared>,
    _owner: Arc<CloseOnDrop>,
}

struct CloseOnDrop(Arc<Shared>);

/// A [`Tunnel`] handle that does not keep it open (for threads that add legs in the background).
pub(super) struct WeakTunnel {
    shared: Weak<Shared>,
    owner: Weak<CloseOnDrop>,
}

impl WeakTunnel {
    /// The tunnel, if some [`Tunnel`] still holds it open.
    pub(super) fn upgrade(&self) -> Option<Tunnel> {
        Some(Tunnel { _owner: self.owner.upgrade()?, shared: self.shared.upgrade()? })
    }
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.core.close();
        self.0.settle(&mut inner);
    }
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.shared.lock();
        f.debug_struct("Tunnel").field("role", &inner.core.role()).field("live_legs", &inner.core.live_legs()).finish()
    }
}

impl Tunnel {
    fn from_core(core: TunnelCore) -> Tunnel {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner { core, aborts: HashMap::new(), log: VecDeque::new(), addresses: Vec::new() }),
            changed: Condvar::new(),
        });
        let timer = shared.clone();
        thread::Builder::new()
            .name("plebnet-mp-timer".into())
            .spawn(move || run_timer(&timer))
            .expect("spawn the tunnel's timer thread");
        Tunnel { _owner: Arc::new(CloseOnDrop(shared.clone())), shared }
    }

    /// A tunnel this side initiates, with a fresh random nonce.
    pub fn initiator(config: TunnelConfig) -> io::Result<Tunnel> {
        Ok(Tunnel::from_core(TunnelCore::initiator(config, random_nonce()?)))
    }

    /// Adds a leg over an established TLS cell stream (initiator side): LINK goes out at once; the leg
    /// carries data once linked.
    pub fn add_leg<S: TcpStreamApi>(&self, tls: TlsCellStream<S>, options: LegOptions) -> io::Result<LegId> {
        let sock = tls.get_ref().try_clone()?;
        let (reader, writer) = tls.split()?;
        let mut inner = self.shared.lock();
        let leg = inner.core.add_leg(options, Instant::now());
        self.start_leg(&mut inner, leg, reader, writer, sock);
        Ok(leg)
    }

    /// Responder side: attaches a leg whose LINK (`first`) was read already.
    fn attach_leg<S: TcpStreamApi>(
        &self,
        reader: CellReader<S>,
        writer: CellWriter<S>,
        sock: S,
        first: &Cell,
    ) -> Result<LegId, ProtocolError> {
        let mut inner = self.shared.lock();
        let leg = inner.core.accept_leg(Instant::now());
        let result = inner.core.handle_cell(leg, first, Instant::now());
        let _ = sock.set_read_timeout(None);
        self.start_leg(&mut inner, leg, reader, writer, sock);
        result.map(|()| leg)
    }

    fn start_leg<S: TcpStreamApi>(
        &self,
        inner: &mut Inner,
        leg: LegId,
        reader: CellReader<S>,
        writer: CellWriter<S>,
        sock: S,
    ) {
        inner.addresses.push(LegAddresses { leg, local: sock.local_addr().ok(), peer: sock.peer_addr().ok() });
        inner.aborts.insert(
            leg,
            Box::new(move || {
                let _ = sock.shutdown(Shutdown::Both);
            }),
        );
        let (r, w) = (self.shared.clone(), self.shared.clone());
        let spawned = thread::Builder::new()
            .name(format!("plebnet-mp-rx{}", leg.0))
            .spawn(move || run_reader(&r, leg, reader))
            .and_then(|_| {
                thread::Builder::new()
                    .name(format!("plebnet-mp-tx{}", leg.0))
                    .spawn(move || run_writer(&w, leg, writer))
            });
        if let Err(e) = spawned {
            inner.core.leg_failed(leg, &format!("cannot start the leg's threads: {e}"), Instant::now());
        }
        self.shared.settle(inner);
    }

    /// Removes a leg gracefully (make-before-break: add the new leg first).
    pub fn remove_leg(&self, leg: LegId) {
        let mut inner = self.shared.lock();
        inner.core.remove_leg(leg, Instant::now());
        self.shared.settle(&mut inner);
    }

    /// Kills a leg at once, as if its path had died: its unacknowledged data moves to the other legs.
    pub fn kill_leg(&self, leg: LegId) {
        let mut inner = self.shared.lock();
        inner.core.leg_failed(leg, "killed by the application", Instant::now());
        self.shared.settle(&mut inner);
    }

    /// Waits until at least `n` legs are up; fails if the tunnel closes or `timeout` passes.
    pub fn wait_legs(&self, n: usize, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut inner = self.shared.lock();
        loop {
            if inner.core.live_legs() >= n {
                return Ok(());
            }
            if let Some(e) = inner.core.closed() {
                return Err(e.clone().into());
            }
            inner = wait_until(&self.shared, inner, Some(deadline), "legs to come up")?;
        }
    }

    /// Opens a stream to `target` and waits for the peer to accept it.
    pub fn open_stream(&self, target: &str) -> io::Result<TunnelStream> {
        let mut inner = self.shared.lock();
        let id = inner.core.open_stream(target)?;
        self.shared.settle(&mut inner);
        let stream = TunnelStream { shared: self.shared.clone(), id, _tunnel: self.clone() };
        loop {
            if inner.core.stream_connected(id)? {
                return Ok(stream);
            }
            inner = wait_until(&self.shared, inner, None, "the stream to be accepted")?;
        }
    }

    /// Waits for a stream the peer opens; returns it with its target.
    pub fn accept_stream(&self) -> io::Result<(TunnelStream, String)> {
        let mut inner = self.shared.lock();
        loop {
            if let Some((id, target)) = inner.core.accept_stream() {
                self.shared.settle(&mut inner);
                return Ok((TunnelStream { shared: self.shared.clone(), id, _tunnel: self.clone() }, target));
            }
            if let Some(e) = inner.core.closed() {
                return Err(e.clone().into());
            }
            inner = wait_until(&self.shared, inner, None, "a stream")?;
        }
    }

    /// The tunnel's counters.
    pub fn stats(&self) -> TunnelStats {
        self.shared.lock().core.stats()
    }

    /// Every leg's counters.
    pub fn leg_stats(&self) -> Vec<LegStats> {
        self.shared.lock().core.leg_stats()
    }

    /// Every leg's socket addresses, closed legs included, in leg order.
    pub fn leg_addresses(&self) -> Vec<LegAddresses> {
        self.shared.lock().addresses.clone()
    }

    /// Why the tunnel is over, if it is.
    pub fn closed(&self) -> Option<TunnelError> {
        self.shared.lock().core.closed().cloned()
    }

    /// Waits until the peer has, in order, everything written to this tunnel's streams (their ENDs included;
    /// see [`TunnelCore::delivered`]), or until the tunnel closes. A side that is done with a tunnel calls
    /// this before dropping it, so closing loses nothing the peer was still to receive. Fails with
    /// `TimedOut` after `timeout`.
    pub fn wait_delivered(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut inner = self.shared.lock();
        while !inner.core.delivered() && inner.core.closed().is_none() {
            inner = wait_until(&self.shared, inner, Some(deadline), "the peer to acknowledge everything sent")?;
        }
        Ok(())
    }

    /// A handle that does not keep the tunnel open.
    pub(super) fn downgrade(&self) -> WeakTunnel {
        WeakTunnel { shared: Arc::downgrade(&self.shared), owner: Arc::downgrade(&self._owner) }
    }

    /// The last events (legs up and closed, with reasons), oldest first; at most 256 are kept.
    pub fn events(&self) -> Vec<TunnelEvent> {
        self.shared.lock().log.iter().cloned().collect()
    }

    /// Closes the tunnel and every leg.
    pub fn close(&self) {
        let mut inner = self.shared.lock();
        inner.core.close();
        self.shared.settle(&mut inner);
    }
}

fn wait_until<'a>(
    shared: &'a Shared,
    guard: MutexGuard<'a, Inner>,
    deadline: Option<Instant>,
    what: &str,
) -> io::Result<MutexGuard<'a, Inner>> {
    match deadline {
        None => Ok(shared.changed.wait(guard).unwrap_or_else(|p| p.into_inner())),
        Some(d) => {
            let now = Instant::now();
            if now >= d {
                return Err(io::Error::new(io::ErrorKind::TimedOut, format!("timed out waiting for {what}")));
            }
            Ok(shared.changed.wait_timeout(guard, d - now).unwrap_or_else(|p| p.into_inner()).0)
        }
    }
}

fn run_timer(shared: &Shared) {
    let mut inner = shared.lock();
    loop {
        if inner.core.closed().is_some() {
            return;
        }
        let now = Instant::now();
        match inner.core.poll_timeout() {
            Some(t) if t <= now => {
                inner.core.handle_timeout(now);
                shared.settle(&mut inner);
            }
            Some(t) => inner = shared.changed.wait_timeout(inner, t - now).unwrap_or_else(|p| p.into_inner()).0,
            None => inner = shared.changed.wait(inner).unwrap_or_else(|p| p.into_inner()),
        }
    }
}

fn run_reader<S: TcpStreamApi>(shared: &Shared, leg: LegId, mut reader: CellReader<S>) {
    loop {
        let result = reader.read_cell();
        let mut inner = shared.lock();
        if inner.core.leg_state(leg) == Some(LegState::Closed) {
            return;
        }
        match result {
            Ok(Some(cell)) => {
                if let Err(e) = inner.core.handle_cell(leg, &cell, Instant::now()) {
                    log::warn!("multipath: {leg}: {e}");
                }
            }
            Ok(None) => inner.core.leg_failed(leg, "the peer closed the leg", Instant::now()),
            Err(e) => inner.core.leg_failed(leg, &e.to_string(), Instant::now()),
        }
        shared.settle(&mut inner);
    }
}

fn run_writer<S: TcpStreamApi>(shared: &Shared, leg: LegId, mut writer: CellWriter<S>) {
    let mut batch: Vec<Cell> = Vec::with_capacity(WRITE_BATCH);
    loop {
        {
            let mut inner = shared.lock();
            loop {
                if inner.core.leg_state(leg) != Some(LegState::Closed) && inner.core.closed().is_none() {
                    let now = Instant::now();
                    while batch.len() < WRITE_BATCH {
                        match inner.core.poll_transmit(leg, now) {
                            Some(c) => batch.push(c),
                            None => break,
                        }
                    }
                    if !batch.is_empty() {
                        shared.settle(&mut inner);
                        break;
                    }
                    inner = shared.changed.wait(inner).unwrap_or_else(|p| p.into_inner());
                    continue;
                }
                drop(inner);
                let _ = writer.close();
                return;
            }
        }
        let result = batch.drain(..).try_for_each(|c| writer.write_cell(&c)).and_then(|()| writer.flush());
        if let Err(e) = result {
            let mut inner = shared.lock();
            inner.core.leg_failed(leg, &e.to_string(), Instant::now());
            shared.settle(&mut inner);
        }
    }
}

/// One stream of a tunnel, with blocking `Read` and `Write`. Dropping it finishes the sending direction and
/// discards what still arrives.
pub struct TunnelStream {
    shared: Arc<Shared>,
    id: u32,
    _tunnel: Tunnel,
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStream").field("id", &self.id).finish()
    }
}

impl TunnelStream {
    /// The stream's ID in its tunnel.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Ends the sending direction: the peer reads the end of the stream after the data already written.
    pub fn shutdown_write(&self) -> io::Result<()> {
        let mut inner = self.shared.lock();
        inner.core.stream_finish(self.id)?;
        self.shared.settle(&mut inner);
        Ok(())
    }

    /// Resets the stream in both directions.
    pub fn reset(&self) {
        let mut inner = self.shared.lock();
        inner.core.stream_reset(self.id);
        self.shared.settle(&mut inner);
    }

    /// Waits until everything written has been handed to a leg (not necessarily acknowledged).
    pub fn wait_sent(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut inner = self.shared.lock();
        while inner.core.stream_unsent_bytes(self.id) > 0 {
            inner = wait_until(&self.shared, inner, Some(deadline), "the stream's data to leave")?;
        }
        Ok(())
    }
}

impl Read for TunnelStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for TunnelStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reading and writing through a shared reference, so one thread can read while another writes.
impl Read for &TunnelStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut inner = self.shared.lock();
        loop {
            if let Some(n) = inner.core.stream_read(self.id, buf)? {
                self.shared.settle(&mut inner);
                return Ok(n);
            }
            inner = wait_until(&self.shared, inner, None, "stream data")?;
        }
    }
}

/// See the `Read for &TunnelStream` impl.
impl Write for &TunnelStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut inner = self.shared.lock();
        loop {
            let n = inner.core.stream_write(self.id, buf)?;
            if n > 0 {
                self.shared.settle(&mut inner);
                return Ok(n);
            }
            inner = wait_until(&self.shared, inner, None, "room in the stream's send buffer")?;
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        inner.core.stream_detach(self.id);
        self.shared.settle(&mut inner);
    }
}

fn random_nonce() -> io::Result<[u8; NONCE_LEN]> {
    let mut nonce = [0u8; NONCE_LEN];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut nonce)?;
    Ok(nonce)
}

// -------------------------------------------------------------------------------------------------------------
// Accepting

struct ListenerState {
    joiner: Joiner<Tunnel>,
    ready: VecDeque<Tunnel>,
    refused: u64,
    last_refusal: Option<String>,
}

struct ListenerShared {
    state: Mutex<ListenerState>,
    changed: Condvar,
    config: TunnelConfig,
}

impl ListenerShared {
    fn lock(&self) -> MutexGuard<'_, ListenerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The responder: takes legs from anywhere (several TCP listeners, on different addresses or NICs), reads
/// each one's LINK, and joins legs with the same nonce into one tunnel, whatever order they arrive in.
#[derive(Clone)]
pub struct TunnelListener {
    shared: Arc<ListenerShared>,
}

/// Counters of a [`TunnelListener`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// Legs refused (not LINK first, unknown or reused nonce, handshake errors).
    pub refused: u64,
    /// Why the last one was refused.
    pub last_refusal: Option<String>,
    /// Tunnels live now.
    pub tunnels: usize,
}

impl TunnelListener {
    /// A listener whose tunnels use `config`; a joining leg waits up to `config.handshake_timeout` for its
    /// tunnel's first leg.
    pub fn new(config: TunnelConfig) -> TunnelListener {
        let joiner = Joiner::new(config.handshake_timeout, 4096);
        TunnelListener {
            shared: Arc::new(ListenerShared {
                state: Mutex::new(ListenerState { joiner, ready: VecDeque::new(), refused: 0, last_refusal: None }),
                changed: Condvar::new(),
                config,
            }),
        }
    }

    /// Serves a TCP listener in a thread: each connection is TLS-accepted with `tls` (plus the multipath
    /// ALPN) and handed to [`add_leg`](Self::add_leg).
    pub fn serve<L: TcpListenerApi>(&self, listener: L, tls: &ServerConfig) -> io::Result<()> {
        let tls = multipath_server_config(tls);
        let this = self.clone();
        thread::Builder::new().name("plebnet-mp-listen".into()).spawn(move || {
            while let Ok((tcp, _)) = listener.accept() {
                let (this, tls) = (this.clone(), tls.clone());
                let _ = thread::Builder::new().name("plebnet-mp-leg".into()).spawn(move || {
                    let timeout = this.shared.config.handshake_timeout;
                    let _ = tcp.set_nodelay(true);
                    let _ = tcp.set_read_timeout(Some(timeout));
                    match TlsCellStream::accept(tcp, tls) {
                        Ok(s) => this.add_leg(s),
                        Err(e) => this.refuse(format!("TLS handshake failed: {e}")),
                    }
                });
            }
        })?;
        Ok(())
    }

    fn refuse(&self, why: String) {
        log::info!("multipath: leg refused: {why}");
        let mut state = self.shared.lock();
        state.refused += 1;
        state.last_refusal = Some(why);
    }

    /// Takes one leg: reads its LINK (waiting at most the handshake timeout) and joins it to its tunnel,
    /// creating the tunnel for a first leg. Runs in the calling thread until the leg is placed or refused.
    pub fn add_leg<S: TcpStreamApi>(&self, tls: TlsCellStream<S>) {
        if let Err(why) = self.place_leg(tls) {
            self.refuse(why);
        }
    }

    fn place_leg<S: TcpStreamApi>(&self, tls: TlsCellStream<S>) -> Result<(), String> {
        let timeout = self.shared.config.handshake_timeout;
        let sock = tls.get_ref().try_clone().map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        let (mut reader, writer) = tls.split().map_err(|e| e.to_string())?;
        let first = match reader.read_cell() {
            Ok(Some(cell)) => cell,
            Ok(None) => return Err("the leg closed before LINK".into()),
            Err(e) => {
                let _ = sock.shutdown(Shutdown::Both);
                return Err(format!("no LINK: {e}"));
            }
        };
        let link = match Joiner::<Tunnel>::parse_link(&first) {
            Ok(l) => l,
            Err(e) => {
                let _ = sock.shutdown(Shutdown::Both);
                return Err(e.to_string());
            }
        };
        let arrived = Instant::now();
        let mut state = self.shared.lock();
        let tunnel = loop {
            match state.joiner.decide(&link, arrived, Instant::now()) {
                JoinDecision::Create => {
                    let t = Tunnel::from_core(TunnelCore::responder(self.shared.config.clone(), link.nonce));
                    state.joiner.register(link.nonce, t.clone());
                    state.ready.push_back(t.clone());
                    self.shared.changed.notify_all();
                    break t;
                }
                JoinDecision::Join(t) => break t,
                JoinDecision::Wait => {
                    let left = (arrived + timeout).saturating_duration_since(Instant::now());
                    state = self.shared.changed.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
                }
                JoinDecision::Refuse(e) => {
                    let _ = sock.shutdown(Shutdown::Both);
                    return Err(e.to_string());
                }
            }
        };
        drop(state);
        let result = tunnel.attach_leg(reader, writer, sock, &first);
        // Forget tunnels whose legs are all gone, so their nonces are refused from now on.
        let mut state = self.shared.lock();
        let dead: Vec<[u8; NONCE_LEN]> = state
            .joiner
            .tunnels()
            .filter(|t| t.shared.lock().core.closed().is_some())
            .map(|t| t.shared.lock().core.nonce())
            .collect();
        for n in dead {
            state.joiner.retire(&n);
        }
        result.map(|_| ()).map_err(|e| e.to_string())
    }

    /// Waits for a new tunnel (its first leg linked or linking); later legs join it on their own.
    pub fn accept(&self) -> io::Result<Tunnel> {
        let mut state = self.shared.lock();
        loop {
            if let Some(t) = state.ready.pop_front() {
                return Ok(t);
            }
            state = self.shared.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Like [`accept`](Self::accept), giving up after `timeout`.
    pub fn accept_timeout(&self, timeout: Duration) -> io::Result<Tunnel> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if let Some(t) = state.ready.pop_front() {
                return Ok(t);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no tunnel arrived in time"));
            }
            state = self.shared.changed.wait_timeout(state, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// The listener's counters.
    pub fn stats(&self) -> ListenerStats {
        let state = self.shared.lock();
        ListenerStats {
            refused: state.refused,
            last_refusal: state.last_refusal.clone(),
            tunnels: state.joiner.tunnels().count(),
        }
    }
}
