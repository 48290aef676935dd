//! A virtual-clock network for the tunnel core's tests: two cores joined by legs that behave like TCP
//! streams (reliable, in order, with a one-way delay, a rate, and losses that show as retransmission stalls).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::cell::Cell;

use super::{LegId, LegOptions, TunnelConfig, TunnelCore};

/// A deterministic generator (xorshift64*), enough for seeded tests.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One direction of a leg: a reliable in-order byte pipe.
pub struct Pipe {
    pub delay: Duration,
    /// Bytes per second; `None` is unlimited.
    pub rate: Option<f64>,
    /// Per-cell probability of a "loss", which the TCP under a real leg repairs with one RTO: this cell and
    /// every later one on the pipe arrive that much later.
    pub loss: f64,
    pub rto: Duration,
    busy_until: Instant,
    last_arrival: Instant,
    queue: VecDeque<(Instant, Cell)>,
    /// Holds every cell forever (a stalled path whose transport does not fail).
    pub stalled: bool,
    pub bytes: u64,
}

impl Pipe {
    pub fn new(delay: Duration, rate: Option<f64>, loss: f64, now: Instant) -> Pipe {
        Pipe {
            delay,
            rate,
            loss,
            rto: (delay * 2).max(Duration::from_millis(200)) + delay * 2,
            busy_until: now,
            last_arrival: now,
            queue: VecDeque::new(),
            stalled: false,
            bytes: 0,
        }
    }

    fn send(&mut self, cell: Cell, now: Instant, rng: &mut Rng) {
        let len = cell.encoded_len();
        self.bytes += len as u64;
        let start = self.busy_until.max(now);
        let departure = match self.rate {
            Some(r) => start + Duration::from_secs_f64(len as f64 / r),
            None => start,
        };
        self.busy_until = departure;
        let mut arrival = departure + self.delay;
        if rng.chance(self.loss) {
            arrival += self.rto;
        }
        arrival = arrival.max(self.last_arrival);
        self.last_arrival = arrival;
        self.queue.push_back((arrival, cell));
    }

    fn next_arrival(&self) -> Option<Instant> {
        if self.stalled { None } else { self.queue.front().map(|(t, _)| *t) }
    }
}

pub struct SimLeg {
    pub a: LegId,
    pub b: LegId,
    pub a_to_b: Pipe,
    pub b_to_a: Pipe,
    /// The path is dead: cells in flight are lost and both ends have been told.
    pub dead: bool,
    /// The initiator adds this leg only at this time (a delayed second leg).
    pub start_at: Option<Instant>,
    options: LegOptions,
}

/// Path parameters of one leg.
#[derive(Clone, Copy)]
pub struct PathSpec {
    pub rtt: Duration,
    pub rate: Option<f64>,
    pub loss: f64,
    pub options: LegOptions,
    pub start_delay: Duration,
}

impl PathSpec {
    pub fn new(rtt_ms: u64, loss: f64) -> PathSpec {
        PathSpec {
            rtt: Duration::from_millis(rtt_ms),
            rate: None,
            loss,
            options: LegOptions::default(),
            start_delay: Duration::ZERO,
        }
    }
}

pub struct Sim {
    pub now: Instant,
    pub a: TunnelCore,
    pub b: TunnelCore,
    pub legs: Vec<SimLeg>,
    pub rng: Rng,
}

impl Sim {
    pub fn new(config: TunnelConfig, paths: &[PathSpec], seed: u64) -> Sim {
        let now = Instant::now();
        let mut a = TunnelCore::initiator(config.clone(), [seed as u8; 32]);
        let mut b = TunnelCore::responder(config, [seed as u8; 32]);
        let legs = paths
            .iter()
            .map(|p| {
                let half = p.rtt / 2;
                let start_at = (!p.start_delay.is_zero()).then(|| now + p.start_delay);
                let a_leg = if start_at.is_none() { a.add_leg(p.options, now) } else { LegId(u32::MAX) };
                SimLeg {
                    a: a_leg,
                    b: if start_at.is_none() { b.accept_leg(now) } else { LegId(u32::MAX) },
                    a_to_b: Pipe::new(half, p.rate, p.loss, now),
                    b_to_a: Pipe::new(half, p.rate, p.loss, now),
                    dead: false,
                    start_at,
                    options: p.options,
                }
            })
            .collect();
        Sim { now, a, b, legs, rng: Rng::new(seed) }
    }

    /// Moves every cell the cores want to send into the pipes.
    fn transmit(&mut self) {
        for leg in &mut self.legs {
            if leg.dead || leg.start_at.is_some() {
                continue;
            }
            while let Some(c) = self.a.poll_transmit(leg.a, self.now) {
                leg.a_to_b.send(c, self.now, &mut self.rng);
            }
            while let Some(c) = self.b.poll_transmit(leg.b, self.now) {
                leg.b_to_a.send(c, self.now, &mut self.rng);
            }
        }
    }

    /// Advances to the next event (a cell arrival, a timer, or `limit`) and handles everything due then.
    pub fn step(&mut self, limit: Instant) {
        self.transmit();
        let mut next = limit;
        for leg in &self.legs {
            if leg.dead {
                continue;
            }
            for t in [leg.a_to_b.next_arrival(), leg.b_to_a.next_arrival(), leg.start_at].into_iter().flatten() {
                next = next.min(t);
            }
        }
        for t in [self.a.poll_timeout(), self.b.poll_timeout()].into_iter().flatten() {
            next = next.min(t);
        }
        self.now = self.now.max(next);
        let now = self.now;
        for leg in &mut self.legs {
            if leg.dead {
                continue;
            }
            if leg.start_at.is_some_and(|t| t <= now) {
                leg.start_at = None;
                leg.a = self.a.add_leg(leg.options, now);
                leg.b = self.b.accept_leg(now);
            }
            while leg.a_to_b.next_arrival().is_some_and(|t| t <= now) {
                let (_, c) = leg.a_to_b.queue.pop_front().expect("peeked");
                let _ = self.b.handle_cell(leg.b, &c, now);
            }
            while leg.b_to_a.next_arrival().is_some_and(|t| t <= now) {
                let (_, c) = leg.b_to_a.queue.pop_front().expect("peeked");
                let _ = self.a.handle_cell(leg.a, &c, now);
            }
        }
        if self.a.poll_timeout().is_some_and(|t| t <= now) {
            self.a.handle_timeout(now);
        }
        if self.b.poll_timeout().is_some_and(|t| t <= now) {
            self.b.handle_timeout(now);
        }
    }

    /// Kills leg `i`'s path: what is in flight is lost and both transports fail.
    pub fn kill(&mut self, i: usize) {
        let leg = &mut self.legs[i];
        leg.dead = true;
        leg.a_to_b.queue.clear();
        leg.b_to_a.queue.clear();
        self.a.leg_failed(leg.a, "path killed by the test", self.now);
        self.b.leg_failed(leg.b, "path killed by the test", self.now);
    }
}

/// A deterministic byte source and a hash of what it produced.
pub struct Source {
    rng: Rng,
    pub remaining: u64,
    pending: Vec<u8>,
    pub hash: Sha256,
}

impl Source {
    pub fn new(seed: u64, len: u64) -> Source {
        Source { rng: Rng::new(seed ^ 0xDA7A), remaining: len, pending: Vec::new(), hash: Sha256::new() }
    }

    /// Writes as much as the stream takes.
    pub fn pump(&mut self, core: &mut TunnelCore, stream: u32) {
        loop {
            if self.pending.is_empty() {
                if self.remaining == 0 {
                    return;
                }
                let n = self.remaining.min(16 * 1024) as usize;
                self.pending = (0..n.div_ceil(8)).flat_map(|_| self.rng.next().to_le_bytes()).take(n).collect();
                self.remaining -= n as u64;
                self.hash.update(&self.pending);
            }
            let taken = core.stream_write(stream, &self.pending).expect("stream write");
            if taken == 0 {
                return;
            }
            self.pending.drain(..taken);
        }
    }

    pub fn done(&self) -> bool {
        self.remaining == 0 && self.pending.is_empty()
    }
}

/// Reads a stream, hashing it and recording when bytes arrived.
pub struct Sink {
    pub hash: Sha256,
    pub received: u64,
    pub eof: bool,
    pub last_progress: Instant,
    pub longest_gap: Duration,
}

impl Sink {
    pub fn new(now: Instant) -> Sink {
        Sink { hash: Sha256::new(), received: 0, eof: false, last_progress: now, longest_gap: Duration::ZERO }
    }

    pub fn drain(&mut self, core: &mut TunnelCore, stream: u32, now: Instant) {
        let mut buf = vec![0u8; 64 * 1024];
        while let Some(n) = core.stream_read(stream, &mut buf).expect("stream read") {
            if n == 0 {
                self.eof = true;
                return;
            }
            self.hash.update(&buf[..n]);
            self.received += n as u64;
            self.longest_gap = self.longest_gap.max(now - self.last_progress);
            self.last_progress = now;
        }
    }
}
