//! Prints what hashing one 4-tuple costs with std's SipHash-1-3 and with the
//! seeded foldhash the stack's tables use (see `src/stack/tables.rs`).
//!
//! `cargo run --release -p plebnet-netstack --example hash_cost`

use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use smoltcp::wire::IpAddress;

const ROUNDS: u32 = 10_000_000;

/// Mean time per hash of a fresh 4-tuple, its building included.
fn per_hash(state: &impl BuildHasher) -> Duration {
    let (a, b) = (IpAddress::Ipv4([10, 0, 0, 1].into()), IpAddress::Ipv4([10, 0, 0, 2].into()));
    let start = Instant::now();
    let mut x = 0u64;
    for i in 0..ROUNDS {
        x ^= state.hash_one(std::hint::black_box((a, 80u16, b, i as u16)));
    }
    std::hint::black_box(x);
    start.elapsed() / ROUNDS
}

fn main() {
    for _ in 0..3 {
        let sip = per_hash(&std::hash::RandomState::new());
        let fold = per_hash(&foldhash::fast::RandomState::default());
        println!("per 4-tuple: SipHash-1-3 {sip:?}, foldhash {fold:?}");
    }
}
