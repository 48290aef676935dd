//! One circuit of a channel: its receive queue plus a handle on the shared writer.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use plebnet::net::TcpStreamApi;

use super::ChannelError;
use super::queue::{End, Queue};
use super::shared::Shared;
use crate::cell::{Cell, Command};

/// DESTROY reason NONE (tor-spec §5.4): sent by [`Circuit::close`].
const REASON_NONE: u8 = 0;
/// DESTROY reason RESOURCELIMIT: sent when closing a circuit that overflowed its queue.
const REASON_RESOURCELIMIT: u8 = 5;

/// One circuit of a [`CellChannel`](super::CellChannel): cells tagged with its circuit ID, in both directions.
///
/// From [`CellChannel::open_circuit`](super::CellChannel::open_circuit) or
/// [`CellChannel::accept_circuit`](super::CellChannel::accept_circuit). Every method takes `&self`, so one
/// thread can [`recv`](Circuit::recv) while others [`send`](Circuit::send) (share it in an `Arc`).
///
/// The circuit ends when the peer sends DESTROY, when it [overflows](super::ChannelError::Overflow) its
/// receive queue, when the channel ends, or when it is [closed](Circuit::close) here. Dropping it closes it.
pub struct Circuit<S: TcpStreamApi> {
    circ_id: u32,
    queue: Arc<Queue>,
    shared: Arc<Shared<S>>,
}

impl<S: TcpStreamApi> std::fmt::Debug for Circuit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Circuit").field("circ_id", &self.circ_id).field("queued", &self.queue.len()).finish()
    }
}

impl<S: TcpStreamApi> Circuit<S> {
    pub(crate) fn new(circ_id: u32, queue: Arc<Queue>, shared: Arc<Shared<S>>) -> Self {
        Circuit { circ_id, queue, shared }
    }

    /// This circuit's ID.
    pub fn id(&self) -> u32 {
        self.circ_id
    }

    /// Sends a cell with this circuit's ID, `command` and `payload` (at most 509 bytes for a fixed-length
    /// command; shorter payloads are zero-padded on the wire).
    ///
    /// The cell goes out at once unless another thread is already waiting to send on this channel, in which
    /// case it shares that thread's TLS record; blocks while the socket is full. Fails once the circuit has
    /// ended (with the reason: [`ChannelError::Destroyed`], [`ChannelError::Overflow`], ...), with
    /// [`ChannelError::DestroyViaSend`] for a DESTROY command (use [`close`](Circuit::close)), with
    /// `InvalidInput` for a payload too long, or with the TLS stream's error.
    pub fn send(&self, command: Command, payload: impl Into<Bytes>) -> io::Result<()> {
        if command == Command::DESTROY {
            return Err(ChannelError::DestroyViaSend.into());
        }
        self.queue.check_send(self.circ_id)?;
        self.shared.send(&Cell { circ_id: self.circ_id, command, payload: payload.into() })
    }

    /// The next cell the peer sent on this circuit, blocking until there is one.
    ///
    /// Cells queued before the circuit ended are returned first. Then: `Ok(None)` after the peer's DESTROY,
    /// after [`close`](Circuit::close), or after the peer closed the channel cleanly;
    /// [`ChannelError::Overflow`] (`OutOfMemory`) if the circuit overflowed its queue;
    /// [`ChannelError::Link`] (with the reader's error kind) if the channel failed. Every later call returns
    /// the same.
    pub fn recv(&self) -> io::Result<Option<Cell>> {
        self.queue.recv(self.circ_id)
    }

    /// Cells received but not yet taken with [`recv`](Circuit::recv).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Closes the circuit: discards the cells not yet received, frees its ID, and tells the peer with a
    /// DESTROY cell (reason NONE, or RESOURCELIMIT after an overflow) unless the peer destroyed it first or
    /// the channel has ended. Afterwards [`recv`](Circuit::recv) returns `Ok(None)` and
    /// [`send`](Circuit::send) fails with [`ChannelError::Closed`]. Closing again does nothing.
    ///
    /// Cells the peer sent before it saw the DESTROY are dropped (counted in
    /// [`ChannelStats::dropped_unknown_circuit`](super::ChannelStats::dropped_unknown_circuit)).
    pub fn close(&self) -> io::Result<()> {
        let prior = self.queue.end(End::Closed);
        self.shared.forget(self.circ_id, &self.queue);
        let reason = match prior {
            None => REASON_NONE,
            Some(End::Overflowed { .. }) => REASON_RESOURCELIMIT,
            Some(End::Destroyed { .. } | End::Closed | End::Channel(_)) => return Ok(()),
        };
        let payload = Bytes::copy_from_slice(&[reason]);
        self.shared.send(&Cell { circ_id: self.circ_id, command: Command::DESTROY, payload })
    }
}

/// Closes the circuit like [`Circuit::close`], ignoring errors.
impl<S: TcpStreamApi> Drop for Circuit<S> {
    fn drop(&mut self) {
        let _ = self.close();
    }
}
