//! The DTLS link core, sans-IO: the UdpNic framing (one overlay IP packet
//! per datagram) inside DTLS, with a table of pinned peers.
//!
//! * **Only authenticated peers reach the stack.** A datagram from an
//!   address with no session is dropped and counted unless it is a
//!   ClientHello that some peer may send from there; a session delivers
//!   nothing until the peer's certificate matched its pin; a delivered
//!   packet whose source address its peer may not use is dropped and
//!   counted.
//! * **Silence to strangers.** Nothing is ever sent in reply to a datagram
//!   that is not a ClientHello; a ClientHello gets the stateless cookie
//!   exchange first (when [`DtlsConfig::server_cookie`] is on).
//! * **Bounded.** At most [`DtlsLinkLimits::max_handshakes`] handshakes at
//!   once; more ClientHellos are dropped and counted.
//! * **Peers come back.** A peer this side initiates to is redialed with
//!   backoff when its session ends; a peer that restarts and sends a new
//!   ClientHello from the same address gets a second session beside the old
//!   one, which replaces it only once the new one is authenticated (so a
//!   spoofed ClientHello cannot tear a working session down).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plebnet::netstack::smoltcp::wire::{IpAddress, IpCidr};
use plebnet::netstack::stats::CounterSource;

use super::config::DtlsConfig;
use super::error::DtlsError;
use super::repair::{LinkRepair, Repair};
use super::session::{DtlsSession, SessionEvent};
use crate::tls::Pin;

/// A peer of a DTLS link.
#[derive(Debug, Clone)]
pub struct DtlsPeer {
    /// The peer's certificate pin: the only proof of who it is.
    pub pin: Pin,
    /// Overlay prefixes the peer carries: packets to them go to it, and
    /// packets from it must come from inside them.
    pub prefixes: Vec<IpCidr>,
    /// The peer's underlay address. Required when this side initiates;
    /// otherwise `Some` restricts which address may handshake as this peer,
    /// and `None` lets any address try (the pin decides).
    pub endpoint: Option<SocketAddr>,
    /// This side is the DTLS client: it starts the handshake and redials
    /// when the session ends.
    pub initiate: bool,
}

/// Limits of a DTLS link.
#[derive(Debug, Clone)]
pub struct DtlsLinkLimits {
    /// Handshakes in progress at once, beyond which ClientHellos are dropped.
    pub max_handshakes: usize,
    /// First redial delay after a session to an initiated peer ended; it
    /// doubles up to [`max_redial`](Self::max_redial).
    pub min_redial: Duration,
    /// Longest redial delay.
    pub max_redial: Duration,
}

impl Default for DtlsLinkLimits {
    fn default() -> Self {
        Self { max_handshakes: 256, min_redial: Duration::from_millis(500), max_redial: Duration::from_secs(30) }
    }
}

plebnet::netstack::counters! {
    /// What a DTLS link did.
    pub struct DtlsLinkCounters {
        /// Datagrams received from the underlay.
        rx_datagrams,
        /// Overlay packets delivered to the stack.
        rx_packets,
        /// Bytes of those packets.
        rx_bytes,
        /// Datagrams from an address with no session that were not an
        /// acceptable ClientHello: dropped without a reply.
        rx_dropped_stranger,
        /// ClientHellos dropped because too many handshakes were under way.
        rx_dropped_handshake_limit,
        /// Datagrams of an established session that delivered nothing:
        /// replayed, forged, stale or malformed records.
        rx_discarded_records,
        /// Decrypted packets whose source address the peer may not use.
        rx_dropped_spoofed_source,
        /// Decrypted records too short to be an IP packet.
        rx_dropped_not_ip,
        /// Handshakes begun, as client or server.
        handshakes_started,
        /// Handshakes that authenticated the peer.
        handshakes_completed,
        /// Handshakes that failed (timeout, protocol error).
        handshakes_failed,
        /// Handshakes refused because the certificate matched no pin.
        pin_mismatches,
        /// Established sessions that ended (closed, failed or replaced).
        sessions_ended,
        /// Datagrams sent.
        tx_datagrams,
        /// Bytes of those datagrams.
        tx_bytes,
        /// Overlay packets sent.
        tx_packets,
        /// Overlay packets to an address no peer carries.
        tx_dropped_no_peer,
        /// Overlay packets to a peer whose session is not established.
        tx_dropped_not_established,
        /// Loss repair: packets sent again because they were found lost.
        tx_repair_retransmits,
        /// Loss repair: packets given up after their last try (or pushed
        /// out of the sender's memory); the overlay's TCP repairs them.
        tx_repair_given_up,
        /// Loss repair: small packets sent twice.
        tx_repair_copies,
        /// Loss repair: acknowledgements sent.
        tx_repair_acks,
        /// Loss repair: acknowledgements received.
        rx_repair_acks,
        /// Loss repair: copies of packets already delivered, dropped (small
        /// packets sent twice, repairs whose original was only late).
        rx_repair_duplicates,
        /// Loss repair: malformed frames from an authenticated peer, dropped.
        rx_dropped_bad_frame,
    }
}

/// Where a link's output goes: the driver's socket and stack.
pub trait LinkIo {
    /// Sends `datagram` to `to` on the underlay.
    fn transmit(&mut self, to: SocketAddr, datagram: &[u8]);
    /// Hands an authenticated overlay packet to the stack.
    fn deliver(&mut self, packet: &[u8]);
}

#[derive(Debug)]
struct PeerEntry {
    config: DtlsPeer,
    /// The address of its established session.
    bound: Option<SocketAddr>,
    /// Initiated peers: when to dial next, and the delay after that.
    redial_at: Option<Instant>,
    backoff: Duration,
}

/// The sessions at one underlay address.
#[derive(Debug)]
struct Slot {
    session: DtlsSession,
    /// Peers (indices) whose pins the session accepts, in its pin order.
    candidates: Vec<usize>,
    /// The peer, once authenticated (or from the start, when we dialed).
    peer: Option<usize>,
    /// A new handshake from the same address, replacing `session` once it
    /// authenticates.
    renewing: Option<DtlsSession>,
    established: bool,
    /// Loss repair of `session`.
    repair: Repair,
}

/// The DTLS link core. See the module docs.
#[derive(Debug)]
pub struct DtlsLink {
    config: DtlsConfig,
    engine: Arc<dimpl::Config>,
    limits: DtlsLinkLimits,
    peers: Vec<PeerEntry>,
    slots: HashMap<SocketAddr, Slot>,
    repair: LinkRepair,
    counters: Arc<DtlsLinkCounters>,
}

impl DtlsLink {
    /// A link speaking for `config.identity` to `peers`, created at `now`.
    /// Peers it initiates to are dialed at the first
    /// [`handle_timeout`](Self::handle_timeout).
    pub fn new(
        config: DtlsConfig,
        peers: Vec<DtlsPeer>,
        limits: DtlsLinkLimits,
        now: Instant,
    ) -> Result<Self, DtlsError> {
        let engine = config.engine_config()?;
        for (i, peer) in peers.iter().enumerate() {
            if peer.initiate && peer.endpoint.is_none() {
                return Err(DtlsError::Config(format!("peer {i} ({:?}): initiating needs an endpoint", peer.pin)));
            }
            if peer.prefixes.is_empty() {
                return Err(DtlsError::Config(format!("peer {i} ({:?}): no overlay prefixes", peer.pin)));
            }
        }
        let peers = peers
            .into_iter()
            .map(|config| PeerEntry {
                redial_at: config.initiate.then_some(now),
                config,
                bound: None,
                backoff: limits.min_redial,
            })
            .collect();
        Ok(Self {
            config,
            engine,
            limits,
            peers,
            slots: HashMap::new(),
            repair: LinkRepair::default(),
            counters: Arc::default(),
        })
    }

    /// The same link with loss repair set to `repair` (on by default; see
    /// [`LinkRepair`]).
    pub fn with_repair(mut self, repair: LinkRepair) -> Self {
        self.repair = repair;
        self
    }

    /// The link's counters.
    pub fn counters(&self) -> Arc<DtlsLinkCounters> {
        self.counters.clone()
    }

    /// The counters as a source for a stack's counter list.
    pub fn counter_source(&self) -> Arc<dyn CounterSource> {
        self.counters.clone()
    }

    /// Underlay addresses of the peers whose sessions are established.
    pub fn established(&self) -> Vec<SocketAddr> {
        self.peers.iter().filter_map(|p| p.bound).collect()
    }

    /// The first moment [`handle_timeout`](Self::handle_timeout) is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let sessions = self.slots.values().flat_map(|s| {
            [
                s.session.poll_timeout(),
                s.renewing.as_ref().and_then(DtlsSession::poll_timeout),
                s.established.then(|| s.repair.poll_timeout()).flatten(),
            ]
        });
        sessions.chain(self.peers.iter().map(|p| p.redial_at)).flatten().min()
    }

    /// Feeds one datagram from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8], io: &mut dyn LinkIo) {
        self.counters.rx_datagrams.inc();
        let hello = is_client_hello(datagram);
        if !self.slots.contains_key(&from) {
            if !hello {
                self.counters.rx_dropped_stranger.inc();
                return;
            }
            if !self.accept_hello(now, from) {
                return;
            }
        } else if hello && self.slots[&from].established && self.slots[&from].renewing.is_none() {
            let slot = &self.slots[&from];
            let pins = slot.candidates.iter().map(|&i| self.peers[i].config.pin).collect();
            let renewing = DtlsSession::with_engine(self.engine.clone(), &self.config, pins, false, now);
            self.counters.handshakes_started.inc();
            self.slots.get_mut(&from).expect("checked").renewing = Some(renewing);
        }
        let slot = self.slots.get_mut(&from).expect("a slot exists for this address");
        let prefixes = slot.peer.map(|i| self.peers[i].config.prefixes.as_slice());
        let mut out = SlotIo {
            io,
            to: from,
            prefixes,
            counters: &self.counters,
            delivered: 0,
            held: slot.peer.is_none().then(Vec::new),
            repair: Some((&mut slot.repair, now)),
        };
        // A new handshake's plaintext records are the renewal's alone: the
        // old session would answer them with its last flight, which the new
        // client cannot parse.
        if !(slot.renewing.is_some() && is_plaintext_handshake(datagram)) {
            slot.session.handle_datagram(now, datagram, &mut |e| out.event(e));
        }
        let (delivered, held) = (out.delivered, out.held.take());
        if let Some(renewing) = &mut slot.renewing {
            // The renewal delivers nothing until it replaces the session.
            let mut quiet = SlotIo::new(io, from, &self.counters);
            renewing.handle_datagram(now, datagram, &mut |e| quiet.event(e));
        }
        if slot.established && delivered == 0 && slot.renewing.is_none() {
            self.counters.rx_discarded_records.inc();
        }
        self.settle(now, from);
        // Packets that came with the record completing a server handshake
        // waited for the peer to be known; now they can be checked.
        let peer = self.slots.get(&from).and_then(|s| s.peer);
        if let (Some(held), Some(peer)) = (held.filter(|h| !h.is_empty()), peer) {
            let prefixes = self.peers[peer].config.prefixes.clone();
            let slot = self.slots.get_mut(&from).expect("the peer is bound here");
            let mut out = SlotIo::new(io, from, &self.counters);
            out.prefixes = Some(&prefixes);
            out.repair = Some((&mut slot.repair, now));
            for packet in &held {
                out.event(SessionEvent::Deliver(packet));
            }
        }
        self.repair_output(now, from, io);
    }

    /// Sends one overlay packet to the peer that carries its destination,
    /// at `now`. Returns false (and counts why) if it could not.
    pub fn send_packet(&mut self, now: Instant, packet: &[u8], io: &mut dyn LinkIo) -> bool {
        let Some(dst) = packet_address(packet, false) else {
            self.counters.tx_dropped_no_peer.inc();
            return false;
        };
        let Some(peer) = self.peers.iter().find(|p| p.config.prefixes.iter().any(|c| c.contains_addr(&dst))) else {
            self.counters.tx_dropped_no_peer.inc();
            return false;
        };
        let Some(slot) = peer.bound.and_then(|addr| self.slots.get_mut(&addr).map(|s| (addr, s))) else {
            self.counters.tx_dropped_not_established.inc();
            return false;
        };
        let (to, slot) = slot;
        let mut out = SlotIo::new(io, to, &self.counters);
        let twice = slot.repair.duplicates(packet.len());
        let record = if slot.repair.enabled() { slot.repair.frame(now, packet, &self.counters) } else { packet };
        let mut sent = slot.session.send(record, &mut |e| out.event(e));
        if twice && sent.is_ok() {
            self.counters.tx_repair_copies.inc();
            sent = slot.session.send(record, &mut |e| out.event(e));
        }
        match sent {
            Ok(()) => {
                self.counters.tx_packets.inc();
                true
            }
            Err(_) => {
                self.counters.tx_dropped_not_established.inc();
                self.settle(now, to);
                false
            }
        }
    }

    /// Does timed work due at `now`: handshake retransmissions and
    /// deadlines, and dialing peers.
    pub fn handle_timeout(&mut self, now: Instant, io: &mut dyn LinkIo) {
        let due: Vec<SocketAddr> = self
            .slots
            .iter()
            .filter(|(_, s)| {
                s.session.poll_timeout().is_some_and(|t| t <= now)
                    || s.renewing.as_ref().and_then(DtlsSession::poll_timeout).is_some_and(|t| t <= now)
                    || (s.established && s.repair.poll_timeout().is_some_and(|t| t <= now))
            })
            .map(|(a, _)| *a)
            .collect();
        for addr in due {
            let slot = self.slots.get_mut(&addr).expect("listed");
            let mut out = SlotIo::new(io, addr, &self.counters);
            slot.session.handle_timeout(now, &mut |e| out.event(e));
            if let Some(renewing) = &mut slot.renewing {
                renewing.handle_timeout(now, &mut |e| out.event(e));
            }
            self.settle(now, addr);
            self.repair_output(now, addr, io);
        }
        for i in 0..self.peers.len() {
            if self.peers[i].redial_at.is_some_and(|t| t <= now) {
                self.dial(now, i, io);
            }
        }
    }

    /// Closes every session, with a close_notify to established peers.
    pub fn close(&mut self, io: &mut dyn LinkIo) {
        for (addr, slot) in self.slots.iter_mut() {
            let mut out = SlotIo::new(io, *addr, &self.counters);
            slot.session.close(&mut |e| out.event(e));
        }
        self.slots.clear();
        for peer in &mut self.peers {
            peer.bound = None;
            peer.redial_at = None;
        }
    }

    /// Sends what the loss repair of the session at `addr` has due: an
    /// acknowledgement, packets found lost.
    fn repair_output(&mut self, now: Instant, addr: SocketAddr, io: &mut dyn LinkIo) {
        let Some(slot) = self.slots.get_mut(&addr).filter(|s| s.established) else { return };
        let mut out = SlotIo::new(io, addr, &self.counters);
        let session = &mut slot.session;
        // A send fails only on a session that ended, which the next `settle`
        // removes.
        slot.repair.output(now, &self.counters, &mut |frame| drop(session.send(frame, &mut |e| out.event(e))));
    }

    /// Packets kept for repair, over every session.
    #[cfg(test)]
    pub(crate) fn repair_kept(&self) -> usize {
        self.slots.values().map(|s| s.repair.kept()).sum()
    }

    /// Sends `record` as is to every established peer (tests craft frames).
    #[cfg(test)]
    pub(crate) fn send_record(&mut self, record: &[u8], io: &mut dyn LinkIo) {
        for (addr, slot) in self.slots.iter_mut().filter(|(_, s)| s.established) {
            let mut out = SlotIo::new(io, *addr, &self.counters);
            slot.session.send(record, &mut |e| out.event(e)).unwrap();
        }
    }

    /// Starts a client session to initiated peer `i`.
    fn dial(&mut self, now: Instant, i: usize, io: &mut dyn LinkIo) {
        let peer = &mut self.peers[i];
        peer.redial_at = None;
        let addr = peer.config.endpoint.expect("initiated peers have an endpoint");
        let session = DtlsSession::with_engine(self.engine.clone(), &self.config, vec![peer.config.pin], true, now);
        self.counters.handshakes_started.inc();
        log::debug!("dtls link: dialing {addr}");
        let repair = Repair::new(self.repair.clone(), now);
        if let Some(old) = self.slots.insert(
            addr,
            Slot { session, candidates: vec![i], peer: Some(i), renewing: None, established: false, repair },
        ) && old.established
        {
            self.counters.sessions_ended.inc();
        }
        self.handle_timeout(now, io);
    }

    /// A ClientHello from an address with no session: starts a server
    /// session if some peer may handshake from there. False if dropped.
    fn accept_hello(&mut self, now: Instant, from: SocketAddr) -> bool {
        let candidates: Vec<usize> = (0..self.peers.len())
            .filter(|&i| {
                let p = &self.peers[i].config;
                !p.initiate && p.endpoint.is_none_or(|e| same_endpoint(e, from))
            })
            .collect();
        if candidates.is_empty() {
            self.counters.rx_dropped_stranger.inc();
            return false;
        }
        let handshaking = self.slots.values().filter(|s| !s.established).count();
        if handshaking >= self.limits.max_handshakes {
            self.counters.rx_dropped_handshake_limit.inc();
            return false;
        }
        let pins = candidates.iter().map(|&i| self.peers[i].config.pin).collect();
        let session = DtlsSession::with_engine(self.engine.clone(), &self.config, pins, false, now);
        self.counters.handshakes_started.inc();
        let repair = Repair::new(self.repair.clone(), now);
        self.slots.insert(from, Slot { session, candidates, peer: None, renewing: None, established: false, repair });
        true
    }

    /// After the sessions at `addr` moved: binds a newly authenticated
    /// peer, promotes a finished renewal, and removes what ended.
    fn settle(&mut self, now: Instant, addr: SocketAddr) {
        let Some(slot) = self.slots.get_mut(&addr) else { return };
        if let Some(renewing) = &slot.renewing {
            if renewing.is_established() {
                slot.session = slot.renewing.take().expect("checked");
                // The peer restarted: both directions count from zero again.
                slot.repair = Repair::new(self.repair.clone(), now);
                self.counters.handshakes_completed.inc();
                self.counters.sessions_ended.inc();
                log::debug!("dtls link: {addr} renewed its session");
            } else if let Some(e) = renewing.error() {
                count_failure(&self.counters, e);
                slot.renewing = None;
            }
        }
        if !slot.established && slot.session.is_established() {
            slot.established = true;
            self.counters.handshakes_completed.inc();
            let pin = slot.session.peer_pin().expect("established sessions matched a pin");
            let peer = slot.candidates[pin];
            slot.peer = Some(peer);
            let entry = &mut self.peers[peer];
            entry.backoff = self.limits.min_redial;
            log::debug!("dtls link: {addr} authenticated as {:?}", entry.config.pin);
            if let Some(old) = entry.bound.replace(addr)
                && old != addr
                && self.slots.remove(&old).is_some()
            {
                // The peer came back from another address.
                self.counters.sessions_ended.inc();
            }
            return;
        }
        let Some(error) = slot.session.error().cloned() else { return };
        let slot = self.slots.remove(&addr).expect("present");
        if slot.established {
            self.counters.sessions_ended.inc();
            log::debug!("dtls link: session with {addr} ended: {error}");
        } else {
            count_failure(&self.counters, &error);
            log::debug!("dtls link: handshake with {addr} failed: {error}");
        }
        if let Some(i) = slot.peer {
            let entry = &mut self.peers[i];
            if entry.bound == Some(addr) {
                entry.bound = None;
            }
            if entry.config.initiate {
                entry.redial_at = Some(now + entry.backoff);
                entry.backoff = (entry.backoff * 2).min(self.limits.max_redial);
            }
        }
    }
}

fn count_failure(counters: &DtlsLinkCounters, error: &DtlsError) {
    match error {
        DtlsError::PinMismatch { .. } | DtlsError::NoPeerCertificate => counters.pin_mismatches.inc(),
        _ => counters.handshakes_failed.inc(),
    }
}

/// Routes one session's events to the driver, checking delivered packets
/// against the peer's prefixes.
struct SlotIo<'a> {
    io: &'a mut dyn LinkIo,
    to: SocketAddr,
    /// The authenticated peer's prefixes; `None` delivers nothing.
    prefixes: Option<&'a [IpCidr]>,
    counters: &'a DtlsLinkCounters,
    delivered: usize,
    /// When set, deliveries wait here (the peer is not known yet).
    held: Option<Vec<Vec<u8>>>,
    /// The session's loss repair, and the time: sequenced packets and
    /// acknowledgements go through it.
    repair: Option<(&'a mut Repair, Instant)>,
}

impl<'a> SlotIo<'a> {
    /// Output to `to` that delivers nothing.
    fn new(io: &'a mut dyn LinkIo, to: SocketAddr, counters: &'a DtlsLinkCounters) -> Self {
        Self { io, to, prefixes: None, counters, delivered: 0, held: None, repair: None }
    }

    fn event(&mut self, event: SessionEvent<'_>) {
        match event {
            SessionEvent::Transmit(datagram) => {
                self.counters.tx_datagrams.inc();
                self.counters.tx_bytes.add(datagram.len() as u64);
                self.io.transmit(self.to, datagram);
            }
            SessionEvent::Deliver(packet) => {
                self.delivered += 1;
                if let Some(held) = &mut self.held {
                    held.push(packet.to_vec());
                    return;
                }
                let Some(prefixes) = self.prefixes else { return };
                let packet = match &mut self.repair {
                    Some((repair, now)) => match repair.receive(*now, packet, self.counters) {
                        Some(packet) => packet,
                        None => return,
                    },
                    None => packet,
                };
                let Some(src) = packet_address(packet, true) else {
                    self.counters.rx_dropped_not_ip.inc();
                    return;
                };
                if !prefixes.iter().any(|c| c.contains_addr(&src)) {
                    self.counters.rx_dropped_spoofed_source.inc();
                    return;
                }
                self.counters.rx_packets.inc();
                self.counters.rx_bytes.add(packet.len() as u64);
                self.io.deliver(packet);
            }
        }
    }
}

/// The source (`source` true) or destination address of an IP packet.
pub(crate) fn packet_address(packet: &[u8], source: bool) -> Option<IpAddress> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let at = if source { 12 } else { 16 };
            let b: [u8; 4] = packet[at..at + 4].try_into().ok()?;
            Some(IpAddress::Ipv4(b.into()))
        }
        6 if packet.len() >= 40 => {
            let at = if source { 8 } else { 24 };
            let b: [u8; 16] = packet[at..at + 16].try_into().ok()?;
            Some(IpAddress::Ipv6(b.into()))
        }
        _ => None,
    }
}

/// True if `datagram` starts with a plaintext DTLS handshake record
/// (epoch 0).
fn is_plaintext_handshake(datagram: &[u8]) -> bool {
    datagram.len() >= 14 && datagram[0] == 22 && datagram[1] == 0xFE && datagram[3..5] == [0, 0]
}

/// True if `datagram` starts with a plaintext handshake record holding a
/// ClientHello — the only thing a stranger may start with.
pub(crate) fn is_client_hello(datagram: &[u8]) -> bool {
    datagram.len() >= 25 && is_plaintext_handshake(datagram) && datagram[13] == 1
}

/// Equal endpoints, an IPv4 address and its IPv6-mapped form alike.
fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    let canon = |s: SocketAddr| match s.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(s, |v4| SocketAddr::new(v4.into(), s.port())),
        IpAddr::V4(_) => s,
    };
    canon(a) == canon(b)
}
