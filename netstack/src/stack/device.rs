//! The device the stack's smoltcp interface actually polls: the NIC plus
//! three things smoltcp lacks.
//!
//! * **Loopback**: packets to the stack's own addresses, 127.0.0.0/8 and ::1
//!   never reach the NIC; they are queued and received again.
//! * **Ingress validation** ([`ingress::inspect`]): malformed, corrupt and
//!   martian packets are refused with a counter instead of silently.
//! * **SYN guard**: a SYN for a connection that already exists (a
//!   retransmission) is dropped instead of reaching a second listening socket,
//!   and SYNs beyond a listener's backlog are dropped and counted instead of
//!   being answered with RST.
//! * **RFC 5961**: RSTs, and SYNs no listener takes, are held out of smoltcp
//!   and judged by the driver after the poll against the connection's
//!   RCV.NXT ([`Verdict`]); challenge ACKs are rate-limited per stack.
//!
//! It also carries two helpers that watch the TCP segments passing to and
//! from the NIC: the recovery assist ([`super::recovery`], optional) and the
//! FIN keeper ([`super::fin_keeper`], always on).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;

use smoltcp::phy::{self, Checksum, Device, DeviceCapabilities, TxToken};
use smoltcp::time::Instant;
use smoltcp::wire::{IpAddress, TcpControl, TcpSeqNumber};

use super::fin_keeper::FinKeeper;
use super::ingress::{self, FourTuple, Refusal, TcpMeta};
use super::limits::{LimitHit, SharedConns};
use super::link::{ETHERNET_HEADER, Link, Payload};
use super::recovery::{COPIES, Ingress, RecoveryAssist};
use super::segment::{self, Bare};
use super::tables::{FastMap, FastSet};
use super::tidy::Shrink;
use crate::nic::Nic;
use crate::stats::StackCounters;

/// Most RSTs and SYNs held for judging in one poll: when it is reached the
/// device stops taking packets from the NIC until the driver has judged
/// them (`rx_dropped_held_full` counts the drops a full area would cause,
/// which this should keep at zero).
pub(crate) const HELD_MAX: usize = 4096;

/// A segment from the NIC that smoltcp does not see until the driver has
/// checked it against its connection after the poll (RFC 5961): every RST,
/// and every SYN that no listener takes.
#[derive(Debug)]
pub(crate) struct Held {
    /// The whole frame, as the NIC delivered it.
    pub(crate) frame: Vec<u8>,
    pub(crate) meta: TcpMeta,
}

/// What the driver decided about a [`Held`] segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Hand it to smoltcp (in the next poll).
    Deliver,
    /// Drop it silently.
    Drop,
    /// Drop it and answer with a challenge ACK carrying this RCV.NXT.
    Challenge(TcpSeqNumber),
}

/// Admission control for connection-opening segments, and the holding
/// area of the RFC 5961 checks.
#[derive(Debug, Default)]
pub(crate) struct SynGuard {
    /// 4-tuples of passive connections that are alive.
    pub(crate) live: FastSet<FourTuple>,
    /// Listening sockets free per local port, refreshed after every poll:
    /// the shard of each.
    pub(crate) available: FastMap<u16, Vec<usize>>,
    /// SYNs admitted since the last refresh, with their sequence numbers
    /// (the peer's initial sequence number, IRS) and the shard of the
    /// listening socket that takes them.
    pub(crate) batch: FastMap<FourTuple, (TcpSeqNumber, usize)>,
    /// RSTs and unadmitted SYNs of this poll, judged after it.
    pub(crate) held: Vec<Held>,
    /// SYN|ACKs of this poll: the IRS of active opens.
    pub(crate) synacks: Vec<(FourTuple, TcpSeqNumber)>,
    /// Local ports whose listener refused SYNs for a full backlog since the
    /// last refresh: they make room by dropping their oldest half-open
    /// connections.
    pub(crate) pressed: FastSet<u16>,
    /// The stack's connection limits (shared with the core).
    pub(crate) conns: SharedConns,
    /// Per connection: the sequence number just past the furthest data
    /// that arrived. smoltcp keeps out-of-order data in its receive buffer
    /// beyond the queued bytes, where `recv_queue` does not count it: only
    /// once RCV.NXT has reached this mark does the buffer hold nothing
    /// unread (see `Core::release_idle_buffers`).
    pub(crate) rcv_high: FastMap<FourTuple, TcpSeqNumber>,
}

impl SynGuard {
    /// Notes how far the data of an arriving segment reaches.
    fn note_data(&mut self, meta: &TcpMeta) {
        if let Some(end) = meta.data_end {
            let high = self.rcv_high.entry(meta.tuple).or_insert(end);
            if end > *high {
                *high = end;
            }
        }
    }

    /// Decides whether a looped-back SYN may reach smoltcp.
    fn admit(&mut self, tuple: FourTuple, seq: TcpSeqNumber, counters: &StackCounters) -> bool {
        if self.live.contains(&tuple) || self.batch.contains_key(&tuple) {
            counters.syn_dropped_duplicate.inc();
            return false;
        }
        self.admit_to_listener(tuple, seq, counters).unwrap_or(true)
    }

    /// A SYN to a listener: `Some(admitted)`, or `None` without a listener
    /// on its port.
    fn admit_to_listener(&mut self, tuple: FourTuple, seq: TcpSeqNumber, counters: &StackCounters) -> Option<bool> {
        let free = self.available.get_mut(&tuple.1)?;
        if free.is_empty() {
            counters.syn_dropped_backlog_full.inc();
            self.pressed.insert(tuple.1);
            return Some(false);
        }
        match self.conns.lock().reserve(tuple.2) {
            Ok(()) => {}
            Err(LimitHit::Stack(_)) => {
                counters.syn_dropped_conn_limit.inc();
                // Half-open connections count: make room as under a SYN
                // flood, or spoofed SYNs would lock clients out.
                self.pressed.insert(tuple.1);
                return Some(false);
            }
            Err(LimitHit::Peer(_)) => {
                counters.syn_dropped_peer_limit.inc();
                return Some(false);
            }
        }
        let shard = free.pop().unwrap_or_default();
        self.batch.insert(tuple, (seq, shard));
        Some(true)
    }

    /// Screens a TCP segment from the NIC: true if smoltcp may have it now.
    /// RSTs, SYNs for existing connections and SYNs no listener takes are
    /// held for the driver's verdict; SYNs beyond a backlog are dropped.
    fn screen(&mut self, meta: &TcpMeta, frame: &[u8], counters: &StackCounters) -> bool {
        self.note_data(meta);
        if meta.rst {
            self.hold(meta, frame, counters);
            return false;
        }
        if !meta.syn {
            return true;
        }
        if meta.ack {
            if self.synacks.len() < HELD_MAX {
                self.synacks.push((meta.tuple, meta.seq));
            }
            return true;
        }
        if self.batch.contains_key(&meta.tuple) {
            counters.syn_dropped_duplicate.inc();
            return false;
        }
        if !self.live.contains(&meta.tuple)
            && let Some(admitted) = self.admit_to_listener(meta.tuple, meta.seq, counters)
        {
            return admitted;
        }
        // An existing connection's tuple, an active open's, or a closed
        // port: the driver decides with the socket in hand.
        self.hold(meta, frame, counters);
        false
    }

    fn hold(&mut self, meta: &TcpMeta, frame: &[u8], counters: &StackCounters) {
        if self.held.len() >= HELD_MAX {
            counters.rx_dropped_held_full.inc();
            return;
        }
        self.held.push(Held { frame: frame.to_vec(), meta: *meta });
    }

    /// Starts a new admission batch; `available` has just been refreshed
    /// and the last batch's connections are members of the limit table.
    pub(crate) fn new_batch(&mut self) {
        self.batch.clear();
        self.conns.lock().clear_reserved();
    }
}

/// RFC 5961's rate limit on challenge ACKs: a token bucket of `rate`
/// tokens, refilled at `rate` per second.
#[derive(Debug)]
struct TokenBucket {
    rate: u64,
    /// Millionths of a token.
    micro: u64,
    last: Option<Instant>,
}

impl TokenBucket {
    fn new(rate: u32) -> Self {
        Self { rate: u64::from(rate), micro: u64::from(rate) * 1_000_000, last: None }
    }

    /// Takes a token if one is left.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = self.last.map_or(0, |last| (now - last).total_micros());
        if self.last.is_none_or(|last| now > last) {
            self.last = Some(now);
        }
        self.micro = (self.micro + elapsed.saturating_mul(self.rate)).min(self.rate * 1_000_000);
        if self.micro >= 1_000_000 {
            self.micro -= 1_000_000;
            true
        } else {
            false
        }
    }
}

/// The NIC as the stack's interface sees it.
#[derive(Debug)]
pub(crate) struct StackDevice<N: Nic> {
    pub(crate) nic: N,
    pub(crate) guard: SynGuard,
    /// Pure duplicate ACKs from the recovery assist, delivered next.
    inject: VecDeque<Vec<u8>>,
    assist: RefCell<RecoveryAssist>,
    /// Resends FINs smoltcp forgot; in a cell because the receive and
    /// transmit tokens of one poll step both reach it.
    keeper: RefCell<FinKeeper>,
    loopq: VecDeque<Vec<u8>>,
    loop_free: Vec<Vec<u8>>,
    scratch: Vec<u8>,
    local: Vec<IpAddress>,
    counters: Arc<StackCounters>,
    /// Bare IP or Ethernet frames.
    link: Link,
    /// Ethernet: the header of the last frame sent to each IP destination,
    /// for packets the device makes itself (FIN resends).
    eth_headers: FastMap<IpAddress, [u8; ETHERNET_HEADER]>,
    /// Held segments the driver let through, delivered next.
    approved: VecDeque<Vec<u8>>,
    /// Per connection (local, remote): the highest sequence number sent
    /// (SND.NXT) and the last window advertised, for challenge ACKs.
    snd: FastMap<FourTuple, (TcpSeqNumber, u16)>,
    challenge_acks: TokenBucket,
    /// The last poll stopped taking packets because the holding area was
    /// full: poll again once it is settled.
    throttled: bool,
    /// The next packet for smoltcp, screened, with its route.
    staged: Option<(Vec<u8>, Route)>,
}

impl<N: Nic> StackDevice<N> {
    pub(crate) fn new(
        nic: N,
        local: Vec<IpAddress>,
        counters: Arc<StackCounters>,
        assist: bool,
        challenge_ack_limit: u32,
        conns: SharedConns,
    ) -> Self {
        let link = Link::of(nic.capabilities().medium);
        // The assist rewrites and injects bare IP packets; over Ethernet it
        // stays off (tap peers are kernels with their own recovery).
        let assist = assist && link == Link::Ip;
        Self {
            nic,
            guard: SynGuard { conns, ..SynGuard::default() },
            inject: VecDeque::new(),
            assist: RefCell::new(RecoveryAssist::new(assist, counters.clone())),
            keeper: RefCell::new(FinKeeper::new()),
            loopq: VecDeque::new(),
            loop_free: Vec::new(),
            scratch: Vec::new(),
            local,
            counters,
            link,
            eth_headers: FastMap::default(),
            approved: VecDeque::new(),
            snd: FastMap::default(),
            challenge_acks: TokenBucket::new(challenge_ack_limit),
            throttled: false,
            staged: None,
        }
    }

    /// After a poll: carries out the driver's verdict on every held segment
    /// (`judge` sees each once).
    pub(crate) fn settle(&mut self, now: Instant, mut judge: impl FnMut(&TcpMeta) -> Verdict) {
        self.throttled = false;
        let mut held = std::mem::take(&mut self.guard.held);
        for h in held.drain(..) {
            match judge(&h.meta) {
                Verdict::Deliver => self.approved.push_back(h.frame),
                Verdict::Drop => {}
                Verdict::Challenge(ack) => self.challenge(now, &h.meta, ack),
            }
        }
        // Keep the allocation for the next poll.
        self.guard.held = held;
    }

    /// Sends a challenge ACK (SND.NXT, RCV.NXT, our last window) for the
    /// connection `meta` belongs to, if the rate limit allows.
    fn challenge(&mut self, now: Instant, meta: &TcpMeta, ack: TcpSeqNumber) {
        let (local, local_port, remote, remote_port) = meta.tuple;
        let known = self.snd.get(&meta.tuple).copied();
        let Some((seq, window)) = known.filter(|_| self.challenge_acks.take(now)) else {
            self.counters.challenge_acks_suppressed.inc();
            return;
        };
        let bare = Bare {
            src: local,
            dst: remote,
            src_port: local_port,
            dst_port: remote_port,
            control: TcpControl::None,
            seq,
            ack,
            window,
        };
        bare.emit_into(&mut self.scratch);
        if self.link == Link::Ethernet {
            let Some(header) = self.eth_headers.get(&remote) else {
                self.counters.challenge_acks_suppressed.inc();
                return;
            };
            self.scratch.splice(0..0, header.iter().copied());
        }
        let Some(token) = self.nic.transmit(now) else {
            self.counters.challenge_acks_suppressed.inc();
            return;
        };
        self.counters.challenge_acks_sent.inc();
        send_raw(token, &self.scratch, &self.counters);
    }

    /// Gives back the spare capacity of the per-connection tables (see
    /// `tidy`).
    pub(crate) fn tidy(&mut self) {
        self.guard.live.shrink_sparse();
        self.guard.batch.shrink_sparse();
        self.guard.rcv_high.shrink_sparse();
        self.snd.shrink_sparse();
        self.assist.get_mut().tidy();
        self.keeper.get_mut().tidy();
    }

    /// Forgets the send state of connections that are gone.
    pub(crate) fn forget_flows(&mut self, gone: impl Iterator<Item = FourTuple>) {
        for tuple in gone {
            self.snd.remove(&tuple);
            self.guard.rcv_high.remove(&tuple);
            self.assist.get_mut().forget(&tuple);
        }
    }

    /// Timed work: recovery probes and FIN resends that are due.
    pub(crate) fn service(&mut self, now: Instant) {
        self.nic.service(now);
        let assist = self.assist.get_mut();
        assist.on_timer(now, &mut self.inject);
        let mut resend = std::mem::take(&mut assist.pending_tx).into_iter();
        while let Some(packet) = resend.next() {
            let Some(token) = self.nic.transmit(now) else {
                // The NIC is full: keep the rest for the next iteration.
                assist.pending_tx.push(packet);
                assist.pending_tx.extend(resend);
                break;
            };
            self.counters.recovery_packets_resent.inc();
            send_raw(token, &packet, &self.counters);
        }
        let keeper = self.keeper.get_mut();
        if keeper.poll_timeout().is_some_and(|t| t <= now) {
            // Take a token first: a FIN taken from the keeper is sent. With
            // the NIC full the keeper keeps its deadline and we come back.
            while let Some(token) = self.nic.transmit(now) {
                if !keeper.poll_transmit(now, &mut self.scratch) {
                    break;
                }
                if self.link == Link::Ethernet {
                    // Frame the FIN like the last packet to that address.
                    let header = ingress::destination(&self.scratch).and_then(|d| self.eth_headers.get(&d));
                    let Some(header) = header else { continue };
                    self.scratch.splice(0..0, header.iter().copied());
                }
                self.counters.fin_resent.inc();
                send_raw(token, &self.scratch, &self.counters);
            }
        }
    }

    /// When [`service`](Self::service) is next needed.
    pub(crate) fn poll_at(&self) -> Option<Instant> {
        [self.nic.poll_at(), self.assist.borrow().poll_at(), self.keeper.borrow().poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The FIN keeper, for the driver's after-poll review of the sockets it
    /// watches ([`Core::review_fin_keeper`](super::core::Core::review_fin_keeper)).
    pub(crate) fn fin_keeper(&mut self) -> &mut FinKeeper {
        self.keeper.get_mut()
    }

    /// True if looped-back packets wait to be received.
    pub(crate) fn has_loopback(&self) -> bool {
        !self.loopq.is_empty()
            || !self.inject.is_empty()
            || !self.approved.is_empty()
            || self.throttled
            || self.staged.is_some()
    }
}

/// Sends `packet`, which the device made itself, with `token`.
fn send_raw<T: TxToken>(token: T, packet: &[u8], counters: &StackCounters) {
    counters.tx_packets.inc();
    counters.tx_bytes.add(packet.len() as u64);
    token.consume(packet.len(), |b| b.copy_from_slice(packet));
}

fn is_local(local: &[IpAddress], dst: IpAddress) -> bool {
    let loopback = match dst {
        IpAddress::Ipv4(a) => a.is_loopback(),
        IpAddress::Ipv6(a) => a.is_loopback(),
    };
    loopback || local.contains(&dst)
}

/// A received packet, screened and staged by [`StackDevice::stage`].
pub(crate) struct StackRx<'a> {
    packet: Vec<u8>,
    free: &'a mut Vec<Vec<u8>>,
}

impl phy::RxToken for StackRx<'_> {
    fn consume<T, F: FnOnce(&[u8]) -> T>(self, f: F) -> T {
        let r = f(&self.packet);
        self.free.push(self.packet);
        r
    }
}

/// Screens a packet the stack looped back, approved or injected: checked
/// again, but not held again. `Some(route)` if smoltcp may have it.
fn screen_looped(packet: &[u8], link: Link, guard: &mut SynGuard, counters: &StackCounters) -> Option<Route> {
    match link.payload(packet) {
        Payload::Ip(off) => match ingress::inspect(&packet[off..], true) {
            Ok(acc) => match acc.tcp {
                None => Some(None),
                Some(t) => {
                    guard.note_data(&t);
                    if t.syn && t.ack {
                        guard.synacks.push((t.tuple, t.seq));
                    }
                    (!t.syn || t.ack || t.rst || guard.admit(t.tuple, t.seq, counters)).then_some(Some(t.tuple))
                }
            },
            Err(_) => None,
        },
        Payload::Arp => Some(None),
        Payload::Unsupported => None,
    }
}

/// Where a staged packet goes: the 4-tuple of a TCP segment (its
/// connection's shard), or `None` (shard 0).
pub(crate) type Route = Option<FourTuple>;

impl<N: Nic> StackDevice<N> {
    /// Takes the next packet smoltcp should see — injected, approved or
    /// looped back first, then from the NIC — screens it (ingress checks,
    /// SYN guard, RFC 5961 holding, recovery assist, FIN keeper) and keeps
    /// it for the next [`receive`](Device::receive). Returns its route, so
    /// that the driver polls the right shard; `None` when nothing is left
    /// (or the holding area is full). A packet already staged is returned
    /// again.
    pub(crate) fn stage(&mut self, now: Instant) -> Option<Route> {
        if let Some((_, route)) = &self.staged {
            return Some(*route);
        }
        loop {
            let looped =
                self.inject.pop_front().or_else(|| self.approved.pop_front()).or_else(|| self.loopq.pop_front());
            if let Some(packet) = looped {
                match screen_looped(&packet, self.link, &mut self.guard, &self.counters) {
                    Some(route) => {
                        self.staged = Some((packet, route));
                        return Some(route);
                    }
                    None => {
                        self.loop_free.push(packet);
                        continue;
                    }
                }
            }
            if self.guard.held.len() >= HELD_MAX {
                // End this round: the driver judges what is held, then
                // polls again. The NIC keeps the rest meanwhile.
                self.throttled = true;
                return None;
            }
            let Self { nic, guard, inject, assist, keeper, loop_free, counters, link, staged, .. } = self;
            let mut frame = loop_free.pop().unwrap_or_default();
            if !nic.receive_into(now, &mut frame) {
                loop_free.push(frame);
                return None;
            }
            let (link, counters) = (*link, &**counters);
            counters.rx_packets.inc();
            counters.rx_bytes.add(frame.len() as u64);
            // Some(route): stage the frame itself; None: it is dropped (or
            // was replaced by what the checks queued instead).
            let verdict = 'screen: {
                let off = match link.payload(&frame) {
                    Payload::Ip(off) => off,
                    // smoltcp checks ARP itself.
                    Payload::Arp => break 'screen Some(None),
                    Payload::Unsupported => {
                        counters.rx_dropped_link.inc();
                        break 'screen None;
                    }
                };
                let packet = &frame[off..];
                match ingress::inspect(packet, false) {
                    Ok(acc) if acc.tcp.is_none_or(|t| guard.screen(&t, &frame, counters)) => {
                        keeper.get_mut().on_ingress(packet);
                        let route = acc.tcp.map(|t| t.tuple);
                        match assist.get_mut().on_ingress(now, packet) {
                            Ingress::Pass => break 'screen Some(route),
                            Ingress::AcksFirst(ack) => {
                                // The pure ACKs go first, then the real segment.
                                inject.extend(std::iter::repeat_n(ack.clone(), COPIES as usize - 1));
                                inject.push_back(packet.to_vec());
                                *staged = Some((ack, route));
                            }
                            Ingress::Replace(fixed) => inject.push_back(fixed),
                        }
                    }
                    Ok(_) => {}
                    Err(refusal) => match refusal {
                        Refusal::Malformed => counters.rx_dropped_malformed.inc(),
                        Refusal::Checksum => counters.rx_dropped_checksum.inc(),
                        Refusal::Martian => counters.rx_dropped_martian.inc(),
                        Refusal::Fragment => counters.rx_dropped_fragment.inc(),
                    },
                }
                None
            };
            match verdict {
                Some(route) => *staged = Some((frame, route)),
                None => loop_free.push(frame),
            }
            if let Some((_, route)) = &self.staged {
                return Some(*route);
            }
        }
    }
}

/// Permission to send one packet: to the NIC, or back to ourselves.
pub(crate) struct StackTx<'a, N: Nic> {
    nic: N::TxToken<'a>,
    loopq: &'a mut VecDeque<Vec<u8>>,
    /// Spare buffers for looped packets; absent while the receive side of
    /// the same poll step holds the pool.
    loop_free: Option<&'a mut Vec<Vec<u8>>>,
    scratch: &'a mut Vec<u8>,
    local: &'a [IpAddress],
    assist: &'a RefCell<RecoveryAssist>,
    keeper: &'a RefCell<FinKeeper>,
    counters: &'a StackCounters,
    link: Link,
    eth_headers: &'a mut FastMap<IpAddress, [u8; ETHERNET_HEADER]>,
    snd: &'a mut FastMap<FourTuple, (TcpSeqNumber, u16)>,
    now: Instant,
}

impl<N: Nic> phy::TxToken for StackTx<'_, N> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        // smoltcp writes the whole packet in one go, so the destination is
        // known only afterwards: it writes into the NIC's buffer, and a
        // packet for ourselves is then copied to the loop queue instead of
        // being sent.
        let Self { nic, loopq, loop_free, scratch, local, assist, keeper, counters, link, eth_headers, snd, now } =
            self;
        N::fill_then_send(nic, scratch, len, |frame| {
            let r = f(frame);
            if link.loop_target(frame).is_some_and(|dst| is_local(local, dst)) {
                let mut buf = loop_free.and_then(|f| f.pop()).unwrap_or_default();
                buf.clear();
                buf.extend_from_slice(frame);
                loopq.push_back(buf);
                counters.loopback_packets.inc();
                return (r, false);
            }
            counters.tx_packets.inc();
            counters.tx_bytes.add(len as u64);
            if let Payload::Ip(off) = link.payload(frame) {
                let (header, packet) = frame.split_at_mut(off);
                if let (Ok(header), Some(dst)) =
                    (<[u8; ETHERNET_HEADER]>::try_from(&*header), ingress::destination(packet))
                    && eth_headers.get(&dst) != Some(&header)
                {
                    eth_headers.insert(dst, header);
                }
                if let Some(h) = segment::peek(packet) {
                    let tuple = (h.src, h.src_port, h.dst, h.dst_port);
                    if h.rst {
                        snd.remove(&tuple);
                    } else {
                        let end = h.seq + h.payload_len + usize::from(h.syn) + usize::from(h.fin);
                        let entry = snd.entry(tuple).or_insert((end, h.window));
                        if end > entry.0 {
                            entry.0 = end;
                        }
                        entry.1 = h.window;
                    }
                }
                assist.borrow_mut().on_egress(now, packet);
                keeper.borrow_mut().on_egress(now, packet, |key| assist.borrow().srtt(key));
            }
            (r, true)
        })
    }
}

impl<N: Nic> Device for StackDevice<N> {
    type RxToken<'a> = StackRx<'a>;
    type TxToken<'a> = StackTx<'a, N>;

    /// The packet [`stage`](StackDevice::stage) prepared, if any (and if
    /// the NIC can take a reply).
    fn receive(&mut self, now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let Self {
            nic,
            loopq,
            loop_free,
            scratch,
            local,
            assist,
            keeper,
            counters,
            link,
            eth_headers,
            snd,
            staged,
            ..
        } = self;
        staged.as_ref()?;
        let nic = nic.transmit(now)?;
        let (packet, _) = staged.take()?;
        let rx = StackRx { packet, free: loop_free };
        let tx = StackTx {
            nic,
            loopq,
            loop_free: None,
            scratch,
            local,
            assist,
            keeper,
            counters,
            link: *link,
            eth_headers,
            snd,
            now,
        };
        Some((rx, tx))
    }

    fn transmit(&mut self, now: Instant) -> Option<Self::TxToken<'_>> {
        let Self { nic, loopq, loop_free, scratch, local, assist, keeper, counters, link, eth_headers, snd, .. } = self;
        let nic = nic.transmit(now)?;
        let (link, loop_free) = (*link, Some(loop_free));
        Some(StackTx { nic, loopq, loop_free, scratch, local, assist, keeper, counters, link, eth_headers, snd, now })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = self.nic.capabilities();
        // Ingress checksums are verified (and drops counted) in `ingress`;
        // smoltcp only computes them on egress.
        caps.checksum.ipv4 = Checksum::Tx;
        caps.checksum.tcp = Checksum::Tx;
        caps.checksum.udp = Checksum::Tx;
        caps.checksum.icmpv4 = Checksum::Tx;
        caps.checksum.icmpv6 = Checksum::Tx;
        caps
    }
}
