//! NewReno partial-ACK recovery, added in front of smoltcp.
//!
//! smoltcp's loss recovery is Reno: three duplicate ACKs retransmit the first
//! unacknowledged segment once, and a second hole in the same window waits
//! for the retransmission timeout (at least 1 s, doubling on repeat). With a
//! few percent loss that turns every window into an RTO.
//!
//! RFC 6582 (NewReno) fixes this with *partial ACKs*: during recovery, an ACK
//! that advances but does not cover everything sent when recovery began means
//! the next hole was lost too, and the sender retransmits it at once. This
//! module watches each connection's segments as they pass the device; on the
//! third duplicate ACK (counting ACKs that carry data, which smoltcp ignores)
//! and on every partial ACK it hands smoltcp a few pure-ACK copies of the
//! arriving segment just before the segment itself — exactly what makes
//! smoltcp retransmit the first missing segment. It never drops or alters a
//! real packet; it only adds pure ACKs that the peer could have sent.
//!
//! Once only our FIN is outstanding the assist stands back: smoltcp cannot
//! fast-retransmit a FIN (duplicate ACKs would instead leave it with no timer
//! at all), and resending the FIN is the FIN keeper's job
//! ([`super::fin_keeper`]), which runs whether the assist is on or not.

use std::sync::Arc;

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{TcpControl, TcpSeqNumber};

use super::ingress::FourTuple;
use super::segment::{Bare, Segment, parse, rewrite};
use super::tables::FastMap;
use super::tidy::Shrink;
use crate::stats::StackCounters;

/// Flows tracked at most; beyond this the table is cleared (the assist is
/// an optimisation, losing its state only costs speed).
const MAX_FLOWS: usize = 1 << 16;

/// Probes per stall before the assist gives up and leaves the connection to
/// smoltcp's own timers (a dead peer must not be probed forever).
const MAX_PROBES: u32 = 12;

#[derive(Debug, Default, Clone)]
struct Flow {
    /// One past the highest sequence number we have sent.
    snd_max: Option<TcpSeqNumber>,
    /// The highest ACK we have sent: the peer's data up to here arrived.
    rcv_nxt: Option<TcpSeqNumber>,
    last_ack: Option<TcpSeqNumber>,
    /// Segments repeating `last_ack`, with or without data.
    dup_acks: u32,
    /// `snd_max` when recovery began; `None` outside recovery.
    recover: Option<TcpSeqNumber>,
    /// The latest segment from the peer, as a pure-ACK template.
    template: Option<Bare>,
    /// When the ACK point last moved (or data became outstanding).
    progress_at: Option<Instant>,
    /// When to probe next if nothing moves.
    probe_at: Option<Instant>,
    /// Probes sent since the last progress.
    probes: u32,
    /// One segment being timed: (its end, when it was sent).
    rtt_probe: Option<(TcpSeqNumber, Instant)>,
    /// Smoothed round-trip time.
    srtt: Option<Duration>,
    /// The sequence number of our FIN, once sent.
    fin_seq: Option<TcpSeqNumber>,
    /// The sequence number of the peer's FIN, once seen.
    peer_fin: Option<TcpSeqNumber>,
    /// True if the latest window we advertised was zero.
    advertised_zero: bool,
}

impl Flow {
    fn outstanding(&self) -> bool {
        matches!((self.snd_max, self.last_ack), (Some(m), Some(a)) if m > a)
    }

    /// True if everything but our FIN is acknowledged: nothing for smoltcp
    /// to fast-retransmit, and duplicate ACKs would idle its timer.
    fn only_fin_outstanding(&self) -> bool {
        self.fin_seq.is_some() && self.last_ack == self.fin_seq
    }

    /// True once both FINs are acknowledged: the flow's state is done with.
    fn finished(&self) -> bool {
        let ours = matches!((self.fin_seq, self.last_ack), (Some(f), Some(a)) if a > f);
        let theirs = matches!((self.peer_fin, self.rcv_nxt), (Some(f), Some(r)) if r > f);
        ours && theirs
    }

    /// How long to wait for the ACK point to move before probing: two
    /// round trips plus the peer's delayed-ACK allowance.
    fn probe_timeout(&self) -> Duration {
        match self.srtt {
            Some(srtt) => (srtt * 2 + Duration::from_millis(15)).max(Duration::from_millis(20)),
            None => Duration::from_millis(200),
        }
    }

    fn arm_probe(&mut self, now: Instant) {
        if self.probes >= MAX_PROBES {
            self.probe_at = None;
            return;
        }
        let backoff = 1u32 << self.probes.min(4);
        let wait = (self.probe_timeout() * backoff).min(Duration::from_millis(800));
        self.probe_at = (self.outstanding() && !self.only_fin_outstanding()).then_some(now + wait);
    }

    /// The ACK logic of [`RecoveryAssist::on_ingress`]: returns a pure ACK
    /// that smoltcp must see [`COPIES`] times *before* the segment itself when
    /// it should retransmit the first missing segment now.
    fn on_ack(&mut self, now: Instant, seg: &Segment<'_>, ack: TcpSeqNumber) -> Option<Vec<u8>> {
        self.template = Some(Bare {
            src: seg.src,
            dst: seg.dst,
            src_port: seg.tcp.src_port,
            dst_port: seg.tcp.dst_port,
            control: TcpControl::None,
            seq: seg.tcp.seq_number,
            ack,
            window: seg.tcp.window_len,
        });
        if let Some((end, sent)) = self.rtt_probe
            && ack >= end
        {
            let rtt = now - sent;
            self.srtt = Some(match self.srtt {
                Some(s) => (s * 7 + rtt) / 8,
                None => rtt,
            });
            self.rtt_probe = None;
        }
        let snd_max = self.snd_max?;
        let Some(last) = self.last_ack else {
            self.last_ack = Some(ack);
            return None;
        };
        let plain = matches!(seg.tcp.control, TcpControl::None | TcpControl::Psh);
        if ack == last && ack < snd_max {
            // A duplicate ACK. smoltcp only counts pure ones that do not
            // change the window, so when the peer also sends data (both
            // directions busy) it rarely sees three in a row; we count every
            // segment.
            self.dup_acks += 1;
            if self.dup_acks >= 3 && self.recover.is_none() && plain && !self.only_fin_outstanding() {
                self.recover = Some(snd_max);
                return Some(pure_ack(seg, self.rcv_nxt));
            }
            return None;
        }
        if ack <= last {
            return None;
        }
        self.last_ack = Some(ack);
        self.dup_acks = 0;
        self.progress_at = Some(now);
        self.probes = 0;
        self.arm_probe(now);
        match self.recover {
            Some(recover) if ack < recover && plain && !self.only_fin_outstanding() => {
                // A partial ACK: the next hole was lost too. Retransmit it now
                // (RFC 6582) instead of waiting for the RTO.
                Some(pure_ack(seg, self.rcv_nxt))
            }
            Some(recover) if ack >= recover => {
                self.recover = None;
                None
            }
            _ => None,
        }
    }
}

/// Per-connection sender state, keyed by `(local, local port, remote,
/// remote port)`.
#[derive(Debug)]
pub(crate) struct RecoveryAssist {
    /// False: the assist watches nothing and changes nothing.
    enabled: bool,
    flows: FastMap<FourTuple, Flow>,
    /// The stack's counters; the assist bumps its `recovery_*` ones.
    counters: Arc<StackCounters>,
    /// Extra copies of packets to send as soon as possible (window updates).
    pub(crate) pending_tx: Vec<Vec<u8>>,
    /// No flow's probe is due before this (a lower bound, exact after each
    /// scan), so that idle flows cost nothing per driver iteration: the
    /// flows are scanned only once it has passed.
    earliest: Option<Instant>,
}

impl RecoveryAssist {
    /// Gives back the flow table's spare capacity (see `tidy`).
    pub(crate) fn tidy(&mut self) {
        self.flows.shrink_sparse();
        self.pending_tx.shrink_sparse();
    }

    /// Forgets the flow of a connection whose socket is gone. Most flows
    /// end by themselves (both FINs acknowledged, or an RST), but a
    /// connection can also go without either on the wire: aborted in
    /// TIME-WAIT for its port, a half-open one evicted, an orphan whose
    /// last ACK never came. Without this their flows stayed until the table
    /// hit `MAX_FLOWS` and was cleared.
    pub(crate) fn forget(&mut self, tuple: &FourTuple) {
        self.flows.remove(tuple);
    }

    /// An assist that is active only if `enabled` and counts into `counters`.
    pub(crate) fn new(enabled: bool, counters: Arc<StackCounters>) -> Self {
        Self { enabled, flows: FastMap::default(), counters, pending_tx: Vec::new(), earliest: None }
    }

    /// Notes a segment we are sending, and fixes the sequence number of pure
    /// ACKs: after a retransmission timeout smoltcp rewinds its send pointer
    /// and stamps pure ACKs with it, below the peer's receive window, so the
    /// peer drops them — ACK and all. Linux stamps them with the highest
    /// sequence number sent, which is always acceptable; so do we.
    pub(crate) fn on_egress(&mut self, now: Instant, packet: &mut [u8]) {
        if !self.enabled {
            return;
        }
        let Some(seg) = parse(packet) else { return };
        let key = (seg.src, seg.tcp.src_port, seg.dst, seg.tcp.dst_port);
        let (control, seq, len, ack, window) =
            (seg.tcp.control, seg.tcp.seq_number, seg.tcp.segment_len(), seg.tcp.ack_number, seg.tcp.window_len);
        let pure_ack = seg.tcp.payload.is_empty() && ack.is_some() && control == TcpControl::None;
        let empty = seg.tcp.payload.is_empty();
        if control == TcpControl::Rst {
            self.flows.remove(&key);
            return;
        }
        if control == TcpControl::Syn {
            // A new connection on this 4-tuple: nothing of an old one applies.
            self.flows.remove(&key);
        } else if pure_ack && window > 0 && !self.flows.contains_key(&key) {
            // Nothing to track for a flow we do not know (one whose close
            // has completed, in TIME-WAIT): do not bring it back.
            return;
        }
        if self.flows.len() >= MAX_FLOWS && !self.flows.contains_key(&key) {
            self.flows.clear();
        }
        let Self { flows, counters, pending_tx, .. } = self;
        let flow = flows.entry(key).or_default();
        if let Some(snd_max) = flow.snd_max.filter(|m| pure_ack && *m > seq) {
            rewrite(packet, |tcp| tcp.set_seq_number(snd_max));
            counters.recovery_acks_rewritten.inc();
            // A pure ACK occupies no sequence space: nothing below changes.
        }
        let end = seq + len;
        if control == TcpControl::Fin {
            flow.fin_seq = Some(end - 1);
        }
        // A window update that reopens a zero window is the only thing that
        // restarts the peer, and smoltcp sends it once; if it is lost the
        // peer waits for its persist timer (backing off towards 60 s). Send
        // it three times.
        if flow.advertised_zero && window > 0 && empty {
            pending_tx.push(packet.to_vec());
            pending_tx.push(packet.to_vec());
        }
        flow.advertised_zero = window == 0;
        if flow.snd_max.is_none_or(|m| end > m) {
            let was_idle = !flow.outstanding();
            flow.snd_max = Some(end);
            if flow.rtt_probe.is_none() && len > 0 {
                flow.rtt_probe = Some((end, now));
            }
            if was_idle && flow.outstanding() {
                flow.progress_at = Some(now);
                flow.arm_probe(now);
            }
        }
        if let Some(ack) = ack
            && flow.rcv_nxt.is_none_or(|r| ack > r)
        {
            flow.rcv_nxt = Some(ack);
        }
        let probe_at = flow.probe_at;
        if flow.finished() {
            flows.remove(&key);
        }
        self.note_probe(probe_at);
    }

    /// Keeps [`earliest`](Self::earliest) a lower bound of every probe.
    fn note_probe(&mut self, probe_at: Option<Instant>) {
        if let Some(t) = probe_at
            && self.earliest.is_none_or(|e| t < e)
        {
            self.earliest = Some(t);
        }
    }

    /// Looks at an arriving segment and says what smoltcp should see.
    pub(crate) fn on_ingress(&mut self, now: Instant, packet: &[u8]) -> Ingress {
        if !self.enabled {
            return Ingress::Pass;
        }
        let Some(seg) = parse(packet) else { return Ingress::Pass };
        let key = (seg.dst, seg.tcp.dst_port, seg.src, seg.tcp.src_port);
        let new_connection = seg.tcp.control == TcpControl::Syn && seg.tcp.ack_number.is_none();
        if seg.tcp.control == TcpControl::Rst || new_connection {
            self.flows.remove(&key);
            return Ingress::Pass;
        }
        let Some(flow) = self.flows.get_mut(&key) else { return Ingress::Pass };
        if seg.tcp.control == TcpControl::Fin {
            flow.peer_fin = Some(seg.tcp.seq_number + seg.tcp.payload.len());
        }
        let Some(ack) = seg.tcp.ack_number else { return Ingress::Pass };
        // smoltcp drops a segment whose ACK is below what it has already
        // seen acknowledged — data and FIN included. Reordering makes that
        // common (a FIN overtaken by a later ACK). ACKs are cumulative, so
        // raising it to the peer's highest ACK changes nothing else.
        let carries = !seg.tcp.payload.is_empty() || seg.tcp.control == TcpControl::Fin;
        if let Some(last) = flow.last_ack
            && ack < last
            && carries
        {
            let mut fixed = packet.to_vec();
            rewrite(&mut fixed, |tcp| tcp.set_ack_number(last));
            self.counters.recovery_acks_raised.inc();
            return Ingress::Replace(fixed);
        }
        let verdict = match flow.on_ack(now, &seg, ack) {
            Some(pure) => {
                self.counters.recovery_acks_injected.add(u64::from(COPIES));
                Ingress::AcksFirst(pure)
            }
            None => Ingress::Pass,
        };
        let probe_at = flow.probe_at;
        if flow.finished() {
            self.flows.remove(&key);
        }
        self.note_probe(probe_at);
        verdict
    }

    /// The smoothed round-trip time measured on the flow `key`, if the
    /// assist is on and has timed a segment of it (the FIN keeper sizes its
    /// timer with it).
    pub(crate) fn srtt(&self, key: &FourTuple) -> Option<Duration> {
        self.flows.get(key)?.srtt
    }
}

impl RecoveryAssist {
    /// No probe is due before this (it may be early, never late); "now"
    /// while copies wait. O(1).
    pub(crate) fn poll_at(&self) -> Option<Instant> {
        if !self.pending_tx.is_empty() {
            return Some(Instant::ZERO);
        }
        self.earliest
    }

    /// Probes flows whose ACK point has not moved for their probe timeout:
    /// a lost retransmission or a lost tail segment, which smoltcp would only
    /// notice after its (backed-off, at least 1 s) RTO. Returns pure ACKs to
    /// hand smoltcp, in order: one with a different window (resets smoltcp's
    /// duplicate counter) and four with the real one (the first of which is
    /// a window update again), so that the last three are duplicates and
    /// smoltcp retransmits its first unacknowledged segment (RFC 8985's
    /// tail-loss probe, by smoltcp's own fast-retransmit path).
    ///
    /// When only our FIN is unacknowledged there is nothing to probe for:
    /// the FIN keeper resends it.
    ///
    /// Scans the flows only once [`poll_at`](Self::poll_at) has passed,
    /// and leaves it exact.
    pub(crate) fn on_timer(&mut self, now: Instant, out: &mut std::collections::VecDeque<Vec<u8>>) {
        if self.earliest.is_none_or(|e| e > now) {
            return;
        }
        let mut earliest = None;
        for flow in self.flows.values_mut() {
            let due = flow.probe_at.is_some_and(|t| t <= now);
            if !due {
                if let Some(t) = flow.probe_at {
                    earliest = Some(earliest.map_or(t, |e: Instant| e.min(t)));
                }
                continue;
            }
            let probe = flow.outstanding() && !flow.only_fin_outstanding();
            let Some(t) = flow.template.filter(|t| t.window > 0 && probe) else {
                flow.probe_at = None;
                continue;
            };
            let seq = acceptable_seq(t.seq, flow.rcv_nxt);
            let other = if t.window > 1 { t.window - 1 } else { t.window + 1 };
            out.push_back(build_ack(&t, seq, other));
            for _ in 0..4 {
                out.push_back(build_ack(&t, seq, t.window));
            }
            self.counters.recovery_acks_injected.add(5);
            flow.probes += 1;
            flow.recover = flow.snd_max;
            flow.arm_probe(now);
            if let Some(t) = flow.probe_at {
                earliest = Some(earliest.map_or(t, |e: Instant| e.min(t)));
            }
        }
        self.earliest = earliest;
    }
}

/// What smoltcp should see of an arriving segment.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ingress {
    /// The segment as it is.
    Pass,
    /// [`COPIES`] copies of this pure ACK, then the segment.
    AcksFirst(Vec<u8>),
    /// This corrected copy instead of the segment.
    Replace(Vec<u8>),
}

/// Copies of the pure ACK to deliver: the first may count as new (it moves
/// the ACK point or the window), the next three are duplicates, and smoltcp
/// retransmits on the third.
pub(crate) const COPIES: u32 = 4;

/// `seg` without its payload, same ACK and window. Its sequence number must
/// be inside smoltcp's receive window or smoltcp ignores it: the segment's own
/// one, unless that is old data (a retransmission), then the highest ACK we
/// sent.
fn pure_ack(seg: &Segment<'_>, rcv_nxt: Option<TcpSeqNumber>) -> Vec<u8> {
    let seq = acceptable_seq(seg.tcp.seq_number, rcv_nxt);
    let t = Bare {
        src: seg.src,
        dst: seg.dst,
        src_port: seg.tcp.src_port,
        dst_port: seg.tcp.dst_port,
        control: TcpControl::None,
        seq,
        ack: seg.tcp.ack_number.unwrap_or_default(),
        window: seg.tcp.window_len,
    };
    build_ack(&t, seq, t.window)
}

/// A sequence number for a pure ACK from the peer that smoltcp will accept:
/// the segment's own, unless that lies below what we already acknowledged
/// (old data), then our highest ACK.
fn acceptable_seq(seq: TcpSeqNumber, rcv_nxt: Option<TcpSeqNumber>) -> TcpSeqNumber {
    match rcv_nxt {
        Some(r) if r > seq => r,
        _ => seq,
    }
}

/// A pure ACK from the peer's side of `t`, with sequence number `seq` and
/// window `window`.
fn build_ack(t: &Bare, seq: TcpSeqNumber, window: u16) -> Vec<u8> {
    Bare { control: TcpControl::None, seq, window, ..*t }.to_packet()
}

#[cfg(test)]
mod tests {
    use super::*;

    use smoltcp::wire::{IpAddress, Ipv4Address, Ipv4Packet, TcpPacket};

    const A: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);
    const B: Ipv4Address = Ipv4Address::new(10, 0, 0, 2);

    /// A segment from `src` to `dst` with `len` payload bytes.
    fn segment(src: Ipv4Address, dst: Ipv4Address, seq: u32, ack: u32, len: usize) -> Vec<u8> {
        let (sp, dp) = if src == A { (1000, 2000) } else { (2000, 1000) };
        let (s, d) = (IpAddress::Ipv4(src), IpAddress::Ipv4(dst));
        super::super::segment::test_segment((s, sp), (d, dp), TcpControl::None, seq, Some(ack), 1000, len, 0xab)
    }

    fn seq_of(packet: &[u8]) -> u32 {
        parse(packet).unwrap().tcp.seq_number.0 as u32
    }

    /// A has sent ten 100-byte segments from seq 0 to B.
    fn sender_with_flight() -> RecoveryAssist {
        let mut r = RecoveryAssist::new(true, Arc::default());
        for i in 0..10 {
            r.on_egress(Instant::ZERO, &mut segment(A, B, i * 100, 5000, 100));
        }
        r
    }

    #[test]
    fn third_duplicate_ack_with_data_triggers_recovery() {
        let mut r = sender_with_flight();
        assert_eq!(r.on_ingress(Instant::ZERO, &segment(B, A, 5000, 100, 0)), Ingress::Pass, "first ACK just records");
        // Duplicates that carry B's own data: smoltcp would not count them.
        assert_eq!(r.on_ingress(Instant::ZERO, &segment(B, A, 5000, 100, 50)), Ingress::Pass);
        assert_eq!(r.on_ingress(Instant::ZERO, &segment(B, A, 5050, 100, 50)), Ingress::Pass);
        let Ingress::AcksFirst(ack) = r.on_ingress(Instant::ZERO, &segment(B, A, 5100, 100, 50)) else {
            panic!("third duplicate")
        };
        let seg = parse(&ack).unwrap();
        assert!(seg.tcp.payload.is_empty());
        assert_eq!(seg.tcp.ack_number, Some(TcpSeqNumber(100)));
        assert_eq!(r.counters.recovery_acks_injected.get(), u64::from(COPIES));
        // A fourth duplicate does not trigger again within the same recovery.
        assert_eq!(r.on_ingress(Instant::ZERO, &segment(B, A, 5150, 100, 0)), Ingress::Pass);
    }

    #[test]
    fn partial_ack_retransmits_the_next_hole_and_full_ack_ends_recovery() {
        let mut r = sender_with_flight();
        r.on_ingress(Instant::ZERO, &segment(B, A, 5000, 100, 0));
        for _ in 0..3 {
            r.on_ingress(Instant::ZERO, &segment(B, A, 5000, 100, 0));
        }
        // The retransmission filled the first hole; a second one is at 500.
        let Ingress::AcksFirst(partial) = r.on_ingress(Instant::ZERO, &segment(B, A, 5000, 500, 0)) else {
            panic!("partial ACK")
        };
        assert_eq!(parse(&partial).unwrap().tcp.ack_number, Some(TcpSeqNumber(500)));
        // Everything acknowledged: recovery over, nothing injected.
        assert_eq!(r.on_ingress(Instant::ZERO, &segment(B, A, 5000, 1000, 0)), Ingress::Pass);
        assert_eq!(r.counters.recovery_acks_injected.get(), 2 * u64::from(COPIES));
    }

    #[test]
    fn rewound_pure_acks_are_stamped_with_the_highest_sequence_sent() {
        let mut r = sender_with_flight();
        r.on_ingress(Instant::ZERO, &segment(B, A, 5000, 100, 0));
        // After an RTO smoltcp would stamp a pure ACK with its rewound pointer.
        let mut ack = segment(A, B, 100, 5000, 0);
        r.on_egress(Instant::ZERO, &mut ack);
        assert_eq!(seq_of(&ack), 1000);
        assert_eq!(r.counters.recovery_acks_rewritten.get(), 1);
        let p = Ipv4Packet::new_checked(&ack[..]).unwrap();
        let tcp = TcpPacket::new_checked(p.payload()).unwrap();
        assert!(tcp.verify_checksum(&IpAddress::Ipv4(A), &IpAddress::Ipv4(B)), "checksum refreshed");
        // Data segments are never touched.
        let mut data = segment(A, B, 100, 5000, 100);
        let before = data.clone();
        r.on_egress(Instant::ZERO, &mut data);
        assert_eq!(data, before);
    }

    #[test]
    fn a_silent_flow_is_probed_after_its_timeout_and_not_before() {
        let mut r = RecoveryAssist::new(true, Arc::default());
        let t0 = Instant::from_millis(1000);
        r.on_egress(t0, &mut segment(A, B, 0, 5000, 100));
        // The ACK of the first segment gives an RTT of 4 ms.
        r.on_ingress(t0 + Duration::from_millis(4), &segment(B, A, 5000, 100, 0));
        let t1 = t0 + Duration::from_millis(5);
        r.on_egress(t1, &mut segment(A, B, 100, 5000, 100));
        let due = r.poll_at().expect("outstanding data arms a probe");
        // Two round trips plus the delayed-ACK allowance, floor 20 ms.
        assert_eq!(due - t1, Duration::from_millis(23));
        let mut out = std::collections::VecDeque::new();
        r.on_timer(due - Duration::from_millis(1), &mut out);
        assert!(out.is_empty(), "not before the deadline");
        r.on_timer(due, &mut out);
        assert_eq!(out.len(), 5);
        let windows: Vec<u16> = out.iter().map(|p| parse(p).unwrap().tcp.window_len).collect();
        assert_eq!(windows, vec![999, 1000, 1000, 1000, 1000]);
        assert!(out.iter().all(|p| parse(p).unwrap().tcp.ack_number == Some(TcpSeqNumber(100))));
        // Backed off: the next probe waits twice as long.
        assert_eq!(r.poll_at().unwrap() - due, Duration::from_millis(46));
        // Progress disarms it once everything is acknowledged. `poll_at` is
        // a lower bound: the scan at it finds nothing due and makes it exact.
        r.on_ingress(due, &segment(B, A, 5000, 200, 0));
        let stale = r.poll_at().expect("a lower bound until the next scan");
        r.on_timer(stale, &mut out);
        assert_eq!(out.len(), 5, "nothing to probe");
        assert_eq!(r.poll_at(), None);
    }

    /// `segment` with the FIN flag set (and its checksum refreshed).
    fn fin(src: Ipv4Address, dst: Ipv4Address, seq: u32, ack: u32, len: usize) -> Vec<u8> {
        let mut p = segment(src, dst, seq, ack, len);
        rewrite(&mut p, |tcp| tcp.set_fin(true));
        p
    }

    #[test]
    fn with_only_the_fin_outstanding_the_assist_stays_out_of_the_way() {
        let mut r = sender_with_flight();
        r.on_egress(Instant::ZERO, &mut fin(A, B, 1000, 5000, 0));
        r.on_ingress(Instant::ZERO, &segment(B, A, 5000, 100, 0));
        // Recovery starts while data is outstanding...
        for _ in 0..3 {
            r.on_ingress(Instant::ZERO, &segment(B, A, 5000, 100, 0));
        }
        assert_eq!(r.counters.recovery_acks_injected.get(), u64::from(COPIES));
        // ...and all data but not the FIN is acknowledged: a partial ACK by
        // the numbers, but smoltcp can only fast-retransmit data, and
        // duplicates would leave it with no timer at all (the FIN keeper
        // resends the FIN instead).
        assert_eq!(r.on_ingress(Instant::ZERO, &segment(B, A, 5000, 1000, 0)), Ingress::Pass);
        for _ in 0..5 {
            assert_eq!(r.on_ingress(Instant::ZERO, &segment(B, A, 5000, 1000, 0)), Ingress::Pass);
        }
        assert_eq!(r.counters.recovery_acks_injected.get(), u64::from(COPIES));
        assert_eq!(r.poll_at(), None, "no tail-loss probe for a lone FIN");
        let mut out = std::collections::VecDeque::new();
        r.on_timer(Instant::from_secs(60), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_completed_close_or_a_new_connection_forgets_the_flow() {
        let mut r = sender_with_flight();
        r.on_ingress(Instant::ZERO, &segment(B, A, 5000, 1000, 0));
        r.on_egress(Instant::ZERO, &mut fin(A, B, 1000, 5000, 0));
        r.on_ingress(Instant::ZERO, &fin(B, A, 5000, 1001, 0));
        assert_eq!(r.flows.len(), 1, "the peer's FIN is not acknowledged yet");
        r.on_egress(Instant::ZERO, &mut segment(A, B, 1001, 5001, 0));
        assert!(r.flows.is_empty(), "both FINs acknowledged");
        // A TIME-WAIT re-acknowledgment does not bring it back.
        r.on_egress(Instant::ZERO, &mut segment(A, B, 1001, 5001, 0));
        assert!(r.flows.is_empty());

        // A SYN from the peer on a known tuple starts from scratch.
        let mut r = sender_with_flight();
        r.on_ingress(Instant::ZERO, &segment(B, A, 5000, 100, 0));
        let mut syn = segment(B, A, 9000, 0, 0);
        rewrite(&mut syn, |tcp| {
            tcp.set_ack(false);
            tcp.set_syn(true)
        });
        r.on_ingress(Instant::ZERO, &syn);
        assert!(r.flows.is_empty());
        // Our own SYN on a known tuple resets it too.
        let mut r = sender_with_flight();
        r.on_ingress(Instant::ZERO, &segment(B, A, 5000, 100, 0));
        let mut syn = segment(A, B, 7000, 0, 0);
        rewrite(&mut syn, |tcp| {
            tcp.set_ack(false);
            tcp.set_syn(true)
        });
        r.on_egress(Instant::ZERO, &mut syn);
        let flow = &r.flows[&(IpAddress::Ipv4(A), 1000, IpAddress::Ipv4(B), 2000)];
        assert_eq!((flow.snd_max, flow.last_ack), (Some(TcpSeqNumber(7001)), None));
    }

    #[test]
    fn a_window_update_after_a_zero_window_is_sent_three_times() {
        let mut r = RecoveryAssist::new(true, Arc::default());
        let mut zero = segment(A, B, 0, 5000, 0);
        TcpPacket::new_unchecked(&mut zero[20..]).set_window_len(0);
        r.on_egress(Instant::ZERO, &mut zero);
        assert!(r.pending_tx.is_empty());
        let mut open = segment(A, B, 0, 5000, 0);
        r.on_egress(Instant::ZERO, &mut open);
        assert_eq!(r.pending_tx, vec![open.clone(), open.clone()]);
        assert_eq!(r.poll_at(), Some(Instant::ZERO), "the driver must flush them now");
        // An ordinary ACK with an open window is not repeated.
        r.pending_tx.clear();
        r.on_egress(Instant::ZERO, &mut open);
        assert!(r.pending_tx.is_empty());
    }

    #[test]
    fn a_data_segment_overtaken_by_a_later_ack_gets_that_ack() {
        let mut r = sender_with_flight();
        r.on_ingress(Instant::ZERO, &segment(B, A, 5000, 100, 0));
        r.on_ingress(Instant::ZERO, &segment(B, A, 5000, 600, 0));
        // B's data sent earlier, carrying ACK 300, arrives late.
        let Ingress::Replace(fixed) = r.on_ingress(Instant::ZERO, &segment(B, A, 5000, 300, 40)) else {
            panic!("stale ACK on data must be raised")
        };
        let seg = parse(&fixed).unwrap();
        assert_eq!(seg.tcp.ack_number, Some(TcpSeqNumber(600)));
        assert_eq!(seg.tcp.payload, &[0xab; 40][..], "the data is untouched");
        let p = Ipv4Packet::new_checked(&fixed[..]).unwrap();
        assert!(TcpPacket::new_checked(p.payload()).unwrap().verify_checksum(&IpAddress::Ipv4(B), &IpAddress::Ipv4(A)));
        // A pure ACK with an old ACK number is only a duplicate: left alone.
        assert_eq!(r.on_ingress(Instant::ZERO, &segment(B, A, 5040, 300, 0)), Ingress::Pass);
    }

    #[test]
    fn unknown_flows_and_garbage_are_ignored() {
        let mut r = RecoveryAssist::new(true, Arc::default());
        assert_eq!(r.on_ingress(Instant::ZERO, &segment(B, A, 1, 1, 0)), Ingress::Pass);
        assert_eq!(r.on_ingress(Instant::ZERO, &[0x45, 0, 0]), Ingress::Pass);
        let mut junk = vec![0x60; 3];
        r.on_egress(Instant::ZERO, &mut junk);
        assert_eq!(junk, vec![0x60; 3]);
    }
}
