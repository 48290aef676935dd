//! Round-trip property tests: random cells, encoded back to back, decoded from randomly split pushes.
//!
//! No proptest: a seeded SplitMix64 makes every run the same, and a failure names its seed.

use bytes::{Bytes, BytesMut};

use super::{Cell, CellDecoder, Command, FIXED_PAYLOAD_LEN, MAX_VAR_PAYLOAD_LEN};

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, seedable, good enough to pick test cases.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max` (modulo bias is irrelevant here).
    fn upto(&mut self, max: usize) -> usize {
        (self.next() % (max as u64 + 1)) as usize
    }
}

/// A random cell; payload lengths favour the edges: 0, the maximum, and the maximum for `max_var`.
fn random_cell(rng: &mut SplitMix64, max_var: usize) -> Cell {
    let command = match rng.upto(3) {
        0 => Command::VERSIONS,
        1 => Command(128 + rng.upto(127) as u8),
        _ => Command(rng.upto(127) as u8),
    };
    let max = if command.is_variable() { max_var } else { FIXED_PAYLOAD_LEN };
    let len = match rng.upto(9) {
        0 => 0,
        1 => max,
        2 => FIXED_PAYLOAD_LEN.min(max),
        _ => rng.upto(max.min(600)),
    };
    let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
    Cell { circ_id: rng.next() as u32, command, payload: Bytes::from(payload) }
}

/// What the decoder returns for `cell`: fixed-length payloads come back padded to full length.
fn as_decoded(cell: &Cell) -> Cell {
    let mut cell = cell.clone();
    if !cell.command.is_variable() {
        let mut padded = cell.payload.to_vec();
        padded.resize(FIXED_PAYLOAD_LEN, 0);
        cell.payload = padded.into();
    }
    cell
}

/// Pushes `stream` in pieces of `1..=max_piece` bytes (all 1-byte pieces when `max_piece` is 1), taking every
/// cell after each push, then checks the end of stream.
fn decode_split(decoder: &mut CellDecoder, stream: &[u8], rng: &mut SplitMix64, max_piece: usize) -> Vec<Cell> {
    let mut cells = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let piece = (1 + rng.upto(max_piece - 1)).min(rest.len());
        decoder.push(&rest[..piece]).unwrap();
        rest = &rest[piece..];
        while let Some(cell) = decoder.poll_cell().unwrap() {
            cells.push(cell);
        }
    }
    decoder.finish().unwrap();
    assert_eq!(decoder.buffered_len(), 0);
    cells
}

fn round_trip(seed: u64, count: usize, max_var: u16) {
    let mut rng = SplitMix64(seed);
    let cells: Vec<Cell> = (0..count).map(|_| random_cell(&mut rng, usize::from(max_var))).collect();
    let mut stream = BytesMut::new();
    for cell in &cells {
        cell.encode_to(&mut stream).unwrap();
    }
    assert_eq!(stream.len(), cells.iter().map(Cell::encoded_len).sum::<usize>());
    let expected: Vec<Cell> = cells.iter().map(as_decoded).collect();

    for max_piece in [1, 2, 7, 600, 70_000] {
        let mut decoder = CellDecoder::new().with_max_var_payload_len(max_var);
        let got = decode_split(&mut decoder, &stream, &mut rng, max_piece);
        assert!(got == expected, "seed {seed:#x}, pieces up to {max_piece}: decoded cells differ");
    }

    // The whole stream in one push.
    let mut decoder = CellDecoder::new().with_max_var_payload_len(max_var).with_max_buffered(stream.len());
    let got = decode_split(&mut decoder, &stream, &mut rng, stream.len());
    assert!(got == expected, "seed {seed:#x}, one push: decoded cells differ");
}

#[test]
fn round_trip_wire_maximum() {
    for seed in 0..4 {
        round_trip(0x5EED_0000 + seed, 1000, u16::MAX);
    }
}

#[test]
fn round_trip_lowered_maximum() {
    for seed in 0..4 {
        round_trip(0xC0FF_EE00 + seed, 1000, 1024);
    }
}

#[test]
fn round_trip_tiny_maximum() {
    round_trip(0x7171, 2000, 0);
}

#[test]
fn generator_covers_the_edges() {
    let mut rng = SplitMix64(1);
    let cells: Vec<Cell> = (0..2000).map(|_| random_cell(&mut rng, MAX_VAR_PAYLOAD_LEN)).collect();
    let has = |f: &dyn Fn(&Cell) -> bool| cells.iter().any(f);
    assert!(has(&|c| c.command == Command::VERSIONS));
    assert!(has(&|c| c.command.is_variable() && c.payload.is_empty()));
    assert!(has(&|c| c.command.is_variable() && c.payload.len() == MAX_VAR_PAYLOAD_LEN));
    assert!(has(&|c| !c.command.is_variable() && c.payload.is_empty()));
    assert!(has(&|c| !c.command.is_variable() && c.payload.len() == FIXED_PAYLOAD_LEN));
}
