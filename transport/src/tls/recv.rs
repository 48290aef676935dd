//! The receive state both readers share (the blocking [`CellReader`](super::CellReader) and, with the `async`
//! feature, the `AsyncCellReader`): received ciphertext, the cell decoder, and the step that moves bytes from
//! one to the other under the connection lock. Socket I/O and the hand-off of TLS output stay with the caller.

use std::io;

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

/// Received ciphertext, plaintext on its way to cells, and the reader's terminal states.
pub(crate) struct RecvState {
    decoder: CellDecoder,
    /// Received ciphertext; `inbuf[in_pos..in_len]` is not yet fed to rustls.
    inbuf: Box<[u8]>,
    in_pos: usize,
    in_len: usize,
    plain: Box<[u8]>,
    /// The peer's close_notify arrived: no more cells after the decoded ones.
    pub(crate) closed: bool,
    /// The socket reached EOF.
    eof: bool,
    /// The fatal error's kind and message, returned again by every later call.
    failed: Option<(io::ErrorKind, String)>,
}

impl RecvState {
    pub(crate) fn new() -> Self {
        RecvState {
            decoder: CellDecoder::new(),
            inbuf: vec![0; READ_CHUNK].into_boxed_slice(),
            in_pos: 0,
            in_len: 0,
            plain: vec![0; PLAIN_CHUNK].into_boxed_slice(),
            closed: false,
            eof: false,
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
        if self.in_pos == self.in_len {
            if self.eof {
                return Err(TlsStreamError::Truncated.into());
            }
            return Ok(Step::NeedBytes);
        }
        let n = conn.read_tls(&mut &self.inbuf[self.in_pos..self.in_len])?;
        // read_tls takes nothing once close_notify has arrived: bytes after it are ignored.
        self.in_pos = if n == 0 { self.in_len } else { self.in_pos + n };
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
        Ok(Step::Progress)
    }

    /// The buffer to read socket bytes into after [`Step::NeedBytes`].
    pub(crate) fn inbuf(&mut self) -> &mut [u8] {
        &mut self.inbuf
    }

    /// Records that the socket read put `n` bytes into [`inbuf`](Self::inbuf). At EOF (`n == 0`), tells rustls
    /// so that it can tell a clean close from a cut.
    pub(crate) fn filled<S: io::Write>(&mut self, n: usize, shared: &Shared<S>) -> io::Result<()> {
        self.in_pos = 0;
        self.in_len = n;
        if n == 0 {
            self.eof = true;
            let mut conn = shared.conn()?;
            conn.read_tls(&mut io::empty())?;
            conn.process_new_packets().map_err(|e| shared.kill(TlsStreamError::from_received(e)))?;
        }
        Ok(())
    }
}

/// No cell is ready: call [`RecvState::step`].
pub(crate) struct NeedStep;
