//! The sending half: cells buffered into full TLS records, encrypted under the connection lock, written
//! under the socket-write lock.

use std::io;
use std::net::Shutdown;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use plebnet::net::TcpStreamApi;

use super::TlsStreamError;
use super::shared::Shared;
use crate::cell::Cell;

/// The largest TLS plaintext record; cells are handed to rustls in multiples of it so records go out full.
const RECORD_PLAINTEXT: usize = 16 * 1024;

/// The sending half of a [`TlsCellStream`](super::TlsCellStream), from [`split`](super::TlsCellStream::split).
///
/// [`write_cell`](CellWriter::write_cell) buffers cells until a full 16 KiB TLS record's worth is ready and
/// then encrypts and sends it (blocking while the socket is full); [`flush`](CellWriter::flush) sends the
/// rest now. Dropping the writer flushes like `std::io::BufWriter` does, ignoring errors; call
/// [`flush`](CellWriter::flush) or [`close`](CellWriter::close) to see them.
///
/// Once the stream is dead (a record failed authentication on the reader, a protocol error, a failed socket
/// write, or [`close`](CellWriter::close)), every call fails with that error.
pub struct CellWriter<S: TcpStreamApi> {
    shared: Arc<Shared<S>>,
    /// Encoded cells not yet handed to rustls.
    buf: BytesMut,
}

impl<S: TcpStreamApi> std::fmt::Debug for CellWriter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CellWriter").field("buffered", &self.buf.len()).finish()
    }
}

impl<S: TcpStreamApi> CellWriter<S> {
    pub(crate) fn new(shared: Arc<Shared<S>>) -> Self {
        CellWriter { shared, buf: BytesMut::with_capacity(2 * RECORD_PLAINTEXT) }
    }

    /// Queues `cell`; sends whole TLS records as soon as 16 KiB of cells are queued.
    ///
    /// Fails with `InvalidInput` if the cell cannot be encoded (payload too long), or with the stream's fatal
    /// error.
    pub fn write_cell(&mut self, cell: &Cell) -> io::Result<()> {
        self.shared.check_alive()?;
        cell.encode_to(&mut self.buf)?;
        if self.buf.len() >= RECORD_PLAINTEXT {
            let whole_records = self.buf.len() / RECORD_PLAINTEXT * RECORD_PLAINTEXT;
            self.encrypt(whole_records)?;
            self.shared.flush_blocking()?;
        }
        Ok(())
    }

    /// Sends every queued cell and any TLS output the reader left pending, blocking until the socket took them.
    pub fn flush(&mut self) -> io::Result<()> {
        self.shared.check_alive()?;
        self.encrypt(self.buf.len())?;
        self.shared.flush_blocking()
    }

    /// Sends the queued cells, then a TLS 1.3 KeyUpdate: later records use fresh keys, and the peer is asked
    /// to refresh its sending keys too (its reader answers by itself).
    ///
    /// Fails with [`TlsStreamError::KeyUpdate`] (`Unsupported`) on a TLS 1.2 connection. Rustls already
    /// updates keys when a cipher suite's limits require it; call this to limit how much traffic one key
    /// protects, e.g. every few MiB on a long-lived link.
    pub fn update_keys(&mut self) -> io::Result<()> {
        self.shared.check_alive()?;
        self.encrypt(self.buf.len())?;
        self.shared.conn()?.refresh_traffic_keys().map_err(TlsStreamError::KeyUpdate)?;
        self.shared.flush_blocking()
    }

    /// Sends the queued cells and a TLS `close_notify`, then shuts the socket's write side.
    ///
    /// The reader half keeps working until the peer closes too; writing afterwards fails with
    /// [`TlsStreamError::Closed`].
    pub fn close(&mut self) -> io::Result<()> {
        self.flush()?;
        self.shared.conn()?.send_close_notify();
        self.shared.flush_blocking()?;
        self.shared.kill(TlsStreamError::Closed);
        self.shared.sock()?.stream.shutdown(Shutdown::Write)
    }

    /// Hands the first `len` queued bytes to rustls to encrypt, sending records whenever rustls's outgoing
    /// buffer is full.
    fn encrypt(&mut self, len: usize) -> io::Result<()> {
        let mut left = len;
        while left > 0 {
            let n = io::Write::write(&mut self.shared.conn()?.writer(), &self.buf[..left])?;
            self.buf.advance(n);
            left -= n;
            if left > 0 {
                self.shared.flush_blocking()?;
            }
        }
        Ok(())
    }
}

impl<S: TcpStreamApi> Drop for CellWriter<S> {
    fn drop(&mut self) {
        if !self.buf.is_empty() && self.shared.check_alive().is_ok() {
            let _ = self.flush();
        }
    }
}
