//! Tor-style cells, the framing unit of the link protocol (tor-spec §3, link protocol version 4 and later).
//!
//! A cell is a circuit ID, a [`Command`] and a payload. Most commands use fixed-length cells; [`Command::VERSIONS`]
//! and every command >= 128 use variable-length cells, which carry their payload length:
//!
//! ```text
//!  fixed-length cell, always 514 bytes
//!  +------------+---------+-----------------------------------------+
//!  |   CircID   | Command |  Payload: 509 bytes, zero padded        |
//!  | 4, BE u32  |    1    |                                         |
//!  +------------+---------+-----------------------------------------+
//!
//!  variable-length cell, 7 + Length bytes
//!  +------------+---------+------------+----------------------------+
//!  |   CircID   | Command |   Length   |  Payload: Length bytes     |
//!  | 4, BE u32  |    1    | 2, BE u16  |                            |
//!  +------------+---------+------------+----------------------------+
//! ```
//!
//! The codec is sans-IO: [`CellDecoder`] takes bytes in whatever pieces they arrive and hands back whole
//! [`Cell`]s, and [`Cell::encode`] writes a cell into a buffer the caller owns. Neither touches a socket.
//!
//! ```
//! use bytes::Bytes;
//! use plebnet_transport::cell::{Cell, CellDecoder, Command};
//!
//! let cell = Cell { circ_id: 7, command: Command::CERTS, payload: Bytes::from_static(b"certs") };
//! let mut wire = [0u8; 64];
//! let n = cell.encode(&mut wire)?;
//!
//! let mut decoder = CellDecoder::new();
//! for byte in &wire[..n] {
//!     decoder.push(std::slice::from_ref(byte))?;
//! }
//! assert_eq!(decoder.poll_cell()?, Some(cell));
//! assert_eq!(decoder.poll_cell()?, None);
//! decoder.finish()?; // the stream ended on a cell boundary
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Not covered: a connection's first cell, VERSIONS, is sent before the link protocol is negotiated and so with
//! a 2-byte CircID (tor-spec §4.1). This codec speaks only the 4-byte CircID of link protocol 4 and later; the
//! handshake must frame that one cell itself.

mod command;
mod decoder;
mod encoder;
mod error;

use bytes::Bytes;

pub use command::Command;
pub use decoder::CellDecoder;
pub use error::{DecodeError, EncodeError};

/// Length of the CircID field in link protocol 4 and later.
const CIRC_ID_LEN: usize = 4;
/// CircID and command: the header of a fixed-length cell.
const FIXED_HEADER_LEN: usize = CIRC_ID_LEN + 1;
/// Length of a fixed-length cell's payload, padding included.
pub const FIXED_PAYLOAD_LEN: usize = 509;
/// Length of a whole fixed-length cell on the wire.
pub const FIXED_CELL_LEN: usize = FIXED_HEADER_LEN + FIXED_PAYLOAD_LEN;
/// CircID, command and payload length: the header of a variable-length cell.
pub const VAR_HEADER_LEN: usize = FIXED_HEADER_LEN + 2;
/// The longest payload a variable-length cell's 16-bit length field can declare.
pub const MAX_VAR_PAYLOAD_LEN: usize = u16::MAX as usize;

/// One cell.
///
/// For a fixed-length command the payload holds at most [`FIXED_PAYLOAD_LEN`] bytes; [`Cell::encode`] pads it
/// with zeros to that length, and [`CellDecoder`] always returns all [`FIXED_PAYLOAD_LEN`] bytes, padding
/// included, since the wire does not say where the meaningful bytes end (the command's own format does). A
/// decoded fixed-length cell therefore equals the cell that was encoded only if that cell's payload was already
/// full length. For a variable-length command the payload holds at most [`MAX_VAR_PAYLOAD_LEN`] bytes and
/// round-trips exactly.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cell {
    /// The circuit this cell belongs to; 0 for cells about the link itself.
    pub circ_id: u32,
    /// What the cell does; also decides its framing ([`Command::is_variable`]).
    pub command: Command,
    /// The payload. Decoded payloads share the decoder's buffer rather than being copied.
    pub payload: Bytes,
}

/// The longest payload `command`'s framing can carry.
const fn max_payload_len(command: Command) -> usize {
    if command.is_variable() { MAX_VAR_PAYLOAD_LEN } else { FIXED_PAYLOAD_LEN }
}

#[cfg(test)]
mod tests;
