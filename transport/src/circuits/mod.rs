//! Two ways to carry circuits between two nodes, behind one trait, so they
//! can be compared (the head-of-line experiment of `plebnet bench`).
//!
//! * [`CellChannel`](crate::channel::CellChannel) — **one TLS channel for
//!   all circuits**, the Tor link model: every circuit's cells share one
//!   TCP connection, so a segment lost for one circuit stalls all of them
//!   until it is repaired.
//! * [`ConnectionPerCircuit`] — **one TCP connection per circuit**, the
//!   model of Reardon & Goldberg ("Improving Tor using a TCP-over-DTLS
//!   Tunnel", USENIX Security 2009): over a stack whose NIC is a
//!   [`DtlsNic`](crate::dtls::DtlsNic) the link is authenticated and
//!   encrypted once, and a loss stalls only the circuit it belongs to.
//!
//! Both hand out circuit ends with the same `&self` methods, so one thread
//! can receive while another sends.

use std::io;

use bytes::Bytes;

use crate::cell::{Cell, Command};

mod per_connection;
mod shared_channel;

pub use per_connection::{ConnectionPerCircuit, TcpCircuit};

/// One end of a circuit, however it is carried.
pub trait CircuitEnd: Send + Sync + 'static {
    /// The circuit's ID.
    fn id(&self) -> u32;
    /// Sends one cell on this circuit.
    fn send(&self, command: Command, payload: Bytes) -> io::Result<()>;
    /// The next cell from the peer; `Ok(None)` once the circuit ended
    /// cleanly.
    fn recv(&self) -> io::Result<Option<Cell>>;
    /// Ends the circuit.
    fn close(&self) -> io::Result<()>;
}

/// A way to carry many circuits between two nodes. As on a Tor channel, an
/// opened circuit exists at the peer once its first cell — a CREATE,
/// CREATE_FAST or CREATE2 — arrives; the peer's
/// [`accept`](CircuitCarrier::accept) then returns it, and that cell is the
/// first its [`recv`](CircuitEnd::recv) gives.
pub trait CircuitCarrier: Send + Sync {
    /// The circuit ends it hands out.
    type Circuit: CircuitEnd;
    /// Opens circuit `circ_id` towards the peer.
    fn open(&self, circ_id: u32) -> io::Result<Self::Circuit>;
    /// The next circuit the peer opened; `Ok(None)` once the carrier ended.
    fn accept(&self) -> io::Result<Option<Self::Circuit>>;
}
