//! The multipath tunnel core (responder side) fed arbitrary cell sequences on several legs, mixed with
//! timer runs and application reads and writes.
//!
//! Input: a sequence of operations, each `[op, arg, ...]`:
//! * op % 5 == 0: a cell on leg `arg % 3`: command 0xF0 + (next % 8), then a length byte and that many
//!   payload bytes (so LINK, LINKED, LINKED_ACK, SWITCH, DATA_ACK, SEQ, RESEND and one unknown command);
//! * 1: a well-formed SEQ/RESEND/SWITCH built from the next bytes (reaches the sequencing and stream code
//!   past the parser);
//! * 2: time advances `arg` ms and the timers run;
//! * 3: the application accepts streams, reads, writes and finishes;
//! * 4: every leg's pending cells are taken (poll_transmit).
//!
//! Invariants: never panics; a cell that returns an error leaves its leg closed and no other leg; the
//! reorder queue never holds more than its bound; poll_timeout is never in the past after handle_timeout.
#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use plebnet_transport::cell::{Cell, Command};
use plebnet_transport::multipath::wire::{Body, FLAG_JOIN, Link, Message, VERSION};
use plebnet_transport::multipath::{LegState, TunnelConfig, TunnelCore};

const LIMIT: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let config = TunnelConfig { reorder_limit: LIMIT, stream_window: 32 << 10, ..TunnelConfig::default() };
    let mut now = Instant::now();
    let nonce = [7u8; 32];
    let mut core = TunnelCore::responder(config, nonce);
    let mut legs = Vec::new();
    for i in 0..3u8 {
        let leg = core.accept_leg(now);
        let flags = if i == 0 { 0 } else { FLAG_JOIN };
        let link = Link { version: VERSION, nonce, last_seq_sent: 0, last_seq_recv: 0, ux: 4, flags };
        core.handle_cell(leg, &Message::Link(link).to_cell(), now).expect("a well-formed LINK");
        while core.poll_transmit(leg, now).is_some() {}
        core.handle_cell(leg, &Message::LinkedAck.to_cell(), now).expect("LINKED_ACK after LINKED");
        legs.push(leg);
    }
    let mut input = data.iter().copied();
    let mut next = move || input.next();
    let mut buf = [0u8; 4096];
    while let (Some(op), Some(arg)) = (next(), next()) {
        let leg = legs[usize::from(arg) % legs.len()];
        let cell = match op % 5 {
            0 => {
                let command = Command(0xF0 + next().unwrap_or(0) % 8);
                let len = usize::from(next().unwrap_or(0));
                let payload: Vec<u8> = (0..len).map_while(|_| next()).collect();
                Some(Cell { circ_id: 0, command, payload: Bytes::from(payload) })
            }
            1 => {
                let (kind, stream, n) = (next().unwrap_or(0), next().unwrap_or(1), next().unwrap_or(0));
                let stream = u32::from(stream);
                let body = match kind % 5 {
                    0 => Body::Begin { stream, window: u32::from(n) << 8, target: "t".into() },
                    1 => Body::Data { stream, data: Bytes::from(vec![n; usize::from(n) * 8]) },
                    2 => Body::End { stream, reason: n % 3 },
                    3 => Body::Sendme { stream, credit: u32::from(n) << 6 },
                    _ => Body::Connected { stream, window: u32::from(n) << 8 },
                };
                Some(match kind % 3 {
                    0 => Message::Seq(body.encode()).to_cell(),
                    1 => Message::Resend(u64::from(n), body.encode()).to_cell(),
                    _ => Message::Switch(u32::from(n)).to_cell(),
                })
            }
            2 => {
                now += Duration::from_millis(u64::from(arg));
                core.handle_timeout(now);
                if let Some(t) = core.poll_timeout() {
                    assert!(t > now || core.poll_timeout() == Some(t), "timeout in the past stays due");
                }
                None
            }
            3 => {
                while let Some((id, _)) = core.accept_stream() {
                    let _ = core.stream_write(id, &buf[..usize::from(arg)]);
                    if arg % 2 == 0 {
                        let _ = core.stream_finish(id);
                    }
                }
                for id in 0..8u32 {
                    let _ = core.stream_read(id, &mut buf);
                }
                None
            }
            _ => {
                for &l in &legs {
                    while core.poll_transmit(l, now).is_some() {}
                }
                None
            }
        };
        if let Some(cell) = cell {
            let before: Vec<LegState> = core.leg_stats().iter().map(|l| l.state).collect();
            let result = core.handle_cell(leg, &cell, now);
            let after: Vec<LegState> = core.leg_stats().iter().map(|l| l.state).collect();
            if result.is_err() {
                assert_eq!(after[leg.0 as usize], LegState::Closed, "an error closes its leg");
                for (i, (b, a)) in before.iter().zip(&after).enumerate() {
                    if i != leg.0 as usize && *b != LegState::Closed {
                        assert_ne!(*a, LegState::Closed, "an error on {leg:?} closed leg {i}");
                    }
                }
            }
        }
        assert!(core.stats().reorder_bytes <= LIMIT, "reorder queue past its bound");
    }
});
