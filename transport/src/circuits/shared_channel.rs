//! The Tor link model: all circuits in one [`CellChannel`].

use std::io;

use bytes::Bytes;
use plebnet::net::TcpStreamApi;

use super::{CircuitCarrier, CircuitEnd};
use crate::cell::{Cell, Command};
use crate::channel::{CellChannel, Circuit};

impl<S: TcpStreamApi> CircuitEnd for Circuit<S> {
    fn id(&self) -> u32 {
        Circuit::id(self)
    }

    fn send(&self, command: Command, payload: Bytes) -> io::Result<()> {
        Circuit::send(self, command, payload)
    }

    fn recv(&self) -> io::Result<Option<Cell>> {
        Circuit::recv(self)
    }

    fn close(&self) -> io::Result<()> {
        Circuit::close(self)
    }
}

impl<S: TcpStreamApi> CircuitCarrier for CellChannel<S> {
    type Circuit = Circuit<S>;

    fn open(&self, circ_id: u32) -> io::Result<Circuit<S>> {
        self.open_circuit(circ_id)
    }

    fn accept(&self) -> io::Result<Option<Circuit<S>>> {
        self.accept_circuit()
    }
}
