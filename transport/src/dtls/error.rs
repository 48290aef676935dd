//! Why a DTLS session or endpoint failed.

use std::io;

/// Why a DTLS session ended or could not start. Every variant ends the
/// session; a link starts a new one where its configuration says so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtlsError {
    /// The settings were refused (bad timers, unusable key or certificate).
    #[error("DTLS configuration: {0}")]
    Config(String),
    /// The peer presented a certificate that matches no pin this endpoint
    /// accepts: not the peer configured, or its certificate changed.
    #[error(
        "DTLS peer certificate matches no configured pin: the peer presented {presented}, \
         this endpoint accepts {accepted}"
    )]
    PinMismatch {
        /// The presented certificate's fingerprints, in hex.
        presented: String,
        /// The pins accepted, as configured.
        accepted: String,
    },
    /// The handshake finished without the peer presenting a certificate.
    #[error("DTLS peer finished the handshake without a certificate")]
    NoPeerCertificate,
    /// The DTLS engine gave up: a protocol violation, a failed
    /// authentication, or a handshake that ran out of retransmissions or
    /// time.
    #[error("DTLS: {0}")]
    Protocol(String),
    /// The peer closed the session (close_notify).
    #[error("DTLS peer closed the session")]
    PeerClosed,
    /// This endpoint closed the session.
    #[error("DTLS session closed")]
    Closed,
}

impl From<DtlsError> for io::Error {
    fn from(e: DtlsError) -> Self {
        let kind = match &e {
            DtlsError::Config(_) => io::ErrorKind::InvalidInput,
            DtlsError::PinMismatch { .. } | DtlsError::NoPeerCertificate => io::ErrorKind::PermissionDenied,
            DtlsError::Protocol(_) => io::ErrorKind::InvalidData,
            DtlsError::PeerClosed => io::ErrorKind::ConnectionReset,
            DtlsError::Closed => io::ErrorKind::NotConnected,
        };
        io::Error::new(kind, e)
    }
}
