//! The tunnel's messages and their cell encoding.
//!
//! Every tunnel message travels as one variable-length cell on circuit 0 of a leg, with a command from the
//! private range 0xF0–0xF6:
//!
//! ```text
//!  leg-level (about one leg; never resent elsewhere)
//!   LINK        0xF0  version 1 | nonce 32 | last seq sent 8 | last seq received 8 | UX 1 | flags 1
//!   LINKED      0xF1  same fields as LINK, from the responder
//!   LINKED_ACK  0xF2  empty
//!   SWITCH      0xF3  relative sequence number 4 (the next SEQ on this leg is last + relative + 1)
//!   DATA_ACK    0xF4  cumulative seq delivered in order 8 | sequenced cells received on this leg 8
//!
//!  sequenced (tunnel-level; each has an absolute sequence number, delivered once and in order)
//!   SEQ         0xF5  body                  (seq implicit: the previous on this leg + 1)
//!   RESEND      0xF6  seq 8 | body          (seq explicit: a reinjected copy)
//!
//!  body: kind 1 | stream ID 4 | payload
//!   BEGIN 1 (window 4 | target)   CONNECTED 2 (window 4)   DATA 3 (bytes)   END 4 (reason 1)   SENDME 5 (credit 4)
//! ```
//!
//! LINK, LINKED, LINKED_ACK and SWITCH follow Tor proposal 329; DATA_ACK and RESEND are plebnet's additions
//! (the data-level acknowledgement and reinjection of MPTCP, RFC 8684 §3.3), so a dying leg loses nothing.
//! All integers are big-endian.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::cell::{Cell, Command};

use super::error::ProtocolError;

/// The multipath protocol version this implementation speaks.
pub const VERSION: u8 = 1;

/// LINK: the initiator asks to link a leg into a tunnel.
pub const LINK: Command = Command(0xF0);
/// LINKED: the responder's answer to LINK.
pub const LINKED: Command = Command(0xF1);
/// LINKED_ACK: the initiator confirms LINKED; the leg is up.
pub const LINKED_ACK: Command = Command(0xF2);
/// SWITCH: the sender continues on this leg further along the sequence.
pub const SWITCH: Command = Command(0xF3);
/// DATA_ACK: what the receiver has, in order and per leg.
pub const DATA_ACK: Command = Command(0xF4);
/// SEQ: a sequenced message whose number is implicit.
pub const SEQ: Command = Command(0xF5);
/// RESEND: a sequenced message with an explicit number, reinjected from another leg.
pub const RESEND: Command = Command(0xF6);

/// Length of a tunnel nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes a sequenced message costs beyond its body: the cell header.
pub const CELL_OVERHEAD: usize = crate::cell::VAR_HEADER_LEN;
/// Smallest cost of one sequenced message (a body header and the cell header).
pub const MIN_MESSAGE_COST: usize = BODY_HEADER_LEN + CELL_OVERHEAD;
const BODY_HEADER_LEN: usize = 5;
const LINK_LEN: usize = 1 + NONCE_LEN + 8 + 8 + 1 + 1;

/// LINK flag: join the tunnel with this nonce (unset: create a new tunnel).
pub const FLAG_JOIN: u8 = 1;
/// LINK flag: the leg is a backup, carrying data only when no other leg can.
pub const FLAG_BACKUP: u8 = 2;

/// The fields of LINK and LINKED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Protocol version, [`VERSION`].
    pub version: u8,
    /// The tunnel's nonce, chosen by the initiator.
    pub nonce: [u8; NONCE_LEN],
    /// The sender's highest sequence number assigned so far; its next SEQ on this leg is this + 1.
    pub last_seq_sent: u64,
    /// The sender's highest sequence number received in order so far.
    pub last_seq_recv: u64,
    /// Desired UX (proposal 329), which names a scheduler.
    pub ux: u8,
    /// [`FLAG_JOIN`], [`FLAG_BACKUP`].
    pub flags: u8,
}

/// A tunnel-level message, carried with a sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Open a stream to `target`; the opener will accept `window` bytes before the first SENDME.
    Begin {
        /// Stream ID.
        stream: u32,
        /// The opener's receive window.
        window: u32,
        /// What to connect to, as the application names it.
        target: String,
    },
    /// The stream is accepted; the acceptor's receive window.
    Connected {
        /// Stream ID.
        stream: u32,
        /// The acceptor's receive window.
        window: u32,
    },
    /// Stream bytes.
    Data {
        /// Stream ID.
        stream: u32,
        /// The bytes.
        data: Bytes,
    },
    /// The sender writes no more on this stream; reason 0 is a clean finish, others end it in error.
    End {
        /// Stream ID.
        stream: u32,
        /// [`END_DONE`], [`END_REFUSED`] or [`END_RESET`].
        reason: u8,
    },
    /// The receiver consumed `credit` more bytes; the sender may send that many more.
    Sendme {
        /// Stream ID.
        stream: u32,
        /// Bytes of window returned.
        credit: u32,
    },
}

/// END reason: the sender finished writing (the other direction stays open).
pub const END_DONE: u8 = 0;
/// END reason: the stream was refused by the acceptor.
pub const END_REFUSED: u8 = 1;
/// END reason: the stream was reset; both directions are dead.
pub const END_RESET: u8 = 2;

/// A tunnel message as it travels on a leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// LINK.
    Link(Link),
    /// LINKED.
    Linked(Link),
    /// LINKED_ACK.
    LinkedAck,
    /// SWITCH with its relative sequence number.
    Switch(u32),
    /// DATA_ACK.
    DataAck {
        /// Highest sequence number the receiver has in order.
        cumulative: u64,
        /// How many sequenced cells (SEQ and RESEND) arrived on this leg.
        leg_received: u64,
    },
    /// SEQ: the encoded body; its number is implicit.
    Seq(Bytes),
    /// RESEND: an explicit number and the encoded body.
    Resend(u64, Bytes),
}

impl Message {
    /// The cell carrying this message.
    pub fn to_cell(&self) -> Cell {
        let (command, payload) = match self {
            Message::Link(l) => (LINK, encode_link(l)),
            Message::Linked(l) => (LINKED, encode_link(l)),
            Message::LinkedAck => (LINKED_ACK, Bytes::new()),
            Message::Switch(rel) => (SWITCH, Bytes::copy_from_slice(&rel.to_be_bytes())),
            Message::DataAck { cumulative, leg_received } => {
                let mut b = BytesMut::with_capacity(16);
                b.put_u64(*cumulative);
                b.put_u64(*leg_received);
                (DATA_ACK, b.freeze())
            }
            Message::Seq(body) => (SEQ, body.clone()),
            Message::Resend(seq, body) => {
                let mut b = BytesMut::with_capacity(8 + body.len());
                b.put_u64(*seq);
                b.put_slice(body);
                (RESEND, b.freeze())
            }
        };
        Cell { circ_id: 0, command, payload }
    }

    /// Parses a cell received on a leg.
    pub fn from_cell(cell: &Cell) -> Result<Message, ProtocolError> {
        if cell.circ_id != 0 {
            return Err(ProtocolError::Malformed("tunnel cells travel on circuit 0"));
        }
        let mut p = cell.payload.clone();
        let exact = |p: &Bytes, len: usize, what: &'static str| {
            if p.len() == len { Ok(()) } else { Err(ProtocolError::Malformed(what)) }
        };
        Ok(match cell.command {
            LINK | LINKED => {
                exact(&p, LINK_LEN, "LINK/LINKED must be 51 bytes")?;
                let version = p.get_u8();
                let mut nonce = [0u8; NONCE_LEN];
                p.copy_to_slice(&mut nonce);
                let link = Link {
                    version,
                    nonce,
                    last_seq_sent: p.get_u64(),
                    last_seq_recv: p.get_u64(),
                    ux: p.get_u8(),
                    flags: p.get_u8(),
                };
                if cell.command == LINK { Message::Link(link) } else { Message::Linked(link) }
            }
            LINKED_ACK => {
                exact(&p, 0, "LINKED_ACK must be empty")?;
                Message::LinkedAck
            }
            SWITCH => {
                exact(&p, 4, "SWITCH must be 4 bytes")?;
                Message::Switch(p.get_u32())
            }
            DATA_ACK => {
                exact(&p, 16, "DATA_ACK must be 16 bytes")?;
                Message::DataAck { cumulative: p.get_u64(), leg_received: p.get_u64() }
            }
            SEQ => Message::Seq(p),
            RESEND => {
                if p.len() < 8 {
                    return Err(ProtocolError::Malformed("RESEND shorter than its sequence number"));
                }
                let seq = p.get_u64();
                Message::Resend(seq, p)
            }
            _ => return Err(ProtocolError::UnknownCommand(cell.command.0)),
        })
    }
}

fn encode_link(l: &Link) -> Bytes {
    let mut b = BytesMut::with_capacity(LINK_LEN);
    b.put_u8(l.version);
    b.put_slice(&l.nonce);
    b.put_u64(l.last_seq_sent);
    b.put_u64(l.last_seq_recv);
    b.put_u8(l.ux);
    b.put_u8(l.flags);
    b.freeze()
}

const KIND_BEGIN: u8 = 1;
const KIND_CONNECTED: u8 = 2;
const KIND_DATA: u8 = 3;
const KIND_END: u8 = 4;
const KIND_SENDME: u8 = 5;

impl Body {
    /// The stream this message is about.
    pub fn stream(&self) -> u32 {
        match self {
            Body::Begin { stream, .. }
            | Body::Connected { stream, .. }
            | Body::Data { stream, .. }
            | Body::End { stream, .. }
            | Body::Sendme { stream, .. } => *stream,
        }
    }

    /// Encodes the body.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::new();
        match self {
            Body::Begin { stream, window, target } => {
                b.put_u8(KIND_BEGIN);
                b.put_u32(*stream);
                b.put_u32(*window);
                b.put_slice(target.as_bytes());
            }
            Body::Connected { stream, window } => {
                b.put_u8(KIND_CONNECTED);
                b.put_u32(*stream);
                b.put_u32(*window);
            }
            Body::Data { stream, data } => {
                b.reserve(BODY_HEADER_LEN + data.len());
                b.put_u8(KIND_DATA);
                b.put_u32(*stream);
                b.put_slice(data);
            }
            Body::End { stream, reason } => {
                b.put_u8(KIND_END);
                b.put_u32(*stream);
                b.put_u8(*reason);
            }
            Body::Sendme { stream, credit } => {
                b.put_u8(KIND_SENDME);
                b.put_u32(*stream);
                b.put_u32(*credit);
            }
        }
        b.freeze()
    }

    /// Parses an encoded body.
    pub fn decode(mut p: Bytes) -> Result<Body, ProtocolError> {
        if p.len() < BODY_HEADER_LEN {
            return Err(ProtocolError::Malformed("sequenced message shorter than its header"));
        }
        let kind = p.get_u8();
        let stream = p.get_u32();
        let need = |p: &Bytes, len: usize, what: &'static str| {
            if p.len() == len { Ok(()) } else { Err(ProtocolError::Malformed(what)) }
        };
        Ok(match kind {
            KIND_BEGIN => {
                if p.len() < 4 {
                    return Err(ProtocolError::Malformed("BEGIN without a window"));
                }
                let window = p.get_u32();
                let target =
                    String::from_utf8(p.to_vec()).map_err(|_| ProtocolError::Malformed("BEGIN target is not UTF-8"))?;
                Body::Begin { stream, window, target }
            }
            KIND_CONNECTED => {
                need(&p, 4, "CONNECTED must carry exactly a window")?;
                Body::Connected { stream, window: p.get_u32() }
            }
            KIND_DATA => Body::Data { stream, data: p },
            KIND_END => {
                need(&p, 1, "END must carry exactly a reason")?;
                Body::End { stream, reason: p.get_u8() }
            }
            KIND_SENDME => {
                need(&p, 4, "SENDME must carry exactly a credit")?;
                Body::Sendme { stream, credit: p.get_u32() }
            }
            other => return Err(ProtocolError::UnknownMessageKind(other)),
        })
    }
}

/// What one sequenced message counts against the reorder window: its body and the cell header.
pub fn message_cost(body: &Bytes) -> usize {
    body.len() + CELL_OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips_through_a_cell() {
        let link = Link { version: 1, nonce: [7; 32], last_seq_sent: 9, last_seq_recv: 4, ux: 3, flags: 3 };
        let body = Body::Data { stream: 5, data: Bytes::from_static(b"abc") }.encode();
        for m in [
            Message::Link(link),
            Message::Linked(link),
            Message::LinkedAck,
            Message::Switch(17),
            Message::DataAck { cumulative: 1 << 40, leg_received: 3 },
            Message::Seq(body.clone()),
            Message::Resend(99, body),
        ] {
            assert_eq!(Message::from_cell(&m.to_cell()).unwrap(), m);
        }
    }

    #[test]
    fn every_body_round_trips() {
        for b in [
            Body::Begin { stream: 1, window: 65536, target: "10.0.0.1:80".into() },
            Body::Connected { stream: 2, window: 1 },
            Body::Data { stream: 3, data: Bytes::from_static(b"xyz") },
            Body::End { stream: 4, reason: END_RESET },
            Body::Sendme { stream: 5, credit: 4096 },
        ] {
            assert_eq!(Body::decode(b.encode()).unwrap(), b);
        }
    }

    #[test]
    fn malformed_cells_are_precise_errors() {
        let bad = Cell { circ_id: 0, command: SWITCH, payload: Bytes::from_static(b"\0\0\0") };
        assert_eq!(Message::from_cell(&bad), Err(ProtocolError::Malformed("SWITCH must be 4 bytes")));
        let unknown = Cell { circ_id: 0, command: Command(0xFE), payload: Bytes::new() };
        assert_eq!(Message::from_cell(&unknown), Err(ProtocolError::UnknownCommand(0xFE)));
        assert_eq!(Body::decode(Bytes::from_static(&[9, 0, 0, 0, 1])), Err(ProtocolError::UnknownMessageKind(9)));
    }
}
