//! The responder's side of joining: which tunnel a newly arrived leg belongs to, by the nonce of its LINK.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::cell::Cell;

use super::error::ProtocolError;
use super::wire::{FLAG_JOIN, LINK, Link, Message, NONCE_LEN};

/// What to do with a new leg, from [`Joiner::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinDecision<T> {
    /// Its LINK creates a new tunnel.
    Create,
    /// It joins this existing tunnel.
    Join(T),
    /// It asks to join a tunnel whose first leg has not arrived yet: ask again later (legs may arrive in any
    /// order, on any address or NIC).
    Wait,
    /// Refuse it with this error.
    Refuse(ProtocolError),
}

/// Matches arriving legs to tunnels by nonce. Generic over the handle the caller keeps per tunnel.
///
/// A LINK without the join flag creates a tunnel; its nonce must never have been used (by a live tunnel or
/// one of the last `history` retired ones). A LINK with the join flag joins the live tunnel with its nonce;
/// if there is none yet it waits up to `join_wait` for the creating leg, then is refused as unknown.
pub struct Joiner<T> {
    tunnels: HashMap<[u8; NONCE_LEN], T>,
    retired: HashSet<[u8; NONCE_LEN]>,
    retired_order: VecDeque<[u8; NONCE_LEN]>,
    history: usize,
    join_wait: Duration,
}

impl<T: Clone> Joiner<T> {
    /// A joiner remembering `history` retired nonces and letting joining legs wait `join_wait` for their
    /// tunnel's first leg.
    pub fn new(join_wait: Duration, history: usize) -> Joiner<T> {
        Joiner { tunnels: HashMap::new(), retired: HashSet::new(), retired_order: VecDeque::new(), history, join_wait }
    }

    /// The LINK a new leg's first cell must be.
    pub fn parse_link(cell: &Cell) -> Result<Link, ProtocolError> {
        if cell.command != LINK {
            return Err(ProtocolError::Unexpected("a first cell other than LINK"));
        }
        match Message::from_cell(cell)? {
            Message::Link(link) => Ok(link),
            _ => Err(ProtocolError::Unexpected("a first cell other than LINK")),
        }
    }

    /// Decides about a leg whose LINK arrived at `arrived`.
    pub fn decide(&self, link: &Link, arrived: Instant, now: Instant) -> JoinDecision<T> {
        let nonce = &link.nonce;
        if link.flags & FLAG_JOIN == 0 {
            if self.tunnels.contains_key(nonce) || self.retired.contains(nonce) {
                return JoinDecision::Refuse(ProtocolError::ReusedNonce(short(nonce)));
            }
            return JoinDecision::Create;
        }
        if let Some(t) = self.tunnels.get(nonce) {
            return JoinDecision::Join(t.clone());
        }
        if !self.retired.contains(nonce) && now.saturating_duration_since(arrived) < self.join_wait {
            return JoinDecision::Wait;
        }
        JoinDecision::Refuse(ProtocolError::UnknownNonce(short(nonce)))
    }

    /// Records a tunnel created for `nonce`.
    pub fn register(&mut self, nonce: [u8; NONCE_LEN], tunnel: T) {
        self.tunnels.insert(nonce, tunnel);
    }

    /// Forgets a closed tunnel; its nonce stays refused.
    pub fn retire(&mut self, nonce: &[u8; NONCE_LEN]) {
        if self.tunnels.remove(nonce).is_some() && self.retired.insert(*nonce) {
            self.retired_order.push_back(*nonce);
            while self.retired_order.len() > self.history {
                if let Some(old) = self.retired_order.pop_front() {
                    self.retired.remove(&old);
                }
            }
        }
    }

    /// Live tunnels.
    pub fn tunnels(&self) -> impl Iterator<Item = &T> {
        self.tunnels.values()
    }

    /// How long a joining leg may wait for its tunnel.
    pub fn join_wait(&self) -> Duration {
        self.join_wait
    }
}

/// The first 8 bytes of a nonce in hex, for error messages.
fn short(nonce: &[u8; NONCE_LEN]) -> String {
    nonce[..8].iter().map(|b| format!("{b:02x}")).collect::<String>() + "…"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::multipath::wire::VERSION;

    fn link(nonce: u8, flags: u8) -> Link {
        Link { version: VERSION, nonce: [nonce; 32], last_seq_sent: 0, last_seq_recv: 0, ux: 0, flags }
    }

    #[test]
    fn creates_joins_waits_and_refuses() {
        let now = Instant::now();
        let mut j: Joiner<u32> = Joiner::new(Duration::from_secs(2), 16);
        assert_eq!(j.decide(&link(1, 0), now, now), JoinDecision::Create);
        j.register([1; 32], 10);
        assert_eq!(j.decide(&link(1, FLAG_JOIN), now, now), JoinDecision::Join(10));
        assert!(matches!(j.decide(&link(1, 0), now, now), JoinDecision::Refuse(ProtocolError::ReusedNonce(_))));
        // A join that arrives before its tunnel's first leg waits, then is refused as unknown.
        assert_eq!(j.decide(&link(2, FLAG_JOIN), now, now), JoinDecision::Wait);
        let later = now + Duration::from_secs(3);
        assert!(matches!(
            j.decide(&link(2, FLAG_JOIN), now, later),
            JoinDecision::Refuse(ProtocolError::UnknownNonce(_))
        ));
        // A retired nonce can be neither reused nor joined.
        j.retire(&[1; 32]);
        assert!(matches!(j.decide(&link(1, 0), now, now), JoinDecision::Refuse(ProtocolError::ReusedNonce(_))));
        assert!(matches!(
            j.decide(&link(1, FLAG_JOIN), now, now),
            JoinDecision::Refuse(ProtocolError::UnknownNonce(_))
        ));
    }
}
