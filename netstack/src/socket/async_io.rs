//! `futures_io::AsyncRead` and `AsyncWrite` for [`TcpStream`] (feature `async`).
//!
//! Each poll makes one non-blocking try under the core lock ([`poll_on`]). A read that finds nothing
//! registers the task's waker on the socket's *receive* event, a write that finds the send buffer full on its
//! *send* event: a reader task and a writer task on clones of one stream each get their own wake-up, and a
//! notification wakes every task registered on that event, so none steals another's (seed 001).
//!
//! The socket's non-blocking flag and its read/write timeouts apply to the blocking `Read`/`Write` calls
//! only; polls never block, and an async caller bounds them with its own timer.

use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_io::{AsyncRead, AsyncWrite};

use super::TcpStream;
use super::poll_on;

impl TcpStream {
    fn poll_read_impl(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let (stack, signal) = self.parts();
        poll_on(stack, &signal.rx, cx, |core| self.try_read(core, buf))
    }

    fn poll_write_impl(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // poll_on rings the driver's doorbell after a successful write, as the blocking path does.
        let (stack, signal) = self.parts();
        poll_on(stack, &signal.tx, cx, |core| self.try_write(core, buf))
    }
}

/// Reads like the blocking `Read`, but returns `Pending` instead of waiting; the task is woken when data,
/// EOF or a reset arrives.
impl AsyncRead for &TcpStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.poll_read_impl(cx, buf)
    }
}

/// Writes like the blocking `Write`, but returns `Pending` instead of waiting; the task is woken when the
/// send buffer has room. `poll_close` shuts the write side (FIN).
impl AsyncWrite for &TcpStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_impl(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.shutdown(Shutdown::Write))
    }
}

/// As for `&TcpStream`.
impl AsyncRead for TcpStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.poll_read_impl(cx, buf)
    }
}

/// As for `&TcpStream`.
impl AsyncWrite for TcpStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_impl(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.shutdown(Shutdown::Write))
    }
}
