//! The sans-IO core of the impairment middleware: one direction of a lossy,
//! slow, reordering link. Time comes in as an argument; nothing here reads a
//! clock, so a seed and a sequence of `(now, packet)` calls fix the outcome.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use smoltcp::time::Instant;

use crate::rng::Rng;

/// What an impaired direction does to packets. All probabilities are per
/// packet, in `[0, 1]`; the default does nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct ImpairConfig {
    /// Seed of the pseudo-random decisions: same seed, same impairments.
    pub seed: u64,
    /// Probability that a packet is dropped.
    pub loss: f64,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
    /// Probability that a packet is held back by up to `reorder_delay`, so
    /// later packets overtake it.
    pub reorder: f64,
    /// Longest extra hold of a reordered packet.
    pub reorder_delay: Duration,
    /// Probability that one random bit of a packet is flipped.
    pub corrupt: f64,
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Extra uniformly random delay in `[0, jitter]`.
    pub jitter: Duration,
    /// Link rate in bits per second; `None` is unlimited.
    pub rate_bps: Option<u64>,
    /// Bytes that may wait for the rate limiter before tail drop.
    pub queue_bytes: usize,
    /// Packets larger than this are dropped; `None` keeps the inner MTU.
    pub mtu: Option<usize>,
}

impl Default for ImpairConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(2),
            corrupt: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            rate_bps: None,
            queue_bytes: 1 << 20,
            mtu: None,
        }
    }
}

impl ImpairConfig {
    /// True if this configuration changes nothing.
    pub fn is_transparent(&self) -> bool {
        self.loss == 0.0
            && self.duplicate == 0.0
            && self.reorder == 0.0
            && self.corrupt == 0.0
            && self.delay.is_zero()
            && self.jitter.is_zero()
            && self.rate_bps.is_none()
            && self.mtu.is_none()
    }
}

crate::counters! {
    /// What one impaired direction did.
    pub struct ImpairCounters {
        /// Packets offered to the impairment.
        seen,
        /// Packets handed on (including duplicates).
        delivered,
        /// Packets dropped by the loss probability.
        dropped_loss,
        /// Packets dropped because they exceeded the configured MTU.
        dropped_too_big,
        /// Packets dropped because the rate limiter's queue was full.
        dropped_queue_full,
        /// Extra copies made.
        duplicated,
        /// Packets held back for reordering.
        reordered,
        /// Packets with a flipped bit.
        corrupted,
    }
}

/// One impaired direction: packets go in with [`push`](Self::push) and come
/// out, when due, from [`pop`](Self::pop).
///
/// Calling order: `push` whenever a packet arrives; `pop` until `None`
/// whenever the caller runs; sleep until [`poll_at`](Self::poll_at).
#[derive(Debug)]
pub struct ImpairPipe {
    config: ImpairConfig,
    rng: Rng,
    /// Packets in flight, ordered by release time then arrival order.
    heap: BinaryHeap<Reverse<Held>>,
    next_order: u64,
    /// When the rate-limited link finishes sending what it already holds.
    link_free_at: Instant,
    counters: std::sync::Arc<ImpairCounters>,
}

#[derive(Debug)]
struct Held {
    release: Instant,
    order: u64,
    packet: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.release, self.order) == (other.release, other.order)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.release, self.order).cmp(&(other.release, other.order))
    }
}

impl ImpairPipe {
    /// A pipe with the given behaviour and fresh counters.
    pub fn new(config: ImpairConfig) -> Self {
        Self {
            rng: Rng::new(config.seed),
            config,
            heap: BinaryHeap::new(),
            next_order: 0,
            link_free_at: Instant::ZERO,
            counters: Default::default(),
        }
    }

    /// The counters of this direction.
    pub fn counters(&self) -> std::sync::Arc<ImpairCounters> {
        self.counters.clone()
    }

    /// The behaviour this pipe was built with.
    pub fn config(&self) -> &ImpairConfig {
        &self.config
    }

    /// Packets currently held.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True if no packet is held.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Offers a packet that arrived at `now`.
    pub fn push(&mut self, now: Instant, mut packet: Vec<u8>) {
        let c = &self.counters;
        c.seen.inc();
        if self.config.mtu.is_some_and(|mtu| packet.len() > mtu) {
            c.dropped_too_big.inc();
            return;
        }
        if self.rng.chance(self.config.loss) {
            c.dropped_loss.inc();
            return;
        }
        let Some(departure) = self.serialize(now, packet.len()) else {
            self.counters.dropped_queue_full.inc();
            return;
        };
        if !packet.is_empty() && self.rng.chance(self.config.corrupt) {
            let bit = self.rng.below(packet.len() as u64 * 8);
            packet[(bit / 8) as usize] ^= 1 << (bit % 8);
            self.counters.corrupted.inc();
        }
        let copies = if self.rng.chance(self.config.duplicate) {
            self.counters.duplicated.inc();
            2
        } else {
            1
        };
        for copy in 0..copies {
            let mut release = departure + self.propagation();
            if self.rng.chance(self.config.reorder) {
                self.counters.reordered.inc();
                release += to_smol(self.rng.duration_up_to(self.config.reorder_delay));
            }
            let packet = if copy + 1 == copies { std::mem::take(&mut packet) } else { packet.clone() };
            self.hold(release, packet);
        }
    }

    /// The next packet due at or before `now`.
    pub fn pop(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.heap.peek()?.0.release > now {
            return None;
        }
        self.counters.delivered.inc();
        self.heap.pop().map(|Reverse(h)| h.packet)
    }

    /// True if a packet is due at or before `now`.
    pub fn has_ready(&self, now: Instant) -> bool {
        self.heap.peek().is_some_and(|h| h.0.release <= now)
    }

    /// When the next held packet becomes due.
    pub fn poll_at(&self) -> Option<Instant> {
        self.heap.peek().map(|h| h.0.release)
    }

    /// Applies the rate limit: when the last bit of a `len`-byte packet
    /// arriving at `now` leaves the link, or `None` if the queue is full.
    fn serialize(&mut self, now: Instant, len: usize) -> Option<Instant> {
        let Some(rate) = self.config.rate_bps.filter(|r| *r > 0) else {
            return Some(now);
        };
        let start = self.link_free_at.max(now);
        let backlog_us = (start - now).total_micros();
        let backlog_bytes = backlog_us.saturating_mul(rate) / 8_000_000;
        if backlog_bytes as usize + len > self.config.queue_bytes {
            return None;
        }
        let tx_us = (len as u64 * 8 * 1_000_000).div_ceil(rate);
        self.link_free_at = start + smoltcp::time::Duration::from_micros(tx_us);
        Some(self.link_free_at)
    }

    fn propagation(&mut self) -> smoltcp::time::Duration {
        let jitter = self.rng.duration_up_to(self.config.jitter);
        to_smol(self.config.delay + jitter)
    }

    fn hold(&mut self, release: Instant, packet: Vec<u8>) {
        let order = self.next_order;
        self.next_order += 1;
        self.heap.push(Reverse(Held { release, order, packet }));
    }
}

fn to_smol(d: Duration) -> smoltcp::time::Duration {
    smoltcp::time::Duration::from_micros(d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(config: ImpairConfig, n: usize) -> (Vec<Vec<u8>>, std::sync::Arc<ImpairCounters>) {
        let mut pipe = ImpairPipe::new(config);
        let mut out = Vec::new();
        for i in 0..n {
            let now = Instant::from_micros(i as i64 * 100);
            pipe.push(now, (i as u32).to_be_bytes().repeat(4));
            while let Some(p) = pipe.pop(now) {
                out.push(p);
            }
        }
        let end = Instant::from_secs(3600);
        while let Some(p) = pipe.pop(end) {
            out.push(p);
        }
        (out, pipe.counters())
    }

    #[test]
    fn transparent_config_passes_everything_in_order() {
        let (out, c) = run(ImpairConfig::default(), 1000);
        assert_eq!(out.len(), 1000);
        assert!(out.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(c.delivered.get(), 1000);
    }

    #[test]
    fn same_seed_same_outcome_and_counters_add_up() {
        let cfg =
            ImpairConfig { seed: 42, loss: 0.1, duplicate: 0.05, reorder: 0.1, corrupt: 0.01, ..Default::default() };
        let (a, ca) = run(cfg.clone(), 5000);
        let (b, _) = run(cfg, 5000);
        assert_eq!(a, b);
        let seen = ca.seen.get();
        assert_eq!(seen, 5000);
        assert_eq!(
            ca.delivered.get(),
            seen - ca.dropped_loss.get() + ca.duplicated.get(),
            "every packet is either dropped with a reason or delivered"
        );
        assert!((400..600).contains(&ca.dropped_loss.get()));
        assert!(ca.reordered.get() > 0 && ca.corrupted.get() > 0);
        assert!(a.windows(2).any(|w| w[0] > w[1]), "reordering happened");
    }

    #[test]
    fn delay_holds_packets_until_due() {
        let mut pipe = ImpairPipe::new(ImpairConfig { delay: Duration::from_millis(10), ..Default::default() });
        pipe.push(Instant::ZERO, vec![1]);
        assert!(pipe.pop(Instant::from_millis(9)).is_none());
        assert_eq!(pipe.poll_at(), Some(Instant::from_millis(10)));
        assert_eq!(pipe.pop(Instant::from_millis(10)), Some(vec![1]));
    }

    #[test]
    fn rate_limit_spaces_packets_and_tail_drops() {
        let mut pipe = ImpairPipe::new(ImpairConfig {
            rate_bps: Some(8_000_000), // 1 byte per microsecond
            queue_bytes: 3000,
            ..Default::default()
        });
        for _ in 0..5 {
            pipe.push(Instant::ZERO, vec![0; 1000]);
        }
        // 1000 B each = 1 ms each; the queue takes 3 KB, so two are dropped.
        assert_eq!(pipe.counters().dropped_queue_full.get(), 2);
        assert_eq!(pipe.poll_at(), Some(Instant::from_millis(1)));
        assert!(pipe.pop(Instant::from_millis(2)).is_some());
        assert!(pipe.pop(Instant::from_millis(2)).is_some());
        assert!(pipe.pop(Instant::from_millis(2)).is_none());
    }

    #[test]
    fn mtu_drops_big_packets() {
        let mut pipe = ImpairPipe::new(ImpairConfig { mtu: Some(10), ..Default::default() });
        pipe.push(Instant::ZERO, vec![0; 11]);
        pipe.push(Instant::ZERO, vec![0; 10]);
        assert_eq!(pipe.counters().dropped_too_big.get(), 1);
        assert_eq!(pipe.pop(Instant::ZERO).map(|p| p.len()), Some(10));
    }
}
