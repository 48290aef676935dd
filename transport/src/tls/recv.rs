//! The receive state both readers share (the blocking [`CellReader`](super::CellReader) and, with the `async`
//! feature, the `AsyncCellReader`): received ciphertext, the cell decoder, and the step that moves bytes from
//! one to the other under the connection lock. Socket I/O and the hand-off of TLS output stay with the caller.

use std::io;
use std::sync::MutexGuard;

use rustls::Connection;

use super::TlsStreamError;
use super::shared::Shared;
use crate::cell::{Cell, CellDecoder};

/// Socket bytes read per read call.
const READ_CHUNK: usize = 64 * 1024;
/// Plaintext moved from rustls to the cell decoder per step.
const PLAIN_CHUNK: usize = 16 * 1024;

/// What one step of the read loop achieved.
pub(crate) enum Step {
    /// Something moved; poll the decoder again.
    Progress,
    /// Everything received has been processed; read the socket into [`RecvState::inbuf`].
    NeedBytes,
}

/// Received ciphertext on its way into rustls, and whether the socket has ended: the part every TLS reader
/// here (cells, blocking or async, and bytes) shares.
pub(crate) struct CipherIn {
    /// `buf[pos..len]` is not yet fed to rustls.
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    /// The socket reached EOF.
    eof: bool,
}

impl CipherIn {
    pub(crate) fn new() -> Self {
        CipherIn { buf: vec![0; READ_CHUNK].into_boxed_slice(), pos: 0, len: 0, eof: false }
    }

    /// Feeds the next received ciphertext to rustls through `conn` (the connection lock, released before
    /// `flush`), then calls `flush` to hand any TLS output this produced to a thread or task that can write
    /// it (the pending flag is set first). `Ok(false)`: everything received is processed, read the socket
    /// into [`buf`](Self::buf). At EOF with nothing left, the stream was cut: [`TlsStreamError::Truncated`].
    pub(crate) fn feed<S: io::Write>(
        &mut self,
        mut conn: MutexGuard<'_, Connection>,
        shared: &Shared<S>,
        flush: impl FnOnce(&Shared<S>) -> io::Result<()>,
    ) -> io::Result<bool> {
        if self.pos == self.len {
            if self.eof {
                return Err(TlsStreamError::Truncated.into());
            }
            return Ok(false);
        }
        let n = conn.read_tls(&mut &self.buf[self.pos..self.len])?;
        // read_tls takes nothing once close_notify has arrived: bytes after it are ignored.
        self.pos = if n == 0 { self.len } else { self.pos + n };
        let processed = conn.process_new_packets().map(|_| ());
        let wants_write = conn.wants_write();
        drop(conn);
        if wants_write {
            shared.set_pending();
        }
        let flushed = flush(shared);
        if let Err(err) = processed {
            return Err(shared.kill(TlsStreamError::from_received(err)).into());
        }
        flushed?;
        Ok(true)
    }

    /// After [`feed`](Self::feed) returned `Ok(false)`: reads the socket (blocking, holding no lock) into the
    /// buffer and records it, then retries TLS output the socket refused earlier, since the socket just woke
    /// us. The blocking readers' (cells and bytes) one way to wait for ciphertext; the async reader polls
    /// into `buf` instead.
    pub(crate) fn fill_from<S: plebnet::net::TcpStreamApi>(
        &mut self,
        stream: &mut S,
        shared: &Shared<S>,
    ) -> io::Result<()> {
        let n = loop {
            match stream.read(&mut self.buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        self.filled(n, shared)?;
        shared.flush_from_reader()
    }

    /// The buffer to read socket bytes into when [`feed`](Self::feed) returned `Ok(false)`.
    #[cfg(feature = "async")]
    pub(crate) fn buf(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Records that the socket read put `n` bytes into [`buf`](Self::buf). At EOF (`n == 0`), tells rustls
    /// so that it can tell a clean close from a cut.
    pub(crate) fn filled<S: io::Write>(&mut self, n: usize, shared: &Shared<S>) -> io::Result<()> {
        self.pos = 0;
        self.len = n;
        if n == 0 {
            self.eof = true;
            let mut conn = shared.conn()?;
            conn.read_tls(&mut io::empty())?;
            conn.process_new_packets().map_err(|e| shared.kill(TlsStreamError::from_received(e)))?;
        }
        Ok(())
    }
}

/// Received ciphertext, plaintext on its way to cells, and the reader's terminal states.
pub(crate) struct RecvState {
    decoder: CellDecoder,
    cipher: CipherIn,
    plain: Box<[u8]>,
    /// The peer's close_notify arrived: no more cells after the decoded ones.
    pub(crate) closed: bool,
    /// The fatal error's kind and message, returned again by every later call.
    failed: Option<(io::ErrorKind, String)>,
}

impl RecvState {
    pub(crate) fn new() -> Self {
        RecvState {
            decoder: CellDecoder::new(),
            cipher: CipherIn::new(),
            plain: vec![0; PLAIN_CHUNK].into_boxed_slice(),
            closed: false,
            failed: None,
        }
    }

    /// Fails with the stored fatal error, if an earlier call failed.
    pub(crate) fn check_failed(&self) -> io::Result<()> {
        match &self.failed {
            Some((kind, message)) => Err(io::Error::new(*kind, message.clone())),
            None => Ok(()),
        }
    }

    /// Remembers `res`'s error as fatal unless it is transient (`WouldBlock`, `TimedOut`, `Interrupted`).
    pub(crate) fn record<T>(&mut self, res: io::Result<T>) -> io::Result<T> {
        if let Err(err) = &res {
            let transient =
                matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted);
            if !transient {
                self.failed = Some((err.kind(), err.to_string()));
            }
        }
        res
    }

    /// The next complete cell (`Some`), `None` once the peer's close_notify came and every cell before it was
    /// returned, or [`NeedStep`] when nothing is decoded yet.
    pub(crate) fn poll_cell(&mut self) -> io::Result<Result<Option<Cell>, NeedStep>> {
        if let Some(cell) = self.decoder.poll_cell()? {
            return Ok(Ok(Some(cell)));
        }
        if self.closed {
            self.decoder.finish()?;
            return Ok(Ok(None));
        }
        Ok(Err(NeedStep))
    }

    /// Under the connection lock: moves plaintext into the decoder, or else feeds received ciphertext to
    /// rustls. Then, without the lock, calls `flush` to hand any TLS output this produced to a thread or task
    /// that can write it (the pending flag is set first).
    pub(crate) fn step<S: io::Write>(
        &mut self,
        shared: &Shared<S>,
        flush: impl FnOnce(&Shared<S>) -> io::Result<()>,
    ) -> io::Result<Step> {
        let mut conn = shared.conn()?;
        let room = self.decoder.remaining_capacity().min(self.plain.len());
        if room > 0 {
            match io::Read::read(&mut conn.reader(), &mut self.plain[..room]) {
                Ok(0) => {
                    self.closed = true;
                    return Ok(Step::Progress);
                }
                Ok(n) => {
                    self.decoder.push(&self.plain[..n])?;
                    return Ok(Step::Progress);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(TlsStreamError::Truncated.into()),
                Err(e) => return Err(e),
            }
        }
        Ok(if self.cipher.feed(conn, shared, flush)? { Step::Progress } else { Step::NeedBytes })
    }

    /// After [`Step::NeedBytes`], blocking: see [`CipherIn::fill_from`].
    pub(crate) fn fill_from<S: plebnet::net::TcpStreamApi>(
        &mut self,
        stream: &mut S,
        shared: &Shared<S>,
    ) -> io::Result<()> {
        self.cipher.fill_from(stream, shared)
    }

    /// The buffer to read socket bytes into after [`Step::NeedBytes`].
    #[cfg(feature = "async")]
    pub(crate) fn inbuf(&mut self) -> &mut [u8] {
        self.cipher.buf()
    }

    /// Records that the socket read put `n` bytes into [`inbuf`](Self::inbuf) (see [`CipherIn::filled`]).
    #[cfg(feature = "async")]
    pub(crate) fn filled<S: io::Write>(&mut self, n: usize, shared: &Shared<S>) -> io::Result<()> {
        self.cipher.filled(n, shared)
    }
}

/// No cell is ready: call [`RecvState::step`].
pub(crate) struct NeedStep;
