//! A TLS session used as a plain byte stream: what a multipath connection falls back to when the peer does
//! not speak the multipath protocol.

use std::io::{self, Read, Write};

use plebnet::net::TcpStreamApi;
use rustls::Connection;

use super::TlsStreamError;
use super::byte_split::{self, TlsByteReader, TlsByteWriter};

/// A TLS session over `S` carrying bytes, not cells (blocking, one owner).
#[derive(Debug)]
pub struct TlsByteStream<S: TcpStreamApi> {
    conn: Connection,
    stream: S,
}

impl<S: TcpStreamApi> TlsByteStream<S> {
    pub(super) fn new(conn: Connection, stream: S) -> Self {
        TlsByteStream { conn, stream }
    }

    /// The socket under the session.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    fn write_pending(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.stream)?;
        }
        Ok(())
    }

    /// Splits the stream into a reader and a writer that may be used from two threads at once (one copying
    /// each way, as a port forward does).
    ///
    /// The reader reads through a [`try_clone`](TcpStreamApi::try_clone) of the socket; fails if that fails.
    pub fn split(self) -> io::Result<(TlsByteReader<S>, TlsByteWriter<S>)> {
        byte_split::split(self.conn, self.stream)
    }

    /// Sends close_notify and shuts the socket's write side.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        self.write_pending()?;
        self.stream.flush()?;
        self.stream.shutdown(std::net::Shutdown::Write)
    }
}

impl<S: TcpStreamApi> Read for TlsByteStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if self.conn.read_tls(&mut self.stream)? == 0 {
                // TCP ended: rustls reports a clean close_notify as Ok(0), a truncation as UnexpectedEof.
                self.conn.process_new_packets().map_err(TlsStreamError::Protocol)?;
                return self.conn.reader().read(buf);
            }
            self.conn.process_new_packets().map_err(TlsStreamError::Protocol)?;
            self.write_pending()?;
        }
    }
}

impl<S: TcpStreamApi> Write for TlsByteStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.conn.writer().write(buf)?;
        self.write_pending()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.conn.writer().flush()?;
        self.write_pending()?;
        self.stream.flush()
    }
}
