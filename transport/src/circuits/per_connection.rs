//! One TCP connection per circuit (TCP-over-DTLS when the stack's NIC is a
//! DTLS link). Cells travel in the ordinary cell framing; the circuit's
//! first cell must be a CREATE* and tells the acceptor the circuit's ID, as
//! on a channel.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use plebnet::net::{NetStack, TcpListenerApi, TcpStreamApi};

use super::{CircuitCarrier, CircuitEnd};
use crate::cell::{Cell, CellDecoder, Command};
use crate::channel::is_create;

/// Carries each circuit on its own TCP connection of `stack`. See the module
/// docs.
#[derive(Debug)]
pub struct ConnectionPerCircuit<N: NetStack> {
    stack: N,
    /// Where [`open`](CircuitCarrier::open) connects.
    peer: Option<SocketAddr>,
    /// Where [`accept`](CircuitCarrier::accept) takes connections.
    listener: Option<N::TcpListener>,
}

impl<N: NetStack> ConnectionPerCircuit<N> {
    /// A carrier that opens circuits to the peer listening at `peer`.
    pub fn dialer(stack: N, peer: SocketAddr) -> Self {
        Self { stack, peer: Some(peer), listener: None }
    }

    /// A carrier that accepts circuits on `addr`.
    pub fn listener(stack: N, addr: SocketAddr) -> io::Result<Self> {
        let listener = stack.tcp_listen(addr)?;
        Ok(Self { stack, peer: None, listener: Some(listener) })
    }
}

impl<N: NetStack> CircuitCarrier for ConnectionPerCircuit<N> {
    type Circuit = TcpCircuit<N::TcpStream>;

    fn open(&self, circ_id: u32) -> io::Result<Self::Circuit> {
        if circ_id == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "circuit ID 0 is reserved for the link"));
        }
        let peer = self
            .peer
            .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "this carrier only accepts circuits"))?;
        let stream = self.stack.tcp_connect(peer)?;
        TcpCircuit::new(circ_id, stream, None)
    }

    fn accept(&self) -> io::Result<Option<Self::Circuit>> {
        let listener = self
            .listener
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "this carrier only opens circuits"))?;
        let (stream, _) = listener.accept()?;
        let mut reader = Reader { stream: stream.try_clone()?, decoder: CellDecoder::new(), buf: vec![0; 16 << 10] };
        match reader.next_cell()? {
            Some(first) if first.circ_id != 0 && is_create(first.command) => {
                TcpCircuit::new(first.circ_id, stream, Some((reader, first))).map(Some)
            }
            Some(first) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a circuit connection began with a {:?} cell for circuit {}, not a CREATE*",
                    first.command, first.circ_id
                ),
            )),
            None => {
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, "a circuit connection closed before its first cell"))
            }
        }
    }
}

#[derive(Debug)]
struct Reader<S> {
    stream: S,
    decoder: CellDecoder,
    buf: Vec<u8>,
}

impl<S: TcpStreamApi> Reader<S> {
    fn next_cell(&mut self) -> io::Result<Option<Cell>> {
        loop {
            if let Some(cell) = self.decoder.poll_cell().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))? {
                return Ok(Some(cell));
            }
            let n = self.stream.read(&mut self.buf)?;
            if n == 0 {
                self.decoder.finish().map_err(|e| io::Error::new(io::ErrorKind::UnexpectedEof, e))?;
                return Ok(None);
            }
            self.decoder.push(&self.buf[..n]).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }
}

/// One circuit on its own TCP connection.
#[derive(Debug)]
pub struct TcpCircuit<S: TcpStreamApi> {
    id: u32,
    control: S,
    reader: Mutex<(Reader<S>, Option<Cell>)>,
    writer: Mutex<(S, BytesMut)>,
}

impl<S: TcpStreamApi> TcpCircuit<S> {
    fn new(id: u32, stream: S, read: Option<(Reader<S>, Cell)>) -> io::Result<Self> {
        // Cells are small and latency matters more than packet count.
        stream.set_nodelay(true)?;
        let (reader, first) = match read {
            Some((reader, first)) => (reader, Some(first)),
            None => (Reader { stream: stream.try_clone()?, decoder: CellDecoder::new(), buf: vec![0; 16 << 10] }, None),
        };
        Ok(Self {
            id,
            writer: Mutex::new((stream.try_clone()?, BytesMut::new())),
            reader: Mutex::new((reader, first)),
            control: stream,
        })
    }
}

impl<S: TcpStreamApi> CircuitEnd for TcpCircuit<S> {
    fn id(&self) -> u32 {
        self.id
    }

    fn send(&self, command: Command, payload: Bytes) -> io::Result<()> {
        let cell = Cell { circ_id: self.id, command, payload };
        let mut guard = self.writer.lock().map_err(|_| io::Error::other("circuit writer poisoned"))?;
        let (stream, buf) = &mut *guard;
        buf.clear();
        cell.encode_to(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        stream.write_all(buf)
    }

    fn recv(&self) -> io::Result<Option<Cell>> {
        let mut guard = self.reader.lock().map_err(|_| io::Error::other("circuit reader poisoned"))?;
        let (reader, first) = &mut *guard;
        if let Some(cell) = first.take() {
            return Ok(Some(cell));
        }
        match reader.next_cell()? {
            Some(cell) if cell.circ_id != self.id => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a cell for circuit {} on the connection of circuit {}", cell.circ_id, self.id),
            )),
            other => Ok(other),
        }
    }

    fn close(&self) -> io::Result<()> {
        match self.control.shutdown(Shutdown::Both) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            other => other,
        }
    }
}
