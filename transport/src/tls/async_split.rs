//! Async halves of a TLS cell stream (feature `async`): [`AsyncCellReader`] and [`AsyncCellWriter`], for two
//! tasks, on one executor thread or on several.
//!
//! The same design as the blocking halves (see the [module docs](super)) with polls in place of blocking
//! calls. The reader polls its own clone of the socket for bytes, holding no lock, so its waker sits on the
//! socket's receive event; the writer's sits on the send event. TLS output that a read produces goes out
//! through whichever task can write it without waiting: the reader writes it (non-blocking `poll_write`)
//! when the socket-write lock is free, else the writer, which re-checks the pending flag after its pass. A
//! reader whose output the socket cannot take yet also waits on the send event, and retries when woken.
//!
//! The handshake runs blocking ([`TlsCellStream::connect`]/[`accept`](TlsCellStream::accept)); then
//! [`TlsCellStream::split_async`] converts the stream.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use futures_io::{AsyncRead, AsyncWrite};
use plebnet::net::TcpStreamApi;

use super::recv::{RecvState, Step};
use super::shared::Shared;
use super::{TlsCellStream, TlsStreamError};
use crate::cell::Cell;

/// The largest TLS plaintext record; cells are handed to rustls in multiples of it so records go out full.
const RECORD_PLAINTEXT: usize = 16 * 1024;

/// A socket the async halves can run on: a [`TcpStreamApi`] (for the blocking handshake and `try_clone`)
/// that is also `futures_io` [`AsyncRead`] + [`AsyncWrite`]. Implemented for every such type, e.g.
/// `plebnet_netstack::TcpStream`.
pub trait AsyncTcpStream: TcpStreamApi + AsyncRead + AsyncWrite + Unpin {}

impl<T: TcpStreamApi + AsyncRead + AsyncWrite + Unpin> AsyncTcpStream for T {}

impl<S: AsyncTcpStream> TlsCellStream<S> {
    /// Splits the stream into an [`AsyncCellReader`] and an [`AsyncCellWriter`] for two async tasks, which
    /// may run on one executor thread: neither ever waits for the other.
    ///
    /// The reader polls a [`try_clone`](TcpStreamApi::try_clone) of the socket; fails if that fails.
    pub fn split_async(self) -> io::Result<(AsyncCellReader<S>, AsyncCellWriter<S>)> {
        let read_half = self.stream.try_clone()?;
        let shared = Arc::new(Shared::new(self.conn, self.stream));
        let reader = AsyncCellReader { shared: shared.clone(), stream: read_half, state: RecvState::new() };
        let writer = AsyncCellWriter { shared, buf: BytesMut::with_capacity(2 * RECORD_PLAINTEXT) };
        Ok((reader, writer))
    }
}

/// The receiving half of a [`TlsCellStream`] for an async task, from [`split_async`](TlsCellStream::split_async).
///
/// Behaves like [`CellReader`](super::CellReader) (same errors, same end-of-stream), but waits by returning
/// `Pending`, with its waker registered on the socket's receive event (and on the send event while TLS
/// output it produced waits for room).
pub struct AsyncCellReader<S: AsyncTcpStream> {
    shared: Arc<Shared<S>>,
    stream: S,
    state: RecvState,
}

impl<S: AsyncTcpStream> std::fmt::Debug for AsyncCellReader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncCellReader").field("stream", &self.stream).field("closed", &self.state.closed).finish()
    }
}

impl<S: AsyncTcpStream> AsyncCellReader<S> {
    /// Reads the next cell; `Ok(None)` once the peer closed the TLS session cleanly (`close_notify`) and
    /// every cell before it was returned. Errors as [`CellReader::read_cell`](super::CellReader::read_cell).
    ///
    /// Cancel-safe: dropping the future loses no cell (partial input stays buffered in the reader).
    pub async fn read_cell(&mut self) -> io::Result<Option<Cell>> {
        poll_fn(|cx| self.poll_read_cell(cx)).await
    }

    /// The poll form of [`read_cell`](Self::read_cell).
    pub fn poll_read_cell(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Cell>>> {
        self.state.check_failed()?;
        match self.poll_read_inner(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(res) => Poll::Ready(self.state.record(res)),
        }
    }

    fn poll_read_inner(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Cell>>> {
        loop {
            if let Ok(cell) = self.state.poll_cell()? {
                return Poll::Ready(Ok(cell));
            }
            // A `Pending` flush leaves our waker on the send event and `pending` set: not an error, and no
            // reason to stop decrypting what already arrived.
            let step = self.state.step(&self.shared, |shared| match shared.poll_flush_from_reader(cx) {
                Poll::Ready(res) => res,
                Poll::Pending => Ok(()),
            })?;
            if let Step::NeedBytes = step {
                let n = match Pin::new(&mut self.stream).poll_read(cx, self.state.inbuf()) {
                    Poll::Ready(Ok(n)) => n,
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Woken or not, retry output the socket refused earlier (the writer may be idle).
                        let _ = self.shared.poll_flush_from_reader(cx)?;
                        return Poll::Pending;
                    }
                };
                self.state.filled(n, &self.shared)?;
                let _ = self.shared.poll_flush_from_reader(cx)?;
            }
        }
    }
}

/// The sending half of a [`TlsCellStream`] for an async task, from [`split_async`](TlsCellStream::split_async).
///
/// Behaves like [`CellWriter`](super::CellWriter): cells are buffered into full 16 KiB records; `flush`,
/// `update_keys` and `close` send them. When the socket is full the futures return `Pending` with the task's
/// waker on the socket's send event. Dropping the writer makes one non-blocking attempt to send what is
/// buffered (whatever the socket does not take is left for the reader to push out); call
/// [`flush`](Self::flush) or [`close`](Self::close) to be sure and to see errors.
///
/// Don't drop a `write_cell`/`flush` future half-way and then use the writer for anything but `flush` or
/// `close`: the cell it was sending may be partly queued.
pub struct AsyncCellWriter<S: AsyncTcpStream> {
    shared: Arc<Shared<S>>,
    /// Encoded cells not yet handed to rustls.
    buf: BytesMut,
}

impl<S: AsyncTcpStream> std::fmt::Debug for AsyncCellWriter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncCellWriter").field("buffered", &self.buf.len()).finish()
    }
}

impl<S: AsyncTcpStream> AsyncCellWriter<S> {
    /// Queues `cell`; sends whole TLS records as soon as 16 KiB of cells are queued.
    ///
    /// Fails with `InvalidInput` if the cell cannot be encoded (payload too long), or with the stream's fatal
    /// error.
    pub async fn write_cell(&mut self, cell: &Cell) -> io::Result<()> {
        self.shared.check_alive()?;
        cell.encode_to(&mut self.buf)?;
        if self.buf.len() >= RECORD_PLAINTEXT {
            let whole_records = self.buf.len() / RECORD_PLAINTEXT * RECORD_PLAINTEXT;
            self.encrypt(whole_records).await?;
            self.send().await?;
        }
        Ok(())
    }

    /// Sends every queued cell and any TLS output the reader left pending, until the socket took them.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.shared.check_alive()?;
        self.encrypt(self.buf.len()).await?;
        self.send().await
    }

    /// Sends the queued cells, then a TLS 1.3 KeyUpdate (the peer's reader answers by itself). Fails with
    /// [`TlsStreamError::KeyUpdate`] (`Unsupported`) on TLS 1.2; see
    /// [`CellWriter::update_keys`](super::CellWriter::update_keys).
    pub async fn update_keys(&mut self) -> io::Result<()> {
        self.shared.check_alive()?;
        self.encrypt(self.buf.len()).await?;
        self.shared.conn()?.refresh_traffic_keys().map_err(TlsStreamError::KeyUpdate)?;
        self.send().await
    }

    /// Sends the queued cells and a TLS `close_notify`, then shuts the socket's write side. The reader keeps
    /// working until the peer closes too; writing afterwards fails with [`TlsStreamError::Closed`].
    pub async fn close(&mut self) -> io::Result<()> {
        self.flush().await?;
        self.shared.conn()?.send_close_notify();
        self.send().await?;
        self.shared.kill(TlsStreamError::Closed);
        poll_fn(|cx| self.shared.poll_close_socket(cx)).await
    }

    /// Writes every record rustls has queued (and what the reader flagged meanwhile).
    async fn send(&self) -> io::Result<()> {
        poll_fn(|cx| self.shared.poll_flush_writer(cx)).await
    }

    /// Hands the first `len` queued bytes to rustls to encrypt, sending records whenever rustls's outgoing
    /// buffer is full.
    async fn encrypt(&mut self, len: usize) -> io::Result<()> {
        let mut left = len;
        while left > 0 {
            let n = io::Write::write(&mut self.shared.conn()?.writer(), &self.buf[..left])?;
            self.buf.advance(n);
            left -= n;
            if left > 0 {
                self.send().await?;
            }
        }
        Ok(())
    }
}

impl<S: AsyncTcpStream> Drop for AsyncCellWriter<S> {
    fn drop(&mut self) {
        if self.buf.is_empty() || self.shared.check_alive().is_err() {
            return;
        }
        let queued = self.shared.conn().map(|mut conn| io::Write::write_all(&mut conn.writer(), &self.buf));
        if let Ok(Ok(())) = queued {
            self.shared.set_pending();
            // One non-blocking pass; a full socket leaves `pending` set for the reader.
            let _ = self.shared.poll_flush_writer(&mut Context::from_waker(Waker::noop()));
        }
    }
}
