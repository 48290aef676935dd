//! ImpairProxy: a lossy underlay between two UDP endpoints on this machine.
//!
//! [`Impair`](super::Impair) works on a NIC's overlay packets; some layers
//! need their *datagrams* impaired instead — a DTLS link's handshake, or
//! two programs that do not share a process (OpenSSL and plebnet). The
//! proxy relays datagrams between endpoint A and endpoint B through two
//! seeded [`ImpairPipe`]s, one per direction: A sends to
//! [`addr_for_a`](ImpairProxy::addr_for_a) and sees B's datagrams come from
//! there, and the same for B. It can keep a copy of what it delivered, for
//! replay tests. A thread moves the datagrams; dropping the proxy stops it.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use smoltcp::time::Instant;

use super::impair_pipe::{ImpairConfig, ImpairCounters, ImpairPipe};
use crate::sys::wait_ready;

/// How long the relay thread sleeps at most, so that a stop is noticed.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// One direction: datagrams into `pipe` from `from`, out of `to` towards
/// `dest`.
struct Direction {
    pipe: ImpairPipe,
    to: UdpSocket,
    dest: SocketAddr,
    captured: Arc<Mutex<Vec<Vec<u8>>>>,
    capture_limit: usize,
}

/// A relay that impairs datagrams between two endpoints. See the module
/// docs.
pub struct ImpairProxy {
    a_facing: UdpSocket,
    b_facing: UdpSocket,
    counters: Mutex<[Arc<ImpairCounters>; 2]>,
    captured: [Arc<Mutex<Vec<Vec<u8>>>>; 2],
    stop: Arc<AtomicBool>,
    /// New impairments for the relay thread to take up.
    change: Arc<Mutex<Option<[ImpairPipe; 2]>>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ImpairProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImpairProxy")
            .field("addr_for_a", &self.a_facing.local_addr().ok())
            .field("addr_for_b", &self.b_facing.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl ImpairProxy {
    /// Relays between `a` and `b` (both on loopback or in the caller's
    /// namespace), impairing A→B with `a_to_b` and B→A with `b_to_a`. Up to
    /// `capture_limit` delivered datagrams per direction are kept.
    pub fn start(
        a: SocketAddr,
        b: SocketAddr,
        a_to_b: ImpairConfig,
        b_to_a: ImpairConfig,
        capture_limit: usize,
    ) -> io::Result<Self> {
        let bind = |peer: SocketAddr| {
            let any: SocketAddr = if peer.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" }.parse().expect("valid");
            let s = UdpSocket::bind(SocketAddr::new(peer.ip(), 0)).or_else(|_| UdpSocket::bind(any))?;
            s.set_nonblocking(true)?;
            super::set_udp_buffers(&s, 4 << 20);
            Ok::<_, io::Error>(s)
        };
        let a_facing = bind(a)?;
        let b_facing = bind(b)?;
        let captured = [Arc::default(), Arc::default()];
        let ab = Direction {
            pipe: ImpairPipe::new(a_to_b),
            to: b_facing.try_clone()?,
            dest: b,
            captured: Arc::clone(&captured[0]),
            capture_limit,
        };
        let ba = Direction {
            pipe: ImpairPipe::new(b_to_a),
            to: a_facing.try_clone()?,
            dest: a,
            captured: Arc::clone(&captured[1]),
            capture_limit,
        };
        let counters = [ab.pipe.counters(), ba.pipe.counters()];
        let stop = Arc::new(AtomicBool::new(false));
        let change = Arc::new(Mutex::new(None));
        let from = [a_facing.try_clone()?, b_facing.try_clone()?];
        let thread = {
            let (stop, change) = (stop.clone(), change.clone());
            std::thread::Builder::new()
                .name("impair-proxy".into())
                .spawn(move || relay(from, [ab, ba], a, b, &stop, &change))?
        };
        Ok(Self { a_facing, b_facing, counters: Mutex::new(counters), captured, stop, change, thread: Some(thread) })
    }

    /// Where endpoint A sends to reach B.
    pub fn addr_for_a(&self) -> SocketAddr {
        self.a_facing.local_addr().expect("bound")
    }

    /// Where endpoint B sends to reach A.
    pub fn addr_for_b(&self) -> SocketAddr {
        self.b_facing.local_addr().expect("bound")
    }

    /// Changes the impairment of each direction from now on (datagrams
    /// held by the old pipes are dropped; the counters start again, see
    /// [`counters`](Self::counters)).
    pub fn set_impairment(&self, a_to_b: ImpairConfig, b_to_a: ImpairConfig) {
        let pipes = [ImpairPipe::new(a_to_b), ImpairPipe::new(b_to_a)];
        *self.counters.lock().expect("not poisoned") = [pipes[0].counters(), pipes[1].counters()];
        *self.change.lock().expect("not poisoned") = Some(pipes);
        // Wake the relay so it takes the change before the next datagram.
        let _ = self.a_facing.send_to(&[], self.addr_for_a());
    }

    /// What the A→B and B→A pipes did (since the last change).
    pub fn counters(&self) -> [Arc<ImpairCounters>; 2] {
        self.counters.lock().expect("not poisoned").clone()
    }

    /// Copies of the datagrams delivered to B (`to_b` true) or to A.
    pub fn captured(&self, to_b: bool) -> Vec<Vec<u8>> {
        self.captured[usize::from(!to_b)].lock().expect("not poisoned").clone()
    }

    /// Sends `datagram` to B (`to_b` true) or to A, unimpaired, from the
    /// address that endpoint knows as its peer's: a replay or an injection
    /// that looks like it came from the peer.
    pub fn inject(&self, to_b: bool, datagram: &[u8], dest: SocketAddr) -> io::Result<()> {
        let socket = if to_b { &self.b_facing } else { &self.a_facing };
        loop {
            match socket.send_to(datagram, dest) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_ready(&[(socket.as_raw_fd(), true)], Some(STOP_CHECK))?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for ImpairProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The relay thread: reads both sockets, pushes into the pipes, sends what
/// the pipes release, sleeps until the next release or datagram.
fn relay(
    from: [UdpSocket; 2],
    mut dirs: [Direction; 2],
    a: SocketAddr,
    b: SocketAddr,
    stop: &AtomicBool,
    change: &Mutex<Option<[ImpairPipe; 2]>>,
) {
    let epoch = std::time::Instant::now();
    let now = || Instant::from_micros(epoch.elapsed().as_micros() as i64);
    let mut buf = vec![0u8; 65_535];
    let expected = [a, b];
    while !stop.load(Ordering::Relaxed) {
        if let Some(pipes) = change.lock().expect("not poisoned").take() {
            for (dir, pipe) in dirs.iter_mut().zip(pipes) {
                dir.pipe = pipe;
            }
        }
        for (i, socket) in from.iter().enumerate() {
            for _ in 0..256 {
                match socket.recv_from(&mut buf) {
                    // Only the endpoint this side faces may use it.
                    Ok((len, src)) if src == expected[i] => dirs[i].pipe.push(now(), buf[..len].to_vec()),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        for dir in &mut dirs {
            while let Some(datagram) = dir.pipe.pop(now()) {
                if dir.to.send_to(&datagram, dir.dest).is_err() {
                    continue;
                }
                if dir.capture_limit > 0 {
                    let mut captured = dir.captured.lock().expect("not poisoned");
                    if captured.len() < dir.capture_limit {
                        captured.push(datagram);
                    }
                }
            }
        }
        let next = dirs.iter().filter_map(|d| d.pipe.poll_at()).min();
        let wait = match next {
            Some(at) => {
                let ahead = (at.total_micros() - now().total_micros()).max(0) as u64;
                Duration::from_micros(ahead).min(STOP_CHECK)
            }
            None => STOP_CHECK,
        };
        if wait.is_zero() {
            continue;
        }
        let fds = [(from[0].as_raw_fd(), false), (from[1].as_raw_fd(), false)];
        let _ = wait_ready(&fds, Some(wait));
    }
}
