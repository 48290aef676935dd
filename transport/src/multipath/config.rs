//! A tunnel's settings, its scheduler, and the options of one leg.

use std::time::Duration;

/// How a tunnel spreads sequenced cells over its legs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheduler {
    /// Every cell on the live leg with the lowest smoothed RTT, waiting for it when its window is full
    /// (proposal 329's MinRTT: lowest latency, no aggregation).
    MinRtt,
    /// Every cell on the lowest-RTT leg that has window room (proposal 329's LowRTT): fills the fastest leg
    /// first and spills onto the others, so it aggregates bandwidth.
    LowRtt,
    /// Legs take turns in proportion to their weights ([`LegOptions::weight`]), skipping full ones.
    WeightedRoundRobin,
    /// Every cell on every live leg; the first copy to arrive wins, the others are dropped as duplicates.
    Redundant,
}

impl Scheduler {
    /// The desired-UX byte of LINK that asks for this scheduler. Proposal 329 defines 0–4; 0x80 and 0x81
    /// are plebnet's.
    pub fn ux(self) -> u8 {
        match self {
            Scheduler::MinRtt => 1, // UX_MIN_LATENCY
            Scheduler::LowRtt => 4, // UX_HIGH_THROUGHPUT
            Scheduler::WeightedRoundRobin => 0x80,
            Scheduler::Redundant => 0x81,
        }
    }

    /// The scheduler a desired-UX byte asks for; unknown values get [`Scheduler::LowRtt`].
    pub fn from_ux(ux: u8) -> Scheduler {
        match ux {
            1 | 2 => Scheduler::MinRtt,
            0x80 => Scheduler::WeightedRoundRobin,
            0x81 => Scheduler::Redundant,
            _ => Scheduler::LowRtt,
        }
    }

    /// Parses `minrtt`, `lowrtt`, `wrr` or `redundant`.
    pub fn parse(name: &str) -> Option<Scheduler> {
        Some(match name {
            "minrtt" => Scheduler::MinRtt,
            "lowrtt" => Scheduler::LowRtt,
            "wrr" => Scheduler::WeightedRoundRobin,
            "redundant" => Scheduler::Redundant,
            _ => return None,
        })
    }
}

/// Options of one leg, given when it is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegOptions {
    /// A backup leg carries data only while no other leg is live.
    pub backup: bool,
    /// The leg's share under [`Scheduler::WeightedRoundRobin`] (ignored by the others); at least 1.
    pub weight: u32,
}

impl Default for LegOptions {
    fn default() -> Self {
        LegOptions { backup: false, weight: 1 }
    }
}

/// The settings of a tunnel. Both ends should use the same values; each announces its stream windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    /// The scheduler of the initiator; a responder adopts the one the initiator's LINK asks for.
    pub scheduler: Scheduler,
    /// The reorder queue's bound in bytes. The sender never has more than this outstanding beyond what the
    /// receiver has in order, so the receiver's queue never holds more; a peer that sends more loses its leg.
    pub reorder_limit: usize,
    /// Bytes a stream's receiver accepts before it returns credit with SENDME.
    pub stream_window: u32,
    /// Bytes a stream buffers for sending before `write` returns 0.
    pub stream_send_buffer: usize,
    /// Largest DATA payload per cell.
    pub max_data: usize,
    /// Bytes a leg may have sent but not yet acknowledged (plus queued for it).
    pub leg_window: usize,
    /// A receiver sends DATA_ACK after this many sequenced cells on a leg...
    pub ack_every: u32,
    /// ...or this long after the first one it has not acknowledged.
    pub ack_delay: Duration,
    /// A leg whose outstanding data has not been acknowledged for max(this, 3 × its RTT) is suspect: its
    /// unacknowledged cells are reinjected on the other legs and it gets no new data until it acknowledges.
    pub reinject_after: Duration,
    /// A leg silent this long with data outstanding is closed.
    pub leg_timeout: Duration,
    /// A leg whose handshake has not finished after this long is closed.
    pub handshake_timeout: Duration,
    /// Streams open at once, in both directions.
    pub max_streams: usize,
    /// Streams the peer opened that wait for `accept_stream`; more are refused.
    pub accept_backlog: usize,
}

impl Default for TunnelConfig {
    /// LowRTT, an 8 MiB reorder bound, 4 MiB stream windows (more than the legs' windows together, so one
    /// stream can use them all), 1 MiB send buffers, 4 KiB data cells, 1 MiB per leg in flight,
    /// DATA_ACK every 8 cells or 5 ms, reinjection after 200 ms of silence, legs closed after 5 s of silence.
    fn default() -> Self {
        TunnelConfig {
            scheduler: Scheduler::LowRtt,
            reorder_limit: 8 << 20,
            stream_window: 4 << 20,
            stream_send_buffer: 1 << 20,
            max_data: 4096,
            leg_window: 1 << 20,
            ack_every: 8,
            ack_delay: Duration::from_millis(5),
            reinject_after: Duration::from_millis(200),
            leg_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            max_streams: 1024,
            accept_backlog: 128,
        }
    }
}
