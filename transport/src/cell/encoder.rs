//! Writing cells: into a caller's slice, or appended to a `BytesMut`.

use bytes::{BufMut, BytesMut};

use super::{Cell, EncodeError, FIXED_CELL_LEN, FIXED_PAYLOAD_LEN, VAR_HEADER_LEN, max_payload_len};

impl Cell {
    /// Bytes this cell takes on the wire: [`FIXED_CELL_LEN`] for a fixed-length command,
    /// [`VAR_HEADER_LEN`] plus the payload length for a variable-length one.
    ///
    /// This is the length [`Cell::encode`] needs even when the payload is too long to encode.
    pub fn encoded_len(&self) -> usize {
        if self.command.is_variable() { VAR_HEADER_LEN + self.payload.len() } else { FIXED_CELL_LEN }
    }

    /// Writes the cell to the start of `out` and returns the number of bytes written ([`Cell::encoded_len`]).
    ///
    /// A fixed-length payload is padded with zeros to [`FIXED_PAYLOAD_LEN`] bytes.
    /// Bytes of `out` past the cell are left alone. On error nothing is written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        self.check_payload()?;
        let need = self.encoded_len();
        let have = out.len();
        let mut out = out.get_mut(..need).ok_or(EncodeError::BufferTooSmall { need, have })?;
        self.put(&mut out);
        Ok(need)
    }

    /// Appends the cell to `out`, growing it as needed, and returns the number of bytes appended.
    ///
    /// On error `out` is unchanged.
    pub fn encode_to(&self, out: &mut BytesMut) -> Result<usize, EncodeError> {
        self.check_payload()?;
        out.reserve(self.encoded_len());
        self.put(out);
        Ok(self.encoded_len())
    }

    fn check_payload(&self) -> Result<(), EncodeError> {
        let max = max_payload_len(self.command);
        let len = self.payload.len();
        if len > max {
            return Err(EncodeError::PayloadTooLong { command: self.command, len, max });
        }
        Ok(())
    }

    /// Writes the cell; the caller has checked the payload and that `out` has room.
    fn put(&self, out: &mut impl BufMut) {
        out.put_u32(self.circ_id);
        out.put_u8(self.command.0);
        if self.command.is_variable() {
            // check_payload bounds a variable payload by u16::MAX.
            out.put_u16(self.payload.len() as u16);
            out.put_slice(&self.payload);
        } else {
            out.put_slice(&self.payload);
            out.put_bytes(0, FIXED_PAYLOAD_LEN - self.payload.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::cell::{Command, MAX_VAR_PAYLOAD_LEN};

    fn cell(command: Command, payload: &'static [u8]) -> Cell {
        Cell { circ_id: 0x0102_0304, command, payload: Bytes::from_static(payload) }
    }

    #[test]
    fn fixed_cell_layout() {
        let mut out = [0xAAu8; FIXED_CELL_LEN + 3];
        assert_eq!(cell(Command::RELAY, b"hi").encode(&mut out), Ok(FIXED_CELL_LEN));
        assert_eq!(&out[..7], &[1, 2, 3, 4, 3, b'h', b'i']);
        assert!(out[7..FIXED_CELL_LEN].iter().all(|&b| b == 0), "padding is zeros");
        assert_eq!(&out[FIXED_CELL_LEN..], &[0xAA; 3], "bytes past the cell untouched");
    }

    #[test]
    fn variable_cell_layout() {
        let mut out = [0u8; 16];
        assert_eq!(cell(Command::VERSIONS, &[0, 4, 0, 5]).encode(&mut out), Ok(11));
        assert_eq!(&out[..11], &[1, 2, 3, 4, 7, 0, 4, 0, 4, 0, 5]);
    }

    #[test]
    fn buffer_too_small() {
        let mut out = [0u8; FIXED_CELL_LEN - 1];
        let err = cell(Command::CREATE_FAST, b"").encode(&mut out);
        assert_eq!(err, Err(EncodeError::BufferTooSmall { need: FIXED_CELL_LEN, have: FIXED_CELL_LEN - 1 }));
        assert!(out.iter().all(|&b| b == 0), "nothing written on error");

        let err = cell(Command::VPADDING, b"abc").encode(&mut [0u8; 9]);
        assert_eq!(err, Err(EncodeError::BufferTooSmall { need: 10, have: 9 }));
        assert_eq!(cell(Command::VPADDING, b"abc").encode(&mut [0u8; 10]), Ok(10));
    }

    #[test]
    fn payload_too_long() {
        let fixed = Cell { circ_id: 1, command: Command::RELAY, payload: vec![0; FIXED_PAYLOAD_LEN + 1].into() };
        let err = EncodeError::PayloadTooLong { command: Command::RELAY, len: 510, max: 509 };
        assert_eq!(fixed.encode(&mut [0u8; 1024]), Err(err.clone()));
        let mut buf = BytesMut::new();
        assert_eq!(fixed.encode_to(&mut buf), Err(err));
        assert!(buf.is_empty());

        let var = Cell { circ_id: 1, command: Command(200), payload: vec![0; MAX_VAR_PAYLOAD_LEN + 1].into() };
        let err = var.encode(&mut vec![0u8; 70_000]);
        assert_eq!(err, Err(EncodeError::PayloadTooLong { command: Command(200), len: 65536, max: 65535 }));
    }

    #[test]
    fn encode_to_appends() {
        let mut buf = BytesMut::from(&b"xy"[..]);
        assert_eq!(cell(Command::CERTS, b"c").encode_to(&mut buf), Ok(8));
        assert_eq!(cell(Command::DESTROY, b"\x01").encode_to(&mut buf), Ok(FIXED_CELL_LEN));
        assert_eq!(buf.len(), 2 + 8 + FIXED_CELL_LEN);
        assert_eq!(&buf[..10], b"xy\x01\x02\x03\x04\x81\x00\x01c");
        let mut slice = [0u8; FIXED_CELL_LEN];
        cell(Command::DESTROY, b"\x01").encode(&mut slice).unwrap();
        assert_eq!(&buf[10..], &slice[..]);
    }
}
