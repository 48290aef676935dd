//! `hol_p99_dtls_vs_tls_2pct`: the head-of-line experiment, after Reardon &
//! Goldberg ("Improving Tor using a TCP-over-DTLS Tunnel", USENIX Security
//! 2009).
//!
//! One link (two stacks on loopback UDP sockets joined by an
//! [`ImpairProxy`]: 10 ms each way, 20 Mbit/s, a 128 KiB queue, and 0, 1, 2
//! or 5 % loss each way) carries two circuits: a bulk circuit that sends
//! cells as fast as its window allows (100 cells, a SENDME-like ack every
//! 50 cells, as Tor's circuit windows bound it), and an interactive circuit
//! that sends a cell every 10 ms (514 bytes on the wire), which the far end
//! echoes. The interactive round trips are measured, p50 and p99, when
//!
//! * (a) both circuits share one TLS-over-TCP channel (UdpNic link), and
//! * (b) each circuit has its own TCP connection inside one DTLS link
//!   (DtlsNic).
//!
//! The figure is p99(b) / p99(a) at 2 % loss.

use std::error::Error;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use plebnet::net::{Stack, StackConfig, TcpListener, TcpStream};
use plebnet::netstack::nic::{ImpairConfig, ImpairProxy, UdpNic, UdpNicConfig, UdpPeer};
use plebnet_transport::cell::Command;
use plebnet_transport::channel::CellChannel;
use plebnet_transport::circuits::{CircuitCarrier, CircuitEnd, ConnectionPerCircuit};
use plebnet_transport::dtls::{DtlsConfig, DtlsIdentity, DtlsNic, DtlsNicConfig, DtlsPeer, LinkRepair};
use plebnet_transport::tls::{Pin, TlsCellStream, client_config_pinned, self_signed, server_config};
use serde_json::json;

use super::{Effort, Outcome};

const LOSSES: [f64; 4] = [0.0, 0.01, 0.02, 0.05];
const BULK: u32 = 1;
const INTERACTIVE: u32 = 2;
/// Bulk cells in flight at most, and cells per acknowledgement.
const WINDOW: u32 = 100;
const ACK_EVERY: u32 = 50;
const PORT: u16 = 9100;
const A_NET: &str = "10.71.0.1/24";
const B_IP: [u8; 4] = [10, 71, 0, 2];

/// The two stacks and the proxy between their sockets.
struct Link {
    a: Stack,
    b: Stack,
    _proxy: ImpairProxy,
}

fn impairment(seed: u64, loss: f64) -> ImpairConfig {
    ImpairConfig {
        seed,
        loss,
        delay: Duration::from_millis(10),
        rate_bps: Some(20_000_000),
        queue_bytes: 128 << 10,
        ..ImpairConfig::default()
    }
}

/// Two loopback sockets and the proxy between them: (A's socket, B's
/// socket, the proxy).
fn underlay(loss: f64, seed: u64) -> Result<(UdpSocket, UdpSocket, ImpairProxy), Box<dyn Error>> {
    let sa = UdpSocket::bind("127.0.0.1:0")?;
    let sb = UdpSocket::bind("127.0.0.1:0")?;
    let proxy =
        ImpairProxy::start(sa.local_addr()?, sb.local_addr()?, impairment(seed, loss), impairment(seed + 1, loss), 0)?;
    Ok((sa, sb, proxy))
}

/// (a): plain UdpNic stacks (the TLS channel encrypts).
fn udp_link(loss: f64, seed: u64) -> Result<Link, Box<dyn Error>> {
    let (sa, sb, proxy) = underlay(loss, seed)?;
    let na =
        UdpNic::from_socket(sa, vec![UdpPeer::new(proxy.addr_for_a(), &["10.71.0.2/32"])], UdpNicConfig::default())?;
    let nb =
        UdpNic::from_socket(sb, vec![UdpPeer::new(proxy.addr_for_b(), &["10.71.0.1/32"])], UdpNicConfig::default())?;
    let a = Stack::new(StackConfig::with_address(A_NET).named("hol-a"), na)?;
    let b = Stack::new(StackConfig::with_address("10.71.0.2/24").named("hol-b"), nb)?;
    Ok(Link { a, b, _proxy: proxy })
}

/// (b): DtlsNic stacks (the link encrypts), with `repair` on both.
fn dtls_link(loss: f64, seed: u64, repair: &LinkRepair) -> Result<Link, Box<dyn Error>> {
    let (sa, sb, proxy) = underlay(loss, seed)?;
    let (ia, ib) = (DtlsIdentity::self_signed("hol-a")?, DtlsIdentity::self_signed("hol-b")?);
    let peer = |pin, prefix: &str, endpoint, initiate| DtlsPeer {
        pin,
        prefixes: vec![prefix.parse().expect("valid prefix")],
        endpoint: Some(endpoint),
        initiate,
    };
    let na = DtlsNic::from_socket(
        sa,
        DtlsConfig::new(ia.clone()),
        vec![peer(ib.pin(), "10.71.0.2/32", proxy.addr_for_a(), true)],
        DtlsNicConfig { repair: repair.clone(), ..DtlsNicConfig::default() },
    )?;
    let nb = DtlsNic::from_socket(
        sb,
        DtlsConfig::new(ib),
        vec![peer(ia.pin(), "10.71.0.1/32", proxy.addr_for_b(), false)],
        DtlsNicConfig { repair: repair.clone(), ..DtlsNicConfig::default() },
    )?;
    let (ca, cb) = (na.link_counters(), nb.link_counters());
    let a = Stack::new(StackConfig::with_address(A_NET).named("hol-a"), na)?;
    let b = Stack::new(StackConfig::with_address("10.71.0.2/24").named("hol-b"), nb)?;
    // The handshake takes a few round trips of the 20 ms link.
    let deadline = Instant::now() + Duration::from_secs(60);
    while ca.handshakes_completed.get() == 0 || cb.handshakes_completed.get() == 0 {
        if Instant::now() > deadline {
            return Err("the DTLS handshake did not finish in 60 s".into());
        }
        thread::yield_now();
    }
    Ok(Link { a, b, _proxy: proxy })
}

/// A TLS cell channel from A to B: (A's end, B's end).
fn tls_channels(link: &Link) -> Result<(CellChannel<TcpStream>, CellChannel<TcpStream>), Box<dyn Error>> {
    let (cert, key) = self_signed(&["hol.test"])?;
    let pin = Pin::cert_sha256(&cert);
    let tls_server = server_config(cert, key)?;
    let listener = TcpListener::bind(&link.b, SocketAddr::from((B_IP, PORT)))?;
    let sock = TcpStream::connect(&link.a, SocketAddr::from((B_IP, PORT)))?;
    let (served, _) = listener.accept()?;
    sock.set_nodelay(true)?;
    served.set_nodelay(true)?;
    let accepting = thread::spawn(move || TlsCellStream::accept(served, tls_server));
    let client = TlsCellStream::connect(sock, "hol.test", client_config_pinned(pin))?;
    let server = accepting.join().map_err(|_| "TLS accept panicked")??;
    let (r, w) = client.split()?;
    let a = CellChannel::new(r, w)?;
    let (r, w) = server.split()?;
    Ok((a, CellChannel::new(r, w)?))
}

/// The bulk sender's window: cells it may still send.
#[derive(Default)]
struct Window {
    credit: Mutex<u32>,
    moved: Condvar,
}

/// Runs the two circuits over `client` → `server` for `duration`; returns
/// the interactive round trips in milliseconds.
fn run_circuits<C: CircuitCarrier + 'static>(
    client: Arc<C>,
    server: Arc<C>,
    duration: Duration,
) -> Result<Vec<f64>, Box<dyn Error>> {
    // The server: drain the bulk circuit (acknowledging), echo the other.
    // (`server` itself stays here: dropping a channel closes it.)
    let serving = {
        let server = server.clone();
        thread::spawn(move || -> std::io::Result<()> {
            for _ in 0..2 {
                let Some(circuit) = server.accept()? else { return Ok(()) };
                thread::spawn(move || -> std::io::Result<()> {
                    // The CREATE_FAST that made the circuit.
                    circuit.recv()?;
                    circuit.send(Command::CREATED_FAST, Bytes::from_static(&[0; 20]))?;
                    let mut got = 0u32;
                    while let Some(cell) = circuit.recv()? {
                        if circuit.id() == INTERACTIVE {
                            circuit.send(cell.command, cell.payload)?;
                        } else {
                            got += 1;
                            if got.is_multiple_of(ACK_EVERY) {
                                circuit.send(Command::RELAY, Bytes::from_static(b"sendme"))?;
                            }
                        }
                    }
                    Ok(())
                });
            }
            Ok(())
        })
    };

    let stop = Arc::new(AtomicBool::new(false));
    let bulk = Arc::new(create(&*client, BULK)?);
    let window = Arc::new(Window { credit: Mutex::new(WINDOW), moved: Condvar::new() });
    let acks = {
        let (bulk, window, stop) = (bulk.clone(), window.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match bulk.recv() {
                    Ok(Some(_)) => {
                        *window.credit.lock().expect("not poisoned") += ACK_EVERY;
                        window.moved.notify_all();
                    }
                    _ => break,
                }
            }
            window.moved.notify_all();
        })
    };
    let sending = {
        let (bulk, window, stop) = (bulk.clone(), window.clone(), stop.clone());
        thread::spawn(move || {
            let payload = Bytes::from(vec![0x42u8; 509]);
            while !stop.load(Ordering::Relaxed) {
                {
                    let mut credit = window.credit.lock().expect("not poisoned");
                    while *credit == 0 && !stop.load(Ordering::Relaxed) {
                        credit = window.moved.wait_timeout(credit, Duration::from_millis(50)).expect("ok").0;
                    }
                    if *credit == 0 {
                        break;
                    }
                    *credit -= 1;
                }
                if bulk.send(Command::RELAY, payload.clone()).is_err() {
                    break;
                }
            }
        })
    };

    // Let the bulk circuit fill the link, then measure.
    thread::sleep(Duration::from_millis(500));
    let interactive = Arc::new(create(&*client, INTERACTIVE)?);
    // Echoes are collected by their own thread, so a late echo never delays
    // the next cell: one leaves every 10 ms whatever happens.
    let expected = Arc::new(AtomicU32::new(u32::MAX));
    let echoes = {
        let (interactive, expected) = (interactive.clone(), expected.clone());
        thread::spawn(move || -> Result<Vec<(u32, Instant)>, String> {
            let mut got = Vec::new();
            while (got.len() as u32) < expected.load(Ordering::Relaxed) {
                match interactive.recv() {
                    Ok(Some(cell)) => {
                        let seq = u32::from_be_bytes(cell.payload[..4].try_into().expect("4 bytes"));
                        got.push((seq, Instant::now()));
                    }
                    Ok(None) => return Err(format!("the interactive circuit ended after {} echoes", got.len())),
                    Err(e) => return Err(format!("the interactive circuit failed after {} echoes: {e}", got.len())),
                }
            }
            Ok(got)
        })
    };
    let mut sent_at = Vec::new();
    let start = Instant::now();
    let mut payload = vec![0u8; 509];
    while start.elapsed() < duration {
        let slot = start + Duration::from_millis(10) * sent_at.len() as u32;
        let now = Instant::now();
        if slot > now {
            thread::sleep(slot - now);
        }
        payload[..4].copy_from_slice(&(sent_at.len() as u32).to_be_bytes());
        sent_at.push(Instant::now());
        interactive.send(Command::RELAY, Bytes::copy_from_slice(&payload))?;
    }
    expected.store(sent_at.len() as u32, Ordering::Relaxed);
    let got = echoes.join().map_err(|_| "the echo thread panicked")??;
    let mut rtts = Vec::with_capacity(got.len());
    for (i, (seq, at)) in got.into_iter().enumerate() {
        if seq as usize != i {
            return Err(format!("echo {i} carried sequence number {seq}: reordered or lost").into());
        }
        rtts.push((at - sent_at[i]).as_secs_f64() * 1e3);
    }
    stop.store(true, Ordering::Relaxed);
    window.moved.notify_all();
    let _ = interactive.close();
    let _ = bulk.close();
    let _ = sending.join();
    let _ = acks.join();
    drop((serving, server));
    Ok(rtts)
}

/// Opens circuit `id` the Tor way: CREATE_FAST, then wait for CREATED_FAST.
fn create<C: CircuitCarrier>(carrier: &C, id: u32) -> Result<C::Circuit, Box<dyn Error>> {
    let circuit = carrier.open(id)?;
    circuit.send(Command::CREATE_FAST, Bytes::from_static(&[0; 20]))?;
    match circuit.recv()? {
        Some(cell) if cell.command == Command::CREATED_FAST => Ok(circuit),
        other => Err(format!("circuit {id}: expected CREATED_FAST, got {other:?}").into()),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One model at one loss: (p50, p99, samples) in ms. `dtls` is the DTLS
/// link's loss repair, `None` for the TLS channel.
fn measure(
    dtls: Option<&LinkRepair>,
    loss: f64,
    seed: u64,
    duration: Duration,
) -> Result<(f64, f64, usize), Box<dyn Error>> {
    let mut rtts = if let Some(repair) = dtls {
        let link = dtls_link(loss, seed, repair)?;
        let server = ConnectionPerCircuit::listener(link.b.clone(), SocketAddr::from((B_IP, PORT)))?;
        let client = ConnectionPerCircuit::dialer(link.a.clone(), SocketAddr::from((B_IP, PORT)));
        run_circuits(Arc::new(client), Arc::new(server), duration)?
    } else {
        let link = udp_link(loss, seed)?;
        let (a, b) = tls_channels(&link)?;
        run_circuits(Arc::new(a), Arc::new(b), duration)?
    };
    if rtts.is_empty() {
        return Err("no interactive round trip completed".into());
    }
    rtts.sort_by(f64::total_cmp);
    Ok((percentile(&rtts, 0.5), percentile(&rtts, 0.99), rtts.len()))
}

/// `hol_p99_dtls_vs_tls_2pct`.
pub fn p99_dtls_vs_tls_2pct(effort: Effort) -> Result<Outcome, Box<dyn Error>> {
    let duration = if effort.runs <= 3 { Duration::from_secs(4) } else { Duration::from_secs(10) };
    let mut rows = Vec::new();
    let (mut tls_p99, mut dtls_p99, mut bare_p99) = (Vec::new(), Vec::new(), Vec::new());
    let repair = LinkRepair::default();
    let no_copies = LinkRepair { duplicate_up_to: 0, ..LinkRepair::default() };
    let bare = LinkRepair { enabled: false, ..LinkRepair::default() };
    let mut without_copies_2pct = None;
    for (i, &loss) in LOSSES.iter().enumerate() {
        let seed = 0x4010 + i as u64 * 16;
        let (a50, a99, an) = measure(None, loss, seed, duration)?;
        let (b50, b99, bn) = measure(Some(&repair), loss, seed, duration)?;
        let (c50, c99, cn) = measure(Some(&bare), loss, seed, duration)?;
        eprintln!(
            "  loss {:.0}%: one TLS channel p50 {a50:.1} ms p99 {a99:.1} ms ({an}); TCP-per-circuit over DTLS p50 {b50:.1} ms p99 {b99:.1} ms ({bn}); the same without link repair p50 {c50:.1} ms p99 {c99:.1} ms ({cn})",
            loss * 100.0
        );
        tls_p99.push((loss * 100.0, a99));
        dtls_p99.push((loss * 100.0, b99));
        bare_p99.push((loss * 100.0, c99));
        rows.push(json!({
            "loss": loss,
            "tls_channel": { "p50_ms": a50, "p99_ms": a99, "samples": an },
            "dtls_per_circuit": { "p50_ms": b50, "p99_ms": b99, "samples": bn },
            "dtls_per_circuit_no_link_repair": { "p50_ms": c50, "p99_ms": c99, "samples": cn },
        }));
        if loss == 0.02 {
            let (d50, d99, dn) = measure(Some(&no_copies), loss, seed, duration)?;
            eprintln!(
                "  loss 2%: TCP-per-circuit over DTLS, link repair without small-packet copies: p50 {d50:.1} ms p99 {d99:.1} ms ({dn})"
            );
            without_copies_2pct = Some(json!({ "p50_ms": d50, "p99_ms": d99, "samples": dn }));
        }
    }
    if let Some(dir) = effort.plot {
        std::fs::create_dir_all(dir)?;
        let mut canvas = super::plot::Canvas::new(800, 400);
        canvas.chart(&[tls_p99.clone(), dtls_p99.clone(), bare_p99], &[]);
        let path = dir.join("hol_p99.png");
        canvas.write_png(&path)?;
        eprintln!("wrote {}", path.display());
    }
    let at2 = LOSSES.iter().position(|&l| l == 0.02).expect("2% is measured");
    let ratio = dtls_p99[at2].1 / tls_p99[at2].1;
    Ok(Outcome::Measured(
        ratio,
        json!({
            "by_loss": rows,
            "dtls_link_repair_without_small_packet_copies_2pct": without_copies_2pct,
            "dtls_link_repair": format!("{repair:?}"),
            "link": "loopback UDP through ImpairProxy: 10 ms each way, 20 Mbit/s, 128 KiB queue, loss each way",
            "bulk": "cells as fast as a 100-cell window allows (ack every 50)",
            "interactive": "a 509-byte-payload cell every 10 ms, echoed",
            "seconds_per_point": duration.as_secs(),
            "plot": "hol_p99.png: p99 (ms) against loss (%); first series one TLS channel, second TCP-per-circuit over DTLS, third the same without the link's loss repair",
        }),
    ))
}
