//! Giving back the spare capacity of per-connection tables.
//!
//! Rust's collections never shrink by themselves: after a burst of ten
//! thousand connections, every table that had an entry per connection (the
//! 4-tuple index, the connection limits, the recovery assist's flows...)
//! would keep room for ten thousand for the rest of the process. Each
//! driver iteration asks each table to [`Shrink::shrink_sparse`], which
//! costs nothing unless a table has fallen below a quarter of its capacity;
//! then it is rebuilt at twice its length, so the work is amortized over
//! the removals that emptied it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hash};

/// Tables smaller than this are left alone.
const MIN_CAPACITY: usize = 64;

/// A collection that can give back most of its spare capacity.
pub(crate) trait Shrink {
    /// Shrinks to about twice the length if the length is under a quarter
    /// of the capacity (and the capacity is worth bothering about).
    fn shrink_sparse(&mut self);
}

fn sparse(len: usize, capacity: usize) -> bool {
    capacity > MIN_CAPACITY && len < capacity / 4
}

impl<K: Eq + Hash, V, S: BuildHasher> Shrink for HashMap<K, V, S> {
    fn shrink_sparse(&mut self) {
        if sparse(self.len(), self.capacity()) {
            self.shrink_to(self.len() * 2);
        }
    }
}

impl<T: Eq + Hash, S: BuildHasher> Shrink for HashSet<T, S> {
    fn shrink_sparse(&mut self) {
        if sparse(self.len(), self.capacity()) {
            self.shrink_to(self.len() * 2);
        }
    }
}

impl<T> Shrink for Vec<T> {
    fn shrink_sparse(&mut self) {
        if sparse(self.len(), self.capacity()) {
            self.shrink_to(self.len() * 2);
        }
    }
}

impl<T> Shrink for VecDeque<T> {
    fn shrink_sparse(&mut self) {
        if sparse(self.len(), self.capacity()) {
            self.shrink_to(self.len() * 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sparse_tables_shrink_and_keep_room_to_grow() {
        let mut map: HashMap<u32, u32> = (0..10_000).map(|i| (i, i)).collect();
        let full = map.capacity();
        map.retain(|&k, _| k < 5_000);
        map.shrink_sparse();
        // (hashbrown's capacity counts deleted slots out until a rehash)
        assert!(map.capacity() >= 10_000, "half full: left alone, capacity {}", map.capacity());
        map.retain(|&k, _| k < 100);
        map.shrink_sparse();
        assert!(map.capacity() >= 200 && map.capacity() < full / 8, "capacity {}", map.capacity());
        assert_eq!(map.len(), 100);
        let mut small: Vec<u8> = Vec::with_capacity(MIN_CAPACITY);
        small.shrink_sparse();
        assert_eq!(small.capacity(), MIN_CAPACITY, "small tables are not worth it");
        let mut v: Vec<u64> = (0..1000).collect();
        v.truncate(10);
        v.shrink_sparse();
        assert!(v.capacity() >= 20 && v.capacity() < 1000);
    }
}
