//! Plebnet TCP behind kernel descriptors.
//!
//! * A connection is a Unix stream socket pair: the program holds one end
//!   at the descriptor number `socket()` gave it, and two pump threads copy
//!   bytes between the other end and the plebnet [`TcpStream`], passing
//!   half-closes on in both directions and a reset as EPIPE/EOF.
//! * A listener is a Unix listening socket at the program's descriptor; an
//!   acceptor thread takes each plebnet connection, connects a Unix socket
//!   (bound to an abstract name that identifies the connection) to it, and
//!   starts its pumps. The program's `accept` is the kernel's, so
//!   readiness, backlog and `SOCK_NONBLOCK` are exact; the shim only adds
//!   the plebnet peer address.
//! * A non-blocking connect fills the program's end with filler bytes the
//!   pump discards once the handshake ends, so the descriptor becomes
//!   writable exactly when the connection is up (or failed), as with
//!   kernel TCP.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use libc::c_int;
use plebnet_netstack::{Stack, TcpListener, TcpStream};

use crate::opts;
use crate::runtime::{self, debug, log_once};
use crate::sys::{self, real};
use crate::table::{self, Entry, Kind};

/// How often idle pump and acceptor threads look whether the program
/// closed its end.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// Copy buffer of each pump thread.
const PUMP_BUFFER: usize = 256 * 1024;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The errno for an error of the plebnet socket API.
pub(crate) fn errno_of(e: &io::Error) -> c_int {
    use io::ErrorKind as K;
    if let Some(raw) = e.raw_os_error() {
        return raw;
    }
    match e.kind() {
        K::ConnectionRefused => libc::ECONNREFUSED,
        K::ConnectionReset => libc::ECONNRESET,
        K::ConnectionAborted => libc::ECONNABORTED,
        K::TimedOut | K::WouldBlock => libc::ETIMEDOUT,
        K::NetworkUnreachable => libc::ENETUNREACH,
        K::HostUnreachable => libc::EHOSTUNREACH,
        K::AddrInUse => libc::EADDRINUSE,
        K::AddrNotAvailable => libc::EADDRNOTAVAIL,
        K::InvalidInput => libc::EINVAL,
        K::BrokenPipe => libc::EPIPE,
        K::NotConnected => libc::ENOTCONN,
        K::OutOfMemory => libc::ENOMEM,
        _ => libc::EIO,
    }
}

/// Spawns a shim thread (all its libc calls bypass the shim).
pub(crate) fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), c_int> {
    std::thread::Builder::new()
        .name(name.to_string())
        .stack_size(256 * 1024)
        .spawn(move || {
            crate::ffi::mark_internal_thread();
            f()
        })
        .map(drop)
        .map_err(|e| {
            log_once("spawn", &format!("cannot start a shim thread: {e}"));
            libc::EAGAIN
        })
}

#[derive(Debug)]
enum State {
    Connecting,
    Connected(TcpStream),
    /// The connect failed with this errno; `bool`: SO_ERROR reported it.
    Failed(c_int, bool),
}

/// A plebnet TCP connection (connecting or connected).
#[derive(Debug)]
pub(crate) struct Conn {
    state: Mutex<State>,
    done: Condvar,
    peer: SocketAddr,
    nodelay: AtomicBool,
}

impl Conn {
    fn new(peer: SocketAddr, state: State) -> Arc<Conn> {
        Arc::new(Conn { state: Mutex::new(state), done: Condvar::new(), peer, nodelay: AtomicBool::new(false) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finish(&self, state: State) {
        if let State::Connected(s) = &state {
            let _ = s.set_nodelay(self.nodelay.load(Ordering::Relaxed));
        }
        *self.lock() = state;
        self.done.notify_all();
    }

    /// SO_ERROR: a failed connect's errno, once.
    pub(crate) fn take_error(&self) -> c_int {
        match &mut *self.lock() {
            State::Failed(e, reported) if !*reported => {
                *reported = true;
                *e
            }
            _ => 0,
        }
    }

    /// TCP_NODELAY.
    pub(crate) fn set_nodelay(&self, on: bool) {
        self.nodelay.store(on, Ordering::Relaxed);
        if let State::Connected(s) = &*self.lock() {
            let _ = s.set_nodelay(on);
        }
    }

    /// TCP_NODELAY as set.
    pub(crate) fn nodelay(&self) -> bool {
        self.nodelay.load(Ordering::Relaxed)
    }

    /// The connection's state as Linux numbers it in `tcpi_state`.
    pub(crate) fn linux_state(&self) -> u8 {
        use plebnet_netstack::smoltcp::socket::tcp::State as S;
        match &*self.lock() {
            State::Connecting => 2,
            State::Failed(..) => 7,
            State::Connected(s) => match s.state() {
                S::Established => 1,
                S::SynSent => 2,
                S::SynReceived => 3,
                S::FinWait1 => 4,
                S::FinWait2 => 5,
                S::TimeWait => 6,
                S::Closed => 7,
                S::CloseWait => 8,
                S::LastAck => 9,
                S::Listen => 10,
                S::Closing => 11,
            },
        }
    }

    /// The local address once connected.
    pub(crate) fn local(&self) -> Option<SocketAddr> {
        match &*self.lock() {
            State::Connected(s) => s.local_addr().ok(),
            _ => None,
        }
    }

    /// The peer once connected (ENOTCONN otherwise).
    pub(crate) fn peer(&self) -> Result<SocketAddr, c_int> {
        match &*self.lock() {
            State::Connected(_) => Ok(self.peer),
            _ => Err(libc::ENOTCONN),
        }
    }

    /// `connect` again on this socket: EALREADY while connecting, EISCONN
    /// once connected, the failure once.
    pub(crate) fn connect_again(&self, blocking: bool) -> Result<(), c_int> {
        let mut st = self.lock();
        if blocking {
            while matches!(*st, State::Connecting) {
                st = self.done.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        }
        match &mut *st {
            State::Connecting => Err(libc::EALREADY),
            State::Connected(_) => Err(libc::EISCONN),
            State::Failed(e, reported) => {
                if *reported {
                    Err(libc::ECONNABORTED)
                } else {
                    *reported = true;
                    Err(*e)
                }
            }
        }
    }
}

/// Starts the two pump threads of a connection.
fn start_pumps(stream: TcpStream, pump: OwnedFd) -> Result<(), c_int> {
    let pump = Arc::new(pump);
    let (s, p) = (stream.clone(), pump.clone());
    spawn("plebnet-up", move || pump_up(&s, p.as_raw_fd()))?;
    spawn("plebnet-down", move || pump_down(&stream, pump.as_raw_fd()))
}

/// Program → plebnet: EOF from the program becomes FIN.
fn pump_up(s: &TcpStream, p: RawFd) {
    runtime::LIVE_WRITERS.fetch_add(1, Ordering::AcqRel);
    pump_up_inner(s, p);
    runtime::LIVE_WRITERS.fetch_sub(1, Ordering::AcqRel);
}

fn pump_up_inner(s: &TcpStream, p: RawFd) {
    let mut buf = vec![0u8; PUMP_BUFFER];
    loop {
        match sys::read(p, &mut buf) {
            Ok(0) | Err(_) => {
                let _ = s.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                let mut w = s;
                if w.write_all(&buf[..n]).is_err() {
                    // The connection cannot send any more: further writes by the program fail with EPIPE.
                    sys::shutdown(p, libc::SHUT_RD);
                    return;
                }
            }
        }
    }
}

/// Plebnet → program: FIN becomes EOF, a reset closes both directions.
fn pump_down(s: &TcpStream, p: RawFd) {
    let _ = s.set_read_timeout(Some(CHECK_EVERY));
    let mut buf = vec![0u8; PUMP_BUFFER];
    loop {
        let mut r = s;
        match r.read(&mut buf) {
            Ok(0) => {
                sys::shutdown(p, libc::SHUT_WR);
                return;
            }
            Ok(n) => {
                if sys::send_all(p, &buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if sys::hung_up(p) {
                    return;
                }
            }
            Err(_) => {
                sys::shutdown(p, libc::SHUT_RDWR);
                return;
            }
        }
    }
}

/// Connects socket `fd` (an INET socket of the program) to `dst` over
/// `stack`; returns `Err(EINPROGRESS)` for a non-blocking socket.
pub(crate) fn connect(fd: RawFd, entry: &Entry, stack: &Stack, dst: SocketAddr) -> Result<(), c_int> {
    let nonblocking = sys::is_nonblocking(fd);
    let timeout = send_timeout(entry);
    let nodelay = entry.opts.lock().unwrap_or_else(|e| e.into_inner()).int(libc::IPPROTO_TCP, libc::TCP_NODELAY) != 0;
    let open = {
        let stack = stack.clone();
        move || match timeout {
            Some(t) => TcpStream::connect_timeout(&stack, dst, t),
            None => TcpStream::connect(&stack, dst),
        }
    };
    let (app, pump) = sys::socketpair(libc::SOCK_STREAM).map_err(|e| errno_of(&e))?;
    if !nonblocking {
        let stream = open().map_err(|e| {
            debug(|| format!("connect {dst}: {e}"));
            errno_of(&e)
        })?;
        sys::install(fd, app).map_err(|e| errno_of(&e))?;
        let conn = Conn::new(dst, State::Connecting);
        conn.nodelay.store(nodelay, Ordering::Relaxed);
        conn.finish(State::Connected(stream.clone()));
        let new = Entry { kind: Kind::Stream(conn), ..entry.clone() };
        opts::replay(fd, &new);
        table::insert(fd, new);
        debug(|| format!("fd {fd}: connected to {dst} over plebnet"));
        return start_pumps(stream, pump);
    }
    // Non-blocking: not writable until the handshake ends (see the module docs).
    let filler = fill(&app).map_err(|e| errno_of(&e))?;
    sys::install(fd, app).map_err(|e| errno_of(&e))?;
    let conn = Conn::new(dst, State::Connecting);
    conn.nodelay.store(nodelay, Ordering::Relaxed);
    let new = Entry { kind: Kind::Stream(conn.clone()), ..entry.clone() };
    opts::replay(fd, &new);
    table::insert(fd, new);
    spawn("plebnet-connect", move || {
        let result = open();
        match result {
            Ok(stream) => {
                conn.finish(State::Connected(stream.clone()));
                let _ = drain(&pump, filler);
                debug(|| format!("fd {fd}: connected to {dst} over plebnet (non-blocking)"));
                let _ = start_pumps(stream, pump);
            }
            Err(e) => {
                debug(|| format!("connect {dst}: {e}"));
                conn.finish(State::Failed(errno_of(&e), false));
                let _ = drain(&pump, filler);
                drop(pump);
            }
        }
    })?;
    Err(libc::EINPROGRESS)
}

/// SO_SNDTIMEO, which Linux also applies to connect.
fn send_timeout(entry: &Entry) -> Option<Duration> {
    let opts = entry.opts.lock().unwrap_or_else(|e| e.into_inner());
    let v = opts.get(libc::SOL_SOCKET, libc::SO_SNDTIMEO)?;
    if v.len() < std::mem::size_of::<libc::timeval>() {
        return None;
    }
    // SAFETY: `v` holds a whole timeval (checked length); read unaligned.
    let tv: libc::timeval = unsafe { std::ptr::read_unaligned(v.as_ptr().cast()) };
    let t = Duration::from_secs(tv.tv_sec.max(0) as u64) + Duration::from_micros(tv.tv_usec.max(0) as u64);
    (!t.is_zero()).then_some(t)
}

/// Fills the program's end until the kernel says it is full; returns how
/// many filler bytes the pump end must discard.
fn fill(app: &OwnedFd) -> io::Result<usize> {
    static FILLER: [u8; 65536] = [0; 65536];
    let mut total = 0;
    loop {
        // SAFETY: FILLER is valid for its length.
        let n = unsafe {
            libc::send(app.as_raw_fd(), FILLER.as_ptr().cast(), FILLER.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(total),
                io::ErrorKind::Interrupted => continue,
                _ => Err(e),
            };
        }
        total += n as usize;
    }
}

/// Discards `n` filler bytes on the pump end.
fn drain(pump: &OwnedFd, mut n: usize) -> io::Result<()> {
    let mut buf = vec![0u8; 65536];
    while n > 0 {
        let want = n.min(buf.len());
        let got = sys::read(pump.as_raw_fd(), &mut buf[..want])?;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        n -= got;
    }
    Ok(())
}

/// A plebnet TCP listener.
#[derive(Debug)]
pub(crate) struct Listener {
    /// The plebnet address it listens on.
    pub(crate) local: SocketAddr,
    /// The abstract Unix name of the program's listening socket.
    name: String,
    /// Connections handed to the Unix listener, not yet accepted.
    pending: Mutex<HashMap<u64, (TcpStream, SocketAddr)>>,
    /// Descriptor numbers referring to it.
    refs: AtomicUsize,
    closed: AtomicBool,
    /// The plebnet listener, closed (port freed) with the last descriptor.
    plebnet: TcpListener,
}

impl Listener {
    /// One more descriptor number refers to the listener.
    pub(crate) fn add_ref(&self) {
        self.refs.fetch_add(1, Ordering::AcqRel);
    }

    /// One descriptor number less; at none the plebnet listener closes.
    pub(crate) fn drop_ref(&self) {
        if self.refs.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.closed.store(true, Ordering::Release);
            // At once, as the kernel does: a program may listen on the same
            // port again right away (iperf3 between tests), and a SYN that
            // arrives now must be refused, not queued for a dead acceptor.
            // Not in a forked child: the stack is the parent's (and its
            // lock may have been held by a thread that did not fork).
            if !runtime::forked() {
                self.plebnet.close();
            }
        }
    }
}

/// `listen` on a plebnet-bound socket.
pub(crate) fn listen(fd: RawFd, entry: &Entry, stack: &Stack, local: SocketAddr, backlog: c_int) -> Result<(), c_int> {
    let backlog = backlog.clamp(1, 4096);
    let l = TcpListener::bind_with_backlog(stack, local, backlog as usize).map_err(|e| errno_of(&e))?;
    let _ = l.set_accept_timeout(Some(CHECK_EVERY));
    let bound = l.local_addr().unwrap_or(local);
    // SAFETY: getpid has no preconditions.
    let name = format!("plebnet-{}-l{}", unsafe { libc::getpid() }, NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let u = sys::unix_socket().map_err(|e| errno_of(&e))?;
    sys::bind_abstract(&u, &name).map_err(|e| errno_of(&e))?;
    // SAFETY: listen on our own socket.
    sys::check(unsafe { real::listen(u.as_raw_fd(), backlog) }).map_err(|e| errno_of(&e))?;
    sys::install(fd, u).map_err(|e| errno_of(&e))?;
    let lst = Arc::new(Listener {
        local: bound,
        name,
        pending: Mutex::new(HashMap::new()),
        refs: AtomicUsize::new(0),
        closed: AtomicBool::new(false),
        plebnet: l,
    });
    let new = Entry { kind: Kind::Listener(lst.clone()), ..entry.clone() };
    opts::replay(fd, &new);
    table::insert(fd, new);
    debug(|| format!("fd {fd}: listening on {bound} over plebnet"));
    spawn("plebnet-accept", move || acceptor(&lst))
}

/// Hands each plebnet connection to the program's Unix listener.
fn acceptor(lst: &Listener) {
    while !lst.closed.load(Ordering::Acquire) {
        match lst.plebnet.accept() {
            Ok((stream, peer)) => {
                let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                let Ok(c) = sys::unix_socket() else { continue };
                if sys::bind_abstract(&c, &format!("{}-c{id}", lst.name)).is_err() {
                    continue;
                }
                lst.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, (stream.clone(), peer));
                match sys::connect_abstract(&c, &lst.name) {
                    Ok(()) => {
                        let _ = start_pumps(stream, c);
                    }
                    Err(_) => {
                        // The program closed its listening socket.
                        lst.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                        break;
                    }
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(_) if lst.closed.load(Ordering::Acquire) => break,
            Err(e) => {
                log_once("accept", &format!("plebnet accept failed: {e}"));
                break;
            }
        }
    }
    lst.pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// `accept4` on a plebnet listener: the kernel's accept on the Unix
/// listener, then the plebnet connection behind it.
///
/// # Safety
/// `addr`/`len` as for accept(2).
pub(crate) unsafe fn accept(
    fd: RawFd,
    entry: &Entry,
    lst: &Listener,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
    flags: c_int,
) -> Result<c_int, c_int> {
    // SAFETY: sockaddr_un is plain data.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut slen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: our own valid buffers.
    let r = unsafe { real::accept4(fd, (&raw mut sun).cast(), &mut slen, flags) };
    if r < 0 {
        return Err(sys::errno());
    }
    let id = sys::abstract_name(&sun, slen)
        .and_then(|n| n.strip_prefix(&format!("{}-c", lst.name)).and_then(|i| i.parse::<u64>().ok()));
    let found = id.and_then(|id| lst.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id));
    let (conn, peer) = match found {
        Some((stream, peer)) => (Conn::new(peer, State::Connected(stream)), peer),
        None => {
            log_once("accept-lost", "accepted a connection the shim cannot match to plebnet (internal error)");
            let peer = crate::addr::unspecified(entry.family);
            (Conn::new(peer, State::Failed(libc::ECONNABORTED, true)), peer)
        }
    };
    table::insert(r, Entry { kind: Kind::Stream(conn), family: entry.family, opts: Default::default(), ident: None });
    // SAFETY: the caller's buffers.
    unsafe { crate::addr::write(peer, entry.family, addr, len) };
    Ok(r)
}
