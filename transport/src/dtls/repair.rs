//! Loss repair on the DTLS link, sans-IO: selective retransmission of lost
//! records, below the overlay's TCP connections.
//!
//! Why: smoltcp's TCP waits at least a second for a lost segment whose fast
//! retransmit did not happen, and doubles that wait each time the
//! retransmission is lost too. At 30 % loss each way a TCP connection over a
//! bare DTLS link moves a few KB/s. The link sees every loss within a round
//! trip of its own (a millisecond on loopback, not TCP's second), so it
//! repairs them first: what TCP sees is a packet that came late, rarely one
//! that never came.
//!
//! * **No head-of-line blocking.** A packet is delivered the moment it
//!   arrives, in whatever order; only the lost one waits for its repair. One
//!   circuit's loss still stalls nobody else (the point of TCP-over-DTLS).
//! * **Small packets twice.** Packets up to
//!   [`LinkRepair::duplicate_up_to`] bytes are sent twice at once: losing
//!   both is rare, and a repair would cost them a round trip.
//! * **Exactly once.** Each packet carries a link sequence number; the
//!   receiver remembers the last [`DEDUP_BITS`] numbers and drops a copy of
//!   one it delivered (a retransmission whose original was only late).
//! * **Bounded.** A sender keeps at most [`MAX_KEPT`] packets for repair and
//!   tries each at most [`LinkRepair::max_retransmits`] more times; beyond,
//!   it gives the packet up and the overlay's TCP repairs it (counted).
//!
//! Wire format, inside one DTLS application record (IP packets start with a
//! version nibble of 4 or 6, so a bare packet is still told apart):
//!
//! ```text
//!   data: 0x01 | seq (u32 BE) | IP packet
//!   ack:  0x02 | highest seq received (u32 BE) | 256-bit map: bit i set
//!         = seq (highest - 1 - i) received | n (u8) | n late seqs (u32 BE)
//! ```
//!
//! The late seqs are repairs (and copies) that arrived lately too far below
//! the highest for the map: without them a sender with many packets in
//! flight would never hear that its repair got through, and would repeat it
//! until it gave up. Each is listed in the next [`LATE_REPEATS`]
//! acknowledgements, and an acknowledgement that lists any is sent twice,
//! since after the last packets no later one may come.
//!
//! Loss is detected as in RACK (RFC 8985): a packet is lost once one sent
//! after it was acknowledged and a reordering window passed, or, when
//! acknowledgements stop, after a probe timeout (RFC 9002's PTO, with its
//! exponential backoff).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::link::DtlsLinkCounters;

/// First byte of a sequenced packet.
pub(crate) const DATA: u8 = 0x01;
/// First byte of an acknowledgement.
pub(crate) const ACK: u8 = 0x02;
/// Bytes before the packet in a data frame.
pub(crate) const DATA_HEADER: usize = 5;
/// Sequence numbers below the highest that one acknowledgement reports.
const ACK_BITS: u32 = 256;
/// Bytes of an acknowledgement before its late seqs.
const ACK_FIXED: usize = 6 + ACK_BITS as usize / 8;
/// Late seqs one acknowledgement lists at most.
const MAX_LATE: usize = 64;
/// Acknowledgements that list one late seq (acknowledgements are lost too).
const LATE_REPEATS: u8 = 4;
/// Sequence numbers a receiver remembers, to drop copies.
pub const DEDUP_BITS: u32 = 8192;
/// Packets a sender keeps for repair at most: half of what a receiver
/// remembers, so nothing it repeats is too old for the receiver to judge.
pub const MAX_KEPT: u32 = DEDUP_BITS / 2;
/// Round-trip time assumed before the first measurement.
const INITIAL_RTT: Duration = Duration::from_millis(50);
/// Smallest reordering window: late packets within it are not repeated.
const MIN_REORDER_WINDOW: Duration = Duration::from_millis(1);
/// The probe timeout doubles with each probe, up to 2^this times.
const MAX_PROBE_BACKOFF: u32 = 3;
/// Packets repeated at most per probe timeout.
const PROBE_BURST: usize = 16;
/// Frame buffers kept for reuse.
const SPARE_BUFFERS: usize = 256;

/// Settings of a link's loss repair.
#[derive(Debug, Clone)]
pub struct LinkRepair {
    /// Send packets sequenced, and repeat the lost ones. Off sends bare
    /// packets (each side always understands both). Default on.
    pub enabled: bool,
    /// Repeats of one packet after its first sending, at most. Default 12:
    /// at 30 % loss each way a repair round trip fails half the time, and
    /// one packet in 4,000 that needed repair is left to TCP.
    pub max_retransmits: u32,
    /// Longest a receiver holds back an acknowledgement. Default 1 ms.
    pub ack_delay: Duration,
    /// Packets received after which an acknowledgement leaves at once.
    /// Default 16.
    pub ack_every: u32,
    /// Packets up to this many bytes are sent twice (the receiver drops
    /// the copy). Repair costs a round trip; a lone small packet (a
    /// keystroke, an interactive cell, a TCP acknowledgement) is better
    /// off not needing it. Default 640 bytes: one 514-byte cell in a TCP
    /// segment over IPv6 with options. 0 turns it off.
    pub duplicate_up_to: usize,
}

impl Default for LinkRepair {
    fn default() -> Self {
        Self {
            enabled: true,
            max_retransmits: 12,
            ack_delay: Duration::from_millis(1),
            ack_every: 16,
            duplicate_up_to: 640,
        }
    }
}

/// One session's repair state, both directions.
#[derive(Debug)]
pub(crate) struct Repair {
    config: LinkRepair,
    sender: Sender,
    receiver: Receiver,
    /// Sequence numbers found lost, to repeat at the next output.
    lost: Vec<u32>,
    /// Scratch for an outgoing acknowledgement.
    ack: Vec<u8>,
    /// The latest time seen, for "due at once".
    clock: Instant,
}

impl Repair {
    pub(crate) fn new(config: LinkRepair, now: Instant) -> Self {
        Self {
            config,
            sender: Sender::new(),
            receiver: Receiver::new(),
            lost: Vec::new(),
            ack: Vec::with_capacity(ACK_FIXED + 4 * MAX_LATE),
            clock: now,
        }
    }

    /// Packets kept for repair.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.sender.kept.iter().flatten().count()
    }

    /// Whether outgoing packets are sequenced.
    pub(crate) fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// Whether a packet of `len` bytes is sent twice.
    pub(crate) fn duplicates(&self, len: usize) -> bool {
        self.config.enabled && len <= self.config.duplicate_up_to
    }

    /// Frames `packet` as a sequenced packet sent at `now` and keeps it for
    /// repair; returns the frame to send.
    pub(crate) fn frame(&mut self, now: Instant, packet: &[u8], counters: &DtlsLinkCounters) -> &[u8] {
        self.clock = self.clock.max(now);
        self.sender.frame(now, packet, counters)
    }

    /// A decrypted record from the peer: returns the IP packet to deliver,
    /// if any. Acknowledgements and copies deliver nothing; malformed frames
    /// are counted.
    pub(crate) fn receive<'a>(
        &mut self,
        now: Instant,
        record: &'a [u8],
        counters: &DtlsLinkCounters,
    ) -> Option<&'a [u8]> {
        self.clock = self.clock.max(now);
        match record.first() {
            Some(&DATA) if record.len() > DATA_HEADER => {
                let seq = u32::from_be_bytes(record[1..5].try_into().expect("4 bytes"));
                if self.receiver.accept(now, seq, &self.config) {
                    Some(&record[DATA_HEADER..])
                } else {
                    counters.rx_repair_duplicates.inc();
                    None
                }
            }
            Some(&ACK)
                if record.len() >= ACK_FIXED && record.len() == ACK_FIXED + 4 * record[ACK_FIXED - 1] as usize =>
            {
                counters.rx_repair_acks.inc();
                let highest = u32::from_be_bytes(record[1..5].try_into().expect("4 bytes"));
                let late = record[ACK_FIXED..].chunks_exact(4).map(|c| u32::from_be_bytes(c.try_into().expect("4")));
                self.sender.on_ack(now, highest, &record[5..ACK_FIXED - 1], late, &mut self.lost);
                self.sender.detect_lost(now, &mut self.lost);
                None
            }
            Some(&DATA | &ACK) => {
                counters.rx_dropped_bad_frame.inc();
                None
            }
            // A bare IP packet (the peer does not sequence).
            _ => Some(record),
        }
    }

    /// When [`output`](Self::output) is next due, if ever.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if !self.lost.is_empty() || self.receiver.ack_now {
            return Some(self.clock);
        }
        let ack = self.receiver.ack_at;
        let repair = self.sender.deadline(&self.config);
        [ack, repair].into_iter().flatten().min()
    }

    /// Sends what is due at `now` through `send`: an acknowledgement, and
    /// the packets found lost (or given up and counted).
    pub(crate) fn output(&mut self, now: Instant, counters: &DtlsLinkCounters, send: &mut dyn FnMut(&[u8])) {
        self.clock = self.clock.max(now);
        if self.receiver.ack_now || self.receiver.ack_at.is_some_and(|t| t <= now) {
            self.receiver.write_ack(&mut self.ack);
            counters.tx_repair_acks.inc();
            send(&self.ack);
            if self.ack[ACK_FIXED - 1] > 0 {
                // It answers a repair: the sender stops repeating only once
                // it hears, and after the last packet no later
                // acknowledgement may come to list it again. Small: twice.
                counters.tx_repair_acks.inc();
                send(&self.ack);
            }
        }
        self.sender.detect_lost(now, &mut self.lost);
        if self.lost.is_empty() && self.sender.deadline(&self.config).is_some_and(|t| t <= now) {
            self.sender.probe(now, &self.config, &mut self.lost);
        }
        // Taken and put back, so the list keeps its capacity.
        let mut lost = std::mem::take(&mut self.lost);
        for seq in lost.drain(..) {
            if let Some(frame) = self.sender.resend(now, seq, &self.config, counters) {
                counters.tx_repair_retransmits.inc();
                send(frame);
            }
        }
        self.lost = lost;
    }
}

/// What was sent and not yet acknowledged.
#[derive(Debug)]
struct Kept {
    frame: Vec<u8>,
    sent_at: Instant,
    tries: u32,
}

/// The sending half: kept packets, round-trip estimate, loss detection.
#[derive(Debug)]
struct Sender {
    /// Sequence number of `kept[0]`.
    base: u32,
    /// Packets by sequence number from `base`; `None` once acknowledged or
    /// given up.
    kept: VecDeque<Option<Kept>>,
    /// (seq, sent at) in order of transmission; a record whose packet was
    /// acknowledged or sent again since is stale and skipped.
    flight: VecDeque<(u32, Instant)>,
    spare: Vec<Vec<u8>>,
    srtt: Duration,
    rttvar: Duration,
    /// The round trip of the packet acknowledged last.
    latest_rtt: Duration,
    /// When the latest-sent acknowledged packet was sent (RACK's xmit_ts).
    rack: Option<Instant>,
    /// Probe timeouts since the last acknowledgement that moved anything.
    probes: u32,
}

impl Sender {
    fn new() -> Self {
        Self {
            base: 0,
            kept: VecDeque::new(),
            flight: VecDeque::new(),
            spare: Vec::new(),
            srtt: INITIAL_RTT,
            rttvar: INITIAL_RTT / 2,
            latest_rtt: INITIAL_RTT,
            rack: None,
            probes: 0,
        }
    }

    fn next_seq(&self) -> u32 {
        self.base.wrapping_add(self.kept.len() as u32)
    }

    fn frame(&mut self, now: Instant, packet: &[u8], counters: &DtlsLinkCounters) -> &[u8] {
        if self.kept.len() >= MAX_KEPT as usize {
            if let Some(Some(old)) = self.kept.pop_front() {
                counters.tx_repair_given_up.inc();
                self.recycle(old.frame);
            }
            self.base = self.base.wrapping_add(1);
        }
        let seq = self.next_seq();
        let mut frame = self.spare.pop().unwrap_or_default();
        frame.clear();
        frame.push(DATA);
        frame.extend_from_slice(&seq.to_be_bytes());
        frame.extend_from_slice(packet);
        self.kept.push_back(Some(Kept { frame, sent_at: now, tries: 0 }));
        self.flight.push_back((seq, now));
        &self.kept.back().and_then(Option::as_ref).expect("just pushed").frame
    }

    fn recycle(&mut self, frame: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS {
            self.spare.push(frame);
        }
    }

    /// The kept packet `seq`, if it still waits.
    fn entry(&self, seq: u32) -> Option<&Kept> {
        let index = seq.wrapping_sub(self.base) as usize;
        self.kept.get(index).and_then(Option::as_ref)
    }

    /// An acknowledgement: `highest` and the map of the numbers below it.
    fn on_ack(&mut self, now: Instant, highest: u32, map: &[u8], late: impl Iterator<Item = u32>, lost: &mut Vec<u32>) {
        let mut moved = false;
        let mapped = (0..=ACK_BITS)
            .filter(|&i| i == 0 || map[(i as usize - 1) / 8] & (1 << ((i - 1) % 8)) != 0)
            .map(|i| highest.wrapping_sub(i));
        for seq in mapped.chain(late) {
            let index = seq.wrapping_sub(self.base) as usize;
            let Some(kept) = self.kept.get_mut(index).and_then(Option::take) else { continue };
            moved = true;
            if kept.tries == 0 {
                self.sample(now.saturating_duration_since(kept.sent_at));
            }
            self.rack = Some(self.rack.map_or(kept.sent_at, |r| r.max(kept.sent_at)));
            self.recycle(kept.frame);
        }
        if moved {
            self.probes = 0;
            while let Some(None) = self.kept.front() {
                self.kept.pop_front();
                self.base = self.base.wrapping_add(1);
            }
            // A packet found lost but acknowledged meanwhile needs nothing.
            lost.retain(|&seq| self.entry(seq).is_some());
        }
        self.skip_stale();
    }

    /// RFC 6298's smoothing.
    fn sample(&mut self, rtt: Duration) {
        self.latest_rtt = rtt;
        let delta = self.srtt.abs_diff(rtt);
        self.rttvar = (self.rttvar * 3 + delta) / 4;
        self.srtt = (self.srtt * 7 + rtt) / 8;
    }

    fn reorder_window(&self) -> Duration {
        (self.srtt / 4).max(MIN_REORDER_WINDOW)
    }

    fn probe_timeout(&self, config: &LinkRepair) -> Duration {
        let base = self.srtt + (self.rttvar * 4).max(MIN_REORDER_WINDOW) + config.ack_delay;
        base * (1 << self.probes.min(MAX_PROBE_BACKOFF))
    }

    /// Drops flight records of packets acknowledged or sent again since.
    fn skip_stale(&mut self) {
        while let Some(&(seq, sent_at)) = self.flight.front() {
            if self.entry(seq).is_some_and(|k| k.sent_at == sent_at) {
                break;
            }
            self.flight.pop_front();
        }
    }

    /// Moves to `lost` the packets sent before one that was acknowledged
    /// and waiting longer than a round trip plus the reordering window.
    fn detect_lost(&mut self, now: Instant, lost: &mut Vec<u32>) {
        let Some(rack) = self.rack else { return };
        let window = self.reorder_window();
        loop {
            self.skip_stale();
            let Some(&(seq, sent_at)) = self.flight.front() else { break };
            if sent_at >= rack || now < sent_at + self.latest_rtt + window {
                break;
            }
            self.flight.pop_front();
            lost.push(seq);
        }
    }

    /// The next moment a kept packet may be found lost: by RACK's timer, or
    /// by the probe timeout of the oldest one in flight.
    fn deadline(&self, config: &LinkRepair) -> Option<Instant> {
        // The front may be stale (acknowledged since); a deadline too early
        // only wakes the link once for nothing.
        let &(_, sent_at) = self.flight.front()?;
        let probe = sent_at + self.probe_timeout(config);
        let rack = self.rack.filter(|&r| sent_at < r).map(|_| sent_at + self.latest_rtt + self.reorder_window());
        Some(rack.map_or(probe, |r| r.min(probe)))
    }

    /// Acknowledgements stopped: the oldest packets in flight past the probe
    /// timeout are sent again, a burst at most, and the timeout doubles.
    fn probe(&mut self, now: Instant, config: &LinkRepair, lost: &mut Vec<u32>) {
        let timeout = self.probe_timeout(config);
        while lost.len() < PROBE_BURST {
            self.skip_stale();
            let Some(&(seq, sent_at)) = self.flight.front() else { break };
            if sent_at + timeout > now {
                break;
            }
            self.flight.pop_front();
            lost.push(seq);
        }
        self.probes += 1;
    }

    /// Sends kept packet `seq` again, or gives it up after its last try.
    fn resend(&mut self, now: Instant, seq: u32, config: &LinkRepair, counters: &DtlsLinkCounters) -> Option<&[u8]> {
        let index = seq.wrapping_sub(self.base) as usize;
        let kept = self.kept.get_mut(index)?.as_mut()?;
        if kept.tries >= config.max_retransmits {
            let frame = self.kept[index].take().expect("present").frame;
            counters.tx_repair_given_up.inc();
            self.recycle(frame);
            return None;
        }
        kept.tries += 1;
        kept.sent_at = now;
        self.flight.push_back((seq, now));
        self.kept[index].as_ref().map(|k| k.frame.as_slice())
    }
}

/// The receiving half: which numbers arrived, and when to acknowledge.
#[derive(Debug)]
struct Receiver {
    highest: Option<u32>,
    /// Bit `seq % DEDUP_BITS` is set once `seq` arrived, for the
    /// [`DEDUP_BITS`] numbers up to `highest`.
    seen: Box<[u64]>,
    /// Packets since the last acknowledgement.
    pending: u32,
    /// An acknowledgement is due at once (a gap, a copy, or enough packets).
    ack_now: bool,
    /// An acknowledgement is due then.
    ack_at: Option<Instant>,
    /// Numbers at or below `highest` that arrived lately (repairs and
    /// copies), for those the map won't reach, with the acknowledgements
    /// left that list them.
    late: Vec<(u32, u8)>,
}

impl Receiver {
    fn new() -> Self {
        Self {
            highest: None,
            seen: vec![0; DEDUP_BITS as usize / 64].into_boxed_slice(),
            pending: 0,
            ack_now: false,
            ack_at: None,
            late: Vec::new(),
        }
    }

    fn bit(&self, seq: u32) -> bool {
        let i = seq % DEDUP_BITS;
        self.seen[i as usize / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, seq: u32, on: bool) {
        let i = seq % DEDUP_BITS;
        let (word, mask) = (i as usize / 64, 1u64 << (i % 64));
        if on {
            self.seen[word] |= mask;
        } else {
            self.seen[word] &= !mask;
        }
    }

    /// Packet `seq` arrived at `now`: true if it is new.
    fn accept(&mut self, now: Instant, seq: u32, config: &LinkRepair) -> bool {
        let fresh = match self.highest {
            None => {
                self.highest = Some(seq);
                self.set(seq, true);
                true
            }
            Some(highest) => {
                let ahead = seq.wrapping_sub(highest) as i32;
                if ahead > 0 {
                    // Forget the numbers that fall out of memory.
                    for step in 1..=(ahead as u32).min(DEDUP_BITS) {
                        self.set(highest.wrapping_add(step), false);
                    }
                    self.set(seq, true);
                    self.highest = Some(seq);
                    // A gap: tell the sender at once.
                    self.ack_now |= ahead > 1;
                    true
                } else {
                    // A repair or a copy: let the sender stop at once.
                    self.ack_now = true;
                    if self.late.len() == MAX_LATE {
                        self.late.remove(0);
                    }
                    self.late.push((seq, LATE_REPEATS));
                    if ahead.unsigned_abs() >= DEDUP_BITS || self.bit(seq) {
                        // A copy (or too old to tell).
                        false
                    } else {
                        self.set(seq, true);
                        true
                    }
                }
            }
        };
        self.pending += 1;
        if self.pending >= config.ack_every {
            self.ack_now = true;
        } else if self.ack_at.is_none() {
            self.ack_at = Some(now + config.ack_delay);
        }
        fresh
    }

    /// Writes the acknowledgement of what arrived, and clears what was due.
    fn write_ack(&mut self, out: &mut Vec<u8>) {
        let highest = self.highest.unwrap_or(0);
        out.clear();
        out.resize(ACK_FIXED, 0);
        out[0] = ACK;
        out[1..5].copy_from_slice(&highest.to_be_bytes());
        if self.highest.is_some() {
            for i in 0..ACK_BITS {
                if self.bit(highest.wrapping_sub(i + 1)) {
                    out[5 + i as usize / 8] |= 1 << (i % 8);
                }
            }
        }
        // Those the map covers need no listing.
        for (seq, repeats) in &mut self.late {
            if highest.wrapping_sub(*seq) > ACK_BITS {
                out[ACK_FIXED - 1] += 1;
                out.extend_from_slice(&seq.to_be_bytes());
            }
            *repeats -= 1;
        }
        self.late.retain(|&(_, repeats)| repeats > 0);
        self.pending = 0;
        self.ack_now = false;
        self.ack_at = None;
    }
}
