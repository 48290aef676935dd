//! A byte stream through one circuit of a cell channel, with Tor-style end-to-end flow control: the sender
//! may have at most `WINDOW` DATA cells unacknowledged; the receiver returns a SENDME for every
//! `SENDME_EVERY` cells it has written onward. So a slow consumer holds back its own circuit and never
//! overflows the channel's per-circuit queue (which would close the circuit).
//!
//! Relay cell payload (inside a RELAY cell): kind 1 | length 2 (big-endian) | data. Kinds: DATA (1),
//! END (2, no more data from this side), SENDME (3).

use std::io::{self, Read, Write};
use std::sync::{Condvar, Mutex};

use plebnet::net::TcpStreamApi;
use plebnet_transport::cell::{Command, FIXED_PAYLOAD_LEN};
use plebnet_transport::channel::Circuit;

const DATA: u8 = 1;
const END: u8 = 2;
const SENDME: u8 = 3;
/// Largest data per cell: the fixed payload minus the kind and length.
pub const CELL_DATA: usize = FIXED_PAYLOAD_LEN - 3;
/// DATA cells in flight per direction (Tor's circuit window).
const WINDOW: usize = 1000;
/// One SENDME per this many DATA cells delivered.
const SENDME_EVERY: usize = 100;

/// The send window of one circuit end: taken by [`pump_into`], refilled by [`pump_out_of`] when the peer's
/// SENDMEs arrive.
#[derive(Default)]
pub struct Window {
    used: Mutex<usize>,
    freed: Condvar,
}

impl Window {
    fn take(&self) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while *used >= WINDOW {
            used = self.freed.wait(used).unwrap_or_else(|p| p.into_inner());
        }
        *used += 1;
    }

    fn refill(&self) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        *used = used.saturating_sub(SENDME_EVERY);
        self.freed.notify_all();
    }
}

fn relay_payload(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(3 + data.len());
    p.push(kind);
    p.extend_from_slice(&(data.len() as u16).to_be_bytes());
    p.extend_from_slice(data);
    p
}

/// Copies `from` into the circuit as DATA cells until EOF, then sends END. Returns the bytes copied.
pub fn pump_into<S: TcpStreamApi>(mut from: impl Read, circuit: &Circuit<S>, window: &Window) -> io::Result<u64> {
    let mut buf = vec![0u8; CELL_DATA];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            circuit.send(Command::RELAY, relay_payload(END, &[]))?;
            return Ok(total);
        }
        window.take();
        circuit.send(Command::RELAY, relay_payload(DATA, &buf[..n]))?;
        total += n as u64;
    }
}

/// Writes the circuit's DATA into `to` until END (then calls `on_end`), answering with SENDMEs; refills
/// `window` from the peer's SENDMEs, and goes on doing so after END until the circuit is closed (our own
/// sending direction may still need them). Returns the bytes copied; a circuit that ends before END is an
/// error (the stream was cut short).
pub fn pump_out_of<S: TcpStreamApi, W: Write>(
    circuit: &Circuit<S>,
    to: W,
    window: &Window,
    on_end: impl FnOnce(W) -> io::Result<()>,
) -> io::Result<u64> {
    let mut total = 0u64;
    let mut delivered = 0usize;
    let mut on_end = Some((on_end, to));
    loop {
        let Some(cell) = circuit.recv()? else {
            if on_end.is_none() {
                return Ok(total);
            }
            return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the circuit ended before END"));
        };
        if cell.command != Command::RELAY || cell.payload.len() < 3 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("unexpected {:?} cell", cell.command)));
        }
        let len = usize::from(u16::from_be_bytes([cell.payload[1], cell.payload[2]]));
        if len > CELL_DATA {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("relay cell length {len} > {CELL_DATA}")));
        }
        match cell.payload[0] {
            DATA => {
                let Some((_, to)) = on_end.as_mut() else {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "DATA after END"));
                };
                to.write_all(&cell.payload[3..3 + len])?;
                total += len as u64;
                delivered += 1;
                if delivered.is_multiple_of(SENDME_EVERY) {
                    // Fails only once the peer has destroyed the circuit, which it does after its END:
                    // it sends nothing more, so the credit is moot; the queued DATA still gets written.
                    let _ = circuit.send(Command::RELAY, relay_payload(SENDME, &[]));
                }
            }
            SENDME => window.refill(),
            END => {
                let (f, to) = on_end.take().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "END twice"))?;
                f(to)?;
            }
            other => return Err(io::Error::new(io::ErrorKind::InvalidData, format!("unknown relay kind {other}"))),
        }
    }
}
