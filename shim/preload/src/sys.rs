//! The libc functions the shim stands in front of, resolved with
//! `dlsym(RTLD_NEXT)`, and the few raw system calls the shim itself makes.
//!
//! Inside this library a plain `libc::connect` would link to the shim's own
//! exported `connect`, so every call that must reach the real libc goes
//! through [`real`]. Functions the shim does not export (`socketpair`,
//! `read`, `poll`...) are called through `libc` directly.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{c_int, c_void};

/// Resolves `name` (NUL-terminated) once and caches it in `slot`.
fn resolve(slot: &AtomicUsize, name: &'static str) -> usize {
    let f = slot.load(Ordering::Acquire);
    if f != 0 {
        return f;
    }
    let cname = CStr::from_bytes_with_nul(name.as_bytes()).unwrap_or(c"?");
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name is always sound to call.
    let f = unsafe { libc::dlsym(libc::RTLD_NEXT, cname.as_ptr()) } as usize;
    if f == 0 {
        let msg = b"plebnet-preload: a libc function is missing (dlsym RTLD_NEXT failed); aborting\n";
        // SAFETY: writing a static buffer to stderr.
        unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
        std::process::abort();
    }
    slot.store(f, Ordering::Release);
    f
}

macro_rules! real_fns {
    ($($name:ident($($a:ident: $t:ty),*) -> $r:ty;)*) => {
        /// The real libc functions (the next definition after this library).
        pub(crate) mod real {
            #[allow(unused_imports)]
            use libc::{addrinfo, c_char, c_int, c_ulong, c_void, hostent, msghdr, size_t, sockaddr, socklen_t, ssize_t};
            $(
                #[doc = concat!("The real `", stringify!($name), "`.")]
                #[allow(clippy::missing_safety_doc, clippy::too_many_arguments)]
                pub(crate) unsafe fn $name($($a: $t),*) -> $r {
                    static SLOT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                    let f = super::resolve(&SLOT, concat!(stringify!($name), "\0"));
                    // SAFETY: `f` is libc's definition of this symbol, whose C prototype is the one spelled here.
                    let f: unsafe extern "C" fn($($t),*) -> $r = unsafe { std::mem::transmute(f) };
                    // SAFETY: the caller upholds the C function's contract.
                    unsafe { f($($a),*) }
                }
            )*
        }
    };
}

real_fns! {
    socket(domain: c_int, ty: c_int, proto: c_int) -> c_int;
    bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    listen(fd: c_int, backlog: c_int) -> c_int;
    accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int;
    connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    getsockopt(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int;
    setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int;
    close(fd: c_int) -> c_int;
    dup(fd: c_int) -> c_int;
    dup2(fd: c_int, to: c_int) -> c_int;
    dup3(fd: c_int, to: c_int, flags: c_int) -> c_int;
    fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int;
    fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int;
    sendto(fd: c_int, buf: *const c_void, len: size_t, flags: c_int, addr: *const sockaddr, alen: socklen_t) -> ssize_t;
    sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t;
    recvfrom(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int, addr: *mut sockaddr, alen: *mut socklen_t) -> ssize_t;
    recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t;
    getaddrinfo(node: *const c_char, service: *const c_char, hints: *const addrinfo, res: *mut *mut addrinfo) -> c_int;
    gethostbyname(name: *const c_char) -> *mut hostent;
    gethostbyname2(name: *const c_char, af: c_int) -> *mut hostent;
    gethostbyname_r(name: *const c_char, ret: *mut hostent, buf: *mut c_char, buflen: size_t, result: *mut *mut hostent, h_errnop: *mut c_int) -> c_int;
    gethostbyname2_r(name: *const c_char, af: c_int, ret: *mut hostent, buf: *mut c_char, buflen: size_t, result: *mut *mut hostent, h_errnop: *mut c_int) -> c_int;
    gethostbyaddr(addr: *const c_void, len: socklen_t, ty: c_int) -> *mut hostent;
    gethostbyaddr_r(addr: *const c_void, len: socklen_t, ty: c_int, ret: *mut hostent, buf: *mut c_char, buflen: size_t, result: *mut *mut hostent, h_errnop: *mut c_int) -> c_int;
    getnameinfo(sa: *const sockaddr, salen: socklen_t, host: *mut c_char, hostlen: socklen_t, serv: *mut c_char, servlen: socklen_t, flags: c_int) -> c_int;
}

unsafe extern "C" {
    /// glibc's thread-local `h_errno`.
    fn __h_errno_location() -> *mut c_int;
}

/// Sets the calling thread's `h_errno`.
pub(crate) fn set_h_errno(v: c_int) {
    // SAFETY: glibc returns a valid pointer to this thread's h_errno.
    unsafe { *__h_errno_location() = v };
}

/// The calling thread's errno.
pub(crate) fn errno() -> c_int {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// Sets the calling thread's errno.
pub(crate) fn set_errno(e: c_int) {
    // SAFETY: __errno_location always returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

/// `-1` with errno `e` turned into an `io::Error`, for `?`.
pub(crate) fn check(r: c_int) -> io::Result<c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// A connected pair of Unix sockets of type `ty`, close-on-exec.
pub(crate) fn socketpair(ty: c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    check(unsafe { libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) })?;
    // SAFETY: socketpair succeeded, so both descriptors are fresh and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A new Unix stream socket, close-on-exec.
pub(crate) fn unix_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call.
    let fd = check(unsafe { real::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: the descriptor is fresh and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A `sockaddr_un` for the abstract name `name` (without the leading NUL).
pub(crate) fn abstract_addr(name: &str) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = name.as_bytes();
    let n = bytes.len().min(sun.sun_path.len() - 1);
    for (d, s) in sun.sun_path[1..=n].iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + n;
    (sun, len as libc::socklen_t)
}

/// The abstract name in a `sockaddr_un` of length `len`, if it has one.
pub(crate) fn abstract_name(sun: &libc::sockaddr_un, len: libc::socklen_t) -> Option<String> {
    let path_len = (len as usize).checked_sub(std::mem::size_of::<libc::sa_family_t>())?;
    if path_len < 2 || sun.sun_path[0] != 0 {
        return None;
    }
    let bytes: Vec<u8> = sun.sun_path[1..path_len.min(sun.sun_path.len())].iter().map(|c| *c as u8).collect();
    String::from_utf8(bytes).ok()
}

/// Binds `fd` to the abstract Unix name `name`.
pub(crate) fn bind_abstract(fd: &OwnedFd, name: &str) -> io::Result<()> {
    let (sun, len) = abstract_addr(name);
    // SAFETY: `sun` is a valid sockaddr_un of `len` bytes.
    check(unsafe { real::bind(fd.as_raw_fd(), (&raw const sun).cast(), len) }).map(drop)
}

/// Connects `fd` to the abstract Unix name `name` (blocking).
pub(crate) fn connect_abstract(fd: &OwnedFd, name: &str) -> io::Result<()> {
    let (sun, len) = abstract_addr(name);
    loop {
        // SAFETY: `sun` is a valid sockaddr_un of `len` bytes.
        let r = unsafe { real::connect(fd.as_raw_fd(), (&raw const sun).cast(), len) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// (device, inode) of what `fd` refers to, to recognise a descriptor
/// number that was closed behind the shim's back and reused.
pub(crate) fn identity(fd: RawFd) -> Option<(u64, u64)> {
    // SAFETY: stat is plain old data; fstat fills it or fails.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer.
    let r = unsafe { libc::fstat(fd, &mut st) };
    (r == 0).then_some((st.st_dev, st.st_ino))
}

/// Puts `new` at descriptor number `fd` (closing what was there), keeping
/// `fd`'s O_NONBLOCK and close-on-exec flags.
pub(crate) fn install(fd: RawFd, new: OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl queries on a descriptor number; failure is reported.
    let fl = check(unsafe { real::fcntl(fd, libc::F_GETFL, 0) })?;
    // SAFETY: as above.
    let fdfl = check(unsafe { real::fcntl(fd, libc::F_GETFD, 0) })?;
    let nonblock = fl & libc::O_NONBLOCK;
    // SAFETY: setting status flags on our own descriptor.
    check(unsafe { real::fcntl(new.as_raw_fd(), libc::F_SETFL, nonblock as libc::c_ulong) })?;
    let flags = if fdfl & libc::FD_CLOEXEC != 0 { libc::O_CLOEXEC } else { 0 };
    // SAFETY: dup3 atomically replaces `fd`, which the program handed us, with our socket.
    check(unsafe { real::dup3(new.as_raw_fd(), fd, flags) })?;
    Ok(())
}

/// True if `fd`'s file has O_NONBLOCK.
pub(crate) fn is_nonblocking(fd: RawFd) -> bool {
    // SAFETY: fcntl query.
    let fl = unsafe { real::fcntl(fd, libc::F_GETFL, 0) };
    fl >= 0 && fl & libc::O_NONBLOCK != 0
}

/// Reads into `buf`, retrying on EINTR.
pub(crate) fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast::<c_void>(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Sends all of `buf` on a socket without raising SIGPIPE.
pub(crate) fn send_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for `buf.len()` bytes.
        let n = unsafe { libc::send(fd, buf.as_ptr().cast::<c_void>(), buf.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Sends `buf` as one message (a datagram over SOCK_SEQPACKET).
pub(crate) fn send_msg(fd: RawFd, buf: &[u8]) -> io::Result<()> {
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes.
        let n = unsafe { libc::send(fd, buf.as_ptr().cast::<c_void>(), buf.len(), libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// True when the other end of the socket pair is gone (POLLHUP/POLLERR).
pub(crate) fn hung_up(fd: RawFd) -> bool {
    let mut p = libc::pollfd { fd, events: 0, revents: 0 };
    // SAFETY: one valid pollfd, no wait.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r > 0 && p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

/// `shutdown(2)` ignoring errors (the peer may be gone already).
pub(crate) fn shutdown(fd: RawFd, how: c_int) {
    // SAFETY: shutdown on a descriptor we own.
    unsafe { libc::shutdown(fd, how) };
}

/// Writes one line to stderr with a single write(2), without allocating
/// beyond the line itself.
pub(crate) fn write_stderr(line: &str) {
    let bytes = line.as_bytes();
    // SAFETY: `bytes` is valid for its length.
    unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
}

/// True when the program runs with elevated privileges (setuid/setgid or
/// file capabilities): the shim must stay inert.
pub(crate) fn secure_execution() -> bool {
    // SAFETY: getauxval is always safe to call.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}
