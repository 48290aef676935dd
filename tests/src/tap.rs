//! A NIC wrapper for hostile-traffic tests: packets can be injected into
//! the stack's receive path (as if they came off the wire, interleaved with
//! the real traffic), and the SYN and SYN|ACK sequence numbers arriving from
//! the wire are recorded, so that a test knows a connection's initial
//! sequence numbers without asking the stack under test.

use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, OnceLock};

use plebnet::netstack::nic::Nic;
use plebnet::netstack::smoltcp::phy::{self, Device, DeviceCapabilities};
use plebnet::netstack::smoltcp::time::Instant;
use plebnet::netstack::smoltcp::wire::{IpProtocol, Ipv4Packet, TcpPacket};
use plebnet::netstack::stats::CounterSource;
use plebnet::netstack::wake::DriverWaker;

/// Injected packets waiting for the stack, at most this many.
const QUEUE: usize = 1024;

/// What a [`Tap`] and its handles share.
#[derive(Default)]
pub struct Shared {
    queue: Mutex<VecDeque<Vec<u8>>>,
    waker: OnceLock<DriverWaker>,
    /// (source port, destination port) -> sequence number of the last SYN
    /// or SYN|ACK seen arriving (IPv4 only).
    syns: Mutex<HashMap<(u16, u16), u32>>,
}

/// A NIC that also receives what the test injects. See [`TapHandle`].
pub struct Tap<N: Nic> {
    inner: N,
    shared: Arc<Shared>,
}

/// The test's side of a [`Tap`]: cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct TapHandle {
    shared: Arc<Shared>,
}

impl<N: Nic> Tap<N> {
    /// Wraps `inner`.
    pub fn new(inner: N) -> (Self, TapHandle) {
        let shared = Arc::new(Shared::default());
        (Self { inner, shared: shared.clone() }, TapHandle { shared })
    }
}

impl TapHandle {
    /// Queues `packet` for the stack; waits (yielding the CPU) while the
    /// queue is full, so nothing injected is lost.
    pub fn inject(&self, packet: Vec<u8>) {
        loop {
            {
                let mut q = self.shared.queue.lock().unwrap();
                if q.len() < QUEUE {
                    q.push_back(packet);
                    break;
                }
            }
            self.wake();
            std::thread::yield_now();
        }
        self.wake();
    }

    /// Waits (yielding) until the stack has taken every injected packet.
    pub fn drain(&self) {
        while !self.shared.queue.lock().unwrap().is_empty() {
            self.wake();
            std::thread::yield_now();
        }
    }

    fn wake(&self) {
        if let Some(w) = self.shared.waker.get() {
            w.wake();
        }
    }

    /// The sequence number of the last SYN or SYN|ACK that arrived from
    /// the wire from port `src` to port `dst`.
    pub fn syn_seq(&self, src: u16, dst: u16) -> Option<u32> {
        self.shared.syns.lock().unwrap().get(&(src, dst)).copied()
    }
}

fn record_syn(shared: &Shared, packet: &[u8]) {
    let Ok(ip) = Ipv4Packet::new_checked(packet) else { return };
    if ip.next_header() != IpProtocol::Tcp {
        return;
    }
    let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else { return };
    if tcp.syn() {
        shared.syns.lock().unwrap().insert((tcp.src_port(), tcp.dst_port()), tcp.seq_number().0 as u32);
    }
}

/// A packet from the wire or from the test.
pub enum TapRx<'a, R> {
    Wire(R, &'a Shared),
    Injected(Vec<u8>),
}

impl<R: phy::RxToken> phy::RxToken for TapRx<'_, R> {
    fn consume<T, F: FnOnce(&[u8]) -> T>(self, f: F) -> T {
        match self {
            TapRx::Wire(token, shared) => token.consume(|p| {
                record_syn(shared, p);
                f(p)
            }),
            TapRx::Injected(p) => f(&p),
        }
    }
}

impl<N: Nic> Device for Tap<N> {
    type RxToken<'a> = TapRx<'a, N::RxToken<'a>>;
    type TxToken<'a> = N::TxToken<'a>;

    fn receive(&mut self, now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let injected = self.shared.queue.lock().unwrap().pop_front();
        if let Some(p) = injected {
            let Some(tx) = self.inner.transmit(now) else {
                self.shared.queue.lock().unwrap().push_front(p);
                return None;
            };
            return Some((TapRx::Injected(p), tx));
        }
        let (rx, tx) = self.inner.receive(now)?;
        Some((TapRx::Wire(rx, &self.shared), tx))
    }

    fn transmit(&mut self, now: Instant) -> Option<Self::TxToken<'_>> {
        self.inner.transmit(now)
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.inner.capabilities()
    }
}

impl<N: Nic> Nic for Tap<N> {
    fn attach(&mut self, waker: DriverWaker) {
        let _ = self.shared.waker.set(waker.clone());
        self.inner.attach(waker);
    }
    fn readiness_fd(&self) -> Option<RawFd> {
        self.inner.readiness_fd()
    }
    fn ethernet_address(&self) -> Option<[u8; 6]> {
        self.inner.ethernet_address()
    }
    fn wants_writable(&self) -> bool {
        self.inner.wants_writable()
    }
    fn flush(&mut self) {
        self.inner.flush()
    }
    fn poll_at(&self) -> Option<Instant> {
        // Injected packets are waiting: poll now.
        if !self.shared.queue.lock().unwrap().is_empty() {
            return Some(Instant::ZERO);
        }
        self.inner.poll_at()
    }
    fn service(&mut self, now: Instant) {
        self.inner.service(now)
    }
    fn counters(&self) -> Vec<(String, Arc<dyn CounterSource>)> {
        self.inner.counters()
    }
}

/// An IPv4 TCP segment with valid checksums and no payload or options.
#[allow(clippy::too_many_arguments)]
pub fn tcp_v4(
    src: [u8; 4],
    src_port: u16,
    dst: [u8; 4],
    dst_port: u16,
    control: plebnet::netstack::smoltcp::wire::TcpControl,
    seq: u32,
    ack: Option<u32>,
) -> Vec<u8> {
    use plebnet::netstack::smoltcp::phy::ChecksumCapabilities;
    use plebnet::netstack::smoltcp::wire::{Ipv4Address, Ipv4Repr, TcpRepr, TcpSeqNumber};
    let repr = TcpRepr {
        src_port,
        dst_port,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 65_535,
        window_scale: None,
        max_seg_size: (control == plebnet::netstack::smoltcp::wire::TcpControl::Syn).then_some(1400),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let (s, d) = (Ipv4Address::from(src), Ipv4Address::from(dst));
    let ip = Ipv4Repr {
        src_addr: s,
        dst_addr: d,
        next_header: IpProtocol::Tcp,
        payload_len: repr.buffer_len(),
        hop_limit: 64,
    };
    let mut buf = vec![0u8; ip.buffer_len() + repr.buffer_len()];
    let caps = ChecksumCapabilities::default();
    let mut packet = Ipv4Packet::new_unchecked(&mut buf);
    ip.emit(&mut packet, &caps);
    repr.emit(&mut TcpPacket::new_unchecked(packet.payload_mut()), &s.into(), &d.into(), &caps);
    buf
}
