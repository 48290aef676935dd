//! One circuit's bounded receive queue and how the circuit ended: filled by the demux thread, emptied by
//! [`Circuit::recv`](super::Circuit::recv), woken with a condition variable.

use std::collections::VecDeque;
use std::io;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use super::ChannelError;
use crate::cell::Cell;

/// How the channel's reader ended, kept to answer every circuit's later calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LinkFailure {
    pub(crate) kind: io::ErrorKind,
    pub(crate) message: String,
}

/// Why a queue takes no more cells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// The peer sent DESTROY with this reason.
    Destroyed { reason: u8 },
    /// The queue was full when a cell arrived.
    Overflowed { capacity: usize },
    /// Closed locally; queued cells were discarded.
    Closed,
    /// The channel ended: cleanly (`None`) or with the reader's error.
    Channel(Option<LinkFailure>),
}

/// What [`Queue::push`] did with a cell.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// The queue is full; when `overflow_ends` was set, the queue has now ended with [`End::Overflowed`].
    Full,
    /// The queue had ended; the cell was dropped.
    Ended,
}

struct State {
    cells: VecDeque<Cell>,
    end: Option<End>,
}

/// A bounded FIFO of cells plus the reason it ended, if it has.
pub(crate) struct Queue {
    state: Mutex<State>,
    ready: Condvar,
    capacity: usize,
}

impl Queue {
    pub(crate) fn new(capacity: usize) -> Self {
        Queue { state: Mutex::new(State { cells: VecDeque::new(), end: None }), ready: Condvar::new(), capacity }
    }

    /// The state; a panic elsewhere cannot leave it inconsistent (each update is one assignment or push).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `cell` unless the queue has ended or is full. A full queue ends with [`End::Overflowed`] if
    /// `overflow_ends`, and otherwise just refuses the cell. Never blocks on the consumer.
    pub(crate) fn push(&self, cell: Cell, overflow_ends: bool) -> Pushed {
        let mut state = self.lock();
        if state.end.is_some() {
            return Pushed::Ended;
        }
        if state.cells.len() >= self.capacity {
            if overflow_ends {
                state.end = Some(End::Overflowed { capacity: self.capacity });
                drop(state);
                self.ready.notify_all();
            }
            return Pushed::Full;
        }
        state.cells.push_back(cell);
        drop(state);
        self.ready.notify_one();
        Pushed::Queued
    }

    /// Ends the queue with `end` unless it has ended already; returns the earlier end, if any. Cells already
    /// queued stay readable, except that [`End::Closed`] (which always takes effect) discards them.
    pub(crate) fn end(&self, end: End) -> Option<End> {
        let mut state = self.lock();
        let prior = state.end.clone();
        if end == End::Closed {
            state.cells.clear();
            state.end = Some(End::Closed);
        } else if prior.is_none() {
            state.end = Some(end);
        }
        drop(state);
        self.ready.notify_all();
        prior
    }

    /// The next cell, blocking until one is queued or the queue has ended and is empty; then `None` for an
    /// orderly end and the error for an overflow or a failed channel.
    pub(crate) fn recv(&self, circ_id: u32) -> io::Result<Option<Cell>> {
        let mut state = self.lock();
        loop {
            if let Some(cell) = state.cells.pop_front() {
                return Ok(Some(cell));
            }
            match &state.end {
                None => state = self.ready.wait(state).unwrap_or_else(PoisonError::into_inner),
                Some(End::Destroyed { .. } | End::Closed | End::Channel(None)) => return Ok(None),
                Some(end) => return Err(end_error(end, circ_id).into()),
            }
        }
    }

    /// Fails if nothing may be sent on this queue's circuit any more.
    pub(crate) fn check_send(&self, circ_id: u32) -> Result<(), ChannelError> {
        match &self.lock().end {
            None => Ok(()),
            Some(end) => Err(end_error(end, circ_id)),
        }
    }

    /// Cells waiting to be received.
    pub(crate) fn len(&self) -> usize {
        self.lock().cells.len()
    }
}

/// The error an ended circuit reports.
fn end_error(end: &End, circ_id: u32) -> ChannelError {
    match end {
        End::Destroyed { reason } => ChannelError::Destroyed { circ_id, reason: *reason },
        End::Overflowed { capacity } => ChannelError::Overflow { circ_id, capacity: *capacity },
        End::Closed => ChannelError::Closed { circ_id },
        End::Channel(None) => ChannelError::ChannelClosed,
        End::Channel(Some(f)) => ChannelError::Link { kind: f.kind, message: f.message.clone() },
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::cell::Command;

    fn cell(n: u8) -> Cell {
        Cell { circ_id: 1, command: Command::RELAY, payload: Bytes::from(vec![n]) }
    }

    #[test]
    fn overflow_ends_after_the_queued_cells() {
        let q = Queue::new(2);
        assert_eq!(q.push(cell(1), true), Pushed::Queued);
        assert_eq!(q.push(cell(2), true), Pushed::Queued);
        assert_eq!(q.push(cell(3), true), Pushed::Full);
        assert_eq!(q.push(cell(4), true), Pushed::Ended);
        assert_eq!(q.recv(1).unwrap(), Some(cell(1)));
        assert_eq!(q.recv(1).unwrap(), Some(cell(2)));
        let err = q.recv(1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::OutOfMemory);
        assert!(err.to_string().starts_with("circuit 1 overflowed its 2-cell receive queue"), "{err}");
    }

    #[test]
    fn full_queue_without_overflow_ends_just_refuses() {
        let q = Queue::new(1);
        assert_eq!(q.push(cell(1), false), Pushed::Queued);
        assert_eq!(q.push(cell(2), false), Pushed::Full);
        assert_eq!(q.recv(0).unwrap(), Some(cell(1)));
        assert_eq!(q.push(cell(3), false), Pushed::Queued);
    }

    #[test]
    fn destroy_then_none_and_close_discards() {
        let q = Queue::new(4);
        q.push(cell(1), true);
        assert_eq!(q.end(End::Destroyed { reason: 9 }), None);
        assert_eq!(q.end(End::Channel(None)), Some(End::Destroyed { reason: 9 }), "first end wins");
        assert!(q.check_send(1).unwrap_err().to_string().contains("DESTROY reason 9"));
        assert_eq!(q.recv(1).unwrap(), Some(cell(1)));
        assert_eq!(q.recv(1).unwrap(), None);

        let q = Queue::new(4);
        q.push(cell(1), true);
        q.end(End::Closed);
        assert_eq!(q.len(), 0);
        assert_eq!(q.recv(1).unwrap(), None);
    }

    #[test]
    fn recv_wakes_on_push_from_another_thread() {
        let q = std::sync::Arc::new(Queue::new(4));
        let q2 = q.clone();
        let t = std::thread::spawn(move || q2.recv(1));
        q.push(cell(7), true);
        assert_eq!(t.join().unwrap().unwrap(), Some(cell(7)));
    }
}
