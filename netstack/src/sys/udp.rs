//! Batched UDP I/O for the UdpNic: `recvmmsg(2)` / `sendmmsg(2)`, with UDP
//! generic segmentation (GSO, `UDP_SEGMENT`) and receive offload (GRO,
//! `UDP_GRO`) where the kernel offers them.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// `UDP_SEGMENT` from linux/udp.h (Linux 4.18).
const UDP_SEGMENT: libc::c_int = 103;
/// `UDP_GRO` from linux/udp.h (Linux 5.0).
const UDP_GRO: libc::c_int = 104;

/// Room for one control message carrying an int, aligned for `cmsghdr`.
type CmsgBuf = [u64; 4];

/// One datagram to send: `count` consecutive entries of the packet list,
/// starting at `start`, sent to `dest`. With `segment > 0` the kernel cuts
/// the concatenation into datagrams of `segment` bytes (GSO); every packet
/// but the last must then be exactly that long.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutGroup {
    pub(crate) dest: SocketAddr,
    pub(crate) start: usize,
    pub(crate) count: usize,
    pub(crate) segment: u16,
}

/// What the kernel said about one received datagram.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct InMeta {
    /// Bytes written into the buffer.
    pub(crate) len: usize,
    /// The sender.
    pub(crate) src: Option<SocketAddr>,
    /// With GRO, the size of each coalesced datagram (0: one datagram).
    pub(crate) segment: usize,
    /// The datagram was larger than the buffer and was cut.
    pub(crate) truncated: bool,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// Writes `addr` into `storage`; returns the length to pass to the kernel.
fn to_sockaddr(addr: &SocketAddr, storage: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for
            // sockaddr_in; we write one whole value into it.
            unsafe { std::ptr::write(storage as *mut _ as *mut libc::sockaddr_in, sin) };
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write(storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Reads the address the kernel wrote into `storage`.
fn from_sockaddr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET if len as usize >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and the
            // kernel wrote at least that many bytes.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 if len as usize >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
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

fn set_int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: passes a pointer to a live local int and its exact size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn get_int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: passes a live local int and its size; the kernel writes at most
    // `len` bytes and updates `len`.
    cvt(unsafe { libc::getsockopt(fd, level, name, &mut value as *mut libc::c_int as *mut libc::c_void, &mut len) })?;
    Ok(value)
}

/// True if the kernel can segment UDP sends for this socket (GSO).
pub(crate) fn gso_supported(fd: RawFd) -> bool {
    get_int_opt(fd, libc::SOL_UDP, UDP_SEGMENT).is_ok()
}

/// Asks the kernel to coalesce received datagrams (GRO); false if it can't.
pub(crate) fn enable_gro(fd: RawFd) -> bool {
    set_int_opt(fd, libc::SOL_UDP, UDP_GRO, 1).is_ok()
}

/// Sets the kernel socket buffers, beyond `net.core.[rw]mem_max` when the
/// process may (CAP_NET_ADMIN), else as far as the limit allows.
pub(crate) fn set_buffers(fd: RawFd, bytes: usize) {
    let bytes = bytes.min(i32::MAX as usize) as libc::c_int;
    for (force, plain) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
        if set_int_opt(fd, libc::SOL_SOCKET, force, bytes).is_err() {
            let _ = set_int_opt(fd, libc::SOL_SOCKET, plain, bytes);
        }
    }
}

/// Sends `groups` (datagrams built from `packets`) with one `sendmmsg`.
/// Returns how many groups the kernel took; an error only if it took none.
pub(crate) fn send_batch(fd: RawFd, packets: &[&[u8]], groups: &[OutGroup]) -> io::Result<usize> {
    if groups.is_empty() {
        return Ok(0);
    }
    let iovecs: Vec<libc::iovec> =
        packets.iter().map(|p| libc::iovec { iov_base: p.as_ptr() as *mut libc::c_void, iov_len: p.len() }).collect();
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut names: Vec<libc::sockaddr_storage> = vec![unsafe { mem::zeroed() }; groups.len()];
    let mut cmsgs: Vec<CmsgBuf> = vec![[0; 4]; groups.len()];
    // SAFETY: mmsghdr is plain old data; all-zero is a valid (empty) value.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { mem::zeroed() }; groups.len()];
    for (i, g) in groups.iter().enumerate() {
        assert!(g.start + g.count <= iovecs.len() && g.count > 0, "send group outside the packet list");
        let namelen = to_sockaddr(&g.dest, &mut names[i]);
        let hdr = &mut msgs[i].msg_hdr;
        hdr.msg_name = &mut names[i] as *mut _ as *mut libc::c_void;
        hdr.msg_namelen = namelen;
        hdr.msg_iov = iovecs[g.start..].as_ptr() as *mut libc::iovec;
        hdr.msg_iovlen = g.count as _;
        if g.segment > 0 && g.count > 1 {
            let space = cmsg_space(mem::size_of::<u16>());
            hdr.msg_control = cmsgs[i].as_mut_ptr() as *mut libc::c_void;
            hdr.msg_controllen = space as _;
            // SAFETY: msg_control points at a zeroed, aligned buffer of
            // `space` bytes (checked by cmsg_space), big enough for one header
            // and a u16, so CMSG_FIRSTHDR is non-null and CMSG_DATA in bounds.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(hdr);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, g.segment);
            }
        }
    }
    loop {
        // SAFETY: every pointer in `msgs` refers to `iovecs`, `names`, `cmsgs`
        // or the caller's packets, all alive and unmoved for this call; the
        // kernel only reads them (and writes msg_len).
        let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), msgs.len() as libc::c_uint, libc::MSG_DONTWAIT) };
        match cvt(n) {
            Ok(n) => return Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Receives up to `bufs.len()` datagrams with one `recvmmsg`, without
/// blocking. Each buffer is filled from its start; `meta[i]` describes
/// `bufs[i]`. Returns how many arrived (`WouldBlock` if none waited).
pub(crate) fn recv_batch(fd: RawFd, bufs: &mut [Vec<u8>], meta: &mut [InMeta]) -> io::Result<usize> {
    let n = bufs.len().min(meta.len());
    if n == 0 {
        return Ok(0);
    }
    let mut iovecs: Vec<libc::iovec> = bufs[..n]
        .iter_mut()
        .map(|b| libc::iovec { iov_base: b.as_mut_ptr() as *mut libc::c_void, iov_len: b.len() })
        .collect();
    // SAFETY: plain old data; all-zero is valid.
    let mut names: Vec<libc::sockaddr_storage> = vec![unsafe { mem::zeroed() }; n];
    let mut cmsgs: Vec<CmsgBuf> = vec![[0; 4]; n];
    // SAFETY: plain old data; all-zero is valid.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { mem::zeroed() }; n];
    for i in 0..n {
        let hdr = &mut msgs[i].msg_hdr;
        hdr.msg_name = &mut names[i] as *mut _ as *mut libc::c_void;
        hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        hdr.msg_iov = &mut iovecs[i];
        hdr.msg_iovlen = 1;
        hdr.msg_control = cmsgs[i].as_mut_ptr() as *mut libc::c_void;
        hdr.msg_controllen = mem::size_of::<CmsgBuf>() as _;
    }
    let got = loop {
        // SAFETY: every pointer in `msgs` refers to live buffers of the sizes
        // given (the caller's `bufs`, `names`, `cmsgs`), unmoved for the call.
        let r = unsafe {
            libc::recvmmsg(fd, msgs.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut())
        };
        match cvt(r) {
            Ok(r) => break r as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    for i in 0..got {
        let hdr = &msgs[i].msg_hdr;
        let mut segment = 0;
        // SAFETY: the kernel set msg_controllen to what it wrote into our
        // buffer; CMSG_FIRSTHDR/NXTHDR stay within it, and we read the int
        // payload only of a UDP_GRO message, which carries one.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(hdr);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                    segment = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int).max(0) as usize;
                }
                c = libc::CMSG_NXTHDR(hdr, c);
            }
        }
        meta[i] = InMeta {
            len: msgs[i].msg_len as usize,
            src: from_sockaddr(&names[i], hdr.msg_namelen),
            segment,
            truncated: hdr.msg_flags & libc::MSG_TRUNC != 0,
        };
    }
    Ok(got)
}

/// `CMSG_SPACE(payload)`, checked against our buffer size.
fn cmsg_space(payload: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    assert!(space <= mem::size_of::<CmsgBuf>());
    space
}
