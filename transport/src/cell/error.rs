//! Errors of the cell codec: one enum for decoding, one for encoding.

use std::io;

use super::Command;

/// Why [`CellDecoder`](super::CellDecoder) could not produce a cell.
///
/// [`DecodeError::Oversized`] and [`DecodeError::Truncated`] are fatal: a byte stream cannot be resynchronised
/// after a framing error, so the decoder keeps returning the same error from every later call.
/// [`DecodeError::BufferFull`] is not: it refuses one push and leaves the decoder as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A variable-length cell declared a payload longer than the decoder's limit.
    #[error(
        "{command} cell declares a {len}-byte payload, over this decoder's {max}-byte limit; \
         the peer is misbehaving, or raise the limit with CellDecoder::with_max_var_payload_len"
    )]
    Oversized {
        /// The command of the offending cell.
        command: Command,
        /// The payload length its header declared.
        len: usize,
        /// The decoder's limit on variable-length payloads.
        max: usize,
    },
    /// The stream ended inside a cell.
    #[error(
        "stream ended inside a cell: {have} bytes of it arrived but its header calls for {need}; \
         the peer closed the stream mid-cell"
    )]
    Truncated {
        /// Bytes of the incomplete cell that were received.
        have: usize,
        /// Length of the cell as far as the received bytes tell: the whole cell once its header is complete,
        /// otherwise the length of the header.
        need: usize,
    },
    /// Accepting the pushed bytes would take the buffer over its limit; nothing was buffered.
    #[error(
        "pushing {pushed} bytes onto {buffered} buffered would exceed the decoder's {limit}-byte buffer limit; \
         take the decoded cells with poll_cell first, or push fewer bytes at a time"
    )]
    BufferFull {
        /// Bytes buffered before the push.
        buffered: usize,
        /// Bytes the refused push offered.
        pushed: usize,
        /// The decoder's buffer limit.
        limit: usize,
    },
}

/// Why [`Cell::encode`](super::Cell::encode) could not write a cell.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The output buffer is shorter than the encoded cell.
    #[error(
        "output buffer holds {have} bytes but the cell needs {need}; \
         pass a buffer of at least Cell::encoded_len() bytes"
    )]
    BufferTooSmall {
        /// Bytes the encoded cell takes.
        need: usize,
        /// Bytes the output buffer holds.
        have: usize,
    },
    /// The payload does not fit its cell: over 509 bytes for a fixed-length command, over 65535 for a
    /// variable-length one.
    #[error(
        "{command} cell payload is {len} bytes, over the {max}-byte maximum for this command; \
         split the data across several cells"
    )]
    PayloadTooLong {
        /// The cell's command.
        command: Command,
        /// The payload's length.
        len: usize,
        /// The longest payload the command's framing allows.
        max: usize,
    },
}

/// Maps to `UnexpectedEof` for a truncated stream, `InvalidData` for an oversized cell, and `OutOfMemory` for a
/// full buffer, so stream code can return codec errors the way `std::io` readers do.
impl From<DecodeError> for io::Error {
    fn from(err: DecodeError) -> Self {
        let kind = match err {
            DecodeError::Oversized { .. } => io::ErrorKind::InvalidData,
            DecodeError::Truncated { .. } => io::ErrorKind::UnexpectedEof,
            DecodeError::BufferFull { .. } => io::ErrorKind::OutOfMemory,
        };
        io::Error::new(kind, err)
    }
}

/// Maps to `InvalidInput`: an encode error is the caller's mistake.
impl From<EncodeError> for io::Error {
    fn from(err: EncodeError) -> Self {
        io::Error::new(io::ErrorKind::InvalidInput, err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_numbers() {
        let err = DecodeError::Oversized { command: Command::CERTS, len: 4000, max: 1024 };
        assert_eq!(
            err.to_string(),
            "CERTS cell declares a 4000-byte payload, over this decoder's 1024-byte limit; \
             the peer is misbehaving, or raise the limit with CellDecoder::with_max_var_payload_len"
        );
        let err = EncodeError::BufferTooSmall { need: 514, have: 100 };
        assert!(err.to_string().starts_with("output buffer holds 100 bytes but the cell needs 514"));
    }

    #[test]
    fn io_error_kinds() {
        let io: io::Error = DecodeError::Truncated { have: 3, need: 5 }.into();
        assert_eq!(io.kind(), io::ErrorKind::UnexpectedEof);
        let io: io::Error = EncodeError::BufferTooSmall { need: 514, have: 0 }.into();
        assert_eq!(io.kind(), io::ErrorKind::InvalidInput);
    }
}
