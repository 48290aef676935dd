//! Why a TLS cell stream failed: one enum, mapped onto `io::Error` so the halves behave like std sockets.

use std::io;

/// Why a [`TlsCellStream`](super::TlsCellStream) or one of its halves failed.
///
/// Every variant but [`TlsStreamError::Truncated`] leaves the connection unusable: the reader keeps returning
/// the error, and the writer fails from then on too (the halves share one "dead" state).
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsStreamError {
    /// The TLS handshake failed: a bad or unpinned certificate, no common version or cipher suite, or a peer
    /// that is not speaking TLS.
    #[error("TLS handshake failed: {}", describe_handshake_error(.0))]
    Handshake(rustls::Error),
    /// A received TLS record did not decrypt: its bytes were altered in transit or it was not sent by the peer
    /// that completed the handshake. No plaintext from it, or after it, is ever delivered.
    #[error(
        "TLS record failed authentication ({0}): the bytes were altered in transit or did not come from the peer; \
         the connection is unusable, reconnect"
    )]
    RecordAuthentication(rustls::Error),
    /// The peer broke the TLS protocol after the handshake, or sent a fatal alert.
    #[error("TLS protocol error ({0}); the connection is unusable, reconnect")]
    Protocol(rustls::Error),
    /// A TLS 1.3 key update could not be started; key updates need TLS 1.3 and a finished handshake.
    #[error("TLS key update failed ({0}); key updates need a TLS 1.3 connection")]
    KeyUpdate(rustls::Error),
    /// Writing to the socket failed earlier; the TLS record stream is now incomplete and cannot be resumed.
    #[error("an earlier socket write failed ({kind:?}: {message}); the TLS stream cannot be resumed, reconnect")]
    Socket {
        /// The kind of the socket error.
        kind: io::ErrorKind,
        /// Its message.
        message: String,
    },
    /// The peer closed the TCP connection without a TLS `close_notify`: the cells received so far may be cut
    /// short by an attacker or a crash.
    #[error("the peer closed the TCP connection without a TLS close_notify; the cell stream may have been truncated")]
    Truncated,
    /// [`CellWriter::close`](super::CellWriter::close) was called; nothing more can be written.
    #[error("the cell stream was closed with close(); open a new connection to send more cells")]
    Closed,
    /// A thread panicked while holding the connection's state.
    #[error("a thread panicked while holding the TLS connection state; the stream is unusable")]
    Poisoned,
}

/// Rustls prints a custom certificate error with `Debug`; print ours (such as a pin mismatch) with `Display`.
fn describe_handshake_error(err: &rustls::Error) -> String {
    match err {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            format!("invalid peer certificate: {}", other.0)
        }
        other => other.to_string(),
    }
}

impl TlsStreamError {
    /// Classifies a rustls error raised while processing received records.
    pub(crate) fn from_received(err: rustls::Error) -> Self {
        match err {
            rustls::Error::DecryptError => TlsStreamError::RecordAuthentication(err),
            other => TlsStreamError::Protocol(other),
        }
    }

    /// The `io::ErrorKind` this error maps to.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            TlsStreamError::Handshake(rustls::Error::InvalidCertificate(_)) => io::ErrorKind::PermissionDenied,
            TlsStreamError::Handshake(_) | TlsStreamError::RecordAuthentication(_) | TlsStreamError::Protocol(_) => {
                io::ErrorKind::InvalidData
            }
            TlsStreamError::KeyUpdate(_) => io::ErrorKind::Unsupported,
            TlsStreamError::Socket { kind, .. } => *kind,
            TlsStreamError::Truncated => io::ErrorKind::UnexpectedEof,
            TlsStreamError::Closed => io::ErrorKind::BrokenPipe,
            TlsStreamError::Poisoned => io::ErrorKind::Other,
        }
    }
}

/// Keeps the variant's [`kind`](TlsStreamError::kind); the message is the variant's `Display`, and the
/// `TlsStreamError` itself is the inner error (`io::Error::get_ref` + downcast reaches it).
impl From<TlsStreamError> for io::Error {
    fn from(err: TlsStreamError) -> Self {
        io::Error::new(err.kind(), err)
    }
}
