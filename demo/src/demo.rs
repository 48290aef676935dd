//! `plebnet demo`: two userspace stacks joined by an in-memory link (with
//! optional seeded impairment), several TCP connections moving data both
//! ways at once, and a summary that compares sha256 of what was sent with
//! what arrived. Exit status 0 only if every hash matches.
//!
//! Later issues grow this into the client → relay → exit network over UDP,
//! TLS cell channels and a multipath tunnel.

use std::net::{Shutdown, SocketAddr};
use std::process::ExitCode;
use std::thread;
use std::time::Instant;

use clap::Args;
use plebnet::net::{Stack, StackConfig, TcpListener, TcpStream};
use plebnet::netstack::nic::{Impair, ImpairConfig, MemLink, MemLinkConfig};
use plebnet::netstack::rng::Rng;
use sha2::{Digest, Sha256};

use crate::table;

/// Options of `plebnet demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Seed for the data and for the link impairment: same seed, same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// MiB to move in each direction of each connection.
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// Packet loss on the link, as a fraction (0.02 = 2%), each direction.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Number of concurrent TCP connections.
    #[arg(long, default_value_t = 4)]
    conns: usize,
    /// Flip this many bytes of the received stream after the transport
    /// (to prove the content check catches it); for tests.
    #[arg(long, default_value_t = 0, hide = true)]
    corrupt_after_transport: usize,
}

struct Flow {
    label: String,
    bytes: usize,
    sent: [u8; 32],
    got: [u8; 32],
}

/// Runs the demo and returns its exit code.
pub fn run(args: &DemoArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if !(0.0..1.0).contains(&args.loss) {
        return Err(format!("--loss must be in [0, 1), got {}", args.loss).into());
    }
    let conns = args.conns.clamp(1, 64);
    let len = args.size << 20;
    println!("plebnet demo: two userspace stacks over an in-memory link");
    println!(
        "  a = 10.77.0.1 (server), b = 10.77.0.2 (client); {conns} connections x {} MiB each way; loss {:.1}%; seed {}",
        args.size,
        args.loss * 100.0,
        args.seed
    );

    let (na, nb) = MemLink::pair(MemLinkConfig::default());
    let impair = |seed| ImpairConfig { seed, loss: args.loss, ..Default::default() };
    let mut ca = StackConfig::with_address("10.77.0.1/24").named("a");
    let mut cb = StackConfig::with_address("10.77.0.2/24").named("b");
    if args.loss > 0.0 {
        // Short windows recover faster from loss with smoltcp's go-back-N.
        for c in [&mut ca, &mut cb] {
            c.tcp_rx_buffer = 64 * 1024;
            c.tcp_tx_buffer = 64 * 1024;
        }
    }
    let a = Stack::new(ca, Impair::new(na, impair(args.seed)))?;
    let b = Stack::new(cb, Impair::new(nb, impair(args.seed ^ 0x5eed)))?;

    let addr: SocketAddr = "10.77.0.1:7".parse()?;
    let listener = TcpListener::bind(&a, addr)?;
    let started = Instant::now();
    let accept =
        thread::spawn(move || (0..conns).map(|_| listener.accept().map(|(s, _)| s)).collect::<Result<Vec<_>, _>>());
    let clients = (0..conns).map(|_| TcpStream::connect(&b, addr)).collect::<Result<Vec<_>, _>>()?;
    let mut servers = accept.join().map_err(|_| "accept thread panicked")??;
    // Handshakes finish in any order over a lossy link: pair each client
    // with the accepted stream whose peer is that client.
    let mut paired = Vec::with_capacity(conns);
    for c in &clients {
        let local = c.local_addr()?;
        let i = servers
            .iter()
            .position(|s| s.peer_addr().is_ok_and(|p| p == local))
            .ok_or("an accepted stream has no client")?;
        paired.push(servers.swap_remove(i));
    }
    let servers = paired;

    let mut jobs = Vec::new();
    for (i, (c, s)) in clients.into_iter().zip(servers).enumerate() {
        for (dir, from, to) in [("b -> a", c.clone(), s.clone()), ("a -> b", s, c)] {
            let seed = args.seed.wrapping_mul(1000) + (i as u64) * 2 + u64::from(dir == "a -> b");
            let corrupt = args.corrupt_after_transport;
            let writer = thread::spawn(move || send(&from, seed, len));
            let reader = thread::spawn(move || receive(&to, len, corrupt));
            jobs.push((format!("conn {i} {dir}"), writer, reader));
        }
    }
    let mut flows = Vec::new();
    for (label, writer, reader) in jobs {
        let sent = writer.join().map_err(|_| "writer panicked")??;
        let (bytes, got) = reader.join().map_err(|_| "reader panicked")??;
        flows.push(Flow { label, bytes, sent, got });
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(summarize(&flows, elapsed, &a, &b, len))
}

fn send(stream: &TcpStream, seed: u64, len: usize) -> std::io::Result<[u8; 32]> {
    let mut rng = Rng::new(seed);
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        chunk[..n].chunks_mut(8).for_each(|w| w.copy_from_slice(&rng.next_u64().to_le_bytes()[..w.len()]));
        std::io::Write::write_all(&mut &*stream, &chunk[..n])?;
        hasher.update(&chunk[..n]);
        left -= n;
    }
    stream.shutdown(Shutdown::Write)?;
    Ok(hasher.finalize().into())
}

/// Reads the `len` bytes the peer promised (or until EOF if it sends fewer)
/// and hashes them. It does not wait for EOF after `len` bytes: closing
/// under heavy loss is a known weak spot (docs/architecture.md).
fn receive(stream: &TcpStream, len: usize, mut corrupt: usize) -> std::io::Result<(usize, [u8; 32])> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let want = (len - total).min(buf.len());
        let n = if want == 0 { 0 } else { std::io::Read::read(&mut &*stream, &mut buf[..want])? };
        if n == 0 {
            return Ok((total, hasher.finalize().into()));
        }
        if corrupt > 0 {
            buf[0] ^= 0xFF;
            corrupt -= 1;
        }
        hasher.update(&buf[..n]);
        total += n;
    }
}

fn hex8(h: &[u8; 32]) -> String {
    h[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn summarize(flows: &[Flow], elapsed: f64, a: &Stack, b: &Stack, len: usize) -> ExitCode {
    let rows: Vec<Vec<String>> = flows
        .iter()
        .map(|f| {
            let ok = f.sent == f.got && f.bytes == len;
            vec![
                f.label.clone(),
                format!("{:.1} MiB", f.bytes as f64 / 1048576.0),
                hex8(&f.sent),
                hex8(&f.got),
                if ok { "match" } else { "MISMATCH" }.to_string(),
            ]
        })
        .collect();
    println!("\n{}", table::render(&["flow", "arrived", "sha256 sent", "sha256 received", "content"], &rows));
    let total: usize = flows.iter().map(|f| f.bytes).sum();
    println!(
        "  total {:.1} MiB in {elapsed:.2} s: {} aggregate goodput",
        total as f64 / 1048576.0,
        table::rate(total as u64, elapsed)
    );

    let mut rows = Vec::new();
    for stack in [a, b] {
        for group in stack.counters() {
            for (name, value) in group.values {
                let interesting = name.contains("dropped")
                    || name.contains("corrupted")
                    || name.contains("duplicated")
                    || name.contains("reordered");
                if interesting && value > 0 {
                    rows.push(vec![stack.name().to_string(), group.layer.clone(), name.to_string(), value.to_string()]);
                }
            }
        }
    }
    if rows.is_empty() {
        println!("\n  no packet was dropped anywhere");
    } else {
        println!(
            "\n  drops and impairments by reason:\n{}",
            table::render(&["stack", "layer", "counter", "count"], &rows)
        );
    }
    let all_ok = flows.iter().all(|f| f.sent == f.got && f.bytes == len);
    if all_ok {
        println!("\n  RESULT: all {} flows arrived intact (sha256 match)", flows.len());
        ExitCode::SUCCESS
    } else {
        println!("\n  RESULT: CONTENT MISMATCH — what arrived is not what was sent");
        ExitCode::FAILURE
    }
}
