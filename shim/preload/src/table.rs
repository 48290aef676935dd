//! Which of the program's descriptor numbers are INET sockets the shim
//! looks after, and what each one is.
//!
//! Every descriptor the program holds is a real kernel descriptor; the
//! table only remembers what the kernel cannot know (plebnet addresses,
//! options, the connection behind a Unix socket). A lock-free bitmap
//! answers "is this fd ours?" so calls on other descriptors pay one atomic
//! load. Entries remember the (device, inode) of the file they describe:
//! a number closed behind the shim's back (glibc's internal `close`,
//! `close_range`) and reused for something else is recognised and dropped.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::opts::Options;
use crate::tcp::{Conn, Listener};
use crate::udp::Dgram;

/// Descriptor numbers below this have a bit in the bitmap; higher ones
/// always look in the map.
const BITMAP_FDS: usize = 1 << 16;
static BITMAP: [AtomicU64; BITMAP_FDS / 64] = [const { AtomicU64::new(0) }; BITMAP_FDS / 64];

/// TCP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    /// SOCK_STREAM.
    Tcp,
    /// SOCK_DGRAM.
    Udp,
}

/// What a tracked descriptor is.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// A kernel INET socket from `socket()` whose fate (kernel or plebnet)
    /// is not decided yet; `bound` is a plebnet address given to `bind`.
    Fresh {
        /// TCP or UDP.
        proto: Proto,
        /// A plebnet-bound local address (TCP, before listen or connect).
        bound: Option<SocketAddr>,
    },
    /// A plebnet TCP connection (connecting or connected).
    Stream(Arc<Conn>),
    /// A plebnet TCP listener.
    Listener(Arc<Listener>),
    /// A plebnet UDP socket.
    Udp(Arc<Dgram>),
}

/// One tracked descriptor.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// What it is.
    pub kind: Kind,
    /// AF_INET or AF_INET6, as the program created it.
    pub family: libc::c_int,
    /// Options the program set, replayed or answered by the shim.
    pub opts: Arc<Mutex<Options>>,
    /// (device, inode) of the file this entry describes.
    pub ident: Option<(u64, u64)>,
}

static TABLE: Mutex<BTreeMap<RawFd, Entry>> = Mutex::new(BTreeMap::new());

fn lock() -> MutexGuard<'static, BTreeMap<RawFd, Entry>> {
    TABLE.lock().unwrap_or_else(|e| e.into_inner())
}

fn set_bit(fd: RawFd, on: bool) {
    if let Ok(i) = usize::try_from(fd)
        && i < BITMAP_FDS
    {
        let bit = 1u64 << (i % 64);
        if on {
            BITMAP[i / 64].fetch_or(bit, Ordering::Relaxed);
        } else {
            BITMAP[i / 64].fetch_and(!bit, Ordering::Relaxed);
        }
    }
}

/// Cheap pre-check: false means the shim certainly does not track `fd`.
pub(crate) fn maybe_tracked(fd: RawFd) -> bool {
    match usize::try_from(fd) {
        Ok(i) if i < BITMAP_FDS => BITMAP[i / 64].load(Ordering::Relaxed) & (1u64 << (i % 64)) != 0,
        Ok(_) => true,
        Err(_) => false,
    }
}

/// The entry for `fd`, if `fd` still refers to the file it describes.
pub(crate) fn get(fd: RawFd) -> Option<Entry> {
    if !maybe_tracked(fd) {
        return None;
    }
    let mut t = lock();
    let e = t.get(&fd)?.clone();
    if e.ident.is_some() && crate::sys::identity(fd) != e.ident {
        let stale = t.remove(&fd);
        drop(t);
        set_bit(fd, false);
        if let Some(stale) = stale {
            release(stale);
        }
        return None;
    }
    Some(e)
}

/// Tracks `fd` as `entry` (recording its current identity).
pub(crate) fn insert(fd: RawFd, mut entry: Entry) {
    entry.ident = crate::sys::identity(fd);
    if let Kind::Listener(l) = &entry.kind {
        l.add_ref();
    }
    let old = lock().insert(fd, entry);
    set_bit(fd, true);
    if let Some(old) = old {
        release(old);
    }
}

/// Forgets `fd` (it was closed or handed to the kernel).
pub(crate) fn remove(fd: RawFd) {
    if !maybe_tracked(fd) {
        return;
    }
    let old = lock().remove(&fd);
    set_bit(fd, false);
    if let Some(old) = old {
        release(old);
    }
}

/// Copies `from`'s entry to `to` (dup).
pub(crate) fn duplicate(from: RawFd, to: RawFd) {
    match get(from) {
        Some(e) => insert(to, e),
        None => remove(to),
    }
}

/// A descriptor number stopped referring to an entry's file.
fn release(entry: Entry) {
    if let Kind::Listener(l) = &entry.kind {
        l.drop_ref();
    }
}

thread_local! {
    static FORK_GUARD: RefCell<Option<MutexGuard<'static, BTreeMap<RawFd, Entry>>>> = const { RefCell::new(None) };
}

/// Holds the table lock across fork, so the child never inherits it
/// locked by a thread that does not exist there.
pub(crate) fn before_fork() {
    let g = lock();
    FORK_GUARD.with(|f| *f.borrow_mut() = Some(g));
}

/// Releases the lock taken in [`before_fork`].
pub(crate) fn after_fork_in_parent() {
    FORK_GUARD.with(|f| f.borrow_mut().take());
}

/// Releases the lock taken in [`before_fork`] in the child.
pub(crate) fn after_fork_in_child() {
    FORK_GUARD.with(|f| f.borrow_mut().take());
}

/// At exit: shuts the sending side of every plebnet connection and UDP
/// socket the program still holds, so the pumps deliver what is queued.
pub(crate) fn shutdown_writes() {
    let fds: Vec<RawFd> =
        lock().iter().filter(|(_, e)| matches!(e.kind, Kind::Stream(_) | Kind::Udp(_))).map(|(fd, _)| *fd).collect();
    for fd in fds {
        crate::sys::shutdown(fd, libc::SHUT_WR);
    }
}
