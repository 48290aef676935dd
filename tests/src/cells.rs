//! Helpers shared by the cell-stream tests (TLS blocking and async, cell
//! channels): seeded RELAY cells and their hash, threads whose results are
//! awaited with a bound (so a deadlock fails instead of hanging), and
//! connected TCP and TLS pairs over any [`NetStack`].

use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use plebnet::net::{NetStack, TcpListenerApi, TcpStreamApi};
use plebnet::netstack::rng::Rng;
use plebnet_transport::cell::{Cell, Command, FIXED_PAYLOAD_LEN};
use plebnet_transport::tls::{Pin, TlsByteStream, TlsCellStream, client_config_pinned, self_signed, server_config};
use sha2::{Digest, Sha256};

/// How long any one thread of a test may take before the test calls it a deadlock.
pub const JOIN_BOUND: Duration = Duration::from_secs(120);

/// Deterministic RELAY cells with full pseudo-random payloads.
pub struct CellSource {
    rng: Rng,
    next_circ: u32,
}

impl CellSource {
    pub fn new(seed: u64) -> Self {
        CellSource { rng: Rng::new(seed), next_circ: 1 }
    }

    pub fn next_cell(&mut self) -> Cell {
        let mut payload = vec![0u8; FIXED_PAYLOAD_LEN + 3];
        for word in payload.chunks_mut(8) {
            word.copy_from_slice(&self.rng.next_u64().to_le_bytes()[..word.len()]);
        }
        payload.truncate(FIXED_PAYLOAD_LEN);
        self.next_circ = self.next_circ.wrapping_add(1);
        Cell { circ_id: self.next_circ, command: Command::RELAY, payload: payload.into() }
    }
}

/// Adds a cell (CircID, command, payload) to a running hash.
pub fn hash_cell(hasher: &mut Sha256, cell: &Cell) {
    hasher.update(cell.circ_id.to_be_bytes());
    hasher.update([cell.command.0]);
    hasher.update(&cell.payload);
}

/// Runs `f` on a thread and returns a receiver for its result, so the test can bound the wait.
pub fn spawn_bounded<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> mpsc::Receiver<T> {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .unwrap();
    rx
}

/// Waits up to [`JOIN_BOUND`] for what `spawn_bounded` started.
pub fn join_bounded<T>(what: &str, rx: &mpsc::Receiver<T>) -> T {
    rx.recv_timeout(JOIN_BOUND)
        .unwrap_or_else(|e| panic!("{what} did not finish within {JOIN_BOUND:?} ({e}): deadlock?"))
}

/// A connected TCP pair `(client, server)` via a listener on `listen` on the `server` stack.
pub fn tcp_pair<N: NetStack>(server: &N, client: &N, listen: SocketAddr) -> (N::TcpStream, N::TcpStream) {
    let listener = server.tcp_listen(listen).unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = spawn_bounded("accept", move || listener.accept().map(|(s, _)| s));
    let c = client.tcp_connect(addr).unwrap();
    (c, join_bounded("accept", &accepted).unwrap())
}

/// A fresh self-signed server configuration and the pin a client needs for
/// it (on the SPKI or on the whole certificate).
pub fn server_side(spki_pin: bool) -> (rustls::ServerConfig, Pin) {
    let (cert, key) = self_signed(&["relay.test"]).unwrap();
    let pin = if spki_pin { Pin::spki_sha256(&cert).unwrap() } else { Pin::cert_sha256(&cert) };
    (server_config(cert, key).unwrap(), pin)
}

/// TLS handshake over a connected pair; returns `(client, server)` streams.
pub fn tls_pair<S: TcpStreamApi>(c: S, s: S, spki_pin: bool) -> (TlsCellStream<S>, TlsCellStream<S>) {
    let (config, pin) = server_side(spki_pin);
    let server = spawn_bounded("tls accept", move || TlsCellStream::accept(s, config));
    let client = TlsCellStream::connect(c, "relay.test", client_config_pinned(pin)).unwrap();
    (client, join_bounded("tls accept", &server).unwrap())
}

/// Echoes a TLS byte stream until the peer's EOF, then closes this side too
/// (the echo end of the tunnel tests).
pub fn echo_tls_bytes<S: TcpStreamApi>(mut s: TlsByteStream<S>) {
    use std::io::{Read, Write};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            s.shutdown_write().unwrap();
            return;
        }
        s.write_all(&buf[..n]).unwrap();
        s.flush().unwrap();
    }
}
