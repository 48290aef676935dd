//! The state a channel's handles and its demux thread share: the circuit table, the shared writer, the
//! counters, and the demux loop that routes received cells.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use plebnet::net::TcpStreamApi;

use super::queue::{End, LinkFailure, Pushed, Queue};
use super::{ChannelConfig, ChannelError, ChannelStats};
use crate::cell::{Cell, Command};
use crate::tls::{CellReader, CellWriter, TlsStreamError};

/// Which circuits are open, which wait to be accepted, and whether the channel has ended.
pub(crate) struct Table {
    pub(crate) circuits: HashMap<u32, Arc<Queue>>,
    pub(crate) backlog: VecDeque<(u32, Arc<Queue>)>,
    pub(crate) end: Option<End>,
}

/// One counter per [`ChannelStats`] field.
#[derive(Default)]
struct Counters {
    cells_in: AtomicU64,
    cells_out: AtomicU64,
    link_cells_in: AtomicU64,
    circuits_opened: AtomicU64,
    circuits_accepted: AtomicU64,
    circuits_destroyed_by_peer: AtomicU64,
    circuits_overflowed: AtomicU64,
    refused_circuits: AtomicU64,
    dropped_padding: AtomicU64,
    dropped_unknown_circuit: AtomicU64,
    dropped_overflow: AtomicU64,
    dropped_link_queue_full: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Shared by [`CellChannel`](super::CellChannel), its [`Circuit`](super::Circuit)s and the demux thread.
pub(crate) struct Shared<S: TcpStreamApi> {
    writer: Mutex<CellWriter<S>>,
    /// Senders waiting for `writer`: the holder leaves the flush to the last of them (group commit).
    waiting_writers: AtomicUsize,
    /// `close_writer` ran: later calls do nothing.
    writer_closed: AtomicBool,
    table: Mutex<Table>,
    accept_ready: Condvar,
    /// Circuit 0's cells.
    pub(crate) link: Queue,
    pub(crate) config: ChannelConfig,
    counters: Counters,
}

impl<S: TcpStreamApi> Shared<S> {
    pub(crate) fn new(writer: CellWriter<S>, config: ChannelConfig) -> Self {
        Shared {
            writer: Mutex::new(writer),
            waiting_writers: AtomicUsize::new(0),
            writer_closed: AtomicBool::new(false),
            table: Mutex::new(Table { circuits: HashMap::new(), backlog: VecDeque::new(), end: None }),
            accept_ready: Condvar::new(),
            link: Queue::new(config.link_queue_cells),
            config,
            counters: Counters::default(),
        }
    }

    /// The circuit table; every update of it is a single insert or remove, so a panic cannot corrupt it.
    pub(crate) fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a circuit opened locally.
    pub(crate) fn open(&self, circ_id: u32) -> Result<Arc<Queue>, ChannelError> {
        if circ_id == 0 {
            return Err(ChannelError::ReservedId);
        }
        let mut table = self.table();
        if let Some(end) = &table.end {
            return Err(channel_end_error(end));
        }
        if table.circuits.contains_key(&circ_id) {
            return Err(ChannelError::InUse { circ_id });
        }
        let queue = Arc::new(Queue::new(self.config.queue_cells));
        table.circuits.insert(circ_id, queue.clone());
        bump(&self.counters.circuits_opened);
        Ok(queue)
    }

    /// The next circuit the peer created, blocking; `Ok(None)` once the channel ended cleanly.
    pub(crate) fn accept(&self) -> io::Result<Option<(u32, Arc<Queue>)>> {
        let mut table = self.table();
        loop {
            if let Some(next) = table.backlog.pop_front() {
                bump(&self.counters.circuits_accepted);
                return Ok(Some(next));
            }
            match &table.end {
                None => table = self.accept_ready.wait(table).unwrap_or_else(PoisonError::into_inner),
                Some(End::Channel(None)) => return Ok(None),
                Some(end) => return Err(channel_end_error(end).into()),
            }
        }
    }

    /// Frees `circ_id` if it still names `queue` (the peer may have reused a destroyed ID already).
    pub(crate) fn forget(&self, circ_id: u32, queue: &Arc<Queue>) {
        let mut table = self.table();
        if table.circuits.get(&circ_id).is_some_and(|q| Arc::ptr_eq(q, queue)) {
            table.circuits.remove(&circ_id);
        }
    }

    /// Sends one cell through the shared writer. The cell is flushed unless another sender is already waiting
    /// for the writer: that one (or the last of a queue of them) flushes both, so busy circuits share TLS
    /// records while a lone cell still leaves at once.
    pub(crate) fn send(&self, cell: &Cell) -> io::Result<()> {
        self.waiting_writers.fetch_add(1, Ordering::SeqCst);
        let writer = self.writer.lock();
        self.waiting_writers.fetch_sub(1, Ordering::SeqCst);
        let mut writer = writer.map_err(|_| TlsStreamError::Poisoned)?;
        writer.write_cell(cell)?;
        if self.waiting_writers.load(Ordering::SeqCst) == 0 {
            writer.flush()?;
        }
        bump(&self.counters.cells_out);
        Ok(())
    }

    /// Sends the TLS close_notify and shuts the socket's write side, the first time it is called.
    pub(crate) fn close_writer(&self) -> io::Result<()> {
        if self.writer_closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.writer.lock().map_err(|_| TlsStreamError::Poisoned)?.close()
    }

    /// The demux loop: reads cells until the stream ends or fails, routing each; then ends every circuit and
    /// closes our side of the TLS session.
    pub(crate) fn demux(&self, mut reader: CellReader<S>) {
        let failure = loop {
            match reader.read_cell() {
                Ok(Some(cell)) => self.route(cell),
                Ok(None) => break None,
                Err(err) => break Some(LinkFailure { kind: err.kind(), message: err.to_string() }),
            }
        };
        self.end_channel(failure);
        // Best effort: tells a live peer we are gone; fails at once if the session is dead or closed already.
        let _ = self.close_writer();
    }

    /// Delivers one received cell. Never blocks on a consumer: a full queue closes its circuit instead.
    fn route(&self, cell: Cell) {
        let c = &self.counters;
        bump(&c.cells_in);
        if cell.command == Command::PADDING || cell.command == Command::VPADDING {
            return bump(&c.dropped_padding);
        }
        if cell.circ_id == 0 {
            return match self.link.push(cell, false) {
                Pushed::Queued => bump(&c.link_cells_in),
                Pushed::Full | Pushed::Ended => bump(&c.dropped_link_queue_full),
            };
        }
        let circ_id = cell.circ_id;
        let queue = {
            let mut table = self.table();
            match table.circuits.get(&circ_id) {
                Some(queue) if cell.command == Command::DESTROY => {
                    let queue = queue.clone();
                    table.circuits.remove(&circ_id);
                    drop(table);
                    // Counted before the circuit's reader wakes, so it sees the count.
                    bump(&c.circuits_destroyed_by_peer);
                    let reason = cell.payload.first().copied().unwrap_or(0);
                    queue.end(End::Destroyed { reason });
                    return;
                }
                Some(queue) => queue.clone(),
                None if is_create(cell.command) => {
                    if table.backlog.len() >= self.config.accept_backlog {
                        return bump(&c.refused_circuits);
                    }
                    let queue = Arc::new(Queue::new(self.config.queue_cells));
                    table.circuits.insert(circ_id, queue.clone());
                    table.backlog.push_back((circ_id, queue.clone()));
                    self.accept_ready.notify_one();
                    queue
                }
                None => return bump(&c.dropped_unknown_circuit),
            }
        };
        match queue.push(cell, true) {
            Pushed::Queued => {}
            Pushed::Full => {
                bump(&c.circuits_overflowed);
                bump(&c.dropped_overflow);
            }
            Pushed::Ended => bump(&c.dropped_overflow),
        }
    }

    /// Ends the channel: every open circuit, the link queue and `accept` report `failure` (or an orderly end).
    fn end_channel(&self, failure: Option<LinkFailure>) {
        let end = End::Channel(failure);
        let queues: Vec<Arc<Queue>> = {
            let mut table = self.table();
            table.end = Some(end.clone());
            table.circuits.drain().map(|(_, q)| q).collect()
        };
        for queue in queues {
            queue.end(end.clone());
        }
        self.link.end(end);
        self.accept_ready.notify_all();
    }

    /// A snapshot of the counters.
    pub(crate) fn stats(&self) -> ChannelStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ChannelStats {
            cells_in: get(&c.cells_in),
            cells_out: get(&c.cells_out),
            link_cells_in: get(&c.link_cells_in),
            circuits_opened: get(&c.circuits_opened),
            circuits_accepted: get(&c.circuits_accepted),
            circuits_destroyed_by_peer: get(&c.circuits_destroyed_by_peer),
            circuits_overflowed: get(&c.circuits_overflowed),
            refused_circuits: get(&c.refused_circuits),
            dropped_padding: get(&c.dropped_padding),
            dropped_unknown_circuit: get(&c.dropped_unknown_circuit),
            dropped_overflow: get(&c.dropped_overflow),
            dropped_link_queue_full: get(&c.dropped_link_queue_full),
            open_circuits: self.table().circuits.len(),
        }
    }
}

/// Whether `command` asks for a new circuit (tor-spec §5.1): the only cells that may open one.
pub(crate) fn is_create(command: Command) -> bool {
    command == Command::CREATE || command == Command::CREATE_FAST || command == Command::CREATE2
}

/// The error an operation on an ended channel reports.
fn channel_end_error(end: &End) -> ChannelError {
    match end {
        End::Channel(Some(f)) => ChannelError::Link { kind: f.kind, message: f.message.clone() },
        _ => ChannelError::ChannelClosed,
    }
}
