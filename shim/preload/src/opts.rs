//! Socket options on plebnet descriptors: each one the shim knows is
//! applied (TCP_NODELAY to the plebnet connection, timeouts and buffer
//! sizes to the Unix socket the program holds), computed (SO_ERROR,
//! SO_TYPE, SO_DOMAIN, TCP_INFO...) or recorded and read back. Anything
//! else fails with ENOPROTOOPT and one log line.

use std::collections::BTreeMap;
use std::os::fd::RawFd;

use libc::{c_int, c_void, socklen_t};

use crate::runtime::{self, log_once};
use crate::sys::real;
use crate::table::{Entry, Kind, Proto};

/// Options a program set on a socket.
#[derive(Debug, Default)]
pub(crate) struct Options {
    values: BTreeMap<(c_int, c_int), Vec<u8>>,
}

impl Options {
    /// Remembers a value.
    pub(crate) fn record(&mut self, level: c_int, name: c_int, value: &[u8]) {
        self.values.insert((level, name), value.to_vec());
    }

    /// A remembered value.
    pub(crate) fn get(&self, level: c_int, name: c_int) -> Option<&[u8]> {
        self.values.get(&(level, name)).map(|v| v.as_slice())
    }

    /// A remembered value as an int (0 when unset).
    pub(crate) fn int(&self, level: c_int, name: c_int) -> c_int {
        self.get(level, name).and_then(|v| v.get(..4)).map_or(0, |b| c_int::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Options that live on the Unix socket the program holds.
fn on_unix_socket(level: c_int, name: c_int) -> bool {
    level == libc::SOL_SOCKET
        && matches!(name, libc::SO_RCVTIMEO | libc::SO_SNDTIMEO | libc::SO_RCVBUF | libc::SO_SNDBUF | libc::SO_RCVLOWAT)
}

/// Options accepted and recorded (their effect is the kernel's business,
/// or has no meaning on plebnet).
fn recorded(level: c_int, name: c_int) -> bool {
    match level {
        libc::SOL_SOCKET => matches!(
            name,
            libc::SO_REUSEADDR
                | libc::SO_REUSEPORT
                | libc::SO_KEEPALIVE
                | libc::SO_LINGER
                | libc::SO_BROADCAST
                | libc::SO_OOBINLINE
                | libc::SO_PRIORITY
                | libc::SO_SNDLOWAT
                | libc::SO_RCVBUFFORCE
                | libc::SO_SNDBUFFORCE
                | libc::SO_TIMESTAMP
                | libc::SO_MARK
                | libc::SO_ZEROCOPY
                | libc::SO_BUSY_POLL
                | libc::SO_MAX_PACING_RATE
                | libc::SO_INCOMING_CPU
        ),
        libc::IPPROTO_TCP => matches!(
            name,
            libc::TCP_NODELAY
                | libc::TCP_MAXSEG
                | libc::TCP_CORK
                | libc::TCP_KEEPIDLE
                | libc::TCP_KEEPINTVL
                | libc::TCP_KEEPCNT
                | libc::TCP_SYNCNT
                | libc::TCP_LINGER2
                | libc::TCP_DEFER_ACCEPT
                | libc::TCP_WINDOW_CLAMP
                | libc::TCP_QUICKACK
                | libc::TCP_CONGESTION
                | libc::TCP_USER_TIMEOUT
                | libc::TCP_FASTOPEN
                | libc::TCP_FASTOPEN_CONNECT
                | libc::TCP_NOTSENT_LOWAT
                | libc::TCP_INFO
        ),
        libc::IPPROTO_IP => matches!(
            name,
            libc::IP_TOS
                | libc::IP_TTL
                | libc::IP_MTU_DISCOVER
                | libc::IP_RECVERR
                | libc::IP_PKTINFO
                | libc::IP_FREEBIND
                | libc::IP_BIND_ADDRESS_NO_PORT
                | libc::IP_RECVTOS
                | libc::IP_MULTICAST_LOOP
                | libc::IP_MULTICAST_TTL
        ),
        libc::IPPROTO_IPV6 => matches!(
            name,
            libc::IPV6_V6ONLY
                | libc::IPV6_TCLASS
                | libc::IPV6_RECVERR
                | libc::IPV6_UNICAST_HOPS
                | libc::IPV6_MTU_DISCOVER
                | libc::IPV6_RECVPKTINFO
                | libc::IPV6_RECVTCLASS
                | libc::IPV6_MULTICAST_LOOP
        ),
        _ => false,
    }
}

fn unsupported(level: c_int, name: c_int, what: &str) -> c_int {
    log_once(
        &format!("opt:{level}:{name}"),
        &format!("{what}(level {level}, option {name}) is not supported on plebnet sockets: ENOPROTOOPT"),
    );
    libc::ENOPROTOOPT
}

/// `setsockopt` on a plebnet descriptor.
///
/// # Safety
/// `val` must be valid for `len` bytes (or null with `len` 0).
pub(crate) unsafe fn set(
    fd: RawFd,
    entry: &Entry,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> Result<(), c_int> {
    let bytes: &[u8] = if val.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: the caller guarantees `val` is valid for `len` bytes.
        unsafe { std::slice::from_raw_parts(val.cast::<u8>(), len as usize) }
    };
    if on_unix_socket(level, name) {
        // SAFETY: forwarding the caller's valid buffer.
        if unsafe { real::setsockopt(fd, level, name, val, len) } < 0 {
            return Err(crate::sys::errno());
        }
    } else if !recorded(level, name) {
        return Err(unsupported(level, name, "setsockopt"));
    }
    if level == libc::IPPROTO_TCP && name == libc::TCP_NODELAY {
        if bytes.len() < 4 {
            return Err(libc::EINVAL);
        }
        if let Kind::Stream(c) = &entry.kind {
            c.set_nodelay(bytes[..4] != [0, 0, 0, 0]);
        }
    }
    entry.opts.lock().unwrap_or_else(|e| e.into_inner()).record(level, name, bytes);
    Ok(())
}

/// Copies `value` into the caller's buffer, truncating like the kernel.
///
/// # Safety
/// `val` must be valid for `*len` bytes and `len` for one `socklen_t`.
unsafe fn put(val: *mut c_void, len: *mut socklen_t, value: &[u8]) -> Result<(), c_int> {
    if len.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: `len` is valid (checked non-null; the caller vouches for it).
    let room = unsafe { *len } as usize;
    let n = room.min(value.len());
    if n > 0 {
        if val.is_null() {
            return Err(libc::EFAULT);
        }
        // SAFETY: `val` has room for `room >= n` bytes.
        unsafe { std::ptr::copy_nonoverlapping(value.as_ptr(), val.cast::<u8>(), n) };
    }
    // SAFETY: as above.
    unsafe { *len = n as socklen_t };
    Ok(())
}

/// `struct tcp_info` (Linux layout, 232 bytes) with what plebnet knows:
/// the state, the MSS both ways and the path MTU. Counters plebnet does not expose per connection (RTT, window,
/// retransmissions) stay zero, which programs such as iperf3 print as 0.
fn tcp_info(entry: &Entry) -> Vec<u8> {
    let mut info = vec![0u8; 232];
    info[0] = match &entry.kind {
        Kind::Stream(c) => c.linux_state(),
        Kind::Listener(_) => 10, // TCP_LISTEN
        _ => 7,                  // TCP_CLOSE
    };
    let overhead = if entry.family == libc::AF_INET6 { 60 } else { 40 };
    let mtu = runtime::mtu() as u32;
    let mss = mtu.saturating_sub(overhead).to_ne_bytes();
    info[16..20].copy_from_slice(&mss); // tcpi_snd_mss
    info[20..24].copy_from_slice(&mss); // tcpi_rcv_mss
    info[60..64].copy_from_slice(&mtu.to_ne_bytes()); // tcpi_pmtu
    info[84..88].copy_from_slice(&mss); // tcpi_advmss
    info
}

/// `getsockopt` on a plebnet descriptor.
///
/// # Safety
/// `val` must be valid for `*len` bytes and `len` for one `socklen_t`.
pub(crate) unsafe fn get(
    fd: RawFd,
    entry: &Entry,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> Result<(), c_int> {
    let int = |v: c_int| v.to_ne_bytes().to_vec();
    let proto = match &entry.kind {
        Kind::Fresh { proto, .. } => *proto,
        Kind::Udp(_) => Proto::Udp,
        _ => Proto::Tcp,
    };
    let value: Vec<u8> = match (level, name) {
        (libc::SOL_SOCKET, libc::SO_ERROR) => int(match &entry.kind {
            Kind::Stream(c) => c.take_error(),
            _ => 0,
        }),
        (libc::SOL_SOCKET, libc::SO_TYPE) => {
            int(if proto == Proto::Tcp { libc::SOCK_STREAM } else { libc::SOCK_DGRAM })
        }
        (libc::SOL_SOCKET, libc::SO_DOMAIN) => int(entry.family),
        (libc::SOL_SOCKET, libc::SO_PROTOCOL) => {
            int(if proto == Proto::Tcp { libc::IPPROTO_TCP } else { libc::IPPROTO_UDP })
        }
        (libc::SOL_SOCKET, libc::SO_ACCEPTCONN) => int(matches!(entry.kind, Kind::Listener(_)) as c_int),
        (l, n) if on_unix_socket(l, n) => {
            // SAFETY: forwarding the caller's valid buffers.
            if unsafe { real::getsockopt(fd, l, n, val, len) } < 0 {
                return Err(crate::sys::errno());
            }
            return Ok(());
        }
        // TCP options on a UDP socket: as Linux.
        (libc::IPPROTO_TCP, _) if proto == Proto::Udp => return Err(libc::ENOPROTOOPT),
        (libc::IPPROTO_TCP, libc::TCP_INFO) => tcp_info(entry),
        (libc::IPPROTO_TCP, libc::TCP_MAXSEG) => {
            let opts = entry.opts.lock().unwrap_or_else(|e| e.into_inner());
            match opts.get(level, name) {
                Some(v) => v.to_vec(),
                None => {
                    let overhead = if entry.family == libc::AF_INET6 { 60 } else { 40 };
                    int(runtime::mtu().saturating_sub(overhead) as c_int)
                }
            }
        }
        (libc::IPPROTO_TCP, libc::TCP_CONGESTION) => {
            let opts = entry.opts.lock().unwrap_or_else(|e| e.into_inner());
            // A NUL-padded name of TCP_CA_NAME_MAX (16) bytes, as Linux gives.
            let mut name = opts.get(level, name).map_or_else(|| b"reno".to_vec(), |v| v.to_vec());
            name.truncate(name.iter().position(|&b| b == 0).unwrap_or(name.len()).min(15));
            name.resize(16, 0);
            name
        }
        (libc::IPPROTO_TCP, libc::TCP_NODELAY) => int(match &entry.kind {
            Kind::Stream(c) => c.nodelay() as c_int,
            _ => entry.opts.lock().unwrap_or_else(|e| e.into_inner()).int(level, name),
        }),
        (libc::SOL_SOCKET, libc::SO_LINGER) => {
            let opts = entry.opts.lock().unwrap_or_else(|e| e.into_inner());
            opts.get(level, name).map_or_else(|| vec![0u8; 8], |v| v.to_vec())
        }
        (l, n) if recorded(l, n) => int(entry.opts.lock().unwrap_or_else(|e| e.into_inner()).int(l, n)),
        (l, n) => return Err(unsupported(l, n, "getsockopt")),
    };
    // SAFETY: the caller's buffers, as documented.
    unsafe { put(val, len, &value) }
}

/// Re-applies the options that live on the Unix socket after the shim
/// put a new socket at `fd`.
pub(crate) fn replay(fd: RawFd, entry: &Entry) {
    let opts = entry.opts.lock().unwrap_or_else(|e| e.into_inner());
    for name in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        if let Some(v) = opts.get(libc::SOL_SOCKET, name) {
            // SAFETY: `v` is a valid buffer of its length.
            unsafe { real::setsockopt(fd, libc::SOL_SOCKET, name, v.as_ptr().cast(), v.len() as socklen_t) };
        }
    }
}
