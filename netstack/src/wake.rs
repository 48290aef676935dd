//! Wake-ups between threads: the driver's doorbell and per-socket events.
//!
//! * [`DriverWaker`] rings a sleeping stack driver. Rings are coalesced: only
//!   the first ring after the driver last woke costs a system call, so an
//!   application writing in a tight loop does not pay a syscall per write.
//! * [`Event`] is what an application thread (or async task) blocked on a
//!   socket waits for. Each socket has one event per direction (receive,
//!   send), so a reader and a writer on clones of one stream never steal each
//!   other's wake-ups (seed 001).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Wake, Waker};
use std::time::Instant;

use crate::sys::EventFd;

/// The doorbell of one stack driver. Cheap to clone; any thread may ring it.
#[derive(Clone, Debug)]
pub struct DriverWaker {
    inner: Arc<DoorBell>,
}

#[derive(Debug)]
struct DoorBell {
    fd: EventFd,
    /// True from the first ring until the driver acknowledges it.
    pending: AtomicBool,
}

impl DriverWaker {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self { inner: Arc::new(DoorBell { fd: EventFd::new()?, pending: AtomicBool::new(false) }) })
    }

    /// Asks the driver to run one more iteration as soon as it can.
    pub fn wake(&self) {
        if !self.inner.pending.swap(true, Ordering::AcqRel) {
            self.inner.fd.signal();
        }
    }

    /// Called by the driver right after it wakes and before it does any work,
    /// so that a ring arriving during the work triggers another iteration.
    /// The descriptor is not read here: that costs a system call per
    /// iteration, and most iterations follow a packet, not a ring. The
    /// driver calls [`drain`](Self::drain) when `poll(2)` says the
    /// descriptor is readable (a signal left over from a ring already
    /// acknowledged then costs one extra, empty iteration).
    pub(crate) fn acknowledge(&self) {
        self.inner.pending.store(false, Ordering::Release);
    }

    /// Empties the descriptor after `poll(2)` found it readable.
    pub(crate) fn drain(&self) {
        self.inner.fd.drain();
    }

    /// True if someone rang since the last [`acknowledge`](Self::acknowledge).
    pub(crate) fn is_pending(&self) -> bool {
        self.inner.pending.load(Ordering::Acquire)
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.inner.fd.as_raw_fd()
    }
}

/// A level of readiness that threads and tasks can wait for.
///
/// Every [`notify`](Event::notify) bumps a sequence number; a waiter reads
/// the number *before* releasing the stack lock and then sleeps only while
/// the number is unchanged, so no notification between the two can be lost.
#[derive(Debug, Default)]
pub struct Event {
    state: Mutex<EventState>,
    cond: Condvar,
}

#[derive(Debug, Default)]
struct EventState {
    seq: u64,
    tasks: Vec<Waker>,
    /// Threads blocked in [`Event::wait`]. std's condvar makes a futex
    /// system call on every notify, waiters or not; with nobody counted
    /// here, a notify skips it.
    sleepers: usize,
}

impl Event {
    /// The current sequence number, to pass to [`wait`](Event::wait).
    pub fn seq(&self) -> u64 {
        self.lock().seq
    }

    /// Wakes every blocked thread and every registered task.
    pub fn notify(&self) {
        let (tasks, sleepers) = {
            let mut state = self.lock();
            state.seq = state.seq.wrapping_add(1);
            (std::mem::take(&mut state.tasks), state.sleepers)
        };
        // A thread counted here is asleep or about to sleep on the condvar
        // (it counted itself under the lock, and the condvar releases the
        // lock atomically), so this reaches it; one not counted yet will
        // see the new sequence number before it sleeps.
        if sleepers > 0 {
            self.cond.notify_all();
        }
        for task in tasks {
            task.wake();
        }
    }

    /// Blocks until the sequence number differs from `seen` or `deadline`
    /// passes. Returns false on timeout.
    pub fn wait(&self, seen: u64, deadline: Option<Instant>) -> bool {
        let mut state = self.lock();
        while state.seq == seen {
            let wait = match deadline {
                None => None,
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return false;
                    }
                    Some(deadline - now)
                }
            };
            state.sleepers += 1;
            state = match wait {
                None => self.cond.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(wait) => self.cond.wait_timeout(state, wait).unwrap_or_else(|e| e.into_inner()).0,
            };
            state.sleepers -= 1;
        }
        true
    }

    /// Registers an async task to be woken by the next notification, unless
    /// one already happened after `seen` (then returns false: poll again).
    pub fn register_task(&self, seen: u64, waker: &Waker) -> bool {
        let mut state = self.lock();
        if state.seq != seen {
            return false;
        }
        if !state.tasks.iter().any(|w| w.will_wake(waker)) {
            state.tasks.push(waker.clone());
        }
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EventState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Adapts an [`Event`] into a [`Waker`] that smoltcp can hold in its socket.
struct EventWaker(Arc<Event>);

impl Wake for EventWaker {
    fn wake(self: Arc<Self>) {
        self.0.notify();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.notify();
    }
}

/// The pair of events of one socket and the wakers smoltcp holds for them.
#[derive(Debug)]
pub(crate) struct SocketSignal {
    pub(crate) rx: Arc<Event>,
    pub(crate) tx: Arc<Event>,
    pub(crate) rx_waker: Waker,
    pub(crate) tx_waker: Waker,
}

impl SocketSignal {
    pub(crate) fn new() -> Arc<Self> {
        let rx = Arc::new(Event::default());
        let tx = Arc::new(Event::default());
        Arc::new(Self {
            rx_waker: Waker::from(Arc::new(EventWaker(rx.clone()))),
            tx_waker: Waker::from(Arc::new(EventWaker(tx.clone()))),
            rx,
            tx,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two threads hand a turn back and forth 100,000 times through two
    /// events, each waiting only while its sequence number is unchanged: a
    /// notification lost between a waiter's count and its sleep would stall
    /// a turn until the generous deadline and fail.
    #[test]
    fn ping_pong_never_loses_a_notification() {
        const TURNS: u32 = 100_000;
        let (ping, pong) = (Arc::new(Event::default()), Arc::new(Event::default()));
        let deadline = || Some(Instant::now() + std::time::Duration::from_secs(10));
        let other = {
            let (ping, pong) = (ping.clone(), pong.clone());
            std::thread::spawn(move || {
                let mut seen = 0;
                for _ in 0..TURNS {
                    assert!(ping.wait(seen, deadline()), "a ping was lost");
                    seen = ping.seq();
                    pong.notify();
                }
            })
        };
        let mut seen = pong.seq();
        for _ in 0..TURNS {
            ping.notify();
            assert!(pong.wait(seen, deadline()), "a pong was lost");
            seen = pong.seq();
        }
        other.join().unwrap();
        assert_eq!(ping.lock().sleepers + pong.lock().sleepers, 0);
    }
}
