//! TLS cell streams: Tor-style cells over TLS over any [`TcpStreamApi`] byte stream, split into a reader and a
//! writer that run in two threads at once.
//!
//! ```text
//!   thread A: CellWriter::write_cell ──┐           ┌── CellReader::read_cell :thread B
//!                                      ▼           │
//!                 cells ─ encode ─▶ rustls::Connection (Mutex, held briefly) ─▶ CellDecoder ─▶ cells
//!                                      │                       ▲
//!                  records (write_tls) ▼                       │ read_tls + process_new_packets
//!              socket-write lock: take records + write them    │
//!                                      │                       │
//!                                      ▼                       │  blocking read, no lock held
//!                                  socket (write half)     socket (read half, try_clone)
//! ```
//!
//! Why this shape: a TLS read can need a write (the answer to a key update, an alert), and a split TLS stream
//! whose halves wait on each other deadlocks or starves. Here the reader never waits for the writer: it reads
//! the socket without any lock, decrypts under the connection lock, and hands any output it produced to
//! whichever thread can write it without waiting (itself, in non-blocking mode, if the socket-write lock is
//! free; otherwise the writer, which re-checks a "pending" flag after releasing the lock). The writer never
//! consumes the reader's wake-up: only the reader reads the socket.
//!
//! With the `async` feature, `TlsCellStream::split_async` gives `AsyncCellReader`/`AsyncCellWriter`
//! halves for two async tasks (futures-io traits), built the same way: each half has its own wake-up.
//!
//! Peer identity works the relay way: [`client_config_pinned`] accepts exactly one [`Pin`]ned certificate
//! and still checks the handshake signatures; [`client_config_webpki`] does ordinary CA verification.
//!
//! ```no_run
//! # fn demo(tcp: std::net::TcpStream, pin: plebnet_transport::tls::Pin) -> std::io::Result<()> {
//! use plebnet_transport::cell::{Cell, Command};
//! use plebnet_transport::tls::{TlsCellStream, client_config_pinned};
//!
//! let tls = TlsCellStream::connect(tcp, "relay.example", client_config_pinned(pin))?;
//! let (mut reader, mut writer) = tls.split()?;
//! let reading = std::thread::spawn(move || reader.read_cell());
//! writer.write_cell(&Cell { circ_id: 1, command: Command::RELAY, payload: vec![0; 509].into() })?;
//! writer.flush()?;
//! let reply = reading.join().expect("reader thread")?;
//! writer.close()?;
//! # let _ = reply; Ok(()) }
//! ```

#[cfg(feature = "async")]
mod async_split;
mod byte_split;
mod byte_stream;
mod config;
mod error;
mod pin;
mod reader;
mod recv;
mod shared;
mod writer;

use std::io;
use std::sync::Arc;

use plebnet::net::TcpStreamApi;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

#[cfg(feature = "async")]
pub use async_split::{AsyncCellReader, AsyncCellWriter, AsyncTcpStream};
pub use byte_split::{TlsByteReader, TlsByteWriter};
pub use byte_stream::TlsByteStream;
pub use config::{client_config_pinned, client_config_webpki, provider, self_signed, server_config};
pub use error::TlsStreamError;
pub(crate) use pin::hex;
pub use pin::{Pin, PinMismatch, PinnedServerVerifier};
pub use reader::CellReader;
pub use writer::CellWriter;

use shared::Shared;

/// A TLS session over `S` whose handshake is complete, ready to carry cells.
///
/// Build one with [`connect`](TlsCellStream::connect) or [`accept`](TlsCellStream::accept), then
/// [`split`](TlsCellStream::split) it into a [`CellReader`] and a [`CellWriter`].
#[derive(Debug)]
pub struct TlsCellStream<S: TcpStreamApi> {
    stream: S,
    conn: Connection,
}

impl<S: TcpStreamApi> TlsCellStream<S> {
    /// Runs the client handshake over `stream` (blocking) and checks the server against `config`'s verifier;
    /// `server_name` is sent as SNI (when it is a DNS name) and checked by WebPKI verifiers, but ignored by a
    /// [pinned](client_config_pinned) one.
    ///
    /// Fails with `InvalidInput` for a malformed server name, with [`TlsStreamError::Handshake`] when TLS
    /// fails (a pin mismatch says "certificate does not match the pinned fingerprint"), or with the socket's
    /// error.
    pub fn connect(stream: S, server_name: &str, config: impl Into<Arc<ClientConfig>>) -> io::Result<Self> {
        let name = ServerName::try_from(server_name.to_owned()).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{server_name:?} is not a valid TLS server name: {e}"))
        })?;
        let conn = ClientConnection::new(config.into(), name).map_err(TlsStreamError::Handshake)?;
        Self::handshake(stream, conn.into())
    }

    /// Runs the server handshake over `stream` (blocking) with `config`'s certificate.
    ///
    /// Fails with [`TlsStreamError::Handshake`] when TLS fails, or with the socket's error.
    pub fn accept(stream: S, config: impl Into<Arc<ServerConfig>>) -> io::Result<Self> {
        let conn = ServerConnection::new(config.into()).map_err(TlsStreamError::Handshake)?;
        Self::handshake(stream, conn.into())
    }

    fn handshake(mut stream: S, mut conn: Connection) -> io::Result<Self> {
        let handshake_error = |err: io::Error| match err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(tls) => TlsStreamError::Handshake(tls.clone()).into(),
            None => err,
        };
        while conn.is_handshaking() {
            if let Err(err) = conn.complete_io(&mut stream) {
                // Tell the peer why (the alert rustls queued), best effort.
                while conn.wants_write() && conn.write_tls(&mut stream).is_ok() {}
                return Err(handshake_error(err));
            }
        }
        while conn.wants_write() {
            conn.write_tls(&mut stream)?;
        }
        io::Write::flush(&mut stream)?;
        Ok(TlsCellStream { stream, conn })
    }

    /// The negotiated TLS version.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// The certificates the peer presented, end-entity first (`None` for a server without client auth).
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// The ALPN protocol the handshake agreed on, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The socket under the session (to set timeouts, or keep a [`try_clone`](TcpStreamApi::try_clone) that
    /// can shut it down).
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// Uses the session as a plain byte stream instead of a cell stream.
    pub fn into_byte_stream(self) -> TlsByteStream<S> {
        TlsByteStream::new(self.conn, self.stream)
    }

    /// Splits the stream into a reader and a writer that may be used from two threads at once.
    ///
    /// The reader reads through a [`try_clone`](TcpStreamApi::try_clone) of the socket; fails if that fails.
    pub fn split(self) -> io::Result<(CellReader<S>, CellWriter<S>)> {
        let read_half = self.stream.try_clone()?;
        let shared = Arc::new(Shared::new(self.conn, self.stream));
        Ok((CellReader::new(shared.clone(), read_half), CellWriter::new(shared)))
    }
}
