//! One leg's state: its handshake, what it has queued and in flight, its RTT, and the receive side's
//! implicit sequence numbering.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::config::LegOptions;
use super::error::ProtocolError;
use super::wire::Message;

/// Identifies a leg within its tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegId(pub u32);

impl std::fmt::Display for LegId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "leg {}", self.0)
    }
}

/// Where a leg is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegState {
    /// Responder: waiting for the initiator's LINK.
    AwaitLink,
    /// Initiator: LINK queued or sent, waiting for LINKED.
    LinkSent,
    /// Responder: LINKED queued or sent, waiting for LINKED_ACK.
    LinkedSent,
    /// Linked: carries data.
    Up,
    /// Closed; kept only for its statistics.
    Closed,
}

/// One sequenced cell sent on a leg and not yet acknowledged by that leg's DATA_ACK.
#[derive(Debug, Clone, Copy)]
pub(super) struct InFlight {
    /// Position in the leg's own count of sequenced cells (1-based).
    pub count: u64,
    pub seq: u64,
    pub cost: usize,
    pub sent_at: Instant,
}

/// Counters and state of one leg, from [`TunnelCore::leg_stats`](super::TunnelCore::leg_stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegStats {
    /// The leg.
    pub id: LegId,
    /// Its state.
    pub state: LegState,
    /// Whether it is a backup leg.
    pub backup: bool,
    /// Whether it is suspect (silent with data outstanding; gets no new data until it acknowledges).
    pub suspect: bool,
    /// Smoothed RTT, once measured (the handshake gives the first sample).
    pub srtt: Option<Duration>,
    /// Sequenced cells sent on this leg (first copies, reinjections and redundant copies).
    pub cells_sent: u64,
    /// Stream payload bytes sent on this leg.
    pub data_bytes_sent: u64,
    /// Sequenced cells received on this leg.
    pub cells_received: u64,
    /// Stream payload bytes received on this leg (duplicates included).
    pub data_bytes_received: u64,
    /// Bytes sent on this leg that it has not acknowledged.
    pub inflight_bytes: usize,
}

pub(super) struct Leg {
    pub id: LegId,
    pub state: LegState,
    pub options: LegOptions,
    pub created_at: Instant,
    /// Leg-level messages to send first (LINK, LINKED, LINKED_ACK, DATA_ACK).
    pub control: VecDeque<Message>,
    /// When LINK or LINKED left, for the handshake's RTT sample.
    pub handshake_sent_at: Option<Instant>,
    /// Sequence numbers assigned to this leg, not yet sent.
    pub queue: VecDeque<(u64, usize)>,
    pub queued_bytes: usize,
    /// A SEQ to send right after the SWITCH just sent.
    pub after_switch: Option<(u64, bytes::Bytes, usize, usize)>,
    /// The last sequence number our SEQ cells on this leg stood for (their implicit base).
    pub send_last_seq: u64,
    pub cells_sent: u64,
    pub data_bytes_sent: u64,
    pub inflight: VecDeque<InFlight>,
    pub inflight_bytes: usize,
    /// When the oldest outstanding cell was last known to be progressing (an ack, or the first send).
    pub progress_at: Instant,
    pub suspect: bool,
    /// Removed by the application: no new data; closed once what it carries is acknowledged.
    pub draining: bool,
    pub srtt: Option<Duration>,
    /// The smallest RTT sample: the path's delay without queueing, which ranks legs.
    pub min_rtt: Option<Duration>,
    /// Bytes of data assigned to this leg, for weighted round-robin.
    pub wrr_bytes: u64,

    /// Receive side: the sequence number of the last SEQ on this leg (the implicit base).
    pub recv_last_seq: u64,
    pub last_was_switch: bool,
    pub cells_received: u64,
    pub data_bytes_received: u64,
    pub unacked_received: u32,
    pub ack_deadline: Option<Instant>,
}

impl Leg {
    pub fn new(id: LegId, state: LegState, options: LegOptions, now: Instant) -> Leg {
        Leg {
            id,
            state,
            options,
            created_at: now,
            control: VecDeque::new(),
            handshake_sent_at: None,
            queue: VecDeque::new(),
            queued_bytes: 0,
            after_switch: None,
            send_last_seq: 0,
            cells_sent: 0,
            data_bytes_sent: 0,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            progress_at: now,
            suspect: false,
            draining: false,
            srtt: None,
            min_rtt: None,
            wrr_bytes: 0,
            recv_last_seq: 0,
            last_was_switch: false,
            cells_received: 0,
            data_bytes_received: 0,
            unacked_received: 0,
            ack_deadline: None,
        }
    }

    pub fn is_up(&self) -> bool {
        self.state == LegState::Up
    }

    /// Up, not suspect, not being removed: may be given new data.
    pub fn schedulable(&self) -> bool {
        self.is_up() && !self.suspect && !self.draining
    }

    pub fn has_room(&self, leg_window: usize) -> bool {
        self.inflight_bytes + self.queued_bytes < leg_window
    }

    /// The RTT used to rank legs, the smallest sample (queueing behind a full window must not make a fast
    /// path look slow); unmeasured legs rank last.
    pub fn rank_rtt(&self) -> Duration {
        self.min_rtt.unwrap_or(Duration::from_secs(3600))
    }

    pub fn rtt_sample(&mut self, sample: Duration) {
        self.min_rtt = Some(self.min_rtt.map_or(sample, |m| m.min(sample)));
        self.srtt = Some(match self.srtt {
            None => sample,
            Some(s) => (s * 7 + sample) / 8,
        });
    }

    /// How long outstanding data may go unacknowledged before the leg is suspect.
    pub fn reinject_after(&self, floor: Duration) -> Duration {
        floor.max(self.srtt.map_or(Duration::ZERO, |s| s * 3)).min(Duration::from_secs(2))
    }

    /// Records one sequenced cell leaving on this leg.
    pub fn record_sent(&mut self, seq: u64, cost: usize, data_bytes: usize, now: Instant) {
        self.cells_sent += 1;
        self.data_bytes_sent += data_bytes as u64;
        if self.inflight.is_empty() {
            self.progress_at = now;
        }
        self.inflight.push_back(InFlight { count: self.cells_sent, seq, cost, sent_at: now });
        self.inflight_bytes += cost;
    }

    /// Applies the leg-level half of a DATA_ACK; returns the sequence numbers it confirms received.
    pub fn on_ack(&mut self, leg_received: u64, now: Instant) -> Result<Vec<u64>, ProtocolError> {
        if leg_received > self.cells_sent {
            return Err(ProtocolError::AckBeyondSent { acked: leg_received, sent: self.cells_sent });
        }
        let mut confirmed = Vec::new();
        let mut newest = None;
        while let Some(f) = self.inflight.front().copied() {
            if f.count > leg_received {
                break;
            }
            self.inflight.pop_front();
            self.inflight_bytes -= f.cost;
            confirmed.push(f.seq);
            newest = Some(f.sent_at);
        }
        if let Some(sent_at) = newest {
            self.rtt_sample(now.saturating_duration_since(sent_at));
            self.progress_at = now;
            self.suspect = false;
        }
        Ok(confirmed)
    }

    /// Counts a sequenced cell received and says whether a DATA_ACK is due now.
    pub fn note_received(&mut self, data_bytes: usize, ack_every: u32, ack_delay: Duration, now: Instant) -> bool {
        self.cells_received += 1;
        self.data_bytes_received += data_bytes as u64;
        self.unacked_received += 1;
        if self.unacked_received >= ack_every {
            return true;
        }
        if self.ack_deadline.is_none() {
            self.ack_deadline = Some(now + ack_delay);
        }
        false
    }

    pub fn stats(&self) -> LegStats {
        LegStats {
            id: self.id,
            state: self.state,
            backup: self.options.backup,
            suspect: self.suspect,
            srtt: self.srtt,
            cells_sent: self.cells_sent,
            data_bytes_sent: self.data_bytes_sent,
            cells_received: self.cells_received,
            data_bytes_received: self.data_bytes_received,
            inflight_bytes: self.inflight_bytes,
        }
    }
}
