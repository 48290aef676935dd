//! The tunnel core's acceptance tests on a virtual clock.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::Digest;

use super::sim::{PathSpec, Rng, Sim, Sink, Source};
use super::wire::{self, Body, FLAG_JOIN, Link, Message};
use super::*;
use crate::cell::Cell;

const MIB: u64 = 1 << 20;

/// What happens during a transfer, at a byte count the receiver has reached.
#[derive(Clone, Copy)]
enum Action {
    Kill(usize),
    Stall(usize),
    Remove(usize),
}

struct Outcome {
    sim: Sim,
    sink: Sink,
    source_hash: [u8; 32],
}

/// Sends `len` bytes from the initiator to the responder on one stream; `actions` fire when the receiver
/// has `at` bytes. Panics if the virtual transfer takes longer than `deadline`.
fn transfer(config: TunnelConfig, paths: &[PathSpec], seed: u64, len: u64, actions: &[(u64, Action)]) -> Outcome {
    let mut sim = Sim::new(config, paths, seed);
    let stream = sim.a.open_stream("sink").expect("open");
    let mut source = Source::new(seed, len);
    let mut sink = Sink::new(sim.now);
    let mut accepted = None;
    let mut pending: Vec<(u64, Action)> = actions.to_vec();
    let deadline = sim.now + Duration::from_secs(3600);
    let mut finished = false;
    while !sink.eof {
        assert!(sim.now < deadline, "transfer did not finish: {} of {len} bytes", sink.received);
        assert!(sim.a.closed().is_none(), "tunnel closed: {:?}", sim.a.closed());
        source.pump(&mut sim.a, stream);
        if source.done() && !finished {
            sim.a.stream_finish(stream).unwrap();
            finished = true;
        }
        if accepted.is_none() {
            accepted = sim.b.accept_stream().map(|(id, target)| {
                assert_eq!(target, "sink");
                id
            });
        }
        if let Some(id) = accepted {
            let now = sim.now;
            sink.drain(&mut sim.b, id, now);
        }
        pending.retain(|&(at, action)| {
            if sink.received < at {
                return true;
            }
            match action {
                Action::Kill(i) => sim.kill(i),
                Action::Stall(i) => {
                    sim.legs[i].a_to_b.stalled = true;
                    sim.legs[i].b_to_a.stalled = true;
                }
                Action::Remove(i) => {
                    let (now, leg) = (sim.now, sim.legs[i].a);
                    sim.a.remove_leg(leg, now);
                }
            }
            false
        });
        let limit = sim.now + Duration::from_millis(50);
        sim.step(limit);
    }
    assert_eq!(sink.received, len);
    Outcome { source_hash: source.hash.finalize().into(), sink, sim }
}

fn assert_intact(o: Outcome) -> Outcome {
    let got: [u8; 32] = o.sink.hash.clone().finalize().into();
    assert_eq!(got, o.source_hash, "content differs");
    o
}

fn paths(rtts_ms: &[u64], loss: f64) -> Vec<PathSpec> {
    rtts_ms.iter().map(|&r| PathSpec::new(r, loss)).collect()
}

/// Paths rate-limited to 10 MB/s each, so a transfer lasts long enough for legs to share it.
fn slow_paths(rtts_ms: &[u64], loss: f64) -> Vec<PathSpec> {
    rtts_ms.iter().map(|&r| PathSpec { rate: Some(10e6), ..PathSpec::new(r, loss) }).collect()
}

#[test]
fn one_leg_moves_a_stream_intact() {
    let o = assert_intact(transfer(TunnelConfig::default(), &paths(&[10], 0.0), 1, 8 * MIB, &[]));
    assert_eq!(o.sim.b.stats().duplicates_dropped, 0);
}

/// Acceptance: for 20 seeds, a random leg dies at a random point of 64 MiB over two legs (10 ms and 40 ms,
/// 1 % loss each): content equal, nothing delivered twice (the receiver delivers by sequence number, and
/// `messages_delivered` equals the sender's count), and the tunnel carries on.
#[test]
fn a_dying_leg_loses_nothing_over_twenty_seeds() {
    let size = std::env::var("PLEBNET_MP_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(64) * MIB;
    for seed in 0..20 {
        let mut rng = Rng::new(seed + 1000);
        let victim = rng.below(2) as usize;
        let at = size / 10 + rng.below(size * 8 / 10);
        let o = assert_intact(transfer(
            TunnelConfig::default(),
            &paths(&[10, 40], 0.01),
            seed,
            size,
            &[(at, Action::Kill(victim))],
        ));
        let (a, b) = (o.sim.a.stats(), o.sim.b.stats());
        assert_eq!(b.messages_delivered, a.messages_sent, "seed {seed}: every message delivered exactly once");
        assert_eq!(o.sim.a.live_legs(), 1, "seed {seed}");
        assert!(a.reinjected_cells > 0 || o.sim.a.leg_stats()[victim].inflight_bytes == 0, "seed {seed}");
    }
}

#[test]
fn three_legs_survive_losing_two() {
    for seed in 0..5 {
        let mut rng = Rng::new(seed + 77);
        let first = rng.below(3) as usize;
        let second = (first + 1 + rng.below(2) as usize) % 3;
        let size = 32 * MIB;
        let o = assert_intact(transfer(
            TunnelConfig::default(),
            &paths(&[10, 40, 25], 0.01),
            seed,
            size,
            &[(size / 4, Action::Kill(first)), (size / 2, Action::Kill(second))],
        ));
        assert_eq!(o.sim.a.live_legs(), 1);
        assert_eq!(o.sim.b.stats().messages_delivered, o.sim.a.stats().messages_sent);
    }
}

/// Acceptance: with one leg stalled indefinitely (its transport never fails), the reorder queue stays within
/// its bound and the transfer completes on the other leg.
#[test]
fn a_stalled_leg_keeps_the_reorder_queue_bounded() {
    // Legs' windows well under the reorder bound, so both legs carry data when one stalls.
    let config = TunnelConfig { reorder_limit: 512 << 10, leg_window: 128 << 10, ..TunnelConfig::default() };
    let size = 16 * MIB;
    let o =
        assert_intact(transfer(config.clone(), &slow_paths(&[10, 10], 0.0), 3, size, &[(size / 3, Action::Stall(0))]));
    let b = o.sim.b.stats();
    assert!(b.reorder_peak_bytes <= config.reorder_limit, "peak {} > {}", b.reorder_peak_bytes, config.reorder_limit);
    assert!(b.reorder_peak_bytes > 0, "the stall must have made the queue hold something");
    assert!(o.sim.a.stats().stalls >= 1);
}

/// The reorder queue's bound holds against a peer that ignores the window: the leg is closed, nothing is
/// queued past the bound.
#[test]
fn a_peer_overrunning_the_reorder_bound_loses_its_leg() {
    let config = TunnelConfig { reorder_limit: 64 << 10, ..TunnelConfig::default() };
    let (mut b, leg, now) = linked_responder(config, 9);
    let body = Body::Data { stream: 1, data: Bytes::from(vec![0u8; 4096]) }.encode();
    let mut result = Ok(());
    for seq in 2..100 {
        result = b.handle_cell(leg, &Message::Resend(seq, body.clone()).to_cell(), now);
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result, Err(ProtocolError::ReorderOverflow { limit: 64 << 10 }));
    assert!(b.stats().reorder_bytes <= 64 << 10);
}

#[test]
fn every_scheduler_delivers_intact() {
    for scheduler in [Scheduler::MinRtt, Scheduler::LowRtt, Scheduler::WeightedRoundRobin, Scheduler::Redundant] {
        let config = TunnelConfig { scheduler, ..TunnelConfig::default() };
        let o = assert_intact(transfer(config, &slow_paths(&[10, 40], 0.0), 5, 8 * MIB, &[]));
        assert_eq!(o.sim.b.scheduler(), scheduler, "the responder adopts the initiator's UX");
        let legs = o.sim.a.leg_stats();
        match scheduler {
            Scheduler::MinRtt => assert!(legs[1].data_bytes_sent < legs[0].data_bytes_sent / 10),
            Scheduler::Redundant => {
                // Copies the other leg already delivered are skipped, so each leg carries part of the stream
                // twice, not all of it.
                assert!(legs[0].data_bytes_sent + legs[1].data_bytes_sent > 9 * MIB);
                assert!(o.sim.b.stats().duplicates_dropped > 0);
            }
            _ => assert!(legs[1].data_bytes_sent > 0 && legs[0].data_bytes_sent > 0),
        }
        assert_eq!(o.sim.b.stats().messages_delivered, o.sim.a.stats().messages_sent);
    }
}

#[test]
fn weighted_round_robin_follows_the_weights() {
    // Leg windows large enough that neither leg is window-limited (a full leg is skipped).
    let config =
        TunnelConfig { scheduler: Scheduler::WeightedRoundRobin, leg_window: 8 << 20, ..TunnelConfig::default() };
    let mut p = paths(&[10, 10], 0.0);
    p[1].options.weight = 3;
    let o = assert_intact(transfer(config, &p, 6, 8 * MIB, &[]));
    let legs = o.sim.a.leg_stats();
    let ratio = legs[1].data_bytes_sent as f64 / legs[0].data_bytes_sent as f64;
    assert!((2.7..3.3).contains(&ratio), "ratio {ratio}");
}

#[test]
fn a_backup_leg_carries_data_only_after_the_others_fail() {
    let mut p = paths(&[10, 10], 0.0);
    p[1].options.backup = true;
    let size = 8 * MIB;
    let mut sim_check = transfer(TunnelConfig::default(), &p, 7, size, &[]);
    assert_eq!(sim_check.sim.a.leg_stats()[1].data_bytes_sent, 0);
    sim_check = assert_intact(transfer(TunnelConfig::default(), &p, 7, size, &[(size / 2, Action::Kill(0))]));
    assert!(sim_check.sim.a.leg_stats()[1].data_bytes_sent > 0);
}

/// Legs can be added and removed at runtime: make-before-break.
#[test]
fn make_before_break() {
    let size = 16 * MIB;
    let mut p = slow_paths(&[10, 20], 0.0);
    p[1].start_delay = Duration::from_millis(300);
    let o = assert_intact(transfer(TunnelConfig::default(), &p, 8, size, &[(size / 2, Action::Remove(0))]));
    let legs = o.sim.a.leg_stats();
    assert_eq!(legs[0].state, LegState::Closed);
    assert!(legs[1].data_bytes_sent > size / 4, "the new leg carried the second half");
    assert_eq!(o.sim.a.stats().reinjected_cells, 0, "a graceful removal resends nothing");
}

/// Acceptance (responder join, sans-IO half): the second leg arrives late, and the responder still joins
/// it to the same tunnel (here the sim hands it to the same core; the driver's test does it across NICs).
#[test]
fn a_late_second_leg_joins_and_carries_data() {
    let mut p = slow_paths(&[10, 10], 0.0);
    p[1].start_delay = Duration::from_millis(500);
    let o = assert_intact(transfer(TunnelConfig::default(), &p, 11, 32 * MIB, &[]));
    assert_eq!(o.sim.b.live_legs(), 2);
    assert!(o.sim.b.leg_stats()[1].data_bytes_received > 0);
}

// ---------------------------------------------------------------------------------------------------------
// Hand-made cells: the seed-000 interleaving and hostile control cells.

/// A responder core with one linked leg, driven by hand.
fn linked_responder(config: TunnelConfig, nonce: u8) -> (TunnelCore, LegId, Instant) {
    let now = Instant::now();
    let mut b = TunnelCore::responder(config, [nonce; 32]);
    let leg = b.accept_leg(now);
    link_leg(&mut b, leg, nonce, 0, now);
    (b, leg, now)
}

fn link_leg(b: &mut TunnelCore, leg: LegId, nonce: u8, flags: u8, now: Instant) {
    let link = Link { version: wire::VERSION, nonce: [nonce; 32], last_seq_sent: 0, last_seq_recv: 0, ux: 4, flags };
    b.handle_cell(leg, &Message::Link(link).to_cell(), now).unwrap();
    while b.poll_transmit(leg, now).is_some() {}
    b.handle_cell(leg, &Message::LinkedAck.to_cell(), now).unwrap();
}

fn seq(body: Body) -> Cell {
    Message::Seq(body.encode()).to_cell()
}

fn read_all(core: &mut TunnelCore, stream: u32) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while let Some(n) = core.stream_read(stream, &mut buf).unwrap() {
        if n == 0 {
            return (out, true);
        }
        out.extend_from_slice(&buf[..n]);
    }
    (out, false)
}

/// Acceptance (seed 000): BEGIN and DATA for stream S on leg 1, SWITCH, more DATA for S on leg 2 —
/// delivered in order to S; END arrives on a third leg, not BEGIN's.
#[test]
fn seed_000_interleaving_is_delivered_in_order() {
    let (mut b, leg1, now) = linked_responder(TunnelConfig::default(), 42);
    let leg2 = b.accept_leg(now);
    link_leg(&mut b, leg2, 42, FLAG_JOIN, now);
    let leg3 = b.accept_leg(now);
    link_leg(&mut b, leg3, 42, FLAG_JOIN, now);
    let data = |d: &'static [u8]| Body::Data { stream: 1, data: Bytes::from_static(d) };

    // Leg 1: seq 1 BEGIN, seq 2 DATA "one".
    b.handle_cell(leg1, &seq(Body::Begin { stream: 1, window: 1 << 20, target: "t".into() }), now).unwrap();
    b.handle_cell(leg1, &seq(data(b"one ")), now).unwrap();
    // Leg 2 carries seq 4 ("three") after a SWITCH over seqs 1..3; seq 3 ("two") comes later on leg 1.
    b.handle_cell(leg2, &Message::Switch(3).to_cell(), now).unwrap();
    b.handle_cell(leg2, &seq(data(b"three ")), now).unwrap();
    let (s, _) = b.accept_stream().expect("BEGIN from leg 1 opened the stream");
    assert_eq!(read_all(&mut b, s), (b"one ".to_vec(), false), "seq 4 waits for seq 3");
    b.handle_cell(leg1, &seq(data(b"two ")), now).unwrap();
    assert_eq!(read_all(&mut b, s), (b"two three ".to_vec(), false));
    // Leg 3: END for the stream (seq 5), on a leg that never saw its BEGIN.
    b.handle_cell(leg3, &Message::Switch(4).to_cell(), now).unwrap();
    b.handle_cell(leg3, &seq(Body::End { stream: 1, reason: wire::END_DONE }), now).unwrap();
    assert_eq!(read_all(&mut b, s), (Vec::new(), true));
    assert_eq!(b.live_legs(), 3);
    assert_eq!(b.stats().unknown_stream_cells, 0);
}

/// Acceptance: hostile control cells close only the offending leg, with a precise error; another tunnel
/// is untouched.
#[test]
fn hostile_control_cells_close_only_their_leg() {
    let cases: Vec<(&str, Vec<Cell>, ProtocolError)> = vec![
        ("SWITCH 0", vec![Message::Switch(0).to_cell()], ProtocolError::SwitchZero),
        ("two SWITCHes", vec![Message::Switch(1).to_cell(), Message::Switch(1).to_cell()], ProtocolError::SwitchTwice),
        (
            "jump beyond the window",
            vec![Message::Switch(u32::MAX).to_cell()],
            ProtocolError::BeyondWindow {
                seq: u64::from(u32::MAX) + 1,
                expected: 1,
                max_ahead: ((8 << 20) / wire::MIN_MESSAGE_COST) as u64,
            },
        ),
        (
            "LINKED to a responder",
            vec![
                Message::Linked(Link {
                    version: 1,
                    nonce: [5; 32],
                    last_seq_sent: 0,
                    last_seq_recv: 0,
                    ux: 0,
                    flags: 0,
                })
                .to_cell(),
            ],
            ProtocolError::Unexpected("LINKED sent to the responder"),
        ),
    ];
    for (what, cells, expected) in cases {
        let (mut b, bad, now) = linked_responder(TunnelConfig::default(), 5);
        let good = b.accept_leg(now);
        link_leg(&mut b, good, 5, FLAG_JOIN, now);
        let (mut other, other_leg, _) = linked_responder(TunnelConfig::default(), 6);
        let mut result = Ok(());
        for c in &cells {
            result = b.handle_cell(bad, c, now);
        }
        assert_eq!(result, Err(expected.clone()), "{what}");
        assert!(
            matches!(b.poll_event(), Some(TunnelEvent::LegUp { .. })),
            "{what}: events start with the legs coming up"
        );
        let states: Vec<LegState> = b.leg_stats().iter().map(|l| l.state).collect();
        assert_eq!(states, vec![LegState::Closed, LegState::Up], "{what}: only the offending leg closed");
        assert!(b.closed().is_none(), "{what}");
        // The other leg still delivers.
        b.handle_cell(good, &seq(Body::Begin { stream: 1, window: 1024, target: "x".into() }), now).unwrap();
        assert!(b.accept_stream().is_some(), "{what}");
        // Another tunnel is untouched.
        other.handle_cell(other_leg, &seq(Body::Begin { stream: 1, window: 1024, target: "y".into() }), now).unwrap();
        assert!(other.accept_stream().is_some() && other.live_legs() == 1, "{what}");
    }
}

/// Acceptance: LINKED twice on one leg closes that leg on the initiator.
#[test]
fn linked_twice_closes_the_leg() {
    let now = Instant::now();
    let mut a = TunnelCore::initiator(TunnelConfig::default(), [8; 32]);
    let leg = a.add_leg(LegOptions::default(), now);
    let link = match Message::from_cell(&a.poll_transmit(leg, now).unwrap()).unwrap() {
        Message::Link(l) => l,
        other => panic!("first cell {other:?}"),
    };
    assert_eq!(link.flags & FLAG_JOIN, 0, "the first leg creates the tunnel");
    let linked = Message::Linked(Link { flags: 0, ..link }).to_cell();
    a.handle_cell(leg, &linked, now).unwrap();
    assert_eq!(a.handle_cell(leg, &linked, now), Err(ProtocolError::Unexpected("LINKED twice")));
    assert_eq!(a.leg_stats()[0].state, LegState::Closed);
}

/// A stream peer that breaks its flow control has that stream reset; the tunnel and other streams live.
#[test]
fn a_stream_window_violation_resets_only_that_stream() {
    let (mut b, leg, now) = linked_responder(TunnelConfig { stream_window: 1 << 20, ..TunnelConfig::default() }, 12);
    b.handle_cell(leg, &seq(Body::Begin { stream: 1, window: 1024, target: "a".into() }), now).unwrap();
    b.handle_cell(leg, &seq(Body::Begin { stream: 3, window: 1024, target: "b".into() }), now).unwrap();
    let (s1, _) = b.accept_stream().unwrap();
    let (s3, _) = b.accept_stream().unwrap();
    let big = Bytes::from(vec![1u8; 60_000]);
    for _ in 0..20 {
        b.handle_cell(leg, &seq(Body::Data { stream: 1, data: big.clone() }), now).unwrap();
    }
    assert_eq!(b.stream_read(s1, &mut [0u8; 16]).map(|_| ()), Ok(()), "buffered data is still readable");
    b.handle_cell(leg, &seq(Body::Data { stream: 3, data: Bytes::from_static(b"fine") }), now).unwrap();
    assert_eq!(read_all(&mut b, s3), (b"fine".to_vec(), false));
    assert_eq!(b.stats().stream_violations, 1);
    assert_eq!(b.live_legs(), 1);
}
