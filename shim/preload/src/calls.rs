//! What each interposed call does on a descriptor the shim tracks. Every
//! function returns `None` to mean "the real libc call handles it", or the
//! result (`Err(errno)`).

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;

use libc::{c_int, c_void, msghdr, size_t, sockaddr, socklen_t};

use crate::addr;
use crate::opts;
use crate::runtime::{self, Route, debug, log_once};
use crate::sys::{self, real};
use crate::table::{self, Entry, Kind, Proto};
use crate::tcp;
use crate::udp::{self, Dgram};

/// Result of a call the shim took over: `None` = pass to libc.
pub(crate) type Handled<T> = Option<Result<T, c_int>>;

/// `socket`.
pub(crate) fn socket(domain: c_int, ty: c_int, proto: c_int) -> Handled<c_int> {
    if domain == libc::AF_PACKET {
        log_once("af_packet", "socket(AF_PACKET) refused: raw link-layer sockets bypass the overlay (EAFNOSUPPORT)");
        return Some(Err(libc::EAFNOSUPPORT));
    }
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return None;
    }
    let base = ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
    let icmp = proto == libc::IPPROTO_ICMP || proto == libc::IPPROTO_ICMPV6;
    let kind = match base {
        libc::SOCK_STREAM if proto == 0 || proto == libc::IPPROTO_TCP => Proto::Tcp,
        libc::SOCK_DGRAM if !icmp && (proto == 0 || proto == libc::IPPROTO_UDP) => Proto::Udp,
        _ => {
            if runtime::strict() {
                log_once(
                    &format!("socket:{base}:{proto}"),
                    &format!("strict: socket(type {base}, protocol {proto}) refused: not TCP or UDP (EPROTONOSUPPORT)"),
                );
                return Some(Err(libc::EPROTONOSUPPORT));
            }
            log_once(
                &format!("socket:{base}:{proto}"),
                &format!("socket(type {base}, protocol {proto}) left to the kernel"),
            );
            return None;
        }
    };
    runtime::ensure_started();
    // SAFETY: plain socket(2).
    let fd = unsafe { real::socket(domain, ty, proto) };
    if fd < 0 {
        return Some(Err(sys::errno()));
    }
    table::insert(
        fd,
        Entry { kind: Kind::Fresh { proto: kind, bound: None }, family: domain, opts: Default::default(), ident: None },
    );
    Some(Ok(fd))
}

/// `bind`.
///
/// # Safety
/// As bind(2).
pub(crate) unsafe fn bind(fd: RawFd, a: *const sockaddr, len: socklen_t) -> Handled<c_int> {
    let entry = table::get(fd)?;
    // SAFETY: the caller's buffer.
    let sa = unsafe { addr::read(a, len) }?;
    let Kind::Fresh { proto, bound: None } = entry.kind else { return Some(Err(libc::EINVAL)) };
    match runtime::route_bind(sa) {
        Route::Kernel => {
            table::remove(fd);
            None
        }
        Route::Refuse(e) => Some(Err(e)),
        Route::Plebnet(stack) => match proto {
            Proto::Tcp => {
                table::insert(fd, Entry { kind: Kind::Fresh { proto, bound: Some(sa) }, ..entry });
                Some(Ok(0))
            }
            Proto::Udp => Some(udp::convert(fd, &entry, &stack, sa).map(|_| 0)),
        },
    }
}

/// `listen`.
pub(crate) fn listen(fd: RawFd, backlog: c_int) -> Handled<c_int> {
    let entry = table::get(fd)?;
    match &entry.kind {
        Kind::Fresh { proto: Proto::Tcp, bound } => {
            let local = bound.unwrap_or_else(|| addr::unspecified(entry.family));
            match runtime::route_bind(local) {
                Route::Kernel => {
                    table::remove(fd);
                    None
                }
                Route::Refuse(e) => Some(Err(e)),
                Route::Plebnet(stack) => Some(tcp::listen(fd, &entry, &stack, local, backlog).map(|_| 0)),
            }
        }
        Kind::Listener(_) => Some(Ok(0)),
        Kind::Fresh { proto: Proto::Udp, .. } | Kind::Udp(_) => Some(Err(libc::EOPNOTSUPP)),
        Kind::Stream(_) => Some(Err(libc::EINVAL)),
    }
}

/// A plebnet UDP socket for `fd`, bound to the wildcard of `dst`'s family.
fn udp_for(fd: RawFd, entry: &Entry, stack: &plebnet_netstack::Stack, dst: SocketAddr) -> Result<Arc<Dgram>, c_int> {
    let family = if runtime::unmap(dst.ip()).is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    udp::convert(fd, entry, stack, addr::unspecified(family))
}

/// `connect`.
///
/// # Safety
/// As connect(2).
pub(crate) unsafe fn connect(fd: RawFd, a: *const sockaddr, len: socklen_t) -> Handled<c_int> {
    let entry = table::get(fd)?;
    // SAFETY: the caller's buffer.
    let sa = unsafe { addr::read(a, len) };
    match &entry.kind {
        Kind::Fresh { proto, .. } => {
            let sa = sa?;
            match runtime::route_to(sa) {
                Route::Kernel => {
                    table::remove(fd);
                    None
                }
                Route::Refuse(e) => Some(Err(e)),
                Route::Plebnet(stack) => {
                    let dst = SocketAddr::new(runtime::unmap(sa.ip()), sa.port());
                    Some(match proto {
                        Proto::Tcp => tcp::connect(fd, &entry, &stack, dst).map(|_| 0),
                        Proto::Udp => udp_for(fd, &entry, &stack, dst).and_then(|d| d.connect(dst)).map(|_| 0),
                    })
                }
            }
        }
        Kind::Stream(c) => Some(c.connect_again(!sys::is_nonblocking(fd)).map(|_| 0)),
        Kind::Udp(d) => match sa {
            Some(sa) => Some(d.connect(sa).map(|_| 0)),
            // AF_UNSPEC dissolves the association; plebnet keeps filtering, so say so once.
            None => {
                log_once("udp-unspec", "connect(AF_UNSPEC) on a plebnet UDP socket is ignored");
                Some(Ok(0))
            }
        },
        Kind::Listener(_) => Some(Err(libc::EINVAL)),
    }
}

/// `accept4`.
///
/// # Safety
/// As accept4(2).
pub(crate) unsafe fn accept4(fd: RawFd, a: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> Handled<c_int> {
    let entry = table::get(fd)?;
    let Kind::Listener(l) = &entry.kind else { return None };
    // SAFETY: the caller's buffers.
    Some(unsafe { tcp::accept(fd, &entry, l, a, len, flags) })
}

/// `getsockname`.
///
/// # Safety
/// As getsockname(2).
pub(crate) unsafe fn getsockname(fd: RawFd, a: *mut sockaddr, len: *mut socklen_t) -> Handled<c_int> {
    let entry = table::get(fd)?;
    let local = match &entry.kind {
        Kind::Fresh { bound, .. } => (*bound)?,
        Kind::Stream(c) => c.local().unwrap_or_else(|| addr::unspecified(entry.family)),
        Kind::Listener(l) => l.local,
        Kind::Udp(d) => d.local().unwrap_or_else(|| addr::unspecified(entry.family)),
    };
    // SAFETY: the caller's buffers.
    unsafe { addr::write(local, entry.family, a, len) };
    Some(Ok(0))
}

/// `getpeername`.
///
/// # Safety
/// As getpeername(2).
pub(crate) unsafe fn getpeername(fd: RawFd, a: *mut sockaddr, len: *mut socklen_t) -> Handled<c_int> {
    let entry = table::get(fd)?;
    let peer = match &entry.kind {
        Kind::Fresh { .. } => return None,
        Kind::Stream(c) => c.peer(),
        Kind::Listener(_) => Err(libc::ENOTCONN),
        Kind::Udp(d) => d.peer().ok_or(libc::ENOTCONN),
    };
    Some(peer.map(|p| {
        // SAFETY: the caller's buffers.
        unsafe { addr::write(p, entry.family, a, len) };
        0
    }))
}

/// `setsockopt`.
///
/// # Safety
/// As setsockopt(2).
pub(crate) unsafe fn setsockopt(
    fd: RawFd,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> Handled<c_int> {
    let entry = table::get(fd)?;
    if let Kind::Fresh { .. } = entry.kind {
        // Still a kernel socket: the kernel answers; the shim remembers for later.
        // SAFETY: the caller's buffer.
        let r = unsafe { real::setsockopt(fd, level, name, val, len) };
        if r < 0 {
            return Some(Err(sys::errno()));
        }
        if !val.is_null() {
            // SAFETY: the caller's buffer of `len` bytes.
            let bytes = unsafe { std::slice::from_raw_parts(val.cast::<u8>(), len as usize) };
            entry.opts.lock().unwrap_or_else(|e| e.into_inner()).record(level, name, bytes);
        }
        return Some(Ok(0));
    }
    // SAFETY: the caller's buffer.
    Some(unsafe { opts::set(fd, &entry, level, name, val, len) }.map(|_| 0))
}

/// `getsockopt`.
///
/// # Safety
/// As getsockopt(2).
pub(crate) unsafe fn getsockopt(
    fd: RawFd,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> Handled<c_int> {
    let entry = table::get(fd)?;
    if let Kind::Fresh { .. } = entry.kind {
        return None;
    }
    // SAFETY: the caller's buffers.
    Some(unsafe { opts::get(fd, &entry, level, name, val, len) }.map(|_| 0))
}

/// Routes the first datagram of an undecided UDP socket.
fn udp_first_send(fd: RawFd, entry: &Entry, sa: SocketAddr) -> Handled<Arc<Dgram>> {
    match runtime::route_to(sa) {
        Route::Kernel => {
            table::remove(fd);
            None
        }
        Route::Refuse(e) => Some(Err(e)),
        Route::Plebnet(stack) => Some(udp_for(fd, entry, &stack, sa)),
    }
}

/// `sendto`.
///
/// # Safety
/// As sendto(2).
pub(crate) unsafe fn sendto(
    fd: RawFd,
    buf: *const c_void,
    n: size_t,
    a: *const sockaddr,
    alen: socklen_t,
) -> Handled<isize> {
    let entry = table::get(fd)?;
    // SAFETY: the caller's buffer.
    let sa = unsafe { addr::read(a, alen) }?;
    let d = match &entry.kind {
        Kind::Fresh { proto: Proto::Udp, .. } => match udp_first_send(fd, &entry, sa)? {
            Ok(d) => d,
            Err(e) => return Some(Err(e)),
        },
        Kind::Udp(d) => d.clone(),
        _ => return None,
    };
    let data: &[u8] = if buf.is_null() || n == 0 {
        &[]
    } else {
        // SAFETY: the caller's buffer of `n` bytes.
        unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), n) }
    };
    Some(d.send_to(data, sa).map(|n| n as isize))
}

/// `sendmsg`.
///
/// # Safety
/// As sendmsg(2).
pub(crate) unsafe fn sendmsg(fd: RawFd, msg: *const msghdr) -> Handled<isize> {
    if msg.is_null() {
        return None;
    }
    let entry = table::get(fd)?;
    // SAFETY: the caller's msghdr.
    let sa = unsafe { addr::read((*msg).msg_name.cast(), (*msg).msg_namelen) }?;
    let d = match &entry.kind {
        Kind::Fresh { proto: Proto::Udp, .. } => match udp_first_send(fd, &entry, sa)? {
            Ok(d) => d,
            Err(e) => return Some(Err(e)),
        },
        Kind::Udp(d) => d.clone(),
        _ => return None,
    };
    // SAFETY: the caller's msghdr and iovecs.
    let data = unsafe { udp::gather(msg) };
    Some(d.send_to(&data, sa).map(|n| n as isize))
}

/// `recvfrom`.
///
/// # Safety
/// As recvfrom(2).
pub(crate) unsafe fn recvfrom(
    fd: RawFd,
    buf: *mut c_void,
    n: size_t,
    flags: c_int,
    a: *mut sockaddr,
    alen: *mut socklen_t,
) -> Handled<isize> {
    if a.is_null() {
        return None;
    }
    let entry = table::get(fd)?;
    match &entry.kind {
        // SAFETY: the caller's buffers.
        Kind::Udp(d) => Some(unsafe { udp::recvfrom(fd, &entry, d, (buf, n), flags, a, alen) }),
        Kind::Stream(_) => {
            // TCP leaves the address empty; the Unix socket would name itself.
            // SAFETY: the caller's buffer.
            let r = unsafe { real::recvfrom(fd, buf, n, flags, std::ptr::null_mut(), std::ptr::null_mut()) };
            if r < 0 {
                return Some(Err(sys::errno()));
            }
            if !alen.is_null() {
                // SAFETY: the caller's length field.
                unsafe { *alen = 0 };
            }
            Some(Ok(r))
        }
        _ => None,
    }
}

/// `recvmsg`.
///
/// # Safety
/// As recvmsg(2).
pub(crate) unsafe fn recvmsg(fd: RawFd, msg: *mut msghdr, flags: c_int) -> Handled<isize> {
    if msg.is_null() {
        return None;
    }
    let entry = table::get(fd)?;
    match &entry.kind {
        // SAFETY: the caller's msghdr.
        Kind::Udp(d) => Some(unsafe { udp::recvmsg(fd, &entry, d, msg, flags) }),
        Kind::Stream(_) => {
            // SAFETY: the caller's msghdr; TCP leaves the name empty.
            unsafe {
                let name = (*msg).msg_name;
                (*msg).msg_name = std::ptr::null_mut();
                (*msg).msg_namelen = 0;
                let r = real::recvmsg(fd, msg, flags);
                let e = sys::errno();
                (*msg).msg_name = name;
                Some(if r < 0 { Err(e) } else { Ok(r) })
            }
        }
        _ => None,
    }
}

/// Bookkeeping after a successful dup of `from` onto `to`.
pub(crate) fn after_dup(from: RawFd, to: RawFd) {
    if table::maybe_tracked(from) || table::maybe_tracked(to) {
        debug(|| format!("dup {from} -> {to}"));
        table::duplicate(from, to);
    }
}
