//! The hash maps behind the stack's tables.
//!
//! The driver looks up half a dozen tables per packet (the flow index, the
//! SYN guard, the recovery assist, the receive and send marks), so the hash
//! function is on the hot path. std's default, SipHash-1-3, took 16 ns per
//! 4-tuple on this machine, foldhash 3 ns (`cargo run --release -p
//! plebnet-netstack --example hash_cost` prints both).
//!
//! Keys that a peer picks (addresses, ports, 4-tuples) could be chosen to
//! collide if the hash were predictable. foldhash is keyed by a random seed
//! per table, so a peer must learn the seed before it can aim, which it sees
//! only through timing. This is the protection Linux gives its own
//! connection table: Jenkins' hash with a random boot-time secret,
//! not a cryptographic function either (`inet_ehashfn` in
//! net/ipv4/inet_hashtables.c). Growing a table at all takes real work from
//! a peer: entries exist only for connections and the SYN backlog, both
//! bounded by `max_connections`, `max_connections_per_peer` and the backlog.

use std::collections::{HashMap, HashSet};

/// A map keyed by a per-table random seed; see the module docs.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
/// A set keyed by a per-table random seed; see the module docs.
pub(crate) type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;
    use smoltcp::wire::IpAddress;

    type Tuple = (IpAddress, u16, IpAddress, u16);

    fn v4(a: [u8; 4]) -> IpAddress {
        IpAddress::Ipv4(a.into())
    }

    #[test]
    fn tables_are_seeded_apart() {
        let t: Tuple = (v4([10, 0, 0, 1]), 80, v4([10, 0, 0, 2]), 4000);
        let (a, b) = (foldhash::fast::RandomState::default(), foldhash::fast::RandomState::default());
        assert_eq!(a.hash_one(t), a.hash_one(t));
        assert_ne!(a.hash_one(t), b.hash_one(t), "two tables, two seeds");
        let mut map: FastMap<Tuple, u32> = FastMap::default();
        for port in 0..10_000u16 {
            map.insert((v4([10, 0, 0, 1]), port, v4([10, 0, 0, 2]), 80), u32::from(port));
        }
        assert!((0..10_000u16).all(|p| map[&(v4([10, 0, 0, 1]), p, v4([10, 0, 0, 2]), 80)] == u32::from(p)));
        assert_eq!(map.get(&(v4([10, 0, 0, 1]), 1, v4([10, 0, 0, 2]), 81)), None);
    }
}
