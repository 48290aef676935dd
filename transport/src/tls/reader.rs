//! The receiving half: socket bytes in (without any lock), TLS records decrypted under the connection lock,
//! plaintext split into cells.

use std::io;
use std::sync::Arc;

use plebnet::net::TcpStreamApi;

use super::TlsStreamError;
use super::shared::Shared;
use crate::cell::{Cell, CellDecoder};

/// Socket bytes read per read call.
const READ_CHUNK: usize = 64 * 1024;
/// Plaintext moved from rustls to the cell decoder per step.
const PLAIN_CHUNK: usize = 16 * 1024;

/// The receiving half of a [`TlsCellStream`](super::TlsCellStream), from [`split`](super::TlsCellStream::split).
///
/// It owns its own handle on the socket and blocks in the socket read without holding any lock, so a
/// [`CellWriter`](super::CellWriter) in another thread is never held up by it, and it is never held up by the
/// writer. TLS output that reading produces (the answer to the peer's key update, alerts) is written by
/// whichever half can do so without waiting.
pub struct CellReader<S: TcpStreamApi> {
    shared: Arc<Shared<S>>,
    stream: S,
    decoder: CellDecoder,
    /// Received ciphertext; `inbuf[in_pos..in_len]` is not yet fed to rustls.
    inbuf: Box<[u8]>,
    in_pos: usize,
    in_len: usize,
    plain: Box<[u8]>,
    /// The peer's close_notify arrived: no more cells after the decoded ones.
    closed: bool,
    /// The socket reached EOF.
    eof: bool,
    /// The fatal error's kind and message, returned again by every later call.
    failed: Option<(io::ErrorKind, String)>,
}

/// What one step of the read loop achieved.
enum Step {
    /// Something moved; poll the decoder again.
    Progress,
    /// Everything received has been processed; read the socket.
    NeedBytes,
}

impl<S: TcpStreamApi> std::fmt::Debug for CellReader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CellReader").field("stream", &self.stream).field("closed", &self.closed).finish()
    }
}

impl<S: TcpStreamApi> CellReader<S> {
    pub(crate) fn new(shared: Arc<Shared<S>>, stream: S) -> Self {
        CellReader {
            shared,
            stream,
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

    /// Reads the next cell, blocking until one is complete.
    ///
    /// Returns `Ok(None)` once the peer has closed the TLS session cleanly (`close_notify`) and every cell
    /// before it was returned. Errors:
    /// * a record that fails decryption: [`TlsStreamError::RecordAuthentication`] (`InvalidData`), after which
    ///   the writer half fails too; no cell from that record or later is delivered;
    /// * other TLS protocol errors and fatal alerts: [`TlsStreamError::Protocol`];
    /// * TCP EOF without `close_notify`: [`TlsStreamError::Truncated`] (`UnexpectedEof`);
    /// * malformed cells: the cell decoder's error ([`DecodeError`](crate::cell::DecodeError)), as `io::Error`;
    /// * socket errors as the socket reports them (`WouldBlock` after a read timeout set on the stream before
    ///   the split; such an error is not fatal and the call can be repeated).
    ///
    /// After a fatal error every later call returns an error of the same kind.
    pub fn read_cell(&mut self) -> io::Result<Option<Cell>> {
        if let Some((kind, message)) = &self.failed {
            return Err(io::Error::new(*kind, message.clone()));
        }
        let res = self.read_cell_inner();
        if let Err(err) = &res {
            let transient =
                matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted);
            if !transient {
                self.failed = Some((err.kind(), err.to_string()));
            }
        }
        res
    }

    fn read_cell_inner(&mut self) -> io::Result<Option<Cell>> {
        loop {
            if let Some(cell) = self.decoder.poll_cell()? {
                return Ok(Some(cell));
            }
            if self.closed {
                self.decoder.finish()?;
                return Ok(None);
            }
            match self.step()? {
                Step::Progress => {}
                Step::NeedBytes => self.fill()?,
            }
        }
    }

    /// Under the connection lock: moves plaintext into the decoder, or else feeds received ciphertext to
    /// rustls. Then, without the lock, hands any TLS output this produced to a thread that can write it.
    fn step(&mut self) -> io::Result<Step> {
        let mut conn = self.shared.conn()?;
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
            self.shared.set_pending();
        }
        let flushed = self.shared.flush_from_reader();
        if let Err(err) = processed {
            return Err(self.shared.kill(TlsStreamError::from_received(err)).into());
        }
        flushed?;
        Ok(Step::Progress)
    }

    /// Reads the socket, holding no lock. At EOF, tells rustls so that it can tell a clean close from a cut.
    fn fill(&mut self) -> io::Result<()> {
        let n = loop {
            match self.stream.read(&mut self.inbuf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        self.in_pos = 0;
        self.in_len = n;
        if n == 0 {
            self.eof = true;
            let mut conn = self.shared.conn()?;
            conn.read_tls(&mut io::empty())?;
            conn.process_new_packets().map_err(|e| self.shared.kill(TlsStreamError::from_received(e)))?;
        }
        // The socket woke us: a good moment to retry output the socket refused earlier.
        self.shared.flush_from_reader()
    }
}
