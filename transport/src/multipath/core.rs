//! The sans-IO tunnel: legs, sequencing, acknowledgement and reinjection, the bounded reorder queue, and
//! tunnel-level streams. It takes cells and `now` in and gives cells per leg and its next deadline out.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::cell::Cell;

use super::config::{LegOptions, Scheduler, TunnelConfig};
use super::error::{ProtocolError, TunnelError};
use super::leg::{Leg, LegId, LegState, LegStats};
use super::stream::{Phase, Stream};
use super::wire::{
    self, Body, END_DONE, END_REFUSED, END_RESET, FLAG_BACKUP, FLAG_JOIN, Link, MIN_MESSAGE_COST, Message, NONCE_LEN,
};

/// Which end of the tunnel this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends LINK; opens odd stream IDs.
    Initiator,
    /// Answers with LINKED; opens even stream IDs.
    Responder,
}

/// Something the driver or the application may want to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelEvent {
    /// A leg finished its handshake; `rtt` is the handshake's measurement.
    LegUp {
        /// The leg.
        leg: LegId,
        /// Round trip of LINK→LINKED (initiator) or LINKED→LINKED_ACK (responder).
        rtt: Duration,
    },
    /// A leg was closed; the driver should close its transport. Its unacknowledged data moved elsewhere.
    LegClosed {
        /// The leg.
        leg: LegId,
        /// Why.
        error: ProtocolError,
    },
    /// The tunnel is over.
    Closed(TunnelError),
}

/// Counters of a tunnel, from [`TunnelCore::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunnelStats {
    /// Legs that completed the handshake.
    pub legs_linked: u64,
    /// Legs closed, for any reason.
    pub legs_closed: u64,
    /// Legs closed because the peer broke the protocol on them.
    pub protocol_errors: u64,
    /// Sequenced messages assigned a sequence number (first copies).
    pub messages_sent: u64,
    /// Sequenced messages delivered in order.
    pub messages_delivered: u64,
    /// Stream payload bytes delivered in order to streams.
    pub data_bytes_delivered: u64,
    /// Copies of sequenced cells put on another leg because theirs died or went silent.
    pub reinjected_cells: u64,
    /// RESEND cells transmitted.
    pub resend_cells_sent: u64,
    /// SWITCH cells transmitted.
    pub switches_sent: u64,
    /// Times a leg became suspect (silent with data outstanding).
    pub stalls: u64,
    /// Sequenced cells dropped because their number had arrived already.
    pub duplicates_dropped: u64,
    /// Bytes in the reorder queue now.
    pub reorder_bytes: usize,
    /// The most bytes the reorder queue ever held.
    pub reorder_peak_bytes: usize,
    /// Streams opened here.
    pub streams_opened: u64,
    /// Streams the peer opened that were accepted.
    pub streams_accepted: u64,
    /// Streams the peer opened that were refused (backlog or stream limit).
    pub streams_refused: u64,
    /// Streams reset because the peer broke their flow control or sent data after END.
    pub stream_violations: u64,
    /// Cells for streams that are not open (late cells after a reset, or a confused peer).
    pub unknown_stream_cells: u64,
}

struct Sent {
    body: Bytes,
    cost: usize,
    data_bytes: usize,
    /// Some leg acknowledged receiving it.
    received: bool,
}

/// A SEQ owed right after a SWITCH: its number, body, cost and data bytes.
type Owed = (u64, Bytes, usize, usize);

/// One end of a multipath tunnel, sans-IO.
///
/// The driver feeds it every cell a leg receives ([`handle_cell`](Self::handle_cell)), asks it for the cells
/// each leg should send ([`poll_transmit`](Self::poll_transmit)), calls
/// [`handle_timeout`](Self::handle_timeout) at [`poll_timeout`](Self::poll_timeout), and tells it when a leg's
/// transport fails ([`leg_failed`](Self::leg_failed)). The application opens, accepts, reads and writes
/// streams through it. It never reads a clock: every time is an argument.
pub struct TunnelCore {
    role: Role,
    config: TunnelConfig,
    scheduler: Scheduler,
    nonce: [u8; NONCE_LEN],
    legs: Vec<Leg>,

    next_seq: u64,
    peer_cumulative: u64,
    send_log: VecDeque<Sent>,
    window_used: usize,
    control: VecDeque<Body>,
    orphans: Vec<(u64, usize)>,

    next_deliver: u64,
    reorder: BTreeMap<u64, (Body, usize)>,
    reorder_bytes: usize,

    streams: BTreeMap<u32, Stream>,
    next_stream_id: u32,
    round_robin_next: u32,
    incoming: VecDeque<u32>,

    events: VecDeque<TunnelEvent>,
    stats: TunnelStats,
    closed: Option<TunnelError>,
}

impl TunnelCore {
    /// A tunnel this side initiates, identified by `nonce` (32 random bytes).
    pub fn initiator(config: TunnelConfig, nonce: [u8; NONCE_LEN]) -> TunnelCore {
        TunnelCore::new(Role::Initiator, config, nonce)
    }

    /// The responder's side of the tunnel whose first LINK carried `nonce`.
    pub fn responder(config: TunnelConfig, nonce: [u8; NONCE_LEN]) -> TunnelCore {
        TunnelCore::new(Role::Responder, config, nonce)
    }

    fn new(role: Role, config: TunnelConfig, nonce: [u8; NONCE_LEN]) -> TunnelCore {
        TunnelCore {
            role,
            scheduler: config.scheduler,
            config,
            nonce,
            legs: Vec::new(),
            next_seq: 1,
            peer_cumulative: 0,
            send_log: VecDeque::new(),
            window_used: 0,
            control: VecDeque::new(),
            orphans: Vec::new(),
            next_deliver: 1,
            reorder: BTreeMap::new(),
            reorder_bytes: 0,
            streams: BTreeMap::new(),
            next_stream_id: if role == Role::Initiator { 1 } else { 2 },
            round_robin_next: 0,
            incoming: VecDeque::new(),
            events: VecDeque::new(),
            stats: TunnelStats::default(),
            closed: None,
        }
    }

    /// This end's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The tunnel's nonce.
    pub fn nonce(&self) -> [u8; NONCE_LEN] {
        self.nonce
    }

    /// The scheduler in use (a responder's is the one its first LINK asked for).
    pub fn scheduler(&self) -> Scheduler {
        self.scheduler
    }

    /// The counters.
    pub fn stats(&self) -> TunnelStats {
        TunnelStats { reorder_bytes: self.reorder_bytes, ..self.stats }
    }

    /// Every leg's counters, closed legs included.
    pub fn leg_stats(&self) -> Vec<LegStats> {
        self.legs.iter().map(Leg::stats).collect()
    }

    /// A leg's state (`None` for an ID this tunnel never gave out).
    pub fn leg_state(&self, leg: LegId) -> Option<LegState> {
        self.legs.get(leg.0 as usize).map(|l| l.state)
    }

    /// Legs that are up now.
    pub fn live_legs(&self) -> usize {
        self.legs.iter().filter(|l| l.is_up()).count()
    }

    /// Why the tunnel is over, if it is.
    pub fn closed(&self) -> Option<&TunnelError> {
        self.closed.as_ref()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<TunnelEvent> {
        self.events.pop_front()
    }

    // ---------------------------------------------------------------------------------------------------
    // Legs

    /// Initiator: adds a leg; its first cell is LINK. The first leg creates the tunnel, later ones join it.
    pub fn add_leg(&mut self, options: LegOptions, now: Instant) -> LegId {
        let flags = if self.legs.is_empty() { 0 } else { FLAG_JOIN } | if options.backup { FLAG_BACKUP } else { 0 };
        let id = self.push_leg(LegState::LinkSent, options, now);
        let link = self.link_fields(id, flags);
        self.legs[id.0 as usize].control.push_back(Message::Link(link));
        id
    }

    /// Responder: adds a leg whose first cell, LINK, the driver passes to [`handle_cell`](Self::handle_cell).
    pub fn accept_leg(&mut self, now: Instant) -> LegId {
        self.push_leg(LegState::AwaitLink, LegOptions::default(), now)
    }

    fn push_leg(&mut self, state: LegState, options: LegOptions, now: Instant) -> LegId {
        let id = LegId(self.legs.len() as u32);
        let mut options = options;
        options.weight = options.weight.max(1);
        self.legs.push(Leg::new(id, state, options, now));
        id
    }

    /// The LINK/LINKED fields for a leg; also fixes the leg's implicit sequence base.
    fn link_fields(&mut self, id: LegId, flags: u8) -> Link {
        let last_seq_sent = self.next_seq - 1;
        self.legs[id.0 as usize].send_last_seq = last_seq_sent;
        Link {
            version: wire::VERSION,
            nonce: self.nonce,
            last_seq_sent,
            last_seq_recv: self.next_deliver - 1,
            ux: self.scheduler.ux(),
            flags,
        }
    }

    /// The driver reports that a leg's transport failed or closed: the leg is closed and its unacknowledged
    /// data moves to the other legs.
    pub fn leg_failed(&mut self, leg: LegId, reason: &str, now: Instant) {
        self.close_leg(leg, ProtocolError::Transport(reason.to_string()), now);
    }

    /// Removes a leg gracefully: it gets no new data, what it has not sent moves elsewhere, and it closes
    /// once what it carries is acknowledged.
    pub fn remove_leg(&mut self, leg: LegId, now: Instant) {
        let Some(l) = self.legs.get_mut(leg.0 as usize) else { return };
        if !l.is_up() {
            self.close_leg(leg, ProtocolError::Removed, now);
            return;
        }
        l.draining = true;
        let queued: Vec<(u64, usize)> = l.queue.drain(..).collect();
        l.queued_bytes = 0;
        let done = l.inflight.is_empty() && l.after_switch.is_none();
        self.reinject(leg, queued);
        if done {
            self.close_leg(leg, ProtocolError::Removed, now);
        }
        self.schedule();
    }

    /// Closes the whole tunnel; the driver then closes every leg's transport.
    pub fn close(&mut self) {
        for l in &mut self.legs {
            l.state = LegState::Closed;
        }
        self.close_tunnel(TunnelError::Closed);
    }

    fn close_tunnel(&mut self, error: TunnelError) {
        if self.closed.is_none() {
            self.closed = Some(error.clone());
            self.events.push_back(TunnelEvent::Closed(error));
        }
    }

    fn close_leg(&mut self, leg: LegId, error: ProtocolError, _now: Instant) {
        let Some(l) = self.legs.get_mut(leg.0 as usize) else { return };
        if l.state == LegState::Closed {
            return;
        }
        l.state = LegState::Closed;
        let mut pending: Vec<(u64, usize)> = Vec::new();
        if let Some((seq, _, cost, _)) = l.after_switch.take() {
            pending.push((seq, cost));
        }
        pending.extend(l.inflight.drain(..).map(|f| (f.seq, f.cost)));
        pending.extend(l.queue.drain(..));
        l.inflight_bytes = 0;
        l.queued_bytes = 0;
        pending.sort_unstable();
        pending.dedup_by_key(|p| p.0);
        self.stats.legs_closed += 1;
        self.events.push_back(TunnelEvent::LegClosed { leg, error: error.clone() });
        self.reinject(leg, pending);
        if self.legs.iter().all(|l| l.state == LegState::Closed) {
            self.close_tunnel(TunnelError::NoLegs(error.to_string()));
        }
        self.schedule();
    }

    /// Puts copies of `seqs` (those not yet received) on the best leg other than `from`, ahead of its new
    /// data; with no such leg they wait for the next leg to come up.
    fn reinject(&mut self, from: LegId, seqs: Vec<(u64, usize)>) {
        let pending: Vec<(u64, usize)> = seqs.into_iter().filter(|&(seq, _)| self.unreceived(seq)).collect();
        if pending.is_empty() {
            return;
        }
        self.stats.reinjected_cells += pending.len() as u64;
        match self.best_leg(Some(from)) {
            Some(to) => {
                let l = &mut self.legs[to.0 as usize];
                for &(seq, cost) in pending.iter().rev() {
                    l.queue.push_front((seq, cost));
                    l.queued_bytes += cost;
                }
            }
            None => self.orphans.extend(pending),
        }
    }

    fn unreceived(&self, seq: u64) -> bool {
        self.sent(seq).is_some_and(|s| !s.received)
    }

    fn sent(&self, seq: u64) -> Option<&Sent> {
        let index = seq.checked_sub(self.peer_cumulative + 1)?;
        self.send_log.get(usize::try_from(index).ok()?)
    }

    /// The lowest-RTT leg that is up (schedulable ones first, non-backup first), other than `except`.
    fn best_leg(&self, except: Option<LegId>) -> Option<LegId> {
        self.legs
            .iter()
            .filter(|l| l.is_up() && Some(l.id) != except)
            .min_by_key(|l| (!l.schedulable(), l.options.backup, l.rank_rtt()))
            .map(|l| l.id)
    }

    fn leg_up(&mut self, leg: LegId, rtt: Duration) {
        let up_min = self
            .legs
            .iter()
            .filter(|l| l.is_up() && l.id != leg)
            .map(|l| l.wrr_bytes / u64::from(l.options.weight))
            .min()
            .unwrap_or(0);
        let l = &mut self.legs[leg.0 as usize];
        l.state = LegState::Up;
        l.rtt_sample(rtt);
        l.wrr_bytes = up_min * u64::from(l.options.weight);
        for (seq, cost) in std::mem::take(&mut self.orphans) {
            l.queue.push_back((seq, cost));
            l.queued_bytes += cost;
        }
        self.stats.legs_linked += 1;
        self.events.push_back(TunnelEvent::LegUp { leg, rtt });
    }

    // ---------------------------------------------------------------------------------------------------
    // Receiving

    /// Handles one cell received on `leg`. A protocol violation closes that leg alone (its data moves to the
    /// other legs) and is returned so the driver can close the leg's transport and log it.
    pub fn handle_cell(&mut self, leg: LegId, cell: &Cell, now: Instant) -> Result<(), ProtocolError> {
        match self.legs.get(leg.0 as usize) {
            Some(l) if l.state != LegState::Closed => {}
            _ => return Ok(()),
        }
        let result = self.process(leg, cell, now);
        if let Err(e) = &result {
            self.stats.protocol_errors += 1;
            self.close_leg(leg, e.clone(), now);
        }
        self.schedule();
        result
    }

    fn max_ahead(&self) -> u64 {
        (self.config.reorder_limit / MIN_MESSAGE_COST) as u64
    }

    fn check_ahead(&self, seq: u64) -> Result<(), ProtocolError> {
        let max_ahead = self.max_ahead();
        if seq >= self.next_deliver.saturating_add(max_ahead) {
            return Err(ProtocolError::BeyondWindow { seq, expected: self.next_deliver, max_ahead });
        }
        Ok(())
    }

    fn check_link(&self, link: &Link) -> Result<(), ProtocolError> {
        if link.version != wire::VERSION {
            return Err(ProtocolError::Version(link.version));
        }
        if link.nonce != self.nonce {
            return Err(ProtocolError::NonceMismatch);
        }
        self.check_ahead(link.last_seq_sent.saturating_add(1))?;
        if link.last_seq_recv >= self.next_seq {
            return Err(ProtocolError::AckBeyondSent { acked: link.last_seq_recv, sent: self.next_seq - 1 });
        }
        Ok(())
    }

    fn process(&mut self, leg: LegId, cell: &Cell, now: Instant) -> Result<(), ProtocolError> {
        let msg = Message::from_cell(cell)?;
        let i = leg.0 as usize;
        let state = self.legs[i].state;
        match msg {
            Message::Link(link) => {
                if self.role != Role::Responder || state != LegState::AwaitLink {
                    return Err(ProtocolError::Unexpected("LINK on a leg that is already linking or linked"));
                }
                self.check_link(&link)?;
                self.ack_cumulative(link.last_seq_recv)?;
                if self.stats.legs_linked == 0 && self.legs.iter().filter(|l| l.state != LegState::Closed).count() == 1
                {
                    self.scheduler = Scheduler::from_ux(link.ux);
                }
                let linked = self.link_fields(leg, 0);
                let l = &mut self.legs[i];
                l.options.backup = link.flags & FLAG_BACKUP != 0;
                l.recv_last_seq = link.last_seq_sent;
                l.control.push_back(Message::Linked(linked));
                l.state = LegState::LinkedSent;
            }
            Message::Linked(link) => {
                if self.role != Role::Initiator {
                    return Err(ProtocolError::Unexpected("LINKED sent to the responder"));
                }
                if state != LegState::LinkSent {
                    return Err(ProtocolError::Unexpected("LINKED twice"));
                }
                self.check_link(&link)?;
                self.ack_cumulative(link.last_seq_recv)?;
                let l = &mut self.legs[i];
                l.recv_last_seq = link.last_seq_sent;
                l.control.push_back(Message::LinkedAck);
                let rtt = now.saturating_duration_since(l.handshake_sent_at.unwrap_or(l.created_at));
                self.leg_up(leg, rtt);
            }
            Message::LinkedAck => {
                if state != LegState::LinkedSent {
                    return Err(ProtocolError::Unexpected("LINKED_ACK"));
                }
                let l = &self.legs[i];
                let rtt = now.saturating_duration_since(l.handshake_sent_at.unwrap_or(l.created_at));
                self.leg_up(leg, rtt);
            }
            _ if state != LegState::Up => {
                return Err(ProtocolError::Unexpected("a data or SWITCH cell before the leg's handshake finished"));
            }
            Message::Switch(relative) => {
                if relative == 0 {
                    return Err(ProtocolError::SwitchZero);
                }
                if self.legs[i].last_was_switch {
                    return Err(ProtocolError::SwitchTwice);
                }
                let target = self.legs[i].recv_last_seq.saturating_add(u64::from(relative));
                self.check_ahead(target.saturating_add(1))?;
                let l = &mut self.legs[i];
                l.recv_last_seq = target;
                l.last_was_switch = true;
            }
            Message::Seq(body) => {
                let seq = self.legs[i].recv_last_seq + 1;
                let l = &mut self.legs[i];
                l.recv_last_seq = seq;
                l.last_was_switch = false;
                self.receive(i, seq, body, now)?;
            }
            Message::Resend(seq, body) => self.receive(i, seq, body, now)?,
            Message::DataAck { cumulative, leg_received } => {
                let confirmed = self.legs[i].on_ack(leg_received, now)?;
                for seq in confirmed {
                    let base = self.peer_cumulative + 1;
                    if let Some(s) = seq.checked_sub(base).and_then(|k| self.send_log.get_mut(k as usize)) {
                        s.received = true;
                    }
                }
                self.ack_cumulative(cumulative)?;
                let l = &self.legs[i];
                if l.draining && l.inflight.is_empty() && l.queue.is_empty() && l.after_switch.is_none() {
                    self.close_leg(leg, ProtocolError::Removed, now);
                }
            }
        }
        Ok(())
    }

    fn ack_cumulative(&mut self, cumulative: u64) -> Result<(), ProtocolError> {
        if cumulative >= self.next_seq {
            return Err(ProtocolError::AckBeyondSent { acked: cumulative, sent: self.next_seq - 1 });
        }
        while self.peer_cumulative < cumulative {
            let sent = self.send_log.pop_front().expect("the send log holds every unacknowledged sequence number");
            self.window_used -= sent.cost;
            self.peer_cumulative += 1;
        }
        Ok(())
    }

    fn receive(&mut self, i: usize, seq: u64, bytes: Bytes, now: Instant) -> Result<(), ProtocolError> {
        let body = Body::decode(bytes.clone())?;
        let data_bytes = if let Body::Data { data, .. } = &body { data.len() } else { 0 };
        let (every, delay) = (self.config.ack_every, self.config.ack_delay);
        if self.legs[i].note_received(data_bytes, every, delay, now) {
            self.ack_now(i);
        }
        if seq < self.next_deliver || self.reorder.contains_key(&seq) {
            self.stats.duplicates_dropped += 1;
            return Ok(());
        }
        self.check_ahead(seq)?;
        if seq == self.next_deliver {
            self.deliver(body);
            self.next_deliver += 1;
            while let Some((body, cost)) = self.reorder.remove(&self.next_deliver) {
                self.reorder_bytes -= cost;
                self.deliver(body);
                self.next_deliver += 1;
            }
            return Ok(());
        }
        let cost = wire::message_cost(&bytes);
        if self.reorder_bytes + cost > self.config.reorder_limit {
            return Err(ProtocolError::ReorderOverflow { limit: self.config.reorder_limit });
        }
        self.reorder.insert(seq, (body, cost));
        self.reorder_bytes += cost;
        self.stats.reorder_peak_bytes = self.stats.reorder_peak_bytes.max(self.reorder_bytes);
        Ok(())
    }

    fn ack_now(&mut self, i: usize) {
        let l = &mut self.legs[i];
        l.unacked_received = 0;
        l.ack_deadline = None;
        if !l.control.iter().any(|m| matches!(m, Message::DataAck { .. })) {
            l.control.push_back(Message::DataAck { cumulative: 0, leg_received: 0 });
        }
    }

    /// Applies one in-order message to its stream. Stream-level misbehaviour resets that stream alone.
    fn deliver(&mut self, body: Body) {
        self.stats.messages_delivered += 1;
        let id = body.stream();
        let peer_parity = if self.role == Role::Initiator { 0 } else { 1 };
        match body {
            Body::Begin { stream, window, target } => {
                if stream % 2 != peer_parity || self.streams.contains_key(&stream) {
                    self.stats.stream_violations += 1;
                    return;
                }
                if self.incoming.len() >= self.config.accept_backlog || self.streams.len() >= self.config.max_streams {
                    self.stats.streams_refused += 1;
                    self.control.push_back(Body::End { stream, reason: END_REFUSED });
                    return;
                }
                let mut s = Stream::new(Phase::Incoming, self.config.stream_window, target);
                s.send_credit = u64::from(window);
                self.streams.insert(stream, s);
                self.incoming.push_back(stream);
            }
            Body::Connected { window, .. } => match self.streams.get_mut(&id) {
                Some(s) if s.phase == Phase::Opening => {
                    s.phase = Phase::Open;
                    s.send_credit = u64::from(window);
                }
                _ => self.stats.unknown_stream_cells += 1,
            },
            Body::Data { data, .. } => {
                let Some(s) = self.streams.get_mut(&id) else {
                    self.stats.unknown_stream_cells += 1;
                    return;
                };
                if s.error.is_some() {
                    self.stats.unknown_stream_cells += 1;
                    return;
                }
                if s.peer_finished || data.len() as u64 > s.recv_window_left || s.phase == Phase::Opening {
                    self.stats.stream_violations += 1;
                    self.reset_stream(id, TunnelError::Reset(id));
                    return;
                }
                s.recv_window_left -= data.len() as u64;
                self.stats.data_bytes_delivered += data.len() as u64;
                if s.detached {
                    s.consumed += data.len() as u64;
                    self.maybe_sendme(id);
                } else {
                    s.recv_buffered += data.len();
                    s.recv_buf.push_back(data);
                }
            }
            Body::End { reason, .. } => {
                let Some(s) = self.streams.get_mut(&id) else {
                    self.stats.unknown_stream_cells += 1;
                    return;
                };
                match reason {
                    END_DONE => s.peer_finished = true,
                    END_REFUSED => {
                        s.error = Some(TunnelError::Refused(id));
                        s.send_buf.clear();
                        s.end_sent = true;
                    }
                    _ => {
                        s.error = Some(TunnelError::Reset(id));
                        s.send_buf.clear();
                        s.end_sent = true;
                    }
                }
                self.reap(id);
            }
            Body::Sendme { credit, .. } => match self.streams.get_mut(&id) {
                Some(s) => s.send_credit += u64::from(credit),
                None => self.stats.unknown_stream_cells += 1,
            },
        }
    }

    fn reset_stream(&mut self, id: u32, error: TunnelError) {
        if let Some(s) = self.streams.get_mut(&id) {
            if s.error.is_none() {
                s.error = Some(error);
            }
            s.send_buf.clear();
            if !s.end_sent {
                s.end_sent = true;
                self.control.push_back(Body::End { stream: id, reason: END_RESET });
            }
        }
        self.reap(id);
    }

    fn reap(&mut self, id: u32) {
        if self.streams.get(&id).is_some_and(Stream::finished) {
            self.streams.remove(&id);
        }
    }

    fn maybe_sendme(&mut self, id: u32) {
        let half = u64::from(self.config.stream_window / 2).max(1);
        if let Some(s) = self.streams.get_mut(&id)
            && s.consumed >= half
            && !s.peer_finished
            && s.error.is_none()
        {
            let credit = s.consumed.min(u64::from(u32::MAX));
            s.consumed -= credit;
            s.recv_window_left += credit;
            self.control.push_back(Body::Sendme { stream: id, credit: credit as u32 });
        }
    }

    // ---------------------------------------------------------------------------------------------------
    // Sending

    /// Gives sequence numbers to what waits to be sent, as far as the tunnel window and the legs' windows
    /// allow, and queues each on the leg(s) the scheduler picks.
    fn schedule(&mut self) {
        if self.closed.is_some() {
            return;
        }
        loop {
            let window_left = self.config.reorder_limit.saturating_sub(self.window_used);
            if window_left < MIN_MESSAGE_COST + 4 {
                return;
            }
            let legs = self.pick_legs();
            if legs.is_empty() {
                return;
            }
            let body = match self.control.pop_front() {
                Some(b) => b,
                None => match self.next_stream_message(window_left) {
                    Some(b) => b,
                    None => return,
                },
            };
            let data_bytes = if let Body::Data { data, .. } = &body { data.len() } else { 0 };
            let bytes = body.encode();
            let cost = wire::message_cost(&bytes);
            if cost > window_left {
                self.control.push_front(body);
                return;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            self.send_log.push_back(Sent { body: bytes, cost, data_bytes, received: false });
            self.window_used += cost;
            self.stats.messages_sent += 1;
            for leg in legs {
                let l = &mut self.legs[leg.0 as usize];
                l.queue.push_back((seq, cost));
                l.queued_bytes += cost;
                l.wrr_bytes += cost as u64;
            }
        }
    }

    fn pick_legs(&self) -> Vec<LegId> {
        let window = self.config.leg_window;
        let mut candidates: Vec<&Leg> = self.legs.iter().filter(|l| l.schedulable() && !l.options.backup).collect();
        if candidates.is_empty() {
            candidates = self.legs.iter().filter(|l| l.schedulable()).collect();
        }
        let with_room = || candidates.iter().filter(|l| l.has_room(window));
        match self.scheduler {
            Scheduler::MinRtt => candidates
                .iter()
                .min_by_key(|l| l.rank_rtt())
                .filter(|l| l.has_room(window))
                .map(|l| l.id)
                .into_iter()
                .collect(),
            Scheduler::LowRtt => with_room().min_by_key(|l| l.rank_rtt()).map(|l| l.id).into_iter().collect(),
            Scheduler::WeightedRoundRobin => with_room()
                .min_by(|a, b| {
                    let lhs = u128::from(a.wrr_bytes) * u128::from(b.options.weight);
                    let rhs = u128::from(b.wrr_bytes) * u128::from(a.options.weight);
                    lhs.cmp(&rhs)
                })
                .map(|l| l.id)
                .into_iter()
                .collect(),
            // Every leg gets every message while any leg has room; a leg that falls behind skips the copies
            // the others have delivered (the tunnel window bounds how far behind it can be).
            Scheduler::Redundant if with_room().next().is_some() => candidates.iter().map(|l| l.id).collect(),
            Scheduler::Redundant => Vec::new(),
        }
    }

    /// The next DATA or END of the streams, round-robin.
    fn next_stream_message(&mut self, window_left: usize) -> Option<Body> {
        let max = self.config.max_data.min(window_left - MIN_MESSAGE_COST);
        let start = self.round_robin_next;
        let id = self
            .streams
            .range(start..)
            .chain(self.streams.range(..start))
            .find(|(_, s)| s.sendable() > 0 || s.end_due())
            .map(|(id, _)| *id)?;
        self.round_robin_next = id.wrapping_add(1);
        let s = self.streams.get_mut(&id).expect("found above");
        let n = s.sendable().min(max);
        if n > 0 {
            let data = s.send_buf.split_to(n).freeze();
            s.send_credit -= n as u64;
            return Some(Body::Data { stream: id, data });
        }
        s.end_sent = true;
        let body = Body::End { stream: id, reason: END_DONE };
        self.reap(id);
        Some(body)
    }

    /// The next cell `leg` should send, if any. Call until it returns `None`, then again after any other call.
    pub fn poll_transmit(&mut self, leg: LegId, now: Instant) -> Option<Cell> {
        let cumulative = self.next_deliver - 1;
        let i = leg.0 as usize;
        let l = self.legs.get_mut(i)?;
        if l.state == LegState::Closed {
            return None;
        }
        if let Some((seq, body, cost, data_bytes)) = l.after_switch.take() {
            l.record_sent(seq, cost, data_bytes, now);
            return Some(Message::Seq(body).to_cell());
        }
        if let Some(mut m) = l.control.pop_front() {
            match &mut m {
                Message::Link(_) | Message::Linked(_) => l.handshake_sent_at = Some(now),
                Message::DataAck { cumulative: c, leg_received } => {
                    *c = cumulative;
                    *leg_received = l.cells_received;
                }
                _ => {}
            }
            return Some(m.to_cell());
        }
        if l.state != LegState::Up {
            return None;
        }
        while let Some((seq, cost)) = self.legs[i].queue.pop_front() {
            self.legs[i].queued_bytes -= cost;
            let Some(sent) = self.sent(seq) else { continue };
            if sent.received {
                continue;
            }
            let (body, data_bytes) = (sent.body.clone(), sent.data_bytes);
            let l = &mut self.legs[i];
            let next = l.send_last_seq + 1;
            if seq == next {
                l.send_last_seq = seq;
                l.record_sent(seq, cost, data_bytes, now);
                return Some(Message::Seq(body).to_cell());
            }
            if seq > next
                && let Ok(relative) = u32::try_from(seq - next)
            {
                l.send_last_seq = seq;
                l.after_switch = Some((seq, body, cost, data_bytes) as Owed);
                self.stats.switches_sent += 1;
                return Some(Message::Switch(relative).to_cell());
            }
            l.record_sent(seq, cost, data_bytes, now);
            self.stats.resend_cells_sent += 1;
            return Some(Message::Resend(seq, body).to_cell());
        }
        self.schedule();
        let l = &self.legs[i];
        if l.queue.is_empty() { None } else { self.poll_transmit(leg, now) }
    }

    // ---------------------------------------------------------------------------------------------------
    // Timers

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let c = &self.config;
        self.legs
            .iter()
            .filter(|l| l.state != LegState::Closed)
            .flat_map(|l| {
                let handshake = (!l.is_up()).then(|| l.created_at + c.handshake_timeout);
                let stall = (l.is_up() && !l.inflight.is_empty()).then(|| {
                    if l.suspect {
                        l.progress_at + c.leg_timeout
                    } else {
                        l.progress_at + l.reinject_after(c.reinject_after)
                    }
                });
                [handshake, l.ack_deadline, stall]
            })
            .flatten()
            .min()
    }

    /// Runs every timer due at `now`: delayed DATA_ACKs, handshake timeouts, stall detection and
    /// reinjection, and silent legs' closing.
    pub fn handle_timeout(&mut self, now: Instant) {
        for i in 0..self.legs.len() {
            let l = &self.legs[i];
            if l.state == LegState::Closed {
                continue;
            }
            let id = l.id;
            if !l.is_up() && now >= l.created_at + self.config.handshake_timeout {
                self.close_leg(id, ProtocolError::HandshakeTimeout(self.config.handshake_timeout), now);
                continue;
            }
            if l.ack_deadline.is_some_and(|d| now >= d) {
                self.ack_now(i);
            }
            let l = &self.legs[i];
            if l.is_up() && !l.inflight.is_empty() {
                let silent = now.saturating_duration_since(l.progress_at);
                if silent >= self.config.leg_timeout {
                    self.close_leg(id, ProtocolError::Silent(silent), now);
                } else if !l.suspect && silent >= l.reinject_after(self.config.reinject_after) {
                    let l = &mut self.legs[i];
                    l.suspect = true;
                    let outstanding: Vec<(u64, usize)> = l.inflight.iter().map(|f| (f.seq, f.cost)).collect();
                    let queued: Vec<(u64, usize)> = l.queue.drain(..).collect();
                    l.queued_bytes = 0;
                    self.stats.stalls += 1;
                    self.reinject(id, outstanding.into_iter().chain(queued).collect());
                }
            }
        }
        self.schedule();
    }

    // ---------------------------------------------------------------------------------------------------
    // Streams

    fn live(&self) -> Result<(), TunnelError> {
        match &self.closed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn stream_mut(&mut self, id: u32) -> Result<&mut Stream, TunnelError> {
        self.streams.get_mut(&id).ok_or(TunnelError::UnknownStream(id))
    }

    /// Opens a stream to `target` (the peer's application decides what that means); returns its ID. Data
    /// can be written at once; it leaves when the peer accepts.
    pub fn open_stream(&mut self, target: &str) -> Result<u32, TunnelError> {
        self.live()?;
        if self.streams.len() >= self.config.max_streams {
            return Err(TunnelError::TooManyStreams(self.config.max_streams));
        }
        let id = self.next_stream_id;
        self.next_stream_id = self.next_stream_id.wrapping_add(2);
        self.streams.insert(id, Stream::new(Phase::Opening, self.config.stream_window, target.to_string()));
        self.control.push_back(Body::Begin { stream: id, window: self.config.stream_window, target: target.into() });
        self.stats.streams_opened += 1;
        self.schedule();
        Ok(id)
    }

    /// A stream the peer opened, with its target, if one waits; it is accepted (CONNECTED goes back).
    pub fn accept_stream(&mut self) -> Option<(u32, String)> {
        while let Some(id) = self.incoming.pop_front() {
            let window = self.config.stream_window;
            let Some(s) = self.streams.get_mut(&id) else { continue };
            if s.error.is_some() {
                continue;
            }
            s.phase = Phase::Open;
            let target = s.target.clone();
            self.control.push_back(Body::Connected { stream: id, window });
            self.stats.streams_accepted += 1;
            self.schedule();
            return Some((id, target));
        }
        None
    }

    /// Whether a stream this side opened is accepted: `Ok(false)` while the peer has not answered.
    pub fn stream_connected(&self, id: u32) -> Result<bool, TunnelError> {
        let s = self.streams.get(&id).ok_or(TunnelError::UnknownStream(id))?;
        if let Some(e) = &s.error {
            return Err(e.clone());
        }
        self.live()?;
        Ok(s.phase == Phase::Open)
    }

    /// Buffers up to `data.len()` bytes for sending; returns how many were taken (0 when the buffer is full).
    pub fn stream_write(&mut self, id: u32, data: &[u8]) -> Result<usize, TunnelError> {
        self.live()?;
        let limit = self.config.stream_send_buffer;
        let s = self.stream_mut(id)?;
        if let Some(e) = &s.error {
            return Err(e.clone());
        }
        if s.finishing {
            return Err(TunnelError::Finished(id));
        }
        let n = data.len().min(limit.saturating_sub(s.send_buf.len()));
        s.send_buf.extend_from_slice(&data[..n]);
        self.schedule();
        Ok(n)
    }

    /// Reads received bytes: `Some(n > 0)` bytes, `Some(0)` at the end of the stream, `None` if nothing is
    /// there yet.
    pub fn stream_read(&mut self, id: u32, buf: &mut [u8]) -> Result<Option<usize>, TunnelError> {
        let s = self.stream_mut(id)?;
        if s.recv_buffered > 0 && !buf.is_empty() {
            let n = s.read_into(buf);
            self.maybe_sendme(id);
            self.schedule();
            return Ok(Some(n));
        }
        if let Some(e) = &s.error {
            return Err(e.clone());
        }
        if s.peer_finished || buf.is_empty() {
            return Ok(Some(0));
        }
        self.live()?;
        Ok(None)
    }

    /// Bytes received and not yet read.
    pub fn stream_readable_bytes(&self, id: u32) -> usize {
        self.streams.get(&id).map_or(0, |s| s.recv_buffered)
    }

    /// Bytes written and not yet sent.
    pub fn stream_unsent_bytes(&self, id: u32) -> usize {
        self.streams.get(&id).map_or(0, |s| s.send_buf.len())
    }

    /// Ends the sending direction: END follows the data already written.
    pub fn stream_finish(&mut self, id: u32) -> Result<(), TunnelError> {
        let s = self.stream_mut(id)?;
        s.finishing = true;
        self.schedule();
        Ok(())
    }

    /// Resets the stream in both directions.
    pub fn stream_reset(&mut self, id: u32) {
        self.reset_stream(id, TunnelError::Reset(id));
        self.schedule();
    }

    /// The application let go of the stream: it finishes writing; data still arriving is discarded, and
    /// the stream is forgotten once both directions have ended.
    pub fn stream_detach(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.detached = true;
            s.finishing = true;
            let unread = s.recv_buffered as u64;
            s.recv_buf.clear();
            s.recv_buffered = 0;
            s.consumed += unread;
            self.maybe_sendme(id);
        }
        self.reap(id);
        self.schedule();
    }

    /// Sequence numbers assigned so far (the last one), and the highest the peer has in order.
    pub fn send_progress(&self) -> (u64, u64) {
        (self.next_seq - 1, self.peer_cumulative)
    }

    /// Whether the peer has, in order, everything this side has queued so far: every stream's data and END
    /// (streams that were reset excepted) and every tunnel-level control message. A side that is done with
    /// the tunnel waits for this before closing it, so closing loses nothing the peer was still to receive.
    pub fn delivered(&self) -> bool {
        self.control.is_empty()
            && self
                .streams
                .values()
                .all(|s| s.error.is_some() || (s.send_buf.is_empty() && (!s.finishing || s.end_sent)))
            && self.peer_cumulative + 1 >= self.next_seq
    }
}
