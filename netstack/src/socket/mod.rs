//! The std::net-like socket API over a [`Stack`](crate::Stack).
//!
//! Every blocking call follows one pattern ([`block_on`]): lock the core, try
//! the operation, and if it cannot complete yet, register the socket's
//! per-direction [`Event`](crate::wake::Event) with smoltcp and sleep on it
//! outside the lock. Readers and writers wait on different events, so a
//! blocked reader never delays a writer on a clone of the same stream.
//!
//! With the `async` feature, [`TcpStream`] (and `&TcpStream`) also implement `futures_io::AsyncRead` and
//! `AsyncWrite` through [`poll_on`], the same pattern with a task's waker in place of a sleeping thread.

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::Stack;
use crate::stack::core::Core;
use crate::wake::Event;

#[cfg(feature = "async")]
mod async_io;
mod ping;
mod tcp_listener;
mod tcp_stream;
mod udp;

pub use tcp_listener::{Incoming, TcpListener};
pub use tcp_stream::TcpStream;
pub use udp::UdpSocket;

/// Per-socket options shared by all clones of a socket, as in the kernel.
#[derive(Debug, Default)]
pub(crate) struct SocketOptions {
    nonblocking: AtomicBool,
    read_timeout: Mutex<Option<Duration>>,
    write_timeout: Mutex<Option<Duration>>,
}

impl SocketOptions {
    pub(crate) fn nonblocking(&self) -> bool {
        self.nonblocking.load(Ordering::Relaxed)
    }
    pub(crate) fn set_nonblocking(&self, on: bool) {
        self.nonblocking.store(on, Ordering::Relaxed);
    }
    pub(crate) fn read_timeout(&self) -> Option<Duration> {
        *self.read_timeout.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn write_timeout(&self) -> Option<Duration> {
        *self.write_timeout.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        check_timeout(t)?;
        *self.read_timeout.lock().unwrap_or_else(|e| e.into_inner()) = t;
        Ok(())
    }
    pub(crate) fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        check_timeout(t)?;
        *self.write_timeout.lock().unwrap_or_else(|e| e.into_inner()) = t;
        Ok(())
    }
}

/// std rejects a zero timeout with InvalidInput; so do we.
fn check_timeout(t: Option<Duration>) -> io::Result<()> {
    if t == Some(Duration::ZERO) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "cannot set a 0 duration timeout"));
    }
    Ok(())
}

/// How a blocking call may wait.
pub(crate) struct Wait {
    pub(crate) nonblocking: bool,
    pub(crate) deadline: Option<Instant>,
    /// Error for an expired deadline.
    pub(crate) on_timeout: fn() -> io::Error,
}

impl Wait {
    /// A wait for a read or write with the socket's timeout: like Linux's
    /// SO_RCVTIMEO/SO_SNDTIMEO, expiry reports `WouldBlock`.
    pub(crate) fn io(nonblocking: bool, timeout: Option<Duration>) -> Self {
        Self {
            nonblocking,
            deadline: timeout.map(|t| Instant::now() + t),
            on_timeout: || {
                io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "the socket's timeout expired before the operation could complete",
                )
            },
        }
    }
}

/// Runs `attempt` under the core lock until it gives a result, sleeping on
/// `event` between tries. `attempt` must register `event`'s waker with
/// smoltcp before returning `None`.
pub(crate) fn block_on<T>(
    stack: &Stack,
    event: &Event,
    wait: Wait,
    mut attempt: impl FnMut(&mut Core) -> Option<io::Result<T>>,
) -> io::Result<T> {
    loop {
        let seen = match try_once(stack, event, &mut attempt) {
            Ok(result) => return result,
            Err(seen) => seen,
        };
        if wait.nonblocking {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "operation would block"));
        }
        if !event.wait(seen, wait.deadline) {
            return Err((wait.on_timeout)());
        }
    }
}

/// One try of `attempt` under the core lock: its result (the driver is
/// rung, since the attempt may have queued work, unless the attempt set
/// `Core::driver_not_needed`), or, if it cannot complete
/// yet, `event`'s sequence number read under that same lock. Notifications
/// happen under the lock, so none can slip in between this read and a wait
/// or registration on that number.
fn try_once<T>(
    stack: &Stack,
    event: &Event,
    attempt: &mut impl FnMut(&mut Core) -> Option<io::Result<T>>,
) -> Result<io::Result<T>, u64> {
    let mut core = stack.shared().lock();
    let seen = event.seq();
    core.driver_not_needed = false;
    match attempt(&mut core) {
        Some(result) => {
            let quiet = std::mem::take(&mut core.driver_not_needed);
            drop(core);
            if !quiet {
                stack.wake_driver();
            }
            Ok(result)
        }
        None => Err(seen),
    }
}

/// The async counterpart of [`block_on`]: one try of `attempt` under the core lock; if it cannot complete,
/// registers `cx`'s waker on `event` and returns `Pending`.
///
/// No wake-up is lost: the sequence number is read under the core lock (where smoltcp fires the socket's
/// wakers), and [`Event::register_task`] refuses to register once it has moved, so a notification between
/// the unlock and the registration makes us try again instead of sleeping.
#[cfg(feature = "async")]
pub(crate) fn poll_on<T>(
    stack: &Stack,
    event: &Event,
    cx: &mut std::task::Context<'_>,
    mut attempt: impl FnMut(&mut Core) -> Option<io::Result<T>>,
) -> std::task::Poll<io::Result<T>> {
    loop {
        let seen = match try_once(stack, event, &mut attempt) {
            Ok(result) => return std::task::Poll::Ready(result),
            Err(seen) => seen,
        };
        if event.register_task(seen, cx.waker()) {
            return std::task::Poll::Pending;
        }
    }
}
