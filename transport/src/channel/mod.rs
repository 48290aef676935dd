//! Cell channels, the Tor link model: many circuits, told apart by circuit ID, over one TLS cell stream.
//!
//! ```text
//!   sending: any number of threads              receiving: one demux thread per channel
//!
//!   Circuit::send ────────────────┐             peer ─▶ TLS ─▶ CellReader::read_cell
//!   CellChannel::send_link_cell ──┤                              │ route by CircID; never blocks
//!                                 ▼                              ├─▶ circuit queue (bounded) ─▶ Circuit::recv
//!   Mutex<CellWriter>: the last waiting                          ├─▶ link queue (circuit 0) ─▶ recv_link_cell
//!   sender flushes for all (group commit)                        └─▶ accept backlog (CREATE*) ─▶ accept_circuit
//!                                 │
//!                                 ▼
//!                          TLS ─▶ peer
//! ```
//!
//! One demux thread per channel reads cells and routes them by circuit ID into per-circuit queues; any
//! number of threads send, sharing the [`CellWriter`] behind a mutex. A sender that finds other senders
//! waiting leaves the flush to the last of them, so busy circuits share TLS records and a lone cell still
//! leaves at once.
//!
//! Routing rules:
//! * **Circuit 0** carries link-level cells. PADDING and VPADDING (on any circuit) are dropped and counted;
//!   other circuit-0 cells (VERSIONS, NETINFO, ...) go to a bounded link queue read with
//!   [`CellChannel::recv_link_cell`], and are dropped and counted when it is full.
//! * **New circuits**: a CREATE, CREATE_FAST or CREATE2 cell on an unused ID creates a circuit that
//!   [`CellChannel::accept_circuit`] returns, with that cell as its first. Any other cell on an unused ID is
//!   dropped and counted, as tor-spec §5 does; so cells the peer sent before it saw our DESTROY cannot
//!   resurrect a closed circuit. Creations beyond the accept backlog are refused (dropped and counted).
//! * **DESTROY** ends the circuit and frees its ID; [`Circuit::recv`] returns the cells already queued,
//!   then `None`.
//!
//! Backpressure. The demux thread never blocks on a consumer: stalling it would stall every circuit of the
//! channel behind the slowest one. Each circuit's queue holds at most [`ChannelConfig::queue_cells`] cells;
//! a cell arriving at a full queue closes that circuit alone with [`ChannelError::Overflow`] (after its
//! queued cells) and it and all later cells of that circuit are dropped and counted. Tor's end-to-end flow
//! control (SENDME windows, 1000 cells per circuit) is what keeps a well-behaved peer under the limit;
//! the default capacity of 1024 leaves room for a full window. Closing the overflowed circuit sends DESTROY
//! with reason RESOURCELIMIT.
//!
//! Failure. When the reader fails (a TLS error, a malformed cell such as one cut short by close_notify, a
//! socket error) the channel ends: every circuit's [`recv`](Circuit::recv),
//! [`accept_circuit`](CellChannel::accept_circuit) and [`recv_link_cell`](CellChannel::recv_link_cell) return
//! [`ChannelError::Link`] with the reader's error kind and message, after the cells already queued. A clean
//! close_notify from the peer ends them with `Ok(None)` instead. Either way the demux thread then closes our
//! side of the TLS session and exits.
//!
//! Circuit IDs are chosen by whoever opens a circuit; if both ends pick the same ID, the peer's CREATE lands
//! on our circuit. Tor avoids that by having the connection's initiator set the ID's top bit and the
//! responder clear it; follow the same rule.
//!
//! ```no_run
//! # fn demo(tls: plebnet_transport::tls::TlsCellStream<std::net::TcpStream>) -> std::io::Result<()> {
//! use plebnet_transport::cell::Command;
//! use plebnet_transport::channel::CellChannel;
//!
//! let (reader, writer) = tls.split()?;
//! let channel = CellChannel::new(reader, writer)?;
//! let circuit = channel.open_circuit(0x8000_0001)?;
//! circuit.send(Command::CREATE_FAST, vec![0u8; 20])?;
//! let created = circuit.recv()?; // CREATED_FAST, or None if the peer refused
//! circuit.close()?;
//! # let _ = created; Ok(()) }
//! ```

mod circuit;
mod error;
mod queue;
mod shared;

pub(crate) use shared::is_create;

use std::io;
use std::sync::Arc;
use std::thread;

use bytes::Bytes;
use plebnet::net::TcpStreamApi;

pub use circuit::Circuit;
pub use error::ChannelError;

use crate::cell::{Cell, Command};
use crate::tls::{CellReader, CellWriter};
use shared::Shared;

/// Limits of a [`CellChannel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelConfig {
    /// Cells each circuit's receive queue holds; one more closes the circuit with [`ChannelError::Overflow`].
    pub queue_cells: usize,
    /// Circuits the peer created that wait for [`CellChannel::accept_circuit`]; more are refused.
    pub accept_backlog: usize,
    /// Circuit-0 cells waiting for [`CellChannel::recv_link_cell`]; more are dropped.
    pub link_queue_cells: usize,
}

impl Default for ChannelConfig {
    /// 1024 cells per circuit (a SENDME window of 1000 plus slack), 128 circuits waiting to be accepted, 64
    /// link cells.
    fn default() -> Self {
        ChannelConfig { queue_cells: 1024, accept_backlog: 128, link_queue_cells: 64 }
    }
}

/// Counters of a [`CellChannel`], from [`CellChannel::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Cells read from the TLS stream, whatever became of them.
    pub cells_in: u64,
    /// Cells written to the TLS stream (DESTROY and link cells included).
    pub cells_out: u64,
    /// Circuit-0 cells queued for [`CellChannel::recv_link_cell`].
    pub link_cells_in: u64,
    /// Circuits opened with [`CellChannel::open_circuit`].
    pub circuits_opened: u64,
    /// Circuits the peer created that [`CellChannel::accept_circuit`] returned.
    pub circuits_accepted: u64,
    /// DESTROY cells received for open circuits (each ends its circuit, unless it had ended already).
    pub circuits_destroyed_by_peer: u64,
    /// Circuits closed because their receive queue overflowed.
    pub circuits_overflowed: u64,
    /// CREATE cells dropped because the accept backlog was full.
    pub refused_circuits: u64,
    /// PADDING and VPADDING cells, dropped as tor-spec says.
    pub dropped_padding: u64,
    /// Non-CREATE cells on circuit IDs not open (DESTROY included), e.g. sent before the peer saw our DESTROY.
    pub dropped_unknown_circuit: u64,
    /// Cells of circuits closed for overflow: the one that overflowed and every later one.
    pub dropped_overflow: u64,
    /// Circuit-0 cells dropped because the link queue was full.
    pub dropped_link_queue_full: u64,
    /// Circuits open now (opened or created, not yet ended by DESTROY or close).
    pub open_circuits: usize,
}

/// Many [`Circuit`]s over one TLS cell stream, with a demux thread routing received cells by circuit ID.
///
/// See the [module docs](self) for the routing and backpressure rules. Every method takes `&self`; share the
/// channel in an `Arc` to open and accept circuits from several threads. Dropping the channel
/// [closes](CellChannel::close) it.
pub struct CellChannel<S: TcpStreamApi> {
    shared: Arc<Shared<S>>,
}

impl<S: TcpStreamApi> std::fmt::Debug for CellChannel<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CellChannel").field("stats", &self.stats()).finish()
    }
}

impl<S: TcpStreamApi> CellChannel<S> {
    /// A channel over the two halves of a [`TlsCellStream`](crate::tls::TlsCellStream), with the default
    /// [`ChannelConfig`]; starts its demux thread. Fails only if the thread cannot be spawned.
    pub fn new(reader: CellReader<S>, writer: CellWriter<S>) -> io::Result<Self> {
        Self::with_config(reader, writer, ChannelConfig::default())
    }

    /// [`CellChannel::new`] with other limits.
    ///
    /// Panics if a limit is 0.
    pub fn with_config(reader: CellReader<S>, writer: CellWriter<S>, config: ChannelConfig) -> io::Result<Self> {
        assert!(
            config.queue_cells > 0 && config.accept_backlog > 0 && config.link_queue_cells > 0,
            "ChannelConfig limits must be positive: {config:?}"
        );
        let shared = Arc::new(Shared::new(writer, config));
        let demux = shared.clone();
        thread::Builder::new().name("cell-channel-demux".into()).spawn(move || demux.demux(reader))?;
        Ok(CellChannel { shared })
    }

    /// Opens circuit `circ_id` from this side. Nothing is sent: the first cell (normally a CREATE) creates
    /// the circuit at the peer.
    ///
    /// Fails with [`ChannelError::ReservedId`] for 0, [`ChannelError::InUse`] if the ID is open, or the
    /// channel's end error once it has ended.
    pub fn open_circuit(&self, circ_id: u32) -> io::Result<Circuit<S>> {
        let queue = self.shared.open(circ_id)?;
        Ok(Circuit::new(circ_id, queue, self.shared.clone()))
    }

    /// The next circuit the peer created (its first cell, a CREATE*, is the first [`Circuit::recv`] returns),
    /// blocking until there is one.
    ///
    /// Returns `Ok(None)` once the peer closed the channel cleanly and every created circuit was accepted, or
    /// [`ChannelError::Link`] if the channel failed.
    pub fn accept_circuit(&self) -> io::Result<Option<Circuit<S>>> {
        Ok(self.shared.accept()?.map(|(circ_id, queue)| Circuit::new(circ_id, queue, self.shared.clone())))
    }

    /// The next link-level (circuit 0) cell other than padding, blocking; `Ok(None)` once the channel ended
    /// cleanly, [`ChannelError::Link`] if it failed.
    pub fn recv_link_cell(&self) -> io::Result<Option<Cell>> {
        self.shared.link.recv(0)
    }

    /// Sends a link-level cell (circuit 0), e.g. NETINFO or PADDING.
    pub fn send_link_cell(&self, command: Command, payload: impl Into<Bytes>) -> io::Result<()> {
        self.shared.link.check_send(0)?;
        self.shared.send(&Cell { circ_id: 0, command, payload: payload.into() })
    }

    /// The channel's counters now.
    pub fn stats(&self) -> ChannelStats {
        self.shared.stats()
    }

    /// Closes our side of the TLS session (close_notify, then shutting the socket's write side): nothing
    /// more can be sent on any circuit. Circuits keep receiving until the peer closes its side too, which
    /// ends them with `Ok(None)`; a peer [`CellChannel`] does that as soon as it sees our close.
    pub fn close(&self) -> io::Result<()> {
        self.shared.close_writer()
    }
}

/// Closes the channel like [`CellChannel::close`], ignoring errors. The demux thread exits once the peer
/// closes its side or the connection fails.
impl<S: TcpStreamApi> Drop for CellChannel<S> {
    fn drop(&mut self) {
        let _ = self.close();
    }
}
