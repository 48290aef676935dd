//! Reading cells incrementally from a byte stream.

use bytes::{Buf, BytesMut};

use super::{Cell, Command, DecodeError, FIXED_CELL_LEN, FIXED_HEADER_LEN, MAX_VAR_PAYLOAD_LEN, VAR_HEADER_LEN};

/// Splits a byte stream into [`Cell`]s, whatever pieces the bytes arrive in.
///
/// Calling order: [`push`](CellDecoder::push) the bytes as they arrive, then call
/// [`poll_cell`](CellDecoder::poll_cell) until it returns `Ok(None)`, and repeat. When the stream ends, call
/// [`finish`](CellDecoder::finish) to learn whether it ended on a cell boundary.
///
/// ```
/// # use plebnet_transport::cell::{CellDecoder, DecodeError};
/// # fn handle(_: plebnet_transport::cell::Cell) {}
/// # fn run(reads: &[&[u8]]) -> Result<(), DecodeError> {
/// let mut decoder = CellDecoder::new();
/// for read in reads {
///     decoder.push(read)?;
///     while let Some(cell) = decoder.poll_cell()? {
///         handle(cell);
///     }
/// }
/// decoder.finish()
/// # }
/// # run(&[]).unwrap();
/// ```
///
/// Payloads are not copied out of the decoder's buffer: each decoded [`Cell::payload`] shares it.
///
/// Limits. Variable-length payloads longer than [`max_var_payload_len`](CellDecoder::max_var_payload_len)
/// ([`MAX_VAR_PAYLOAD_LEN`] unless lowered) are rejected with [`DecodeError::Oversized`] as soon as their header
/// arrives. Buffered bytes never exceed [`buffer_limit`](CellDecoder::buffer_limit); a push that would go over
/// it is refused with [`DecodeError::BufferFull`].
///
/// Errors. A framing error ([`DecodeError::Oversized`], [`DecodeError::Truncated`]) leaves the stream without a
/// known cell boundary, so the decoder fails for good: it drops its buffer and every later call returns the
/// same error. [`DecodeError::BufferFull`] only refuses the push that caused it.
#[derive(Debug)]
pub struct CellDecoder {
    buf: BytesMut,
    max_var_payload: usize,
    max_buffered: usize,
    failed: Option<DecodeError>,
}

impl Default for CellDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl CellDecoder {
    /// The buffer limit of a new decoder: room for a largest cell that is partly received plus a read of up to
    /// 128 KiB, so a caller that takes every cell before pushing again never sees [`DecodeError::BufferFull`]
    /// for reads that size.
    pub const DEFAULT_MAX_BUFFERED: usize = 256 * 1024;

    /// A decoder accepting variable-length payloads up to the wire maximum, [`MAX_VAR_PAYLOAD_LEN`], and
    /// buffering up to [`CellDecoder::DEFAULT_MAX_BUFFERED`] bytes.
    pub fn new() -> Self {
        CellDecoder {
            buf: BytesMut::new(),
            max_var_payload: MAX_VAR_PAYLOAD_LEN,
            max_buffered: Self::DEFAULT_MAX_BUFFERED,
            failed: None,
        }
    }

    /// Rejects variable-length cells whose payload is longer than `max` bytes, for instance to stop an
    /// unauthenticated peer from making the decoder buffer 64 KiB cells.
    pub fn with_max_var_payload_len(mut self, max: u16) -> Self {
        self.max_var_payload = usize::from(max);
        self
    }

    /// Limits the bytes the decoder buffers to `limit`, or to the longest cell it accepts if that is more (so
    /// that any cell can be completed).
    pub fn with_max_buffered(mut self, limit: usize) -> Self {
        self.max_buffered = limit;
        self
    }

    /// The longest variable-length payload this decoder accepts.
    pub fn max_var_payload_len(&self) -> usize {
        self.max_var_payload
    }

    /// The most bytes this decoder buffers.
    pub fn buffer_limit(&self) -> usize {
        let longest_cell = FIXED_CELL_LEN.max(VAR_HEADER_LEN + self.max_var_payload);
        self.max_buffered.max(longest_cell)
    }

    /// Bytes pushed but not yet returned as cells.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// The most bytes the next [`push`](CellDecoder::push) accepts.
    pub fn remaining_capacity(&self) -> usize {
        self.buffer_limit().saturating_sub(self.buf.len())
    }

    /// Appends bytes received from the stream.
    ///
    /// Either all of `bytes` is buffered or, when that would exceed the [buffer limit](CellDecoder::buffer_limit),
    /// none is and the push fails with [`DecodeError::BufferFull`]; take cells with
    /// [`poll_cell`](CellDecoder::poll_cell) and push again. Fails with the stored error if the decoder has failed.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        self.check_failed()?;
        if bytes.len() > self.remaining_capacity() {
            return Err(DecodeError::BufferFull {
                buffered: self.buf.len(),
                pushed: bytes.len(),
                limit: self.buffer_limit(),
            });
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Takes the next complete cell, or returns `Ok(None)` if more bytes are needed.
    ///
    /// A fixed-length cell's payload is all [`FIXED_PAYLOAD_LEN`](super::FIXED_PAYLOAD_LEN) bytes, padding
    /// included. Fails with [`DecodeError::Oversized`] as soon as a variable-length header declares a payload
    /// over the limit, and with the stored error if the decoder has failed.
    pub fn poll_cell(&mut self) -> Result<Option<Cell>, DecodeError> {
        self.check_failed()?;
        let len = match self.cell_len(&self.buf) {
            Ok(Some(len)) if len <= self.buf.len() => len,
            Ok(_) => return Ok(None),
            Err(err) => return Err(self.fail(err)),
        };
        let circ_id = self.buf.get_u32();
        let command = Command(self.buf.get_u8());
        let header_len = if command.is_variable() {
            self.buf.advance(2);
            VAR_HEADER_LEN
        } else {
            FIXED_HEADER_LEN
        };
        let payload = self.buf.split_to(len - header_len).freeze();
        Ok(Some(Cell { circ_id, command, payload }))
    }

    /// Checks, at the end of the stream, that it ended on a cell boundary.
    ///
    /// Returns `Ok(())` if every buffered byte belongs to a complete cell; those cells stay available to
    /// [`poll_cell`](CellDecoder::poll_cell). Fails with [`DecodeError::Truncated`] if the stream ended inside a
    /// cell (the decoder then fails for good, dropping any complete cells not yet taken, so take them first), and
    /// with the stored error if the decoder has already failed.
    pub fn finish(&mut self) -> Result<(), DecodeError> {
        self.check_failed()?;
        self.check_boundary().map_err(|err| self.fail(err))
    }

    fn check_boundary(&self) -> Result<(), DecodeError> {
        let mut rest: &[u8] = &self.buf;
        while !rest.is_empty() {
            match self.cell_len(rest)? {
                Some(len) if len <= rest.len() => rest = &rest[len..],
                known => {
                    let header_len = if rest.len() < FIXED_HEADER_LEN { FIXED_HEADER_LEN } else { VAR_HEADER_LEN };
                    return Err(DecodeError::Truncated { have: rest.len(), need: known.unwrap_or(header_len) });
                }
            }
        }
        Ok(())
    }

    /// The length of the cell at the start of `bytes`, once enough of its header is there to tell.
    fn cell_len(&self, bytes: &[u8]) -> Result<Option<usize>, DecodeError> {
        let Some(&command) = bytes.get(FIXED_HEADER_LEN - 1) else { return Ok(None) };
        let command = Command(command);
        if !command.is_variable() {
            return Ok(Some(FIXED_CELL_LEN));
        }
        let Some(&[hi, lo]) = bytes.get(FIXED_HEADER_LEN..VAR_HEADER_LEN) else { return Ok(None) };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len > self.max_var_payload {
            return Err(DecodeError::Oversized { command, len, max: self.max_var_payload });
        }
        Ok(Some(VAR_HEADER_LEN + len))
    }

    fn check_failed(&self) -> Result<(), DecodeError> {
        match &self.failed {
            Some(err) => Err(err.clone()),
            None => Ok(()),
        }
    }

    /// Records a framing error, after which the decoder is failed for good, and returns it.
    fn fail(&mut self, err: DecodeError) -> DecodeError {
        self.buf = BytesMut::new();
        self.failed = Some(err.clone());
        err
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::cell::FIXED_PAYLOAD_LEN;

    fn wire(cells: &[Cell]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for cell in cells {
            cell.encode_to(&mut out).unwrap();
        }
        out.to_vec()
    }

    fn var_header(command: Command, len: u16) -> [u8; VAR_HEADER_LEN] {
        let [hi, lo] = len.to_be_bytes();
        [0, 0, 0, 9, command.0, hi, lo]
    }

    #[test]
    fn fixed_payload_is_full_length() {
        let cell = Cell { circ_id: 42, command: Command::NETINFO, payload: Bytes::from_static(b"abc") };
        let mut decoder = CellDecoder::new();
        decoder.push(&wire(&[cell])).unwrap();
        let got = decoder.poll_cell().unwrap().unwrap();
        assert_eq!((got.circ_id, got.command, got.payload.len()), (42, Command::NETINFO, FIXED_PAYLOAD_LEN));
        assert_eq!(&got.payload[..4], b"abc\0");
        assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn undefined_commands_frame_by_their_value() {
        let cells = [
            Cell { circ_id: 1, command: Command(50), payload: Bytes::from(vec![5; FIXED_PAYLOAD_LEN]) },
            Cell { circ_id: 2, command: Command(250), payload: Bytes::from_static(b"v") },
        ];
        let mut decoder = CellDecoder::new();
        decoder.push(&wire(&cells)).unwrap();
        assert_eq!(decoder.poll_cell().unwrap().as_ref(), Some(&cells[0]));
        assert_eq!(decoder.poll_cell().unwrap().as_ref(), Some(&cells[1]));
        assert_eq!(decoder.poll_cell().unwrap(), None);
    }

    #[test]
    fn oversized_is_reported_from_the_header_alone() {
        let mut decoder = CellDecoder::new().with_max_var_payload_len(1000);
        decoder.push(&var_header(Command::CERTS, 1001)[..6]).unwrap();
        assert_eq!(decoder.poll_cell(), Ok(None));
        decoder.push(&[0xE9]).unwrap();
        let err = DecodeError::Oversized { command: Command::CERTS, len: 1001, max: 1000 };
        assert_eq!(decoder.poll_cell(), Err(err));
    }

    #[test]
    fn payload_at_the_limit_is_accepted() {
        let mut decoder = CellDecoder::new().with_max_var_payload_len(1000);
        decoder.push(&var_header(Command::VERSIONS, 1000)).unwrap();
        decoder.push(&[7; 1000]).unwrap();
        let cell = decoder.poll_cell().unwrap().unwrap();
        assert_eq!((cell.command, cell.payload.len()), (Command::VERSIONS, 1000));

        let mut decoder = CellDecoder::new();
        assert_eq!(decoder.max_var_payload_len(), 65535);
        decoder.push(&var_header(Command::VPADDING, u16::MAX)).unwrap();
        decoder.push(&vec![1; MAX_VAR_PAYLOAD_LEN]).unwrap();
        assert_eq!(decoder.poll_cell().unwrap().unwrap().payload.len(), MAX_VAR_PAYLOAD_LEN);
    }

    #[test]
    fn stays_failed_after_an_error() {
        let mut decoder = CellDecoder::new().with_max_var_payload_len(10);
        decoder.push(&var_header(Command::AUTHENTICATE, 11)).unwrap();
        let err = DecodeError::Oversized { command: Command::AUTHENTICATE, len: 11, max: 10 };
        assert_eq!(decoder.poll_cell(), Err(err.clone()));
        assert_eq!(decoder.buffered_len(), 0, "buffer dropped");
        assert_eq!(decoder.push(&[0; FIXED_CELL_LEN]), Err(err.clone()));
        assert_eq!(decoder.poll_cell(), Err(err.clone()));
        assert_eq!(decoder.finish(), Err(err.clone()));
        assert_eq!(decoder.poll_cell(), Err(err));

        let mut decoder = CellDecoder::new();
        decoder.push(&[0; 3]).unwrap();
        let err = DecodeError::Truncated { have: 3, need: 5 };
        assert_eq!(decoder.finish(), Err(err.clone()));
        assert_eq!(decoder.push(&[0; 2]), Err(err.clone()));
        assert_eq!(decoder.poll_cell(), Err(err.clone()));
        assert_eq!(decoder.finish(), Err(err));
    }

    #[test]
    fn truncated_at_every_offset() {
        let cells = [
            Cell { circ_id: 3, command: Command::CREATE2, payload: Bytes::from_static(b"handshake") },
            Cell { circ_id: 0, command: Command::CERTS, payload: Bytes::from(vec![9; 300]) },
            Cell { circ_id: 0, command: Command::VPADDING, payload: Bytes::new() },
        ];
        let lead = Cell { circ_id: 1, command: Command::PADDING, payload: Bytes::new() };
        for cell in &cells {
            let bytes = wire(std::slice::from_ref(cell));
            for cut in 1..bytes.len() {
                let need = match cut {
                    ..FIXED_HEADER_LEN => FIXED_HEADER_LEN,
                    ..VAR_HEADER_LEN if cell.command.is_variable() => VAR_HEADER_LEN,
                    _ => bytes.len(),
                };
                let err = Err(DecodeError::Truncated { have: cut, need });

                let mut decoder = CellDecoder::new();
                decoder.push(&bytes[..cut]).unwrap();
                assert_eq!(decoder.poll_cell(), Ok(None), "cut {cut}");
                assert_eq!(decoder.finish(), err, "cut {cut}");

                // Behind a complete cell not yet taken, only the partial one counts.
                let mut decoder = CellDecoder::new();
                decoder.push(&wire(std::slice::from_ref(&lead))).unwrap();
                decoder.push(&bytes[..cut]).unwrap();
                assert_eq!(decoder.finish(), err, "cut {cut} after a cell");
            }
        }
    }

    #[test]
    fn finish_on_a_boundary_keeps_buffered_cells() {
        let cell = Cell { circ_id: 5, command: Command::AUTH_CHALLENGE, payload: Bytes::from_static(b"nonce") };
        let mut decoder = CellDecoder::new();
        assert_eq!(decoder.finish(), Ok(()));
        decoder.push(&wire(&[cell.clone(), cell.clone()])).unwrap();
        assert_eq!(decoder.finish(), Ok(()));
        assert_eq!(decoder.poll_cell().unwrap().as_ref(), Some(&cell));
        assert_eq!(decoder.poll_cell().unwrap().as_ref(), Some(&cell));
        assert_eq!(decoder.poll_cell(), Ok(None));
        assert_eq!(decoder.finish(), Ok(()));
    }

    #[test]
    fn buffered_bytes_are_bounded() {
        // The limit never drops below the longest acceptable cell.
        let decoder = CellDecoder::new().with_max_buffered(0);
        assert_eq!(decoder.buffer_limit(), VAR_HEADER_LEN + MAX_VAR_PAYLOAD_LEN);
        let mut decoder = CellDecoder::new().with_max_var_payload_len(100).with_max_buffered(0);
        assert_eq!(decoder.buffer_limit(), FIXED_CELL_LEN);

        let fixed = wire(&[Cell { circ_id: 8, command: Command::RELAY, payload: Bytes::new() }]);
        decoder.push(&fixed[..500]).unwrap();
        assert_eq!(decoder.remaining_capacity(), 14);
        let err = DecodeError::BufferFull { buffered: 500, pushed: 15, limit: FIXED_CELL_LEN };
        assert_eq!(decoder.push(&[0; 15]), Err(err));
        assert_eq!(decoder.buffered_len(), 500, "a refused push buffers nothing");
        decoder.push(&fixed[500..]).unwrap();
        assert_eq!(
            decoder.push(&[0]).unwrap_err().to_string().split(';').next(),
            Some("pushing 1 bytes onto 514 buffered would exceed the decoder's 514-byte buffer limit")
        );

        // BufferFull does not fail the decoder: take the cell and push again.
        assert_eq!(decoder.poll_cell().unwrap().unwrap().circ_id, 8);
        assert_eq!(decoder.remaining_capacity(), FIXED_CELL_LEN);
        decoder.push(&fixed).unwrap();
        assert!(decoder.poll_cell().unwrap().is_some());

        // Above the longest cell, the configured limit applies as given.
        let mut decoder = CellDecoder::new().with_max_var_payload_len(100).with_max_buffered(2000);
        assert_eq!(decoder.buffer_limit(), 2000);
        assert!(decoder.push(&[0; 2001]).is_err());
        decoder.push(&[0; 2000]).unwrap();
        assert_eq!(CellDecoder::new().buffer_limit(), CellDecoder::DEFAULT_MAX_BUFFERED);
    }
}
