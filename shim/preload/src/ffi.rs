//! The exported C functions. Each one is a thin door:
//!
//! 1. calls on descriptors the shim does not track cost one atomic load
//!    and go straight to libc;
//! 2. a thread-local flag sends the shim's own calls (its threads, the
//!    stack's NIC, std inside the shim) straight to libc;
//! 3. the work runs under `catch_unwind`, so a bug becomes `EIO` and one
//!    log line, never an unwinding panic across the C boundary;
//! 4. errors set errno and return -1, as libc does.

use std::cell::Cell;
use std::ffi::CStr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use libc::{addrinfo, c_char, c_int, c_ulong, c_void, hostent, msghdr, size_t, sockaddr, socklen_t, ssize_t};

use crate::calls::{self, Handled};
use crate::names::{self, Lookup};
use crate::runtime::{self, log_once};
use crate::sys::{self, real};
use crate::table;

thread_local! {
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as the shim's: its calls bypass the shim.
pub(crate) fn mark_internal_thread() {
    BUSY.with(|b| b.set(true));
}

/// Whether the shim acts in this process at all.
fn active() -> bool {
    static ACTIVE: OnceLock<bool> = OnceLock::new();
    *ACTIVE.get_or_init(|| {
        if sys::secure_execution() {
            return false; // setuid/setgid/capabilities: never interpose
        }
        let on = runtime::settings().is_some();
        if on {
            runtime::register_fork_handlers();
        }
        on
    })
}

/// Leaves the busy flag when dropped.
struct Busy;

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.with(|b| b.set(false));
    }
}

/// Enters the shim, unless the shim is off or already on this thread's stack.
fn enter() -> Option<Busy> {
    if BUSY.with(|b| b.get()) || !active() {
        return None;
    }
    BUSY.with(|b| b.set(true));
    Some(Busy)
}

/// Runs `work` inside the shim; `None` from it (or a shim that is off)
/// means "call libc".
fn run<T: Copy + From<i8>>(work: impl FnOnce() -> Handled<T>, pass: impl FnOnce() -> T) -> T {
    let Some(busy) = enter() else { return pass() };
    let outcome = catch_unwind(AssertUnwindSafe(work));
    drop(busy);
    match outcome {
        Ok(None) => pass(),
        Ok(Some(Ok(v))) => v,
        Ok(Some(Err(e))) => {
            sys::set_errno(e);
            T::from(-1)
        }
        Err(_) => {
            log_once("panic", "internal error in the shim (a panic was caught); the call failed with EIO");
            sys::set_errno(libc::EIO);
            T::from(-1)
        }
    }
}

/// Interposed `socket(2)`.
///
/// # Safety
/// As socket(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, proto: c_int) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    run(|| calls::socket(domain, ty, proto), || unsafe { real::socket(domain, ty, proto) })
}

/// Interposed `bind(2)`.
///
/// # Safety
/// As bind(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bind(fd: c_int, a: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    let pass = || unsafe { real::bind(fd, a, len) };
    if !table::maybe_tracked(fd) {
        return pass();
    }
    // SAFETY: the caller's arguments.
    run(|| unsafe { calls::bind(fd, a, len) }, pass)
}

/// Interposed `listen(2)`.
///
/// # Safety
/// As listen(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    let pass = || unsafe { real::listen(fd, backlog) };
    if !table::maybe_tracked(fd) {
        return pass();
    }
    run(|| calls::listen(fd, backlog), pass)
}

/// Interposed `connect(2)`.
///
/// # Safety
/// As connect(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect(fd: c_int, a: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    let pass = || unsafe { real::connect(fd, a, len) };
    if !table::maybe_tracked(fd) {
        return pass();
    }
    // SAFETY: the caller's arguments.
    run(|| unsafe { calls::connect(fd, a, len) }, pass)
}

/// Interposed `accept(2)`.
///
/// # Safety
/// As accept(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept(fd: c_int, a: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    let pass = || unsafe { real::accept(fd, a, len) };
    if !table::maybe_tracked(fd) {
        return pass();
    }
    // SAFETY: the caller's arguments.
    run(|| unsafe { calls::accept4(fd, a, len, 0) }, pass)
}

/// Interposed `accept4(2)`.
///
/// # Safety
/// As accept4(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept4(fd: c_int, a: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    let pass = || unsafe { real::accept4(fd, a, len, flags) };
    if !table::maybe_tracked(fd) {
        return pass();
    }
    // SAFETY: the caller's arguments.
    run(|| unsafe { calls::accept4(fd, a, len, flags) }, pass)
}

/// Interposed `getsockname(2)`.
///
/// # Safety
/// As getsockname(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockname(fd: c_int, a: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    let pass = || unsafe { real::getsockname(fd, a, len) };
    if !table::maybe_tracked(fd) {
        return pass();
    }
    // SAFETY: the caller's arguments.
    run(|| unsafe { calls::getsockname(fd, a, len) }, pass)
}

/// Interposed `getpeername(2)`.
///
/// # Safety
/// As getpeername(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getpeername(fd: c_int, a: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    let pass = || unsafe { real::getpeername(fd, a, len) };
    if !table::maybe_tracked(fd) {
        return pass();
    }
    // SAFETY: the caller's arguments.
    run(|| unsafe { calls::getpeername(fd, a, len) }, pass)
}

/// Interposed `setsockopt(2)`.
///
/// # Safety
/// As setsockopt(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn setsockopt(fd: c_int, level: c_int, name: c_int, v: *const c_void, len: socklen_t) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    let pass = || unsafe { real::setsockopt(fd, level, name, v, len) };
    if !table::maybe_tracked(fd) {
        return pass();
    }
    // SAFETY: the caller's arguments.
    run(|| unsafe { calls::setsockopt(fd, level, name, v, len) }, pass)
}

/// Interposed `getsockopt(2)`.
///
/// # Safety
/// As getsockopt(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    v: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    let pass = || unsafe { real::getsockopt(fd, level, name, v, len) };
    if !table::maybe_tracked(fd) {
        return pass();
    }
    // SAFETY: the caller's arguments.
    run(|| unsafe { calls::getsockopt(fd, level, name, v, len) }, pass)
}

/// Interposed `sendto(2)`.
///
/// # Safety
/// As sendto(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    n: size_t,
    flags: c_int,
    a: *const sockaddr,
    alen: socklen_t,
) -> ssize_t {
    // SAFETY: forwarding the caller's arguments.
    let pass = || unsafe { real::sendto(fd, buf, n, flags, a, alen) };
    if a.is_null() || !table::maybe_tracked(fd) {
        return pass();
    }
    // SAFETY: the caller's arguments.
    let r = run(|| unsafe { calls::sendto(fd, buf, n, a, alen) }, || -2);
    if r == -2 {
        // A TCP socket ignores the address, as Linux does for connected TCP.
        // SAFETY: forwarding the caller's buffer without the address.
        return if is_stream(fd) { unsafe { real::sendto(fd, buf, n, flags, std::ptr::null(), 0) } } else { pass() };
    }
    r
}

fn is_stream(fd: c_int) -> bool {
    matches!(table::get(fd).map(|e| e.kind), Some(table::Kind::Stream(_)))
}

/// Interposed `sendmsg(2)`.
///
/// # Safety
/// As sendmsg(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    // SAFETY: forwarding the caller's arguments.
    let pass = || unsafe { real::sendmsg(fd, msg, flags) };
    if !table::maybe_tracked(fd) {
        return pass();
    }
    // SAFETY: the caller's arguments.
    let r = run(|| unsafe { calls::sendmsg(fd, msg) }, || -2);
    if r == -2 {
        if is_stream(fd) && !msg.is_null() {
            // SAFETY: a copy of the caller's msghdr without the address.
            let mut copy = unsafe { *msg };
            copy.msg_name = std::ptr::null_mut();
            copy.msg_namelen = 0;
            // SAFETY: `copy` points at the caller's iovecs and control data.
            return unsafe { real::sendmsg(fd, &copy, flags) };
        }
        return pass();
    }
    r
}

/// Interposed `recvfrom(2)`.
///
/// # Safety
/// As recvfrom(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    flags: c_int,
    a: *mut sockaddr,
    alen: *mut socklen_t,
) -> ssize_t {
    // SAFETY: forwarding the caller's arguments.
    let pass = || unsafe { real::recvfrom(fd, buf, n, flags, a, alen) };
    if !table::maybe_tracked(fd) {
        return pass();
    }
    // SAFETY: the caller's arguments.
    run(|| unsafe { calls::recvfrom(fd, buf, n, flags, a, alen) }, pass)
}

/// Interposed `recvmsg(2)`.
///
/// # Safety
/// As recvmsg(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    // SAFETY: forwarding the caller's arguments.
    let pass = || unsafe { real::recvmsg(fd, msg, flags) };
    if !table::maybe_tracked(fd) {
        return pass();
    }
    // SAFETY: the caller's arguments.
    run(|| unsafe { calls::recvmsg(fd, msg, flags) }, pass)
}

/// Interposed `close(2)`: forgets the descriptor number, then closes it.
///
/// # Safety
/// As close(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if table::maybe_tracked(fd) {
        let _ = catch_unwind(|| table::remove(fd));
    }
    // SAFETY: forwarding the caller's argument.
    unsafe { real::close(fd) }
}

/// Interposed `dup(2)`.
///
/// # Safety
/// As dup(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    // SAFETY: forwarding the caller's argument.
    let r = unsafe { real::dup(fd) };
    if r >= 0 && table::maybe_tracked(fd) {
        let _ = catch_unwind(|| calls::after_dup(fd, r));
    }
    r
}

/// Interposed `dup2(2)`.
///
/// # Safety
/// As dup2(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup2(fd: c_int, to: c_int) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    let r = unsafe { real::dup2(fd, to) };
    if r >= 0 && fd != to {
        let _ = catch_unwind(|| calls::after_dup(fd, to));
    }
    r
}

/// Interposed `dup3(2)`.
///
/// # Safety
/// As dup3(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup3(fd: c_int, to: c_int, flags: c_int) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    let r = unsafe { real::dup3(fd, to, flags) };
    if r >= 0 {
        let _ = catch_unwind(|| calls::after_dup(fd, to));
    }
    r
}

fn after_fcntl(fd: c_int, cmd: c_int, r: c_int) {
    if r >= 0 && (cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC) && table::maybe_tracked(fd) {
        let _ = catch_unwind(|| calls::after_dup(fd, r));
    }
}

/// Interposed `fcntl(2)`: `F_DUPFD`/`F_DUPFD_CLOEXEC` copy the shim's
/// record. Declared with one integer argument: on the Linux C ABIs this
/// library targets, a variadic callee reads its third integer argument
/// from the same register as a fixed one.
///
/// # Safety
/// As fcntl(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    let r = unsafe { real::fcntl(fd, cmd, arg) };
    after_fcntl(fd, cmd, r);
    r
}

/// Interposed `fcntl64` (glibc's name for `fcntl` with 64-bit offsets).
///
/// # Safety
/// As fcntl(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    let r = unsafe { real::fcntl64(fd, cmd, arg) };
    after_fcntl(fd, cmd, r);
    r
}

/// Interposed `getaddrinfo(3)`: names in the hosts table resolve to their
/// overlay address; strict mode refuses other names.
///
/// # Safety
/// As getaddrinfo(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getaddrinfo(
    node: *const c_char,
    service: *const c_char,
    hints: *const addrinfo,
    res: *mut *mut addrinfo,
) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    let pass = || unsafe { real::getaddrinfo(node, service, hints, res) };
    if node.is_null() {
        return pass();
    }
    let Some(busy) = enter() else { return pass() };
    // SAFETY: a non-null node is a C string.
    let decision = catch_unwind(|| names::lookup(unsafe { CStr::from_ptr(node) }));
    drop(busy);
    match decision {
        Ok(Lookup::Numeric(ip)) => {
            // SAFETY: hints is null or valid; addrinfo is plain data.
            let mut h: addrinfo = if hints.is_null() { unsafe { std::mem::zeroed() } } else { unsafe { *hints } };
            h.ai_flags |= libc::AI_NUMERICHOST;
            // SAFETY: our numeric string and hints; the caller's service and result pointer.
            unsafe { real::getaddrinfo(ip.as_ptr(), service, &h, res) }
        }
        Ok(Lookup::Refuse) => libc::EAI_NONAME,
        Ok(Lookup::Pass) | Err(_) => pass(),
    }
}

/// Interposed `gethostbyname(3)`, with the same policy as `getaddrinfo`.
///
/// # Safety
/// As gethostbyname(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname(name: *const c_char) -> *mut hostent {
    // SAFETY: forwarding the caller's argument.
    let pass = || unsafe { real::gethostbyname(name) };
    if name.is_null() {
        return pass();
    }
    let Some(busy) = enter() else { return pass() };
    // SAFETY: a non-null name is a C string.
    let decision = catch_unwind(|| names::lookup(unsafe { CStr::from_ptr(name) }));
    drop(busy);
    match decision {
        // SAFETY: glibc turns a numeric string into a hostent without any lookup.
        Ok(Lookup::Numeric(ip)) => unsafe { real::gethostbyname(ip.as_ptr()) },
        Ok(Lookup::Refuse) => {
            sys::set_h_errno(HOST_NOT_FOUND);
            std::ptr::null_mut()
        }
        Ok(Lookup::Pass) | Err(_) => pass(),
    }
}

/// `HOST_NOT_FOUND` of `<netdb.h>`.
const HOST_NOT_FOUND: c_int = 1;

/// `names::lookup` for the `gethostbyname` family, outside the busy flag.
fn name_decision(name: *const c_char) -> Option<Lookup> {
    if name.is_null() {
        return None;
    }
    let busy = enter()?;
    // SAFETY: a non-null name is a C string.
    let decision = catch_unwind(|| names::lookup(unsafe { CStr::from_ptr(name) })).ok();
    drop(busy);
    decision
}

/// Interposed `gethostbyname2(3)`, with the policy of `getaddrinfo`.
///
/// # Safety
/// As gethostbyname2(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname2(name: *const c_char, af: c_int) -> *mut hostent {
    match name_decision(name) {
        // SAFETY: glibc turns a numeric string into a hostent without any lookup.
        Some(Lookup::Numeric(ip)) => unsafe { real::gethostbyname2(ip.as_ptr(), af) },
        Some(Lookup::Refuse) => {
            sys::set_h_errno(HOST_NOT_FOUND);
            std::ptr::null_mut()
        }
        // SAFETY: forwarding the caller's arguments.
        _ => unsafe { real::gethostbyname2(name, af) },
    }
}

/// Interposed `gethostbyname_r(3)`, with the policy of `getaddrinfo`.
///
/// # Safety
/// As gethostbyname_r(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname_r(
    name: *const c_char,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: size_t,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> c_int {
    match name_decision(name) {
        // SAFETY: the caller's buffers; a numeric string is not looked up.
        Some(Lookup::Numeric(ip)) => unsafe { real::gethostbyname_r(ip.as_ptr(), ret, buf, buflen, result, h_errnop) },
        // SAFETY: the caller's result pointers.
        Some(Lookup::Refuse) => unsafe { not_found(result, h_errnop) },
        // SAFETY: forwarding the caller's arguments.
        _ => unsafe { real::gethostbyname_r(name, ret, buf, buflen, result, h_errnop) },
    }
}

/// Interposed `gethostbyname2_r(3)`, with the policy of `getaddrinfo`.
///
/// # Safety
/// As gethostbyname2_r(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname2_r(
    name: *const c_char,
    af: c_int,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: size_t,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> c_int {
    match name_decision(name) {
        // SAFETY: the caller's buffers; a numeric string is not looked up.
        Some(Lookup::Numeric(ip)) => unsafe {
            real::gethostbyname2_r(ip.as_ptr(), af, ret, buf, buflen, result, h_errnop)
        },
        // SAFETY: the caller's result pointers.
        Some(Lookup::Refuse) => unsafe { not_found(result, h_errnop) },
        // SAFETY: forwarding the caller's arguments.
        _ => unsafe { real::gethostbyname2_r(name, af, ret, buf, buflen, result, h_errnop) },
    }
}

/// The "no such host" answer of the reentrant lookups.
///
/// # Safety
/// `result` and `h_errnop` are null or valid.
unsafe fn not_found(result: *mut *mut hostent, h_errnop: *mut c_int) -> c_int {
    // SAFETY: the caller's pointers, checked for null.
    unsafe {
        if !result.is_null() {
            *result = std::ptr::null_mut();
        }
        if !h_errnop.is_null() {
            *h_errnop = HOST_NOT_FOUND;
        }
    }
    libc::ENOENT
}

/// Whether a reverse lookup is refused (strict mode), outside the busy flag.
fn reverse_refused() -> bool {
    let Some(busy) = enter() else { return false };
    let refuse = catch_unwind(names::refuse_reverse).unwrap_or(false);
    drop(busy);
    refuse
}

/// Interposed `gethostbyaddr(3)`: strict mode finds no name (no DNS).
///
/// # Safety
/// As gethostbyaddr(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyaddr(addr: *const c_void, len: socklen_t, ty: c_int) -> *mut hostent {
    if reverse_refused() {
        sys::set_h_errno(HOST_NOT_FOUND);
        return std::ptr::null_mut();
    }
    // SAFETY: forwarding the caller's arguments.
    unsafe { real::gethostbyaddr(addr, len, ty) }
}

/// Interposed `gethostbyaddr_r(3)`: strict mode finds no name (no DNS).
///
/// # Safety
/// As gethostbyaddr_r(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyaddr_r(
    addr: *const c_void,
    len: socklen_t,
    ty: c_int,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: size_t,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> c_int {
    if reverse_refused() {
        // SAFETY: the caller's result pointers.
        return unsafe { not_found(result, h_errnop) };
    }
    // SAFETY: forwarding the caller's arguments.
    unsafe { real::gethostbyaddr_r(addr, len, ty, ret, buf, buflen, result, h_errnop) }
}

/// Interposed `getnameinfo(3)`: in strict mode the host part is always
/// numeric (`NI_NAMEREQD` fails with `EAI_NONAME`); service names come
/// from files and are left alone.
///
/// # Safety
/// As getnameinfo(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getnameinfo(
    sa: *const sockaddr,
    salen: socklen_t,
    host: *mut c_char,
    hostlen: socklen_t,
    serv: *mut c_char,
    servlen: socklen_t,
    flags: c_int,
) -> c_int {
    let mut flags = flags;
    if !host.is_null() && hostlen > 0 && flags & libc::NI_NUMERICHOST == 0 && reverse_refused() {
        if flags & libc::NI_NAMEREQD != 0 {
            return libc::EAI_NONAME;
        }
        flags |= libc::NI_NUMERICHOST;
    }
    // SAFETY: forwarding the caller's arguments.
    unsafe { real::getnameinfo(sa, salen, host, hostlen, serv, servlen, flags) }
}
