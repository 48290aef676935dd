//! `struct sockaddr` to and from `SocketAddr`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use libc::{c_int, sockaddr, socklen_t};

/// Reads an AF_INET/AF_INET6 address; `None` for other families or a
/// short buffer.
///
/// # Safety
/// `addr` must be null or valid for `len` bytes.
pub(crate) unsafe fn read(addr: *const sockaddr, len: socklen_t) -> Option<SocketAddr> {
    if addr.is_null() || (len as usize) < std::mem::size_of::<libc::sa_family_t>() {
        return None;
    }
    // SAFETY: at least the family field is readable.
    let family = c_int::from(unsafe { (*addr).sa_family });
    match family {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the buffer holds a whole sockaddr_in (it may be unaligned).
            let sin: libc::sockaddr_in = unsafe { std::ptr::read_unaligned(addr.cast()) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the buffer holds a whole sockaddr_in6.
            let sin6: libc::sockaddr_in6 = unsafe { std::ptr::read_unaligned(addr.cast()) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// `a` as the program's family expects it: IPv4 addresses become
/// `::ffff:a.b.c.d` on AF_INET6 sockets.
pub(crate) fn for_family(a: SocketAddr, family: c_int) -> SocketAddr {
    match (a, family) {
        (SocketAddr::V4(v4), libc::AF_INET6) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        (SocketAddr::V6(v6), libc::AF_INET) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        _ => a,
    }
}

/// Writes `a` into the caller's buffer, truncating like the kernel and
/// storing the full length in `*len`.
///
/// # Safety
/// `out` must be null or valid for `*len` bytes; `len` null or valid.
pub(crate) unsafe fn write(a: SocketAddr, family: c_int, out: *mut sockaddr, len: *mut socklen_t) {
    if out.is_null() || len.is_null() {
        return;
    }
    let a = for_family(a, family);
    // SAFETY: sockaddr_storage is plain data; zeroes are valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let full = match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
                sin_zero: [0; 8],
            };
            // SAFETY: storage is large enough for any sockaddr.
            unsafe { std::ptr::write_unaligned((&raw mut storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write_unaligned((&raw mut storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    // SAFETY: `len` is valid; `out` has room for `*len` bytes.
    unsafe {
        let room = (*len as usize).min(full);
        std::ptr::copy_nonoverlapping((&raw const storage).cast::<u8>(), out.cast::<u8>(), room);
        *len = full as socklen_t;
    }
}

/// The unspecified address of a family, port 0.
pub(crate) fn unspecified(family: c_int) -> SocketAddr {
    if family == libc::AF_INET6 {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
    }
}
