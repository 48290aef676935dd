//! What each node runs: the target (a TCP server on the exit's stack), the exit (circuits from the relay's
//! cell channel, spliced to TCP connections), and the relay (streams of the client's multipath tunnel, each
//! spliced to a circuit towards the exit).

use std::error::Error;
use std::io::{self, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::Duration;

use plebnet::net::{NetStack, Stack, TcpStream};
use plebnet::netstack::rng::Rng;
use plebnet_transport::cell::Command;
use plebnet_transport::channel::{CellChannel, ChannelStats, Circuit};
use plebnet_transport::multipath::TunnelConfig;
use plebnet_transport::multipath::driver::{Tunnel, TunnelListener, TunnelStream};
use plebnet_transport::tls::{Pin, TlsCellStream, client_config_pinned, self_signed, server_config};
use sha2::{Digest, Sha256};

use super::circuit::{Window, pump_into, pump_out_of};

/// Port of the relay's multipath listener on each of its addresses.
pub const RELAY_PORT: u16 = 9001;
/// Port of the exit's cell-channel listener.
const EXIT_PORT: u16 = 443;
/// Port of the target on the exit's stack.
pub const TARGET_PORT: u16 = 80;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

/// A fresh certificate for `name` and the SPKI pin a client needs.
pub fn identity(name: &str) -> Result<(rustls::ServerConfig, Pin)> {
    let (cert, key) = self_signed(&[name])?;
    let pin = Pin::spki_sha256(&cert).ok_or("the certificate has no parsable public key")?;
    Ok((server_config(cert, key)?, pin))
}

/// The target: serves `len` bytes from `seed` to the first connection, then closes; returns their sha256.
pub fn serve_target(
    exit: &Stack,
    addr: IpAddr,
    seed: u64,
    len: u64,
) -> Result<thread::JoinHandle<io::Result<[u8; 32]>>> {
    let listener = exit.tcp_listen(SocketAddr::new(addr, TARGET_PORT))?;
    Ok(thread::spawn(move || {
        let (stream, _) = listener.accept()?;
        let mut rng = Rng::new(seed);
        let mut hasher = Sha256::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut left = len as usize;
        while left > 0 {
            let n = left.min(chunk.len());
            chunk[..n].chunks_mut(8).for_each(|w| w.copy_from_slice(&rng.next_u64().to_le_bytes()[..w.len()]));
            (&stream).write_all(&chunk[..n])?;
            hasher.update(&chunk[..n]);
            left -= n;
        }
        stream.shutdown(Shutdown::Write)?;
        Ok(hasher.finalize().into())
    }))
}

/// The exit: accepts the relay's TLS cell channel and, for each circuit, connects to the target its
/// CREATE_FAST names and splices the two.
pub fn run_exit(exit: Stack, addr: IpAddr, tls: rustls::ServerConfig) -> Result<()> {
    let listener = exit.tcp_listen(SocketAddr::new(addr, EXIT_PORT))?;
    let tls = Arc::new(tls);
    thread::spawn(move || -> Result<()> {
        let (tcp, _) = listener.accept()?;
        let (reader, writer) = TlsCellStream::accept(tcp, tls)?.split()?;
        let channel = Arc::new(CellChannel::new(reader, writer)?);
        while let Some(circuit) = channel.accept_circuit()? {
            let exit = exit.clone();
            thread::spawn(move || -> Result<()> {
                let create = circuit.recv()?.ok_or("the circuit ended before CREATE_FAST")?;
                let target = String::from_utf8_lossy(&create.payload).trim_end_matches('\0').to_string();
                let tcp = match exit.tcp_connect_timeout(target.parse()?, Duration::from_secs(10)) {
                    Ok(tcp) => tcp,
                    Err(e) => {
                        circuit.close()?;
                        return Err(format!("exit: cannot reach {target}: {e}").into());
                    }
                };
                circuit.send(Command::CREATED_FAST, Vec::new())?;
                let (circuit, window) = (Arc::new(circuit), Arc::new(Window::default()));
                let (c, w, t) = (circuit.clone(), window.clone(), tcp.clone());
                let (ended, peer_end) = mpsc::channel();
                let upstream = thread::spawn(move || {
                    pump_out_of(&c, &t, &w, move |t: &TcpStream| {
                        let _ = ended.send(());
                        t.shutdown(Shutdown::Write)
                    })
                });
                let result = pump_into(&tcp, &circuit, &window)
                    .map_err(Into::into)
                    .and_then(|_| finish_splice(&circuit, &peer_end, upstream));
                if result.is_err() {
                    let _ = tcp.shutdown(Shutdown::Both);
                }
                result
            });
        }
        Ok(())
    });
    Ok(())
}

/// The relay's side of its channel to the exit.
pub struct ExitChannel {
    channel: CellChannel<TcpStream>,
}

impl ExitChannel {
    /// Counters of the channel.
    pub fn stats(&self) -> ChannelStats {
        self.channel.stats()
    }
}

/// A running relay: its multipath listener (for its counters), its channel to the exit, and the tunnels it
/// accepted (filled as they arrive).
pub struct Relay {
    pub listener: TunnelListener,
    pub exit: Arc<ExitChannel>,
    pub tunnels: Arc<Mutex<Vec<Tunnel>>>,
}

/// The relay: a multipath listener on every relay address, and a TLS cell channel to the exit; each stream
/// of each tunnel becomes a circuit to the exit.
pub fn run_relay(
    relay: Stack,
    addrs: &[IpAddr],
    tls: &rustls::ServerConfig,
    exit_addr: IpAddr,
    exit_pin: Pin,
) -> Result<Relay> {
    let listener = TunnelListener::new(TunnelConfig::default());
    for a in addrs {
        listener.serve(relay.tcp_listen(SocketAddr::new(*a, RELAY_PORT))?, tls)?;
    }
    let tcp = relay.tcp_connect_timeout(SocketAddr::new(exit_addr, EXIT_PORT), Duration::from_secs(10))?;
    tcp.set_nodelay(true)?;
    let (reader, writer) = TlsCellStream::connect(tcp, "exit.demo", client_config_pinned(exit_pin))?.split()?;
    let exit = Arc::new(ExitChannel { channel: CellChannel::new(reader, writer)? });
    let tunnels = Arc::new(Mutex::new(Vec::new()));
    let (l, e, t) = (listener.clone(), exit.clone(), tunnels.clone());
    thread::spawn(move || {
        let mut next_circuit = 0x8000_0001u32;
        while let Ok(tunnel) = l.accept() {
            t.lock().unwrap_or_else(|p| p.into_inner()).push(tunnel.clone());
            let e = e.clone();
            let first = next_circuit;
            next_circuit += 0x1000;
            thread::spawn(move || {
                let mut circ_id = first;
                while let Ok((stream, target)) = tunnel.accept_stream() {
                    let e = e.clone();
                    thread::spawn(move || {
                        if let Err(err) = relay_stream(&e, circ_id, stream, &target) {
                            eprintln!("relay: stream to {target}: {err}");
                        }
                    });
                    circ_id += 1;
                }
            });
        }
    });
    Ok(Relay { listener, exit, tunnels })
}

fn relay_stream(exit: &ExitChannel, circ_id: u32, stream: TunnelStream, target: &str) -> Result<()> {
    let circuit = exit.channel.open_circuit(circ_id)?;
    circuit.send(Command::CREATE_FAST, target.as_bytes().to_vec())?;
    match circuit.recv()? {
        Some(c) if c.command == Command::CREATED_FAST => {}
        other => {
            stream.reset();
            return Err(format!("the exit refused the circuit ({other:?})").into());
        }
    }
    let (circuit, window, stream) = (Arc::new(circuit), Arc::new(Window::default()), Arc::new(stream));
    let (c, w, s) = (circuit.clone(), window.clone(), stream.clone());
    let (ended, peer_end) = mpsc::channel();
    let downstream = thread::spawn(move || {
        let copied = pump_out_of(&c, &*s, &w, move |s: &TunnelStream| {
            let _ = ended.send(());
            s.shutdown_write()
        });
        if copied.is_err() {
            // The client must see an error, never a clean end of a cut-short stream.
            s.reset();
        }
        copied
    });
    let result = pump_into(&*stream, &circuit, &window)
        .map_err(Into::into)
        .and_then(|_| finish_splice(&circuit, &peer_end, downstream));
    if result.is_err() {
        stream.reset();
    }
    result
}

/// After our direction's END: waits for the peer's END (or for the other pump to fail), then closes the
/// circuit, which ends the other pump.
fn finish_splice<S: plebnet::net::TcpStreamApi>(
    circuit: &Circuit<S>,
    peer_end: &mpsc::Receiver<()>,
    other: thread::JoinHandle<io::Result<u64>>,
) -> Result<()> {
    let _ = peer_end.recv();
    circuit.close()?;
    other.join().map_err(|_| "splice thread panicked")??;
    Ok(())
}
