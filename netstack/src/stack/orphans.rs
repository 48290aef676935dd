//! Connections nobody holds any more (the application dropped its stream,
//! a listener closed with connections pending), kept until their close
//! completes, grouped by shard.
//!
//! A connection's state changes only while its shard is polled (a segment,
//! a timer, an application call marks the shard), so each driver iteration
//! looks only at the orphans of the shards it polled. Closing connections
//! can be numerous — a connection churn leaves thousands in TIME-WAIT for
//! 10 s — and looking at all of them every iteration cost 8% of the
//! driver's time in the connect-rate benchmark. One orphan's wait has no
//! poll to mark it: the linger limit of a connection whose peer went
//! silent (FIN-WAIT-2 has no timer). For that, every orphan is looked at
//! once per [`FULL_SCAN`].

use smoltcp::time::{Duration, Instant};

use super::ingress::FourTuple;
use super::shards::Handle;
use super::tidy::Shrink;

/// How often every orphan is looked at, polled or not.
const FULL_SCAN: Duration = Duration::from_secs(1);

/// A connection nobody holds any more, kept until its close completes.
#[derive(Debug)]
pub(crate) struct Orphan {
    pub(crate) handle: Handle,
    /// The ephemeral port to release when it is gone.
    pub(crate) port: Option<u16>,
    /// Its tuple in the SYN guard, for passive connections.
    pub(crate) passive: Option<FourTuple>,
    pub(crate) since: Instant,
    /// Its buffers' pages were given back (it reached TIME-WAIT).
    pub(crate) released: bool,
}

impl Orphan {
    pub(crate) fn new(handle: Handle, port: Option<u16>, passive: Option<FourTuple>, since: Instant) -> Self {
        Self { handle, port, passive, since, released: false }
    }
}

/// What to do with one orphan, decided by whoever looks at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Still closing: keep it.
    Keep,
    /// Its connection is over: drop it from the table.
    Gone,
}

/// Every orphan of a stack, by the shard of its socket.
#[derive(Debug, Default)]
pub(crate) struct Orphans {
    by_shard: Vec<Vec<Orphan>>,
    /// When every orphan is looked at next (`None`: at the next review).
    next_full_scan: Option<Instant>,
}

impl Orphans {
    /// Adds an orphan.
    pub(crate) fn push(&mut self, orphan: Orphan) {
        let shard = orphan.handle.shard();
        if self.by_shard.len() <= shard {
            self.by_shard.resize_with(shard + 1, Vec::new);
        }
        self.by_shard[shard].push(orphan);
    }

    /// Calls `look` for each orphan in a `polled` shard, or for all of them
    /// if a full scan is due at `now`; drops those it calls gone.
    pub(crate) fn review(&mut self, now: Instant, polled: &[usize], mut look: impl FnMut(&mut Orphan) -> Fate) {
        let mut visit = |list: &mut Vec<Orphan>| {
            let mut i = 0;
            while i < list.len() {
                if look(&mut list[i]) == Fate::Gone {
                    list.swap_remove(i);
                } else {
                    i += 1;
                }
            }
        };
        if self.next_full_scan.is_none_or(|t| now >= t) {
            self.next_full_scan = Some(now + FULL_SCAN);
            self.by_shard.iter_mut().for_each(visit);
        } else {
            for &shard in polled {
                if let Some(list) = self.by_shard.get_mut(shard) {
                    visit(list);
                }
            }
        }
    }

    /// Takes out up to `most` orphans for which `pick` holds, oldest first
    /// (one pass over all of them: for rare paths only).
    pub(crate) fn take_oldest(&mut self, most: usize, pick: impl Fn(&Orphan) -> bool) -> Vec<Orphan> {
        let mut found: Vec<(Instant, usize, usize)> = Vec::new();
        for (s, list) in self.by_shard.iter().enumerate() {
            found.extend(list.iter().enumerate().filter(|(_, o)| pick(o)).map(|(i, o)| (o.since, s, i)));
        }
        found.sort_unstable();
        found.truncate(most);
        // Highest index first within each shard, so swap_remove moves no
        // orphan that is still to be taken.
        found.sort_unstable_by_key(|&(_, s, i)| std::cmp::Reverse((s, i)));
        found.into_iter().map(|(_, s, i)| self.by_shard[s].swap_remove(i)).collect()
    }

    /// When the driver must run a review even if nothing else wakes it:
    /// the next full scan, while there are orphans (so that the linger
    /// limit holds on an otherwise idle stack).
    pub(crate) fn next_review(&self) -> Option<Instant> {
        if self.by_shard.iter().all(Vec::is_empty) {
            return None;
        }
        self.next_full_scan
    }

    /// Gives back spare capacity (see `tidy`).
    pub(crate) fn tidy(&mut self) {
        for list in &mut self.by_shard {
            if list.is_empty() {
                // A burst leaves hundreds of shards' lists empty but with
                // room for 64 orphans each.
                *list = Vec::new();
            } else {
                list.shrink_sparse();
            }
        }
        while self.by_shard.last().is_some_and(Vec::is_empty) {
            self.by_shard.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::config::TcpBuffers;
    use crate::stack::shards::Sockets;
    use smoltcp::socket::tcp;

    #[test]
    fn only_polled_shards_are_reviewed_between_full_scans() {
        let mut sockets = Sockets::default();
        let sizes = TcpBuffers { rx: 4096, tx: 4096 };
        let handles: Vec<Handle> =
            (0..130).map(|_| sockets.add_tcp(sizes, |rx, tx| Ok(tcp::Socket::new(rx, tx))).unwrap()).collect();
        let mut orphans = Orphans::default();
        for &h in &handles {
            orphans.push(Orphan::new(h, None, None, Instant::ZERO));
        }
        let shard = handles[0].shard();
        let count = |o: &mut Orphans, now, polled: &[usize]| {
            let mut seen = 0;
            o.review(now, polled, |_| {
                seen += 1;
                Fate::Keep
            });
            seen
        };
        assert_eq!(count(&mut orphans, Instant::from_millis(0), &[]), 130, "the first review is a full scan");
        assert_eq!(count(&mut orphans, Instant::from_millis(10), &[shard]), 64, "then only the polled shard");
        assert_eq!(count(&mut orphans, Instant::from_millis(20), &[]), 0);
        assert_eq!(count(&mut orphans, Instant::from_millis(1000), &[]), 130, "a full scan each second");
        orphans.review(Instant::from_millis(1010), &[shard], |o| {
            if o.handle == handles[0] { Fate::Gone } else { Fate::Keep }
        });
        assert_eq!(count(&mut orphans, Instant::from_millis(2000), &[]), 129, "gone orphans are dropped");
    }

    #[test]
    fn the_oldest_matching_orphans_are_taken_out() {
        let mut sockets = Sockets::default();
        let sizes = TcpBuffers { rx: 4096, tx: 4096 };
        let mut orphans = Orphans::default();
        let mut handles = Vec::new();
        for i in 0..150u64 {
            let h = sockets.add_tcp(sizes, |rx, tx| Ok(tcp::Socket::new(rx, tx))).unwrap();
            // Ages out of order, odd ones without a port.
            let since = Instant::from_millis(((i * 37) % 150) as i64);
            orphans.push(Orphan::new(h, (i % 2 == 0).then_some(1000 + i as u16), None, since));
            handles.push(h);
        }
        let taken = orphans.take_oldest(10, |o| o.port.is_some());
        let mut ages: Vec<i64> = taken.iter().map(|o| o.since.total_millis()).collect();
        assert_eq!(taken.len(), 10);
        assert!(taken.iter().all(|o| o.port.is_some()));
        ages.sort_unstable();
        let mut expected: Vec<i64> = (0..150u64).filter(|i| i % 2 == 0).map(|i| ((i * 37) % 150) as i64).collect();
        expected.sort_unstable();
        assert_eq!(ages, expected[..10]);
        let mut left = 0;
        orphans.review(Instant::ZERO, &[], |_| {
            left += 1;
            Fate::Keep
        });
        assert_eq!(left, 140, "the others stay");
    }
}
