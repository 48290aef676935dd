//! The state shared by a stack's driver and its sockets, behind one mutex:
//! the smoltcp interface and socket set, ports, listeners and orphans.
//!
//! Application threads lock it briefly to move bytes in or out of a socket
//! buffer; the driver locks it to poll smoltcp. Nobody blocks while holding it.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use smoltcp::iface::Interface;
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{IpAddress, IpListenEndpoint, TcpSeqNumber};

use super::config::{StackConfig, TcpBuffers};
use super::device::{Route, StackDevice, SynGuard, Verdict};
use super::fin_keeper::{FinKeeper, SocketCheck};
use super::ingress::{FourTuple, TcpMeta};
use super::limits::{ConnTable, LimitHit, SharedConns};
use super::orphans::{Fate, Orphan, Orphans};
use super::ports::PortTable;
use super::shards::{Handle, Sockets};
use super::tables::{FastMap, FastSet};
use super::tidy::Shrink;
use crate::nic::Nic;
use crate::stats::StackCounters;
use crate::wake::Event;

/// A listener's share of the core.
#[derive(Debug)]
pub(crate) struct ListenerState {
    pub(crate) endpoint: IpListenEndpoint,
    /// Which address family the listener accepts (`None`: both).
    pub(crate) family: Option<bool>,
    pub(crate) backlog: usize,
    /// The buffer sizes of the connections it accepts.
    pub(crate) buffers: TcpBuffers,
    /// Sockets in LISTEN, waiting for a SYN.
    pub(crate) pool: Vec<Handle>,
    /// Sockets that left LISTEN and are not yet accepted, in arrival order.
    pub(crate) pending: VecDeque<(Handle, FourTuple)>,
    /// When each pending socket left LISTEN (entries of sockets no longer
    /// pending are pruned when the listener evicts).
    pub(crate) pending_since: FastMap<Handle, Instant>,
    pub(crate) accept_event: Arc<Event>,
    /// Accept-ready connections at the last notification.
    notified_ready: usize,
}

/// Everything behind the stack lock.
pub(crate) struct Core {
    pub(crate) iface: Interface,
    pub(crate) sockets: Sockets,
    pub(crate) ports: PortTable,
    pub(crate) listeners: FastMap<u64, ListenerState>,
    next_listener: u64,
    pub(crate) orphans: Orphans,
    /// The shards the driver polled in its latest round.
    pub(crate) polled: Vec<usize>,
    /// When the tables are next asked to give back spare capacity.
    next_tidy: Instant,
    /// Which TCP socket has which 4-tuple, for the FIN keeper's review.
    index: TcpIndex,
    pub(crate) config: StackConfig,
    /// Connections held, for `max_connections` and
    /// `max_connections_per_peer` (shared with the SYN guard).
    conns: SharedConns,
    pub(crate) counters: Arc<StackCounters>,
    /// The time of the driver's latest poll.
    pub(crate) now: Instant,
    /// After the driver's latest poll, the NIC held packets the network
    /// did not take yet.
    pub(crate) nic_backlog: bool,
    /// Set by an application's attempt that succeeded without giving the
    /// driver anything to do (a read that cannot change what the peer may
    /// send); the caller then skips ringing the driver. Cleared by the
    /// caller.
    pub(crate) driver_not_needed: bool,
    pub(crate) shutdown: bool,
}

impl Core {
    pub(crate) fn new(
        iface: Interface,
        config: StackConfig,
        counters: Arc<StackCounters>,
        seed: u64,
        conns: SharedConns,
    ) -> Self {
        Self {
            iface,
            sockets: Sockets::default(),
            ports: PortTable::new(seed),
            listeners: FastMap::default(),
            next_listener: 1,
            orphans: Orphans::default(),
            polled: Vec::new(),
            next_tidy: Instant::ZERO,
            index: TcpIndex::default(),
            config,
            conns,
            counters,
            now: Instant::ZERO,
            nic_backlog: false,
            driver_not_needed: false,
            shutdown: false,
        }
    }

    /// Adds a TCP socket with buffers of `sizes` and the configured
    /// options; `setup` connects it (or fails, and nothing is added).
    pub(crate) fn add_tcp_socket(
        &mut self,
        sizes: TcpBuffers,
        setup: impl FnOnce(&mut tcp::Socket<'static>, &mut smoltcp::iface::Context) -> std::io::Result<()>,
    ) -> std::io::Result<Handle> {
        let Self { sockets, iface, config, .. } = self;
        sockets.add_tcp(sizes, |rx, tx| {
            let mut socket = new_tcp_socket(rx, tx, config);
            setup(&mut socket, iface.context())?;
            Ok(socket)
        })
    }

    /// True if the stack has a way to reach `dst`: an attached prefix, a
    /// route, or loopback.
    pub(crate) fn can_reach(&self, dst: IpAddr) -> bool {
        if dst.is_loopback() || self.config.addresses.iter().any(|c| c.addr == dst) {
            return true;
        }
        self.config.addresses.iter().any(|c| c.contains(dst)) || self.config.routes.iter().any(|r| r.dest.contains(dst))
    }

    /// True if the stack has a non-loopback address of `dst`'s family.
    pub(crate) fn has_family(&self, dst: IpAddr) -> bool {
        self.config.addresses.iter().any(|c| c.addr.is_ipv4() == dst.is_ipv4())
    }

    /// The shard an arriving packet with this route belongs to: that of
    /// its connection (a SYN admitted in this round, or an indexed
    /// connection), else shard 0 (non-TCP sockets; segments for no
    /// connection, which smoltcp answers with RST).
    pub(crate) fn shard_for(&self, guard: &SynGuard, route: Route) -> usize {
        let Some(tuple) = route else { return 0 };
        if let Some(&(_, shard)) = guard.batch.get(&tuple) {
            return shard;
        }
        self.index.by_tuple.get(&tuple).map_or(0, |h| h.shard())
    }

    /// Whether one more connection to `peer` fits the configured limits;
    /// if not, an error that names the limit and how to raise it.
    pub(crate) fn check_connect(&self, peer: SocketAddr) -> std::io::Result<()> {
        let conns = self.conns.lock();
        let (what, field, max) = match conns.check(peer.ip().into()) {
            Ok(()) => return Ok(()),
            Err(LimitHit::Stack(max)) => ("TCP connections", "max_connections", max),
            Err(LimitHit::Peer(max)) => ("TCP connections with that address", "max_connections_per_peer", max),
        };
        Err(std::io::Error::new(
            std::io::ErrorKind::QuotaExceeded,
            format!(
                "cannot connect to {peer}: stack `{}` already holds {max} {what}, its limit \
                 (StackConfig::{field}); close a connection or raise the limit",
                self.config.name
            ),
        ))
    }

    /// Connections the stack holds now (see `StackConfig::max_connections`).
    pub(crate) fn connection_count(&self) -> usize {
        self.conns.lock().total()
    }

    pub(crate) fn tcp(&mut self, handle: Handle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(handle)
    }

    /// Registers a listener and returns its id.
    pub(crate) fn add_listener(
        &mut self,
        endpoint: IpListenEndpoint,
        family: Option<bool>,
        backlog: usize,
        buffers: TcpBuffers,
    ) -> (u64, Arc<Event>) {
        let id = self.next_listener;
        self.next_listener += 1;
        let accept_event = Arc::new(Event::default());
        let mut listener = ListenerState {
            endpoint,
            family,
            backlog: backlog.max(1),
            buffers,
            pool: Vec::new(),
            pending: VecDeque::new(),
            pending_since: FastMap::default(),
            accept_event: accept_event.clone(),
            notified_ready: 0,
        };
        // The pool must exist before the caller returns: a SYN may already
        // be on its way.
        refill_pool(&mut listener, &mut self.sockets, &self.config);
        self.listeners.insert(id, listener);
        (id, accept_event)
    }

    /// Whether listener `id` is open.
    pub(crate) fn has_listener(&self, id: u64) -> bool {
        self.listeners.contains_key(&id)
    }

    /// Takes the oldest fully established connection of listener `id`.
    pub(crate) fn take_accepted(&mut self, id: u64) -> Option<(Handle, FourTuple)> {
        let listener = self.listeners.get_mut(&id)?;
        let sockets = &self.sockets;
        let index =
            listener.pending.iter().position(|(h, _)| is_accept_ready(sockets.get::<tcp::Socket>(*h).state()))?;
        let taken = listener.pending.remove(index);
        listener.notified_ready = listener.notified_ready.saturating_sub(1);
        taken
    }

    /// After each poll: move sockets that got a SYN from the pool to the
    /// pending queue, refill pools, wake acceptors, and tear down closed
    /// listeners. Refreshes the SYN guard's view of free listening sockets.
    pub(crate) fn maintain_listeners(&mut self, guard: &mut SynGuard) {
        guard.available.clear();
        let mut conns = self.conns.lock();
        let mut stray = Vec::new();
        for listener in self.listeners.values_mut() {
            sort_pool(listener, &mut self.sockets, guard, &mut self.index, &mut conns, &mut stray, self.now);
            if guard.pressed.contains(&listener.endpoint.port) {
                let now = self.now;
                evict_half_open(listener, &mut self.sockets, guard, &mut self.index, &mut conns, &self.counters, now);
            }
            refill_pool(listener, &mut self.sockets, &self.config);
            guard.available.entry(listener.endpoint.port).or_default().extend(listener.pool.iter().map(|h| h.shard()));
            let ready = listener
                .pending
                .iter()
                .filter(|(h, _)| is_accept_ready(self.sockets.get::<tcp::Socket>(*h).state()))
                .count();
            if ready > 0 && ready != listener.notified_ready {
                listener.accept_event.notify();
            }
            listener.notified_ready = ready;
        }
        drop(conns);
        // Connections of the wrong family, aborted: reaped when closed.
        let since = self.now;
        for handle in stray {
            self.orphans.push(Orphan::new(handle, None, None, since));
        }
        guard.pressed.clear();
        guard.new_batch();
    }

    /// Tears a listener down at once, so that no SYN arriving afterwards can
    /// reach it: listening sockets go, unaccepted connections are reset (as
    /// Linux does) and left to the orphan reaper.
    pub(crate) fn close_listener(&mut self, id: u64) {
        let Some(listener) = self.listeners.remove(&id) else {
            return;
        };
        for h in listener.pool {
            self.index.forget(h);
            self.sockets.remove(h);
        }
        for (h, tuple) in listener.pending {
            self.tcp(h).abort();
            let since = self.now;
            self.orphans.push(Orphan::new(h, None, Some(tuple), since));
        }
        self.ports.release_tcp_listener(listener.endpoint.addr, listener.endpoint.port);
    }

    /// Removes orphans whose connection has finished; gives back the
    /// buffer pages of those in TIME-WAIT (they will not carry data again);
    /// aborts those that lingered longer than the configured limit.
    /// Only orphans of the shards polled this round are looked at, and all
    /// of them once a second (see `stack/orphans.rs`).
    pub(crate) fn reap_orphans(&mut self, guard: &mut SynGuard) {
        let now = self.now;
        let linger = to_smol(self.config.orphan_linger);
        let Self { orphans, polled, sockets, index, conns, ports, counters, .. } = self;
        orphans.review(now, polled, |orphan| {
            // Read first: touching a socket mutably makes its shard due.
            let state = sockets.get::<tcp::Socket>(orphan.handle).state();
            if state == tcp::State::Closed {
                remove_orphan_socket(orphan, sockets, index, &mut conns.lock(), ports);
                if let Some(tuple) = orphan.passive {
                    guard.live.remove(&tuple);
                }
                return Fate::Gone;
            }
            if state == tcp::State::TimeWait && !orphan.released {
                orphan.released = true;
                if sockets.release_finished(orphan.handle) {
                    counters.tcp_buffers_released_time_wait.inc();
                }
            }
            if now - orphan.since > linger && state != tcp::State::TimeWait {
                sockets.get_mut::<tcp::Socket>(orphan.handle).abort();
                counters.orphans_aborted.inc();
            }
            Fate::Keep
        });
    }

    /// An ephemeral port for an outgoing connection. When every port is
    /// taken, ports held only by connections in TIME-WAIT for at least
    /// [`TIME_WAIT_REUSE_AGE`] are taken back, oldest first (up to
    /// [`TIME_WAIT_REUSE_BATCH`] at once): their sockets go, silently, as
    /// Linux's `tcp_tw_reuse` lets an outgoing connection reuse a port in
    /// TIME-WAIT after a second. Without it a churn faster than the range
    /// divided by smoltcp's 10 s TIME-WAIT (1,638 connections per second)
    /// fails for want of ports.
    pub(crate) fn alloc_ephemeral_port(&mut self) -> std::io::Result<u16> {
        let exhausted = match self.ports.alloc_tcp_conn() {
            Ok(port) => return Ok(port),
            Err(e) => e,
        };
        let now = self.now;
        let sockets = &self.sockets;
        // Only active opens hold an ephemeral port (and they have no entry
        // in the SYN guard, which the driver owns).
        let reusable = self.orphans.take_oldest(TIME_WAIT_REUSE_BATCH, |o| {
            o.port.is_some()
                && o.passive.is_none()
                && now - o.since >= TIME_WAIT_REUSE_AGE
                && sockets.get::<tcp::Socket>(o.handle).state() == tcp::State::TimeWait
        });
        for orphan in &reusable {
            remove_orphan_socket(orphan, &mut self.sockets, &mut self.index, &mut self.conns.lock(), &mut self.ports);
            self.counters.time_wait_reused.inc();
        }
        self.ports.alloc_tcp_conn().map_err(|_| std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, exhausted))
    }

    /// True once a second (by the driver's clock): tables shrink on that
    /// cadence, not on every iteration (a burst's tables are garbage either
    /// way until they do, and each check costs a lock of the limits table).
    pub(crate) fn tidy_due(&mut self) -> bool {
        if self.now < self.next_tidy {
            return false;
        }
        self.next_tidy = self.now + TIDY_INTERVAL;
        true
    }

    /// Gives back the spare capacity of the per-connection tables after a
    /// burst of connections (see `tidy`): cheap unless one has become
    /// sparse.
    pub(crate) fn tidy(&mut self) {
        self.sockets.tidy();
        self.index.by_tuple.shrink_sparse();
        self.index.by_handle.shrink_sparse();
        self.conns.lock().tidy();
        self.ports.tidy();
        self.orphans.tidy();
        for listener in self.listeners.values_mut() {
            listener.pending_since.shrink_sparse();
            listener.pending.shrink_sparse();
        }
    }

    /// Records an active open to `peer`, so that RFC 5961 checks and the
    /// FIN keeper find its socket by 4-tuple from the start, and the
    /// connection limits count it.
    pub(crate) fn index_active(&mut self, handle: Handle, peer: IpAddr) {
        self.conns.lock().add(handle, peer.into());
        if let Some(tuple) = tuple_of(self.sockets.get::<tcp::Socket>(handle)) {
            self.index.insert(tuple, handle, None);
        }
    }

    /// The application read `n` bytes from `handle`: smoltcp's RCV.NXT is
    /// IRS + 1 + bytes read + bytes queued (+ 1 after a FIN).
    pub(crate) fn note_read(&mut self, handle: Handle, n: usize) {
        if let Some(e) = self.index.by_handle.get_mut(&handle) {
            e.read = e.read.wrapping_add(n as u32);
        }
        self.sockets.note_use(handle, self.now, to_smol(self.config.tcp_buffer_idle_release));
    }

    /// The application wrote into `handle`'s send buffer.
    pub(crate) fn note_written(&mut self, handle: Handle) {
        self.sockets.note_use(handle, self.now, to_smol(self.config.tcp_buffer_idle_release));
    }

    /// Gives back the buffer pages of connections idle for a whole
    /// `tcp_buffer_idle_release` (see `Sockets::release_idle`). `rcv_high`
    /// is how far arriving data reached per connection (`SynGuard`): a
    /// receive buffer is settled, with no out-of-order data in it, once
    /// RCV.NXT has reached that mark. A connection whose RCV.NXT is not
    /// known yet is not released.
    pub(crate) fn release_idle_buffers(&mut self, rcv_high: &FastMap<FourTuple, TcpSeqNumber>) {
        let Self { sockets, index, config, now, counters, .. } = self;
        let released = sockets.release_idle(*now, to_smol(config.tcp_buffer_idle_release), |h, socket| {
            let Some(tuple) = index.by_handle.get(&h).map(|e| e.tuple) else { return false };
            match rcv_high.get(&tuple) {
                None => true,
                Some(&high) => index.rcv_nxt(h, socket).is_some_and(|nxt| high <= nxt),
            }
        });
        counters.tcp_buffers_released_idle.add(released as u64);
    }

    /// After each poll (and [`maintain_listeners`](Self::maintain_listeners)):
    /// learns the IRS of active opens from this poll's SYN|ACKs, then judges
    /// the RSTs and SYNs the device held back (RFC 5961).
    pub(crate) fn settle_held<N: Nic>(&mut self, device: &mut StackDevice<N>, now: Instant) {
        for (tuple, seq) in device.guard.synacks.drain(..) {
            self.index.learn_active_irs(&self.sockets, &tuple, seq);
        }
        device.settle(now, |meta| self.verdict(meta));
        device.forget_flows(self.index.gone.drain(..));
    }

    /// RFC 5961 for one held segment: an RST is accepted only at exactly
    /// RCV.NXT, challenged inside the receive window and dropped outside
    /// it; a SYN on a synchronized connection is challenged. Segments for
    /// no connection, or one not synchronized yet, go to smoltcp.
    fn verdict(&self, meta: &TcpMeta) -> Verdict {
        let Lookup::Found(h) = self.index.find(&self.sockets, &FastSet::default(), &meta.tuple) else {
            return Verdict::Deliver;
        };
        let socket = self.sockets.get::<tcp::Socket>(h);
        let state = socket.state();
        if matches!(state, tcp::State::Closed | tcp::State::Listen | tcp::State::SynSent) {
            return Verdict::Deliver;
        }
        let rcv_nxt = self.index.rcv_nxt(h, socket);
        if !meta.rst {
            // A SYN without ACK (the device holds no other kind).
            return match rcv_nxt {
                Some(ack) if state != tcp::State::SynReceived => {
                    self.counters.syn_challenged.inc();
                    Verdict::Challenge(ack)
                }
                // A retransmitted SYN of a handshake in progress.
                _ => {
                    self.counters.syn_dropped_duplicate.inc();
                    Verdict::Drop
                }
            };
        }
        let Some(rcv_nxt) = rcv_nxt else { return Verdict::Deliver };
        let offset = meta.seq.0.wrapping_sub(rcv_nxt.0);
        // The receive window: what smoltcp can still buffer.
        let window = (socket.recv_capacity() - socket.recv_queue()).max(1);
        if offset == 0 {
            self.counters.rst_accepted.inc();
            Verdict::Deliver
        } else if offset > 0 && (offset as usize) < window {
            self.counters.rst_challenged.inc();
            Verdict::Challenge(rcv_nxt)
        } else {
            self.counters.rst_dropped_out_of_window.inc();
            Verdict::Drop
        }
    }

    /// it watches is doing, so that it resends a FIN only for a connection
    /// that is closing with nothing but the FIN outstanding, and forgets
    /// connections that are gone or no longer closing.
    ///
    /// Costs nothing while the keeper is idle and O(armed entries)
    /// otherwise; the one exception is a 4-tuple the index has not seen yet
    /// (an active open since the last scan), which costs one pass over the
    /// sockets for all such tuples together.
    pub(crate) fn review_fin_keeper(&mut self, keeper: &mut FinKeeper) {
        let departed = std::mem::take(&mut self.index.departed);
        if keeper.is_empty() {
            return;
        }
        let Self { sockets, index, .. } = self;
        if keeper.armed().any(|t| index.find(sockets, &departed, t) == Lookup::Unknown) {
            index.rescan(sockets);
        }
        keeper.review(|tuple| {
            let Lookup::Found(h) = index.find(sockets, &departed, tuple) else { return SocketCheck::Gone };
            let socket = sockets.get::<tcp::Socket>(h);
            match socket.state() {
                tcp::State::FinWait1 | tcp::State::Closing | tcp::State::LastAck if socket.send_queue() == 0 => {
                    SocketCheck::FinOnly
                }
                tcp::State::FinWait1 | tcp::State::Closing | tcp::State::LastAck => SocketCheck::Sending,
                _ => SocketCheck::Gone,
            }
        });
    }
}

/// A map from 4-tuple to TCP socket, kept so that per-connection upkeep need
/// not walk the whole socket set (smoltcp offers no lookup by endpoint).
///
/// Passive connections enter it as they leave their listener's pool; active
/// ones when [`rescan`](Self::rescan) finds them. Every removal of a TCP
/// socket from the set must go through [`forget`](Self::forget) first:
/// smoltcp's `SocketSet::get` panics on a stale handle, so the index must
/// never hold one.
///
/// Each entry also carries what plebnet needs to know the connection's
/// RCV.NXT, which smoltcp keeps private: the peer's initial sequence number
/// (IRS, from the SYN or SYN|ACK the device saw) and the bytes the
/// application has read (see [`rcv_nxt`](Self::rcv_nxt)).
#[derive(Debug, Default)]
struct TcpIndex {
    by_tuple: FastMap<FourTuple, Handle>,
    by_handle: FastMap<Handle, Indexed>,
    /// Tuples whose socket was removed since the last review: known to be
    /// over, so looking them up needs no scan.
    departed: FastSet<FourTuple>,
    /// Tuples whose socket was removed since the last poll, for the device
    /// to forget their send state.
    gone: Vec<FourTuple>,
}

/// One indexed connection.
#[derive(Debug, Clone, Copy)]
struct Indexed {
    tuple: FourTuple,
    /// The peer's initial sequence number, once known.
    irs: Option<TcpSeqNumber>,
    /// Bytes the application has read, modulo 2^32.
    read: u32,
}

/// What the index knows about a 4-tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// The connection's socket.
    Found(Handle),
    /// Its socket was removed, or has closed or gone back to listening.
    Over,
    /// Never indexed (an active open since the last scan), or the entry is
    /// stale: only a scan can tell.
    Unknown,
}

impl TcpIndex {
    /// Indexes `handle` under `tuple`. An entry that already has this
    /// tuple keeps its IRS (unless `irs` is given) and read count; a socket
    /// that moved to another connection starts afresh.
    fn insert(&mut self, tuple: FourTuple, handle: Handle, irs: Option<TcpSeqNumber>) {
        let fresh = Indexed { tuple, irs, read: 0 };
        match self.by_handle.get_mut(&handle) {
            Some(e) if e.tuple == tuple => e.irs = irs.or(e.irs),
            Some(e) => {
                let old = e.tuple;
                *e = fresh;
                if self.by_tuple.get(&old) == Some(&handle) {
                    self.by_tuple.remove(&old);
                }
            }
            None => {
                self.by_handle.insert(handle, fresh);
            }
        }
        self.by_tuple.insert(tuple, handle);
    }

    /// Drops `handle`, which is about to be removed from the socket set.
    fn forget(&mut self, handle: Handle) {
        if let Some(e) = self.by_handle.remove(&handle)
            && self.by_tuple.get(&e.tuple) == Some(&handle)
        {
            self.by_tuple.remove(&e.tuple);
            self.departed.insert(e.tuple);
            self.gone.push(e.tuple);
        }
    }

    /// A SYN|ACK arrived for `tuple`: if it is an active open that has just
    /// left SYN-SENT, its sequence number is the IRS.
    fn learn_active_irs(&mut self, sockets: &Sockets, tuple: &FourTuple, seq: TcpSeqNumber) {
        let Some(&h) = self.by_tuple.get(tuple) else { return };
        let state = sockets.get::<tcp::Socket>(h).state();
        if let Some(e) = self.by_handle.get_mut(&h)
            && e.tuple == *tuple
            && e.irs.is_none()
            && !matches!(state, tcp::State::SynSent | tcp::State::Closed | tcp::State::Listen)
        {
            e.irs = Some(seq);
        }
    }

    /// The connection's RCV.NXT, computed the way smoltcp computes it
    /// (`remote_seq_no + rx_buffer.len()`, where `remote_seq_no` starts at
    /// IRS + 1 and grows by each byte read and by the peer's FIN): IRS + 1 +
    /// bytes read + bytes queued + 1 once a FIN arrived. `None` while the
    /// IRS is unknown.
    fn rcv_nxt(&self, handle: Handle, socket: &tcp::Socket) -> Option<TcpSeqNumber> {
        let e = self.by_handle.get(&handle)?;
        let irs = e.irs?;
        let fin = matches!(
            socket.state(),
            tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closing | tcp::State::TimeWait
        );
        let advance = 1u32.wrapping_add(e.read).wrapping_add(socket.recv_queue() as u32).wrapping_add(u32::from(fin));
        Some(TcpSeqNumber(irs.0.wrapping_add(advance as i32)))
    }

    /// The socket whose endpoints are `tuple` now. The entry is checked: a
    /// socket loses its endpoints when it closes, and a listening socket can
    /// take another connection without being removed.
    fn find(&self, sockets: &Sockets, departed: &FastSet<FourTuple>, tuple: &FourTuple) -> Lookup {
        let Some(&h) = self.by_tuple.get(tuple) else {
            return if departed.contains(tuple) { Lookup::Over } else { Lookup::Unknown };
        };
        match tuple_of(sockets.get::<tcp::Socket>(h)) {
            Some(t) if t == *tuple => Lookup::Found(h),
            Some(_) => Lookup::Unknown,
            None => Lookup::Over,
        }
    }

    /// Indexes every connected TCP socket.
    fn rescan(&mut self, sockets: &Sockets) {
        for (h, socket) in sockets.iter() {
            if let smoltcp::socket::Socket::Tcp(t) = socket
                && let Some(tuple) = tuple_of(t)
            {
                self.insert(tuple, h, None);
            }
        }
    }
}

/// Removes an orphan's socket and everything that counts it: its index
/// entry, its place in the connection limits, its ephemeral port. (A
/// passive connection's SYN-guard entry is the driver's to drop.)
fn remove_orphan_socket(
    orphan: &Orphan,
    sockets: &mut Sockets,
    index: &mut TcpIndex,
    conns: &mut ConnTable,
    ports: &mut PortTable,
) {
    index.forget(orphan.handle);
    conns.remove(orphan.handle);
    sockets.remove(orphan.handle);
    if let Some(port) = orphan.port {
        ports.release_tcp_conn(port);
    }
}

/// Tops the listener's pool of LISTEN sockets up to the configured size,
/// leaving room for the connections already pending within the backlog.
fn refill_pool(listener: &mut ListenerState, sockets: &mut Sockets, config: &StackConfig) {
    let want = config.listen_pool.max(1).min(listener.backlog.saturating_sub(listener.pending.len()));
    let endpoint = listener.endpoint;
    while listener.pool.len() < want {
        let added = sockets.add_tcp(listener.buffers, |rx, tx| {
            let mut socket = new_tcp_socket(rx, tx, config);
            socket.listen(endpoint).map_err(|e| std::io::Error::other(format!("cannot listen on {endpoint}: {e}")))?;
            Ok(socket)
        });
        match added {
            Ok(h) => listener.pool.push(h),
            Err(e) => {
                // Retried at the next poll; SYNs meanwhile find the pool
                // short and are dropped as over the backlog.
                log::debug!("listener {endpoint}: {e}");
                break;
            }
        }
    }
}

/// Moves sockets between a listener's pool and pending queue according to
/// their TCP state.
/// Sockets that took a connection of the wrong family are aborted and
/// returned in `stray`.
fn sort_pool(
    listener: &mut ListenerState,
    sockets: &mut Sockets,
    guard: &mut SynGuard,
    index: &mut TcpIndex,
    conns: &mut ConnTable,
    stray: &mut Vec<Handle>,
    now: Instant,
) {
    let mut i = 0;
    while i < listener.pool.len() {
        let h = listener.pool[i];
        let socket = sockets.get::<tcp::Socket>(h);
        match socket.state() {
            tcp::State::Listen => i += 1,
            tcp::State::Closed => {
                listener.pool.swap_remove(i);
                index.forget(h);
                sockets.remove(h);
            }
            _ => {
                listener.pool.swap_remove(i);
                let Some(tuple) = tuple_of(socket) else {
                    sockets.get_mut::<tcp::Socket>(h).abort();
                    stray.push(h);
                    continue;
                };
                let wrong_family = listener.family.is_some_and(|v4| tuple.0.version() != family_version(v4));
                if wrong_family {
                    sockets.get_mut::<tcp::Socket>(h).abort();
                    stray.push(h);
                    continue;
                }
                conns.add(h, tuple.2);
                guard.live.insert(tuple);
                index.insert(tuple, h, guard.batch.get(&tuple).map(|b| b.0));
                listener.pending.push_back((h, tuple));
                listener.pending_since.insert(h, now);
            }
        }
    }
    // Pending sockets whose handshake was reset go back to LISTEN (smoltcp)
    // or to CLOSED.
    let mut j = 0;
    while j < listener.pending.len() {
        let (h, tuple) = listener.pending[j];
        match sockets.get::<tcp::Socket>(h).state() {
            tcp::State::Listen => {
                guard.live.remove(&tuple);
                let _ = listener.pending.remove(j);
                conns.remove(h);
                listener.pool.push(h);
            }
            tcp::State::Closed => {
                guard.live.remove(&tuple);
                let _ = listener.pending.remove(j);
                conns.remove(h);
                index.forget(h);
                sockets.remove(h);
            }
            _ => j += 1,
        }
    }
}

/// How often the per-connection tables are asked to shrink.
const TIDY_INTERVAL: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(1);

/// How long an outgoing connection must have been in TIME-WAIT (at least:
/// the age counts from its close) before its port may be reused.
const TIME_WAIT_REUSE_AGE: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(1);
/// Ports taken back from TIME-WAIT at once when the range runs out.
const TIME_WAIT_REUSE_BATCH: usize = 64;

/// Half-open connections a pressed listener drops at once, at most.
const EVICT_BATCH: usize = 8;

/// A half-open connection younger than this is never evicted: a real client
/// completes its handshake within a round trip.
const HALF_OPEN_MIN_AGE: smoltcp::time::Duration = smoltcp::time::Duration::from_millis(500);

/// A listener whose backlog refused SYNs makes room: its oldest half-open
/// connections (SYN-RECEIVED, most likely spoofed SYNs that will never
/// complete) are removed silently, without an RST, so that the next SYN,
/// such as a real client's retransmission, finds a free listening socket.
/// Established connections waiting for `accept` are never dropped, and
/// neither is a half-open connection younger than [`HALF_OPEN_MIN_AGE`]: a
/// burst of real clients (redis-benchmark opens 50 at once) also presses the
/// listener for a moment, and evicting one of them after its SYN-ACK left
/// would reset a client that believes it is connected. Spoofed SYNs never
/// complete, so they age past the bound and go.
fn evict_half_open(
    listener: &mut ListenerState,
    sockets: &mut Sockets,
    guard: &mut SynGuard,
    index: &mut TcpIndex,
    conns: &mut ConnTable,
    counters: &StackCounters,
    now: Instant,
) {
    let pending = &listener.pending;
    listener.pending_since.retain(|h, _| pending.iter().any(|(p, _)| p == h));
    let mut evicted = 0;
    let mut j = 0;
    while j < listener.pending.len() && evicted < EVICT_BATCH {
        let (h, tuple) = listener.pending[j];
        let young = listener.pending_since.get(&h).is_some_and(|&t| now - t < HALF_OPEN_MIN_AGE);
        if young || sockets.get::<tcp::Socket>(h).state() != tcp::State::SynReceived {
            j += 1;
            continue;
        }
        let _ = listener.pending.remove(j);
        listener.pending_since.remove(&h);
        guard.live.remove(&tuple);
        conns.remove(h);
        index.forget(h);
        sockets.remove(h);
        counters.syn_half_open_evicted.inc();
        evicted += 1;
    }
}

fn family_version(v4: bool) -> smoltcp::wire::IpVersion {
    if v4 { smoltcp::wire::IpVersion::Ipv4 } else { smoltcp::wire::IpVersion::Ipv6 }
}

fn new_tcp_socket(
    rx: tcp::SocketBuffer<'static>,
    tx: tcp::SocketBuffer<'static>,
    config: &StackConfig,
) -> tcp::Socket<'static> {
    let mut socket = tcp::Socket::new(rx, tx);
    socket.set_timeout(Some(to_smol(config.tcp_user_timeout)));
    socket
}

/// A connection can be accepted once its handshake completed.
fn is_accept_ready(state: tcp::State) -> bool {
    !matches!(state, tcp::State::Listen | tcp::State::SynReceived | tcp::State::SynSent | tcp::State::Closed)
}

pub(crate) fn tuple_of(socket: &tcp::Socket) -> Option<FourTuple> {
    let local = socket.local_endpoint()?;
    let remote = socket.remote_endpoint()?;
    Some((local.addr, local.port, remote.addr, remote.port))
}

pub(crate) fn to_smol(d: std::time::Duration) -> smoltcp::time::Duration {
    smoltcp::time::Duration::from_micros(d.as_micros().min(u64::MAX as u128) as u64)
}

/// std address of a smoltcp endpoint.
pub(crate) fn to_std(addr: IpAddress, port: u16) -> SocketAddr {
    SocketAddr::new(addr.into(), port)
}
