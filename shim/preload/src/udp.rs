//! Plebnet UDP behind kernel descriptors.
//!
//! The program holds one end of a Unix `SOCK_SEQPACKET` pair, which keeps
//! datagram boundaries and reports a closed end. A receive thread drains
//! the plebnet socket into an 8 MiB inbox (the pair itself holds only
//! `net.unix.max_dgram_qlen` datagrams); a deliver thread moves each
//! datagram into the pair, after queueing its source address for
//! `recvfrom`/`recvmsg`; a send thread moves what the program
//! `write`s/`send`s on a connected socket to its peer. `sendto`/`sendmsg`
//! with an address go straight to the plebnet socket.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use libc::c_int;
use plebnet_netstack::{Stack, UdpSocket};

use crate::opts;
use crate::runtime::{debug, log_once, unmap};
use crate::sys::{self, real};
use crate::table::{self, Entry, Kind};
use crate::tcp::{errno_of, spawn};

/// Source addresses kept for datagrams not yet read.
const MAX_SOURCES: usize = 4096;

/// A plebnet UDP socket.
#[derive(Debug)]
pub(crate) struct Dgram {
    sock: UdpSocket,
    peer: Mutex<Option<SocketAddr>>,
    sources: Mutex<VecDeque<SocketAddr>>,
}

impl Dgram {
    /// The local address.
    pub(crate) fn local(&self) -> Option<SocketAddr> {
        self.sock.local_addr().ok()
    }

    /// The connected peer.
    pub(crate) fn peer(&self) -> Option<SocketAddr> {
        *self.peer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `connect`: the default destination and the only source heard.
    pub(crate) fn connect(&self, dst: SocketAddr) -> Result<(), c_int> {
        let dst = SocketAddr::new(unmap(dst.ip()), dst.port());
        self.sock.connect(dst).map_err(|e| errno_of(&e))?;
        *self.peer.lock().unwrap_or_else(|e| e.into_inner()) = Some(dst);
        self.sources.lock().unwrap_or_else(|e| e.into_inner()).clear();
        Ok(())
    }

    /// `sendto` with an address.
    pub(crate) fn send_to(&self, buf: &[u8], dst: SocketAddr) -> Result<usize, c_int> {
        let dst = SocketAddr::new(unmap(dst.ip()), dst.port());
        self.sock.send_to(buf, dst).map_err(|e| errno_of(&e))
    }

    /// The source of the datagram just read (or peeked).
    pub(crate) fn source(&self, peek: bool) -> Option<SocketAddr> {
        let mut q = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let from_queue = if peek { q.front().copied() } else { q.pop_front() };
        drop(q);
        from_queue.or_else(|| self.peer())
    }
}

/// Makes `fd` a plebnet UDP socket bound to `local` on `stack`.
pub(crate) fn convert(fd: RawFd, entry: &Entry, stack: &Stack, local: SocketAddr) -> Result<Arc<Dgram>, c_int> {
    let local = SocketAddr::new(unmap(local.ip()), local.port());
    let sock = UdpSocket::bind(stack, local).map_err(|e| errno_of(&e))?;
    let (app, pump) = sys::socketpair(libc::SOCK_SEQPACKET).map_err(|e| errno_of(&e))?;
    sys::install(fd, app).map_err(|e| errno_of(&e))?;
    let d = Arc::new(Dgram { sock, peer: Mutex::new(None), sources: Mutex::new(VecDeque::new()) });
    let new = Entry { kind: Kind::Udp(d.clone()), ..entry.clone() };
    opts::replay(fd, &new);
    table::insert(fd, new);
    debug(|| format!("fd {fd}: UDP on plebnet, bound to {:?}", d.local()));
    let pump = Arc::new(pump);
    let (d2, p2) = (d.clone(), pump.clone());
    spawn("plebnet-udp-rx", move || receive(&d2, p2))?;
    let d3 = d.clone();
    spawn("plebnet-udp-tx", move || transmit(&d3, pump.as_raw_fd()))?;
    Ok(d)
}

/// Datagrams received from plebnet and not yet handed to the program,
/// like a kernel socket's receive buffer: the Unix pair holds only a few
/// (net.unix.max_dgram_qlen), so bursts wait here.
#[derive(Debug, Default)]
struct Inbox {
    queue: Mutex<Queued>,
    ready: Condvar,
}

/// The inbox's datagrams, their total size, and whether delivery stopped.
type Queued = (VecDeque<(Vec<u8>, SocketAddr)>, usize, bool);

/// Bytes the inbox holds before it drops datagrams (as a full socket would).
const INBOX_BYTES: usize = 8 << 20;

/// Plebnet → inbox, and the inbox → program thread.
fn receive(d: &Arc<Dgram>, p: Arc<OwnedFd>) {
    let inbox = Arc::new(Inbox::default());
    let (d2, inbox2) = (d.clone(), inbox.clone());
    let delivering = spawn("plebnet-udp-deliver", move || deliver(&d2, &inbox2, p.as_raw_fd()));
    if delivering.is_err() {
        return;
    }
    let _ = d.sock.set_read_timeout(Some(Duration::from_millis(250)));
    let mut buf = vec![0u8; 65536];
    loop {
        match d.sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                let mut q = inbox.queue.lock().unwrap_or_else(|e| e.into_inner());
                if q.2 {
                    return;
                }
                if q.1 + n > INBOX_BYTES {
                    log_once("udp-inbox", "a plebnet UDP socket's receive queue is full; datagrams dropped");
                    continue;
                }
                q.1 += n;
                q.0.push_back((buf[..n].to_vec(), from));
                drop(q);
                inbox.ready.notify_one();
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if inbox.queue.lock().unwrap_or_else(|e| e.into_inner()).2 {
                    return;
                }
            }
            Err(e) => {
                log_once("udp-rx", &format!("plebnet UDP receive failed: {e}"));
                if inbox.queue.lock().unwrap_or_else(|e| e.into_inner()).2 {
                    return;
                }
            }
        }
    }
}

/// Inbox → program, recording each datagram's source just before.
fn deliver(d: &Dgram, inbox: &Inbox, p: RawFd) {
    let stop = || inbox.queue.lock().unwrap_or_else(|e| e.into_inner()).2 = true;
    loop {
        let mut q = inbox.queue.lock().unwrap_or_else(|e| e.into_inner());
        let item = loop {
            if let Some(item) = q.0.pop_front() {
                q.1 -= item.0.len();
                break Some(item);
            }
            let (g, timeout) =
                inbox.ready.wait_timeout(q, Duration::from_millis(250)).unwrap_or_else(|e| e.into_inner());
            q = g;
            if timeout.timed_out() && q.0.is_empty() {
                break None;
            }
        };
        drop(q);
        let Some((data, from)) = item else {
            if sys::hung_up(p) {
                return stop();
            }
            continue;
        };
        if d.peer().is_none() {
            let mut s = d.sources.lock().unwrap_or_else(|e| e.into_inner());
            if s.len() >= MAX_SOURCES {
                s.pop_front();
            }
            s.push_back(from);
        }
        if sys::send_msg(p, &data).is_err() {
            return stop();
        }
    }
}

/// Program (`write`/`send` on a connected socket) → plebnet.
fn transmit(d: &Dgram, p: RawFd) {
    crate::runtime::LIVE_WRITERS.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    transmit_inner(d, p);
    crate::runtime::LIVE_WRITERS.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
}

/// True when the program shut its sending side or closed its end.
fn write_side_closed(p: RawFd) -> bool {
    let mut pfd = libc::pollfd { fd: p, events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: one valid pollfd, no wait.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    r > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

fn transmit_inner(d: &Dgram, p: RawFd) {
    let mut buf = vec![0u8; 65536];
    loop {
        // SAFETY: `buf` is valid for its length.
        let n = unsafe { libc::recv(p, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            if sys::errno() == libc::EINTR {
                continue;
            }
            return;
        }
        if n == 0 && write_side_closed(p) {
            return;
        }
        match d.peer() {
            Some(peer) => {
                if let Err(e) = d.sock.send_to(&buf[..n as usize], peer) {
                    log_once("udp-tx", &format!("plebnet UDP send to {peer} failed: {e}; datagram dropped"));
                }
            }
            None => log_once(
                "udp-unconnected",
                "write()/send() on an unconnected UDP socket: EDESTADDRREQ, datagram dropped (use sendto)",
            ),
        }
    }
}

/// `recvfrom`/`recvmsg` source address for a datagram the kernel handed
/// over from the pair.
///
/// # Safety
/// `addr`/`len` as for recvfrom(2).
pub(crate) unsafe fn write_source(
    d: &Dgram,
    family: c_int,
    flags: c_int,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
) {
    if let Some(src) = d.source(flags & libc::MSG_PEEK != 0) {
        // SAFETY: the caller's buffers.
        unsafe { crate::addr::write(src, family, addr, len) };
    }
}

/// `recvfrom` on a plebnet UDP socket.
///
/// # Safety
/// As recvfrom(2).
pub(crate) unsafe fn recvfrom(
    fd: RawFd,
    entry: &Entry,
    d: &Dgram,
    buf: (*mut libc::c_void, libc::size_t),
    flags: c_int,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
) -> Result<isize, c_int> {
    // SAFETY: the caller's buffer; no address wanted from the Unix socket.
    let r = unsafe { real::recvfrom(fd, buf.0, buf.1, flags, std::ptr::null_mut(), std::ptr::null_mut()) };
    if r < 0 {
        return Err(sys::errno());
    }
    // SAFETY: the caller's buffers.
    unsafe { write_source(d, entry.family, flags, addr, len) };
    Ok(r)
}

/// `recvmsg` on a plebnet UDP socket.
///
/// # Safety
/// As recvmsg(2).
pub(crate) unsafe fn recvmsg(
    fd: RawFd,
    entry: &Entry,
    d: &Dgram,
    msg: *mut libc::msghdr,
    flags: c_int,
) -> Result<isize, c_int> {
    if msg.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: `msg` is the caller's valid msghdr.
    let (name, namelen) = unsafe { ((*msg).msg_name, (*msg).msg_namelen) };
    // SAFETY: as above; the name is filled by us, not by the Unix socket.
    let r = unsafe {
        (*msg).msg_name = std::ptr::null_mut();
        (*msg).msg_namelen = 0;
        let r = real::recvmsg(fd, msg, flags);
        (*msg).msg_name = name;
        (*msg).msg_namelen = namelen;
        r
    };
    if r < 0 {
        return Err(sys::errno());
    }
    if !name.is_null() {
        // SAFETY: the caller's name buffer and its length field.
        unsafe { write_source(d, entry.family, flags, name.cast(), &raw mut (*msg).msg_namelen) };
    }
    Ok(r)
}

/// Gathers a msghdr's iovecs into one buffer.
///
/// # Safety
/// `msg` must be a valid msghdr with valid iovecs.
pub(crate) unsafe fn gather(msg: *const libc::msghdr) -> Vec<u8> {
    let mut out = Vec::new();
    // SAFETY: the caller vouches for `msg` and its iovecs.
    unsafe {
        let iov = (*msg).msg_iov;
        for i in 0..(*msg).msg_iovlen {
            let v = &*iov.add(i);
            if !v.iov_base.is_null() {
                out.extend_from_slice(std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len));
            }
        }
    }
    out
}
