//! The state both halves share: the rustls connection, the socket's write side, and the flags that let the
//! reader hand TLS output to whichever thread can write it.
//!
//! Two locks, never held across a blocking socket *read*:
//!
//! * `conn` guards the rustls connection. It is held only to feed bytes in, take plaintext out, encrypt, or
//!   take queued records; never during socket I/O.
//! * `sock` guards the socket's write side plus the records taken from rustls but not yet written. Taking
//!   records (`write_tls`) and writing them happen under it, so records reach the socket in the order rustls
//!   made them. Lock order: `sock`, then `conn`.
//!
//! A read can make TLS output (a KeyUpdate answer, an alert). The reader sets `pending` and *tries* to lock
//! `sock`: if it gets it, it writes in non-blocking mode and leaves what does not fit in `out`; if the writer
//! holds it, the writer sees `pending` after releasing and writes again. So the reader never waits for the
//! writer, and a writer stuck in a socket write (the peer is not reading yet) never stops our reader.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, TryLockError};

use rustls::Connection;

use super::TlsStreamError;

/// The socket's write side and the records taken from rustls but not yet written.
pub(crate) struct SockWriter<S> {
    pub(crate) stream: S,
    /// Records taken from rustls; `out[pos..]` is not yet on the socket.
    out: Vec<u8>,
    pos: usize,
}

/// Shared by [`CellReader`](super::CellReader) and [`CellWriter`](super::CellWriter).
pub(crate) struct Shared<S> {
    conn: Mutex<Connection>,
    sock: Mutex<SockWriter<S>>,
    /// Rustls has output that no thread has yet promised to write.
    pending: AtomicBool,
    /// Set once, by the first fatal error; every later write fails with it.
    dead: OnceLock<TlsStreamError>,
}

/// Whether a drain wrote everything or stopped because the socket would block.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Drained {
    All,
    WouldBlock,
}

impl<S: Write> Shared<S> {
    pub(crate) fn new(conn: Connection, write_half: S) -> Self {
        Shared {
            conn: Mutex::new(conn),
            sock: Mutex::new(SockWriter { stream: write_half, out: Vec::new(), pos: 0 }),
            pending: AtomicBool::new(false),
            dead: OnceLock::new(),
        }
    }

    /// Locks the rustls connection.
    pub(crate) fn conn(&self) -> Result<MutexGuard<'_, Connection>, TlsStreamError> {
        self.conn.lock().map_err(|_| TlsStreamError::Poisoned)
    }

    /// Locks the socket's write side (blocking: only the writer and `close` call this).
    pub(crate) fn sock(&self) -> Result<MutexGuard<'_, SockWriter<S>>, TlsStreamError> {
        self.sock.lock().map_err(|_| TlsStreamError::Poisoned)
    }

    /// Fails with the stored fatal error, if any.
    pub(crate) fn check_alive(&self) -> Result<(), TlsStreamError> {
        match self.dead.get() {
            Some(err) => Err(err.clone()),
            None => Ok(()),
        }
    }

    /// Records `err` as the stream's fatal error (the first one wins) and returns it.
    pub(crate) fn kill(&self, err: TlsStreamError) -> TlsStreamError {
        let _ = self.dead.set(err.clone());
        err
    }

    /// Records a socket write error as fatal and returns it as an `io::Error` of the same kind.
    fn kill_io(&self, err: io::Error) -> io::Error {
        self.kill(TlsStreamError::Socket { kind: err.kind(), message: err.to_string() });
        err
    }

    /// Notes that rustls has output to write.
    pub(crate) fn set_pending(&self) {
        self.pending.store(true, Ordering::SeqCst);
    }

    /// Writer side: writes, blocking, every record rustls has queued, then repeats while the reader flagged
    /// more output during our hold of `sock` (it could not take the lock, so it relies on us).
    pub(crate) fn flush_blocking(&self) -> io::Result<()> {
        loop {
            {
                let mut sock = self.sock()?;
                self.pending.store(false, Ordering::SeqCst);
                self.drain(&mut sock, false)?;
                sock.stream.flush().map_err(|e| self.kill_io(e))?;
            }
            if !self.pending.load(Ordering::SeqCst) {
                return Ok(());
            }
        }
    }

    /// Reader side: if output is pending and `sock` is free, writes what the socket takes without blocking.
    /// Never waits: if the writer holds `sock` it will write the output; if the socket is full, `pending`
    /// stays set for the next writer call or the next reader wake-up.
    pub(crate) fn flush_from_reader(&self) -> io::Result<()>
    where
        S: plebnet::net::TcpStreamApi,
    {
        while self.pending.load(Ordering::SeqCst) {
            let mut sock = match self.sock.try_lock() {
                Ok(sock) => sock,
                Err(TryLockError::WouldBlock) => return Ok(()),
                Err(TryLockError::Poisoned(_)) => return Err(TlsStreamError::Poisoned.into()),
            };
            self.pending.store(false, Ordering::SeqCst);
            // Only the holder of `sock` writes, and the reader is not reading now, so switching the socket
            // to non-blocking cannot disturb another operation of this stream.
            sock.stream.set_nonblocking(true)?;
            let drained = self.drain(&mut sock, true);
            sock.stream.set_nonblocking(false)?;
            if drained? == Drained::WouldBlock {
                self.pending.store(true, Ordering::SeqCst);
                return Ok(());
            }
        }
        Ok(())
    }

    /// Replaces the written-out buffer with the records rustls has queued;
    /// false if there were none. The caller holds `sock` and has written
    /// everything before.
    fn take_records(&self, sock: &mut SockWriter<S>) -> io::Result<bool> {
        sock.out.clear();
        sock.pos = 0;
        let mut conn = self.conn()?;
        while conn.wants_write() {
            conn.write_tls(&mut sock.out)?;
        }
        Ok(!sock.out.is_empty())
    }

    /// Writes `out[pos..]`, then takes and writes rustls's queued records until there are none. With
    /// `nonblocking`, stops at `WouldBlock` and keeps the rest in `out` for the next drain. The caller holds
    /// `sock`.
    pub(crate) fn drain(&self, sock: &mut SockWriter<S>, nonblocking: bool) -> io::Result<Drained> {
        loop {
            while sock.pos < sock.out.len() {
                match sock.stream.write(&sock.out[sock.pos..]) {
                    Ok(0) => return Err(self.kill_io(io::ErrorKind::WriteZero.into())),
                    Ok(n) => sock.pos += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if nonblocking && e.kind() == io::ErrorKind::WouldBlock => return Ok(Drained::WouldBlock),
                    Err(e) => return Err(self.kill_io(e)),
                }
            }
            if !self.take_records(sock)? {
                return Ok(Drained::All);
            }
        }
    }
}

/// The async counterparts (feature `async`). `sock` is a std mutex here too, but no task holds it across a
/// `Pending`: a holder makes one non-blocking pass (`poll_write` until the socket is full) and releases it, so
/// waiting for it is brief. Records the socket did not take stay in `out`, in order, for the next holder.
#[cfg(feature = "async")]
impl<S: Write + futures_io::AsyncWrite + Unpin> Shared<S> {
    /// Writer side: like [`flush_blocking`](Self::flush_blocking), but returns `Pending` (the task's waker on
    /// the socket's send event) when the socket is full. Then `pending` is set again, so that the reader also
    /// retries if the writer is not polled again.
    pub(crate) fn poll_flush_writer(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        loop {
            {
                let mut sock = self.sock()?;
                self.pending.store(false, Ordering::SeqCst);
                match self.poll_drain(&mut sock, cx) {
                    Poll::Pending => {
                        self.pending.store(true, Ordering::SeqCst);
                        return Poll::Pending;
                    }
                    Poll::Ready(res) => res?,
                }
                match std::pin::Pin::new(&mut sock.stream).poll_flush(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(res) => res.map_err(|e| self.kill_io(e))?,
                }
            }
            // The reader flagged output while we held `sock` and could not take it: it relies on us.
            if !self.pending.load(Ordering::SeqCst) {
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Reader side: like [`flush_from_reader`](Self::flush_from_reader), never waiting for the writer. Returns
    /// `Pending` (the reader's waker on the socket's send event, `pending` still set) if the socket is full.
    pub(crate) fn poll_flush_from_reader(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        while self.pending.load(Ordering::SeqCst) {
            let mut sock = match self.sock.try_lock() {
                Ok(sock) => sock,
                // The writer holds `sock` and re-checks `pending` after releasing it.
                Err(TryLockError::WouldBlock) => return Poll::Ready(Ok(())),
                Err(TryLockError::Poisoned(_)) => return Poll::Ready(Err(TlsStreamError::Poisoned.into())),
            };
            self.pending.store(false, Ordering::SeqCst);
            if self.poll_drain(&mut sock, cx)?.is_pending() {
                self.pending.store(true, Ordering::SeqCst);
                return Poll::Pending;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Shuts the socket's write side (`poll_close`).
    pub(crate) fn poll_close_socket(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.sock()?.stream).poll_close(cx)
    }

    /// [`drain`](Self::drain) with `poll_write`: `Pending` once the socket is full. The caller holds `sock`.
    fn poll_drain(&self, sock: &mut SockWriter<S>, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        loop {
            while sock.pos < sock.out.len() {
                let SockWriter { stream, out, pos } = &mut *sock;
                match std::pin::Pin::new(stream).poll_write(cx, &out[*pos..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(self.kill_io(io::ErrorKind::WriteZero.into()))),
                    Poll::Ready(Ok(n)) => *pos += n,
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(self.kill_io(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if !self.take_records(sock)? {
                return Poll::Ready(Ok(()));
            }
        }
    }
}
