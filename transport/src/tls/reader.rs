//! The receiving half: socket bytes in (without any lock), TLS records decrypted under the connection lock,
//! plaintext split into cells.

use std::io;
use std::sync::Arc;

use plebnet::net::TcpStreamApi;

use super::recv::{RecvState, Step};
use super::shared::Shared;
use crate::cell::Cell;

/// The receiving half of a [`TlsCellStream`](super::TlsCellStream), from [`split`](super::TlsCellStream::split).
///
/// It owns its own handle on the socket and blocks in the socket read without holding any lock, so a
/// [`CellWriter`](super::CellWriter) in another thread is never held up by it, and it is never held up by the
/// writer. TLS output that reading produces (the answer to the peer's key update, alerts) is written by
/// whichever half can do so without waiting.
pub struct CellReader<S: TcpStreamApi> {
    shared: Arc<Shared<S>>,
    stream: S,
    state: RecvState,
}

impl<S: TcpStreamApi> std::fmt::Debug for CellReader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CellReader").field("stream", &self.stream).field("closed", &self.state.closed).finish()
    }
}

impl<S: TcpStreamApi> CellReader<S> {
    pub(crate) fn new(shared: Arc<Shared<S>>, stream: S) -> Self {
        CellReader { shared, stream, state: RecvState::new() }
    }

    /// Reads the next cell, blocking until one is complete.
    ///
    /// Returns `Ok(None)` once the peer has closed the TLS session cleanly (`close_notify`) and every cell
    /// before it was returned. Errors:
    /// * a record that fails decryption: [`TlsStreamError::RecordAuthentication`](super::TlsStreamError::RecordAuthentication)
    ///   (`InvalidData`), after which the writer half fails too; no cell from that record or later is delivered;
    /// * other TLS protocol errors and fatal alerts: [`TlsStreamError::Protocol`](super::TlsStreamError::Protocol);
    /// * TCP EOF without `close_notify`: [`TlsStreamError::Truncated`](super::TlsStreamError::Truncated) (`UnexpectedEof`);
    /// * malformed cells: the cell decoder's error ([`DecodeError`](crate::cell::DecodeError)), as `io::Error`;
    /// * socket errors as the socket reports them (`WouldBlock` after a read timeout set on the stream before
    ///   the split; such an error is not fatal and the call can be repeated).
    ///
    /// After a fatal error every later call returns an error of the same kind.
    pub fn read_cell(&mut self) -> io::Result<Option<Cell>> {
        self.state.check_failed()?;
        let res = self.read_cell_inner();
        self.state.record(res)
    }

    fn read_cell_inner(&mut self) -> io::Result<Option<Cell>> {
        loop {
            if let Ok(cell) = self.state.poll_cell()? {
                return Ok(cell);
            }
            match self.state.step(&self.shared, |shared| shared.flush_from_reader())? {
                Step::Progress => {}
                Step::NeedBytes => self.state.fill_from(&mut self.stream, &self.shared)?,
            }
        }
    }
}
