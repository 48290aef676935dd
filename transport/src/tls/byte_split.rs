//! A [`TlsByteStream`](super::TlsByteStream) split into a reader and a writer for two threads: the same
//! shape as the cell halves (see [`Shared`]), carrying bytes instead of cells. A port forward that falls back
//! to a single TLS path copies both directions at once with these.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;

use plebnet::net::TcpStreamApi;

use super::TlsStreamError;
use super::recv::CipherIn;
use super::shared::Shared;

/// The receiving half of a [`TlsByteStream`](super::TlsByteStream), from
/// [`split`](super::TlsByteStream::split).
///
/// Like [`CellReader`](super::CellReader), it blocks in the socket read without holding any lock, and TLS
/// output that reading produces is written by whichever half can do so without waiting. `read` returns 0
/// once the peer sent `close_notify`; a TCP end without it is [`TlsStreamError::Truncated`].
pub struct TlsByteReader<S: TcpStreamApi> {
    shared: Arc<Shared<S>>,
    stream: S,
    cipher: CipherIn,
}

impl<S: TcpStreamApi> std::fmt::Debug for TlsByteReader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsByteReader").field("stream", &self.stream).finish_non_exhaustive()
    }
}

/// The sending half of a [`TlsByteStream`](super::TlsByteStream), from
/// [`split`](super::TlsByteStream::split). Every `write` is encrypted and sent before it returns.
pub struct TlsByteWriter<S: TcpStreamApi> {
    shared: Arc<Shared<S>>,
}

impl<S: TcpStreamApi> std::fmt::Debug for TlsByteWriter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsByteWriter").finish_non_exhaustive()
    }
}

/// Builds the halves over a session whose handshake is complete.
pub(super) fn split<S: TcpStreamApi>(
    conn: rustls::Connection,
    stream: S,
) -> io::Result<(TlsByteReader<S>, TlsByteWriter<S>)> {
    let read_half = stream.try_clone()?;
    let shared = Arc::new(Shared::new(conn, stream));
    let reader = TlsByteReader { shared: shared.clone(), stream: read_half, cipher: CipherIn::new() };
    Ok((reader, TlsByteWriter { shared }))
}

/// What one step of the read loop achieved.
enum Step {
    /// Plaintext for the caller (0 after close_notify).
    Read(usize),
    /// Ciphertext went into rustls; step again.
    Progress,
    /// Everything received is processed and no plaintext is left: read the socket.
    NeedBytes,
}

impl<S: TcpStreamApi> TlsByteReader<S> {
    /// Under the connection lock: plaintext into `buf` if there is some, else the received ciphertext into
    /// rustls.
    fn step(&mut self, buf: &mut [u8]) -> io::Result<Step> {
        let mut conn = self.shared.conn()?;
        match conn.reader().read(buf) {
            Ok(n) => return Ok(Step::Read(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(TlsStreamError::Truncated.into()),
            Err(e) => return Err(e),
        }
        let progress = self.cipher.feed(conn, &self.shared, |shared| shared.flush_from_reader())?;
        Ok(if progress { Step::Progress } else { Step::NeedBytes })
    }
}

impl<S: TcpStreamApi> Read for TlsByteReader<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.step(buf)? {
                Step::Read(n) => return Ok(n),
                Step::Progress => {}
                // rustls holds no plaintext here (it refuses input while its plaintext buffer is full).
                Step::NeedBytes => self.cipher.fill_from(&mut self.stream, &self.shared)?,
            }
        }
    }
}

impl<S: TcpStreamApi> TlsByteWriter<S> {
    /// Sends `close_notify` and shuts the socket's write side; the reader keeps working until the peer
    /// closes too. Writing afterwards fails with [`TlsStreamError::Closed`].
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        self.shared.check_alive()?;
        self.shared.conn()?.send_close_notify();
        self.shared.flush_blocking()?;
        self.shared.kill(TlsStreamError::Closed);
        self.shared.sock()?.stream.shutdown(Shutdown::Write)
    }
}

impl<S: TcpStreamApi> Write for TlsByteWriter<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.shared.check_alive()?;
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let n = self.shared.conn()?.writer().write(buf)?;
            // Send what was encrypted (and, if rustls's buffer was full, make room for the next try).
            self.shared.flush_blocking()?;
            if n > 0 {
                return Ok(n);
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.shared.check_alive()?;
        self.shared.flush_blocking()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::thread;

    use sha2::{Digest, Sha256};

    use super::*;
    use crate::tls::{Pin, TlsByteStream, TlsCellStream, client_config_pinned, self_signed, server_config};

    /// A TLS byte-stream pair over kernel TCP on loopback: `(client, server)`.
    fn pair() -> (TlsByteStream<TcpStream>, TlsByteStream<TcpStream>) {
        let (cert, key) = self_signed(&["bytes.test"]).unwrap();
        let pin = Pin::cert_sha256(&cert);
        let config = server_config(cert, key).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            TlsCellStream::accept(tcp, config).unwrap().into_byte_stream()
        });
        let tcp = TcpStream::connect(addr).unwrap();
        let client = TlsCellStream::connect(tcp, "bytes.test", client_config_pinned(pin)).unwrap().into_byte_stream();
        (client, server.join().unwrap())
    }

    fn data(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| ((i as u64 * 2_654_435_761) >> 7) as u8 ^ seed).collect()
    }

    fn read_to_end_hashed(mut r: impl Read) -> (usize, [u8; 32]) {
        let (mut hasher, mut total, mut buf) = (Sha256::new(), 0, vec![0u8; 7000]);
        loop {
            match r.read(&mut buf).unwrap() {
                0 => return (total, hasher.finalize().into()),
                n => {
                    hasher.update(&buf[..n]);
                    total += n;
                }
            }
        }
    }

    /// Both sides write 4 MiB while reading the other's, each in two threads; each sees the other's bytes
    /// and then a clean end.
    #[test]
    fn halves_carry_both_directions_at_once() {
        let (client, server) = pair();
        let sides: Vec<_> = [(client, 1u8), (server, 2u8)]
            .into_iter()
            .map(|(stream, seed)| {
                let (reader, mut writer) = stream.split().unwrap();
                let sent = data(seed, 4 << 20);
                let hash: [u8; 32] = Sha256::digest(&sent).into();
                let writing = thread::spawn(move || {
                    sent.chunks(50_000).for_each(|c| writer.write_all(c).unwrap());
                    writer.shutdown_write().unwrap();
                });
                (hash, writing, thread::spawn(move || read_to_end_hashed(reader)))
            })
            .collect();
        let (mut sent, mut got) = (Vec::new(), Vec::new());
        for (hash, writing, reading) in sides {
            writing.join().unwrap();
            got.push(reading.join().unwrap());
            sent.push((4 << 20, hash));
        }
        // The client's reader got the server's bytes and the other way round.
        assert_eq!(got, vec![sent[1], sent[0]]);
    }

    /// Everything the peer sent before its close_notify and FIN is read, even when it all arrived before
    /// the first read: the socket's EOF must not be handed to rustls while decrypted bytes wait (rustls
    /// refuses input while its plaintext buffer is full). Many lengths, so the last records fall at every
    /// alignment.
    #[test]
    fn data_before_close_notify_is_all_read() {
        for records in 1..8 {
            for extra in [0, 100, 8000, 16_000] {
                let (client, mut server) = pair();
                let sent = data(3, records * 16_384 + extra);
                server.write_all(&sent).unwrap();
                server.flush().unwrap();
                server.shutdown_write().unwrap();
                drop(server);
                let (reader, _writer) = client.split().unwrap();
                let got = read_to_end_hashed(reader);
                assert_eq!(got, (sent.len(), Sha256::digest(&sent).into()), "{} bytes", sent.len());
            }
        }
    }
}
