//! Why a channel or circuit operation failed: one enum, mapped onto `io::Error` like the TLS stream's errors.

use std::io;

/// Why a [`CellChannel`](super::CellChannel) or [`Circuit`](super::Circuit) operation failed.
///
/// Errors from the TLS stream itself (a failed socket write, a dead TLS session) are returned as the TLS
/// stream reports them; these are the channel's own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// Circuit ID 0 was asked for; it carries link-level cells.
    #[error(
        "circuit ID 0 is reserved for link-level cells (VERSIONS, NETINFO, PADDING); \
         open circuits with IDs from 1, or use CellChannel::send_link_cell"
    )]
    ReservedId,
    /// [`open_circuit`](super::CellChannel::open_circuit) named a circuit that is open already (opened here,
    /// or created by the peer).
    #[error("circuit {circ_id} is already open on this channel; pick an unused circuit ID")]
    InUse {
        /// The circuit ID asked for.
        circ_id: u32,
    },
    /// The peer sent more cells than the circuit's receive queue holds; the channel closed that circuit
    /// (alone) rather than hold up every other circuit.
    #[error(
        "circuit {circ_id} overflowed its {capacity}-cell receive queue: the peer sent past what flow control \
         (SENDME windows) allows, or the application stopped reading it; the circuit was closed, open a new one"
    )]
    Overflow {
        /// The circuit that overflowed.
        circ_id: u32,
        /// Its queue's capacity, [`ChannelConfig::queue_cells`](super::ChannelConfig::queue_cells).
        capacity: usize,
    },
    /// The peer tore the circuit down with a DESTROY cell; nothing more can be sent on it.
    #[error("circuit {circ_id} was destroyed by the peer (DESTROY reason {reason}); open a new circuit")]
    Destroyed {
        /// The destroyed circuit.
        circ_id: u32,
        /// The reason byte of the peer's DESTROY cell (tor-spec §5.4).
        reason: u8,
    },
    /// [`Circuit::close`](super::Circuit::close) was called; nothing more can be sent on it.
    #[error("circuit {circ_id} was closed with close(); open a new circuit to send more cells")]
    Closed {
        /// The closed circuit.
        circ_id: u32,
    },
    /// The peer closed the TLS session cleanly; the channel carries nothing more.
    #[error("the peer closed the cell channel; open a new channel")]
    ChannelClosed,
    /// The channel's reader failed (a TLS error, a malformed cell, a socket error), which closes every
    /// circuit on it.
    #[error("the cell channel failed ({message}); every circuit on it is closed, reconnect")]
    Link {
        /// The kind of the reader's error.
        kind: io::ErrorKind,
        /// The reader's error message.
        message: String,
    },
    /// [`Circuit::send`](super::Circuit::send) was asked to send a DESTROY cell.
    #[error("send DESTROY with Circuit::close, which also frees the circuit ID")]
    DestroyViaSend,
}

impl ChannelError {
    /// The `io::ErrorKind` this error maps to.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            ChannelError::ReservedId | ChannelError::DestroyViaSend => io::ErrorKind::InvalidInput,
            ChannelError::InUse { .. } => io::ErrorKind::AlreadyExists,
            ChannelError::Overflow { .. } => io::ErrorKind::OutOfMemory,
            ChannelError::Destroyed { .. } | ChannelError::Closed { .. } | ChannelError::ChannelClosed => {
                io::ErrorKind::NotConnected
            }
            ChannelError::Link { kind, .. } => *kind,
        }
    }
}

/// Keeps the variant's [`kind`](ChannelError::kind); the `ChannelError` is the inner error.
impl From<ChannelError> for io::Error {
    fn from(err: ChannelError) -> Self {
        io::Error::new(err.kind(), err)
    }
}
