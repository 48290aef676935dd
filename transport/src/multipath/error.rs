//! Why a leg was closed or refused, and why a stream or tunnel operation failed.

use std::io;

/// A peer broke the multipath protocol on one leg. The tunnel closes that leg alone (or refuses it, during
/// the handshake); its unacknowledged data moves to the other legs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A cell whose fields do not parse.
    #[error("malformed tunnel cell: {0}")]
    Malformed(&'static str),
    /// A command outside the tunnel's set.
    #[error("unknown tunnel cell command 0x{0:02x}")]
    UnknownCommand(u8),
    /// A sequenced message of an unknown kind.
    #[error("unknown sequenced message kind {0}")]
    UnknownMessageKind(u8),
    /// LINK or LINKED carried a version this implementation does not speak.
    #[error("multipath protocol version {0} is not supported (this side speaks version 1)")]
    Version(u8),
    /// A cell that is valid only in another state of the leg's handshake.
    #[error("{0} is not allowed in this state of the leg")]
    Unexpected(&'static str),
    /// LINKED named another tunnel than the LINK it answers.
    #[error("LINKED carries a nonce other than the LINK it answers")]
    NonceMismatch,
    /// LINK asked to join a tunnel that does not exist here.
    #[error("LINK asks to join an unknown tunnel (nonce {0})")]
    UnknownNonce(String),
    /// LINK asked to create a tunnel with a nonce already used.
    #[error("LINK reuses nonce {0} of an existing or earlier tunnel")]
    ReusedNonce(String),
    /// SWITCH with relative sequence number 0, which proposal 329 forbids (it could serve as a side channel).
    #[error("SWITCH with relative sequence number 0")]
    SwitchZero,
    /// Two SWITCH cells without a sequenced cell between them.
    #[error("two SWITCH cells in a row on one leg")]
    SwitchTwice,
    /// A sequence number further ahead than the reorder window allows.
    #[error("sequence number {seq} is beyond the window (next expected {expected}, at most {max_ahead} ahead)")]
    BeyondWindow {
        /// The offending sequence number.
        seq: u64,
        /// The receiver's next expected sequence number.
        expected: u64,
        /// How far ahead a sequence number may be.
        max_ahead: u64,
    },
    /// The peer sent more than the reorder queue's bound, ignoring the tunnel window.
    #[error("reorder queue would exceed its bound of {limit} bytes: the peer ignored the tunnel window")]
    ReorderOverflow {
        /// The bound.
        limit: usize,
    },
    /// A DATA_ACK acknowledged more than was sent.
    #[error("DATA_ACK acknowledges {acked} but only {sent} were sent")]
    AckBeyondSent {
        /// What the ack claims.
        acked: u64,
        /// What was sent.
        sent: u64,
    },
    /// The handshake did not complete in time.
    #[error("the leg's handshake did not complete within {0:?}")]
    HandshakeTimeout(std::time::Duration),
    /// The leg carried outstanding data and went silent for too long.
    #[error("the leg acknowledged nothing for {0:?} while data was outstanding")]
    Silent(std::time::Duration),
    /// The leg's transport failed or closed (reported by the driver).
    #[error("the leg's transport failed: {0}")]
    Transport(String),
    /// The leg was removed by the application.
    #[error("the leg was removed")]
    Removed,
    /// The stream-level flow control of a stream was violated by the peer.
    #[error("stream {0}: the peer sent beyond the stream window")]
    StreamWindow(u32),
}

/// Why a stream or tunnel operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TunnelError {
    /// Every leg of the tunnel is gone.
    #[error("the tunnel has no live leg left (last: {0})")]
    NoLegs(String),
    /// The stream ID is not open.
    #[error("stream {0} is not open on this tunnel")]
    UnknownStream(u32),
    /// The peer refused the stream.
    #[error("the peer refused stream {0}")]
    Refused(u32),
    /// The stream was reset (by the peer, or because the peer broke its flow control).
    #[error("stream {0} was reset")]
    Reset(u32),
    /// Writing after finish().
    #[error("stream {0} was finished for writing")]
    Finished(u32),
    /// Too many streams are open.
    #[error("the tunnel's limit of {0} streams is reached")]
    TooManyStreams(usize),
    /// The tunnel was closed by the application.
    #[error("the tunnel was closed")]
    Closed,
}

impl TunnelError {
    /// The `io::ErrorKind` this error maps to.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            TunnelError::NoLegs(_) => io::ErrorKind::ConnectionAborted,
            TunnelError::UnknownStream(_) => io::ErrorKind::NotFound,
            TunnelError::Refused(_) => io::ErrorKind::ConnectionRefused,
            TunnelError::Reset(_) => io::ErrorKind::ConnectionReset,
            TunnelError::Finished(_) => io::ErrorKind::BrokenPipe,
            TunnelError::TooManyStreams(_) => io::ErrorKind::OutOfMemory,
            TunnelError::Closed => io::ErrorKind::NotConnected,
        }
    }
}

impl From<TunnelError> for io::Error {
    fn from(e: TunnelError) -> io::Error {
        io::Error::new(e.kind(), e)
    }
}
