//! The FIN keeper: resends our FIN until the peer acknowledges it, because
//! smoltcp sometimes stops doing so.
//!
//! smoltcp 0.14 resends a FIN on its retransmission timer, but two paths
//! leave a connection with its FIN outstanding and no timer at all:
//!
//! * Three duplicate ACKs arrive while only the FIN is unacknowledged. The
//!   fast-retransmit branch of `dispatch` sets `pending_fast_retransmit` and
//!   idles the timer, but with an empty send buffer there is nothing it can
//!   retransmit (only the RTO branch rewinds the send pointer far enough to
//!   send the FIN again). Duplicates are common on a lossy path: the peer
//!   acknowledging go-back-N retransmissions, link duplication, reordering.
//! * A zero window that reopens while everything is outstanding stops the
//!   persist timer and starts nothing in its place.
//!
//! Both ends then sit in FIN-WAIT-1/CLOSING/FIN-WAIT-2 until the user timeout
//! resets the connection. The keeper watches the segments that pass the
//! device: it arms a timer on every FIN we send, pushes it back whenever
//! smoltcp resends that FIN itself, and when it expires sends a fresh,
//! data-free FIN|ACK with the FIN's own sequence number and our latest ACK
//! and window — a segment the peer accepts in every state it can be in (it
//! either processes the FIN or answers with an ACK that covers it).
//!
//! Our own SYN or RST on the 4-tuple ends an entry at once. An arriving ACK
//! covering the FIN, RST or SYN only suspends it: smoltcp ignores the ACK
//! field of a segment outside its receive window (a retransmission of the
//! peer's FIN, a duplicate) and an out-of-window RST, so what arrives is not
//! proof that smoltcp's connection moved on. The review after the poll is:
//! it drops the entry once the socket has left the closing states, and
//! resumes it otherwise.
//!
//! The keeper is sans-IO. Calling order, per driver iteration:
//!
//! 1. [`on_egress`](FinKeeper::on_egress) / [`on_ingress`](FinKeeper::on_ingress)
//!    for every TCP packet the device sends to or receives from the NIC;
//! 2. after the interface poll, [`review`](FinKeeper::review) with what the
//!    socket of each [`armed`](FinKeeper::armed) 4-tuple is doing (only a
//!    socket that is closing with nothing left to send gets its FIN resent;
//!    entries of sockets that are gone or no longer closing are dropped);
//! 3. [`poll_transmit`](FinKeeper::poll_transmit) until it returns false,
//!    and [`poll_timeout`](FinKeeper::poll_timeout) for the next deadline.
//!
//! It has no probe limit: the connection's user timeout and the orphan
//! linger already bound how long a closing connection lives.

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{TcpControl, TcpSeqNumber};

use super::ingress::FourTuple;
use super::segment::{self, Bare};
use super::tables::FastMap;
use super::tidy::Shrink;

/// Shortest wait before resending: longer than a delayed ACK, short enough
/// to finish a close well within a second under loss.
const MIN_WAIT: Duration = Duration::from_millis(200);
/// Longest wait between resends once backed off.
const MAX_WAIT: Duration = Duration::from_millis(3000);

/// What the socket of an armed 4-tuple is doing, as seen after a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketCheck {
    /// No socket, or one that is not closing its sending side (it never
    /// sent this FIN, or the close finished): forget the entry.
    Gone,
    /// Closing, but data is still queued or unacknowledged: smoltcp's own
    /// recovery must deliver it first, a bare FIN would be out of order.
    Sending,
    /// FIN-WAIT-1, CLOSING or LAST-ACK with an empty send queue: only the
    /// FIN is outstanding, resending it is safe.
    FinOnly,
}

#[derive(Debug, Clone)]
struct Entry {
    /// The sequence number of the FIN itself.
    fin_seq: TcpSeqNumber,
    /// The highest ACK number we have sent on the flow.
    ack: TcpSeqNumber,
    /// The latest window field we have sent.
    window: u16,
    /// The wait before the first resend.
    base: Duration,
    /// Resends so far: the backoff exponent.
    resends: u32,
    due: Instant,
    /// The latest [`FinKeeper::review`] found the socket in
    /// [`SocketCheck::FinOnly`], and nothing that arrived since suggests the
    /// FIN is acknowledged.
    fin_only: bool,
}

impl Entry {
    fn wait(&self) -> Duration {
        (self.base * (1u32 << self.resends.min(5))).min(MAX_WAIT)
    }
}

/// Per-4-tuple record of our unacknowledged FINs, keyed by `(local addr,
/// local port, remote addr, remote port)`.
#[derive(Debug, Default)]
pub(crate) struct FinKeeper {
    entries: FastMap<FourTuple, Entry>,
}

impl FinKeeper {
    /// Gives back the table's spare capacity (see `tidy`).
    pub(crate) fn tidy(&mut self) {
        self.entries.shrink_sparse();
    }

    /// An empty keeper.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// True if no FIN is being watched: the driver skips the per-poll review.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Notes a packet we are sending to the NIC. A FIN arms (or, if smoltcp
    /// is resending the same FIN, pushes back) the flow's timer; `srtt` is
    /// asked for the flow's smoothed round-trip time only when arming. Any
    /// other segment refreshes the ACK and window a resend will carry; SYN
    /// and RST end the entry.
    pub(crate) fn on_egress(&mut self, now: Instant, packet: &[u8], srtt: impl FnOnce(&FourTuple) -> Option<Duration>) {
        if self.entries.is_empty() && packet_is_not_fin(packet) {
            return;
        }
        let Some(h) = segment::peek(packet) else { return };
        let key = (h.src, h.src_port, h.dst, h.dst_port);
        if h.syn || h.rst {
            self.entries.remove(&key);
            return;
        }
        let Some(ack) = h.ack else { return };
        if h.fin {
            let fin_seq = h.seq + h.payload_len;
            match self.entries.get_mut(&key) {
                Some(e) if e.fin_seq == fin_seq => {
                    e.due = now + e.wait();
                }
                _ => {
                    let base = srtt(&key).map_or(MIN_WAIT, |s| (s * 2 + Duration::from_millis(15)).max(MIN_WAIT));
                    let entry =
                        Entry { fin_seq, ack, window: h.window, base, resends: 0, due: now + base, fin_only: false };
                    self.entries.insert(key, entry);
                    return;
                }
            }
        }
        if let Some(e) = self.entries.get_mut(&key) {
            if ack > e.ack {
                e.ack = ack;
            }
            e.window = h.window;
        }
    }

    /// Notes a packet from the NIC: an ACK beyond the FIN, an RST or a SYN
    /// suspends the entry until the next [`review`](Self::review) says
    /// whether smoltcp accepted it (see the module docs).
    pub(crate) fn on_ingress(&mut self, packet: &[u8]) {
        if self.entries.is_empty() {
            return;
        }
        let Some(h) = segment::peek(packet) else { return };
        let key = (h.dst, h.dst_port, h.src, h.src_port);
        let Some(e) = self.entries.get_mut(&key) else { return };
        if h.syn || h.rst || h.ack.is_some_and(|a| a > e.fin_seq) {
            e.fin_only = false;
        }
    }

    /// The 4-tuples being watched, for the driver to look their sockets up.
    pub(crate) fn armed(&self) -> impl Iterator<Item = &FourTuple> + '_ {
        self.entries.keys()
    }

    /// Updates every entry with what its socket is doing (see
    /// [`SocketCheck`]); `check` is called once per armed 4-tuple. This, not
    /// what arrives from the peer, is what ends an entry.
    pub(crate) fn review(&mut self, mut check: impl FnMut(&FourTuple) -> SocketCheck) {
        self.entries.retain(|tuple, e| match check(tuple) {
            SocketCheck::Gone => false,
            SocketCheck::Sending => {
                e.fin_only = false;
                true
            }
            SocketCheck::FinOnly => {
                e.fin_only = true;
                true
            }
        });
    }

    /// The earliest resend deadline.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.entries.values().map(|e| e.due).min()
    }

    /// Writes the next due FIN|ACK into `buf` and returns true, or returns
    /// false when none is due. Due entries whose socket still has data
    /// outstanding are put off by their base wait instead.
    pub(crate) fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> bool {
        for (&(local, local_port, remote, remote_port), e) in self.entries.iter_mut() {
            if e.due > now {
                continue;
            }
            if !e.fin_only {
                e.due = now + e.base;
                continue;
            }
            let fin = Bare {
                src: local,
                dst: remote,
                src_port: local_port,
                dst_port: remote_port,
                control: TcpControl::Fin,
                seq: e.fin_seq,
                ack: e.ack,
                window: e.window,
            };
            fin.emit_into(buf);
            e.resends += 1;
            e.due = now + e.wait();
            return true;
        }
        false
    }
}

/// A quick look at the TCP flags byte, so that with no entries the keeper
/// costs next to nothing per packet. Errs towards "maybe a FIN".
fn packet_is_not_fin(packet: &[u8]) -> bool {
    let flags = match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            packet.get(ihl + 13)
        }
        Some(6) => packet.get(40 + 13),
        _ => return true,
    };
    flags.is_some_and(|f| f & 0x01 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{IpAddress, Ipv4Address, Ipv4Packet, Ipv6Address, TcpPacket, TcpRepr};

    const A: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);
    const B: Ipv4Address = Ipv4Address::new(10, 0, 0, 2);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A segment between `src` and `dst` (ports 1000 on A, 2000 on B).
    fn seg(src: IpAddress, dst: IpAddress, control: TcpControl, seq: u32, ack: Option<u32>, len: usize) -> Vec<u8> {
        let a_side = src == IpAddress::Ipv4(A) || src == IpAddress::Ipv6(Ipv6Address::new(0xfd07, 0, 0, 0, 0, 0, 0, 1));
        let (sp, dp) = if a_side { (1000, 2000) } else { (2000, 1000) };
        segment::test_segment((src, sp), (dst, dp), control, seq, ack, 700, len, 0x5a)
    }

    fn out(control: TcpControl, seq: u32, ack: u32, len: usize) -> Vec<u8> {
        seg(A.into(), B.into(), control, seq, Some(ack), len)
    }

    fn ack_in(ack: u32) -> Vec<u8> {
        seg(B.into(), A.into(), TcpControl::None, 5000, Some(ack), 0)
    }

    /// A keeper that saw A send 100 bytes plus FIN at 900: the FIN is 1000.
    fn armed_at(t0: Instant) -> FinKeeper {
        let mut k = FinKeeper::new();
        k.on_egress(t0, &out(TcpControl::Fin, 900, 5000, 100), |_| None);
        k
    }

    fn fin_only(k: &mut FinKeeper) {
        k.review(|_| SocketCheck::FinOnly);
    }

    #[test]
    fn a_fin_arms_the_timer_at_the_fin_sequence_number() {
        let t0 = Instant::from_millis(1000);
        let k = armed_at(t0);
        assert_eq!(k.entries.values().next().unwrap().fin_seq, TcpSeqNumber(1000));
        assert_eq!(k.poll_timeout(), Some(t0 + ms(200)), "no srtt known: the fixed base");
        // With an srtt of 150 ms: 2 * 150 + 15.
        let mut k = FinKeeper::new();
        k.on_egress(t0, &out(TcpControl::Fin, 900, 5000, 0), |_| Some(ms(150)));
        assert_eq!(k.poll_timeout(), Some(t0 + ms(315)));
        // A short srtt never goes below the floor.
        let mut k = FinKeeper::new();
        k.on_egress(t0, &out(TcpControl::Fin, 900, 5000, 0), |_| Some(ms(2)));
        assert_eq!(k.poll_timeout(), Some(t0 + ms(200)));
        // Segments without FIN arm nothing.
        let mut k = FinKeeper::new();
        k.on_egress(t0, &out(TcpControl::None, 900, 5000, 100), |_| panic!("srtt asked for a non-FIN"));
        assert!(k.is_empty());
    }

    #[test]
    fn the_resent_fin_is_a_bare_fin_ack_with_the_latest_ack_and_valid_checksums() {
        let t0 = Instant::from_millis(1000);
        let mut k = armed_at(t0);
        // Later we acknowledge more of B's data.
        k.on_egress(t0, &out(TcpControl::None, 1001, 5300, 0), |_| None);
        // An older ACK number never lowers it; the latest window is used.
        let mut older = out(TcpControl::None, 1001, 5200, 0);
        TcpPacket::new_unchecked(&mut older[20..]).set_window_len(321);
        k.on_egress(t0, &older, |_| None);
        fin_only(&mut k);
        let mut buf = Vec::new();
        assert!(!k.poll_transmit(t0 + ms(199), &mut buf), "not before the deadline");
        assert!(k.poll_transmit(t0 + ms(200), &mut buf));
        assert!(!k.poll_transmit(t0 + ms(200), &mut buf), "one per deadline");

        let ip = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert!(ip.verify_checksum());
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        let (a, b) = (IpAddress::Ipv4(A), IpAddress::Ipv4(B));
        assert!(tcp.verify_checksum(&a, &b));
        let repr = TcpRepr::parse(&tcp, &a, &b, &ChecksumCapabilities::default()).unwrap();
        assert_eq!(repr.control, TcpControl::Fin);
        assert_eq!(repr.seq_number, TcpSeqNumber(1000));
        assert_eq!(repr.ack_number, Some(TcpSeqNumber(5300)));
        assert_eq!(repr.window_len, 321, "the latest window we sent");
        assert!(repr.payload.is_empty());
        assert_eq!((repr.src_port, repr.dst_port), (1000, 2000));
        assert_eq!((ip.src_addr(), ip.dst_addr()), (A, B));
    }

    #[test]
    fn resends_back_off_to_a_cap_and_never_give_up() {
        let t0 = Instant::ZERO;
        let mut k = armed_at(t0);
        fin_only(&mut k);
        let mut buf = Vec::new();
        let mut t = t0 + ms(200);
        let mut gaps = Vec::new();
        for _ in 0..30 {
            assert!(k.poll_transmit(t, &mut buf));
            let next = k.poll_timeout().unwrap();
            gaps.push((next - t).total_millis());
            t = next;
        }
        assert_eq!(&gaps[..6], &[400, 800, 1600, 3000, 3000, 3000]);
        assert!(gaps.iter().all(|&g| g <= 3000));
    }

    #[test]
    fn smoltcp_resending_the_same_fin_pushes_the_deadline_back() {
        let t0 = Instant::ZERO;
        let mut k = armed_at(t0);
        let t1 = t0 + ms(150);
        k.on_egress(t1, &out(TcpControl::Fin, 900, 5000, 100), |_| panic!("not re-armed from scratch"));
        assert_eq!(k.poll_timeout(), Some(t1 + ms(200)));
        // A bare FIN with the same FIN sequence number is the same FIN.
        let t2 = t1 + ms(100);
        k.on_egress(t2, &out(TcpControl::Fin, 1000, 5000, 0), |_| panic!("not re-armed from scratch"));
        assert_eq!(k.poll_timeout(), Some(t2 + ms(200)));
        assert_eq!(k.entries.len(), 1);
    }

    /// True if `k`, reviewed as FIN-only before `packet` arrived, would
    /// still resend at its deadline.
    fn resends_after(mut k: FinKeeper, packet: &[u8]) -> bool {
        fin_only(&mut k);
        k.on_ingress(packet);
        let due = k.poll_timeout().unwrap();
        k.poll_transmit(due, &mut Vec::new())
    }

    #[test]
    fn an_ack_covering_the_fin_an_rst_or_a_syn_suspends_the_entry_until_the_review() {
        let t0 = Instant::ZERO;
        assert!(resends_after(armed_at(t0), &ack_in(1000)), "an ACK up to the FIN does not cover it");
        assert!(!resends_after(armed_at(t0), &ack_in(1001)));
        assert!(!resends_after(armed_at(t0), &seg(B.into(), A.into(), TcpControl::Rst, 5000, None, 0)));
        assert!(!resends_after(armed_at(t0), &seg(B.into(), A.into(), TcpControl::Syn, 77, None, 0)));

        // The review after the poll decides: smoltcp took the ACK (the
        // socket left the closing states) and the entry goes...
        let mut k = armed_at(t0);
        k.on_ingress(&ack_in(1001));
        k.review(|_| SocketCheck::Gone);
        assert!(k.is_empty());
        // ...or it ignored it (the segment was outside its window), and the
        // FIN is resent after all.
        let mut k = armed_at(t0);
        k.on_ingress(&ack_in(1001));
        fin_only(&mut k);
        assert!(k.poll_transmit(t0 + ms(200), &mut Vec::new()));

        // Our own RST or SYN ends it at once.
        let mut k = armed_at(t0);
        k.on_egress(t0, &seg(A.into(), B.into(), TcpControl::Rst, 1001, Some(5000), 0), |_| None);
        assert!(k.is_empty(), "our own RST");
        let mut k = armed_at(t0);
        k.on_egress(t0, &seg(A.into(), B.into(), TcpControl::Syn, 77, None, 0), |_| None);
        assert!(k.is_empty(), "a new connection of ours on the tuple");

        // Sequence numbers wrap: a FIN at 2^32 - 1 is covered by ACK 0 and
        // beyond, not by ACKs just below it.
        let mut k = FinKeeper::new();
        k.on_egress(t0, &out(TcpControl::Fin, u32::MAX - 2, 5000, 2), |_| None);
        assert_eq!(k.entries.values().next().unwrap().fin_seq, TcpSeqNumber(-1));
        assert!(resends_after(k, &ack_in(u32::MAX)));
        let mut k = FinKeeper::new();
        k.on_egress(t0, &out(TcpControl::Fin, u32::MAX - 2, 5000, 2), |_| None);
        assert!(!resends_after(k, &ack_in(3)));
    }

    #[test]
    fn only_a_socket_with_nothing_but_the_fin_outstanding_gets_it_resent() {
        let t0 = Instant::ZERO;
        let mut k = armed_at(t0);
        let mut buf = Vec::new();
        // Not reviewed yet, or data still queued: put off, not sent.
        assert!(!k.poll_transmit(t0 + ms(200), &mut buf));
        assert_eq!(k.poll_timeout(), Some(t0 + ms(400)));
        k.review(|_| SocketCheck::Sending);
        assert!(!k.poll_transmit(t0 + ms(400), &mut buf));
        k.review(|_| SocketCheck::FinOnly);
        assert!(k.poll_transmit(t0 + ms(600), &mut buf));
        // A socket that is gone (or reopened) drops the entry.
        k.review(|_| SocketCheck::Gone);
        assert!(k.is_empty());
        assert_eq!(k.poll_timeout(), None);
    }

    #[test]
    fn ipv6_fins_are_kept_too() {
        let a = IpAddress::Ipv6(Ipv6Address::new(0xfd07, 0, 0, 0, 0, 0, 0, 1));
        let b = IpAddress::Ipv6(Ipv6Address::new(0xfd07, 0, 0, 0, 0, 0, 0, 2));
        let mut k = FinKeeper::new();
        k.on_egress(Instant::ZERO, &seg(a, b, TcpControl::Fin, 10, Some(20), 5), |_| None);
        fin_only(&mut k);
        let mut buf = Vec::new();
        assert!(k.poll_transmit(Instant::from_millis(200), &mut buf));
        let s = segment::parse(&buf).unwrap();
        assert_eq!((s.src, s.dst, s.tcp.control, s.tcp.seq_number), (a, b, TcpControl::Fin, TcpSeqNumber(15)));
        let ip = smoltcp::wire::Ipv6Packet::new_checked(&buf[..]).unwrap();
        assert!(TcpPacket::new_checked(ip.payload()).unwrap().verify_checksum(&a, &b));
        k.on_ingress(&seg(b, a, TcpControl::None, 20, Some(16), 0));
        assert!(!k.poll_transmit(Instant::from_secs(10), &mut buf), "the ACK of the FIN suspends it");
    }

    #[test]
    fn garbage_is_ignored() {
        let mut k = armed_at(Instant::ZERO);
        k.on_ingress(&[0x45, 0, 0]);
        k.on_egress(Instant::ZERO, &[0x60; 3], |_| None);
        k.on_egress(Instant::ZERO, &[], |_| None);
        assert_eq!(k.entries.len(), 1);
    }
}
