//! `CellDecoder` on an arbitrary byte stream pushed in arbitrary pieces.
//!
//! Input: `[split_seed, max_var_hi, max_var_lo, buffered_k, stream...]`. The
//! decoder rejects variable payloads over `max_var` and buffers at most
//! `buffered_k * 64` bytes (raised by the decoder to its longest cell);
//! `split_seed` drives the piece sizes, zero-length pushes included.
//!
//! Invariants, checked against a reference framer that walks the whole stream:
//! never panics; the cells come out in order and each re-encodes (`Cell::encode`)
//! to exactly the bytes it was decoded from; the stream ends with the error
//! (Oversized, or Truncated from `finish`) or success the reference predicts;
//! `BufferFull` only refuses pushes over `remaining_capacity` and changes
//! nothing; after a framing error every later call returns the same error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plebnet_transport::cell::{Cell, CellDecoder, Command, DecodeError, FIXED_CELL_LEN, VAR_HEADER_LEN};

const FIXED_HEADER_LEN: usize = 5;

/// What a correct decoder makes of the whole stream: the cells' byte ranges, then the outcome.
fn reference(stream: &[u8], max_var: usize) -> (Vec<(usize, usize)>, Result<(), DecodeError>) {
    let mut cells = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let rest = &stream[at..];
        if rest.len() < FIXED_HEADER_LEN {
            return (cells, Err(DecodeError::Truncated { have: rest.len(), need: FIXED_HEADER_LEN }));
        }
        let command = Command(rest[4]);
        let len = if command.is_variable() {
            if rest.len() < VAR_HEADER_LEN {
                return (cells, Err(DecodeError::Truncated { have: rest.len(), need: VAR_HEADER_LEN }));
            }
            let payload = usize::from(u16::from_be_bytes([rest[5], rest[6]]));
            if payload > max_var {
                return (cells, Err(DecodeError::Oversized { command, len: payload, max: max_var }));
            }
            VAR_HEADER_LEN + payload
        } else {
            FIXED_CELL_LEN
        };
        if rest.len() < len {
            return (cells, Err(DecodeError::Truncated { have: rest.len(), need: len }));
        }
        cells.push((at, at + len));
        at += len;
    }
    (cells, Ok(()))
}

/// xorshift64*: piece sizes from the input's first byte.
struct Splits(u64);

impl Splits {
    fn next(&mut self, left: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33;
        let size = match r % 4 {
            0 => (r >> 2) as usize % 8,                    // tiny pieces, including empty pushes
            1 => (r >> 2) as usize % (2 * FIXED_CELL_LEN), // around a cell
            _ => (r >> 2) as usize % 4096,                 // big reads
        };
        size.min(left)
    }
}

struct Run<'a> {
    stream: &'a [u8],
    decoder: CellDecoder,
    expected: std::vec::IntoIter<(usize, usize)>,
    /// Bytes handed to the decoder so far.
    pushed: usize,
}

impl Run<'_> {
    /// Takes every complete cell, checking each against the reference; returns the error that stopped it.
    fn drain(&mut self) -> Result<(), DecodeError> {
        while let Some(cell) = self.decoder.poll_cell()? {
            let (start, end) = self.expected.next().expect("decoder produced a cell the reference did not");
            assert!(end <= self.pushed, "cell {start}..{end} decoded before all of it was pushed ({})", self.pushed);
            assert_reencodes(&cell, &self.stream[start..end]);
        }
        Ok(())
    }

    /// Pushes `piece` (possibly empty), in smaller pushes if the buffer limit refuses it.
    fn push(&mut self, mut piece: &[u8]) -> Result<(), DecodeError> {
        loop {
            let room = self.decoder.remaining_capacity();
            let before = self.decoder.buffered_len();
            match self.decoder.push(piece) {
                Ok(()) => {
                    assert!(piece.len() <= room, "push of {} accepted with {room} bytes of room", piece.len());
                    self.pushed += piece.len();
                    return self.drain();
                }
                Err(DecodeError::BufferFull { buffered, pushed, limit }) => {
                    assert!(piece.len() > room, "push of {} refused with {room} bytes of room", piece.len());
                    assert_eq!((buffered, pushed, limit), (before, piece.len(), self.decoder.buffer_limit()));
                    assert_eq!(self.decoder.buffered_len(), before, "a refused push changed the buffer");
                    self.drain()?;
                    let room = self.decoder.remaining_capacity();
                    assert!(room > 0, "buffer full after taking every complete cell");
                    let (now, later) = piece.split_at(room.min(piece.len()));
                    self.decoder.push(now).expect("push within remaining_capacity refused");
                    self.pushed += now.len();
                    self.drain()?;
                    if later.is_empty() {
                        return Ok(());
                    }
                    piece = later;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

fn assert_reencodes(cell: &Cell, wire: &[u8]) {
    assert_eq!(cell.encoded_len(), wire.len(), "encoded_len of {cell:?}");
    let mut out = vec![0xAA; wire.len() + 3];
    let n = cell.encode(&mut out).expect("a decoded cell must encode");
    assert_eq!(n, wire.len());
    assert!(out[..n] == *wire, "cell re-encodes to different bytes: {cell:?}");
    assert_eq!(&out[n..], &[0xAA; 3], "encode wrote past the cell");
}

fuzz_target!(|data: &[u8]| {
    let [seed, hi, lo, buffered_k, stream @ ..] = data else { return };
    let max_var = u16::from_be_bytes([*hi, *lo]);
    let decoder = CellDecoder::new().with_max_var_payload_len(max_var).with_max_buffered(usize::from(*buffered_k) * 64);
    let (cells, outcome) = reference(stream, usize::from(max_var));
    let mut run = Run { stream, decoder, expected: cells.into_iter(), pushed: 0 };
    let mut splits = Splits(u64::from(*seed) | 0x9E37_79B9_0000_0000);

    let mut result = Ok(());
    while run.pushed < stream.len() {
        let size = splits.next(stream.len() - run.pushed);
        let piece = &stream[run.pushed..run.pushed + size];
        if let Err(err) = run.push(piece) {
            result = Err(err);
            break;
        }
    }
    if result.is_ok() {
        result = run.decoder.finish();
    }
    if result.is_ok() {
        // On a boundary, finish leaves the cells it vouched for available.
        result = run.drain();
        assert_eq!(run.decoder.buffered_len(), 0, "bytes left over after a clean finish");
    }
    assert_eq!(result, outcome, "decoder and reference disagree");
    assert!(run.expected.next().is_none(), "the reference expected more cells");

    if let Err(err) = result {
        // Failed for good: every call returns the same error.
        assert_eq!(run.decoder.buffered_len(), 0, "buffer kept after a framing error");
        for _ in 0..2 {
            assert_eq!(run.decoder.poll_cell(), Err(err.clone()));
            assert_eq!(run.decoder.push(&[]), Err(err.clone()));
            assert_eq!(run.decoder.push(&[0; FIXED_CELL_LEN]), Err(err.clone()));
            assert_eq!(run.decoder.finish(), Err(err.clone()));
        }
    }
});
