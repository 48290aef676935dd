//! `plebnet bench --soak SECONDS`: a bounded soak. Connections churn over a
//! MemLink stack pair — opened, given a random small amount of data that
//! the server hashes and echoes the hash of, then closed gracefully or
//! aborted — and the process's resident memory and open descriptors are
//! compared before and after (each sample after `malloc_trim`, so memory
//! the allocator merely caches does not count). Growth means something
//! leaks: the goals are no descriptor growth and under 5% memory growth.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use plebnet::net::{Stack, StackConfig, TcpListener, TcpStream};
use plebnet::netstack::nic::{MemLink, MemLinkConfig};
use plebnet::netstack::rng::Rng;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{Better, Figure};
use crate::table;

/// Client threads, each with at most one connection open at a time.
const WORKERS: usize = 8;
/// Server threads, each serving one connection at a time. A fixed pool
/// rather than a thread per connection: thread stacks that glibc caches
/// after a burst of short-lived threads would show as memory growth that
/// is the harness's, not the stack's.
const SERVERS: usize = 2 * WORKERS;
/// Largest transfer on one connection.
const MAX_BYTES: u64 = 256 * 1024;
/// How long any single read or write may stall before it counts as failed.
const STALL: Duration = Duration::from_secs(10);
/// Churn before the idle baseline, so that the tables, allocator arenas
/// and caches and the thread stacks reach their working size before the
/// first sample and are not mistaken for growth. With a 15 s warm-up the
/// process settled about 1.1 MB above its baseline after 60 s of churn and
/// after 600 s alike (so a one-off, not an accumulation); after 60 s of
/// warm-up, 0.14 MB.
const WARM_UP: Duration = Duration::from_secs(60);
/// Wait after the churn before the last sample: a closed connection stays
/// in TIME-WAIT (10 s in smoltcp) with its buffers, so only after that is
/// memory still held a leak rather than connections not yet gone.
const SETTLE: Duration = Duration::from_secs(11);

/// What the churn did.
#[derive(Debug, Default)]
struct Tally {
    /// Connections closed gracefully with their hash checked.
    graceful: AtomicU64,
    /// Connections dropped with unread data (reset) or shut down early.
    aborted: AtomicU64,
    /// Payload bytes the clients wrote.
    bytes: AtomicU64,
    /// Graceful connections that failed: error, stall or hash mismatch.
    failures: AtomicU64,
}

/// Resident memory and open descriptors of this process, and what the two
/// stacks hold.
#[derive(Debug, Clone, Copy)]
struct Usage {
    rss_kib: u64,
    fds: u64,
    /// Sockets of both stacks (connections in any state, listening sockets).
    sockets: usize,
    /// TCP buffer memory of both stacks resident now, KiB.
    buffer_kib: u64,
}

impl Usage {
    /// A sample taken after handing the allocator's free memory back to
    /// the kernel (`malloc_trim`), so that what glibc keeps cached in its
    /// per-thread arenas (the server runs a thread per connection) is not
    /// mistaken for a leak. Every sample is taken this way.
    fn trimmed(stacks: [&Stack; 2]) -> io::Result<Usage> {
        super::trim_heap();
        Self::now(stacks)
    }

    fn now(stacks: [&Stack; 2]) -> io::Result<Usage> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| io::Error::other("no VmRSS in /proc/self/status"))?;
        let fds = std::fs::read_dir("/proc/self/fd")?.count() as u64;
        let sockets = stacks.iter().map(|s| s.socket_count()).sum();
        let buffer_kib = stacks.iter().map(|s| s.tcp_buffer_resident_bytes() as u64 / 1024).sum();
        Ok(Usage { rss_kib, fds, sockets, buffer_kib })
    }
}

/// Serves one connection: reads an 8-byte length and that many bytes,
/// answers with their sha256, then waits for the client to close. `buf`
/// is the server thread's scratch space.
fn serve(stream: TcpStream, buf: &mut [u8]) -> io::Result<()> {
    stream.set_read_timeout(Some(STALL))?;
    stream.set_write_timeout(Some(STALL))?;
    let mut s = &stream;
    let mut len = [0u8; 8];
    s.read_exact(&mut len)?;
    let mut left = u64::from_le_bytes(len);
    let mut hasher = Sha256::new();
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = s.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    s.write_all(&hasher.finalize())?;
    while s.read(buf)? > 0 {}
    Ok(())
}

/// One client connection of a random size, closed one of three ways.
/// `scratch` is the worker's buffer of [`MAX_BYTES`].
fn churn_one(stack: &Stack, server: SocketAddr, rng: &mut Rng, tally: &Tally, scratch: &mut [u8]) -> io::Result<()> {
    let stream = TcpStream::connect_timeout(stack, server, STALL)?;
    stream.set_read_timeout(Some(STALL))?;
    stream.set_write_timeout(Some(STALL))?;
    let len = rng.below(MAX_BYTES + 1);
    let data = &mut scratch[..len as usize];
    data.iter_mut().for_each(|b| *b = rng.next_u64() as u8);
    let data = &*data;
    let mut s = &stream;
    s.write_all(&len.to_le_bytes())?;
    match rng.below(5) {
        // Abort: shut down both halves halfway through, then drop.
        0 => {
            s.write_all(&data[..data.len() / 2])?;
            tally.bytes.fetch_add(len / 2, Ordering::Relaxed);
            stream.shutdown(Shutdown::Both)?;
            tally.aborted.fetch_add(1, Ordering::Relaxed);
        }
        // Abort: send everything, then drop without reading the answer
        // (unread data makes the close a reset).
        1 => {
            s.write_all(data)?;
            tally.bytes.fetch_add(len, Ordering::Relaxed);
            tally.aborted.fetch_add(1, Ordering::Relaxed);
        }
        // Graceful: check the server's hash, close, wait for its close.
        _ => {
            s.write_all(data)?;
            tally.bytes.fetch_add(len, Ordering::Relaxed);
            let mut answer = [0u8; 32];
            s.read_exact(&mut answer)?;
            if answer[..] != Sha256::digest(data)[..] {
                return Err(io::Error::other("hash mismatch"));
            }
            stream.shutdown(Shutdown::Write)?;
            let mut rest = [0u8; 64];
            if s.read(&mut rest)? != 0 {
                return Err(io::Error::other("data after the answer"));
            }
            tally.graceful.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Runs the soak for `seconds` and returns its two figures, after printing
/// a summary table.
pub fn run(seconds: u64) -> Result<(Vec<Figure>, bool), Box<dyn std::error::Error>> {
    let (na, nb) = MemLink::pair(MemLinkConfig { mtu: 1500, queue_packets: 4096 });
    let a = Stack::new(StackConfig::with_address("10.89.0.1/24"), na)?;
    let b = Stack::new(StackConfig::with_address("10.89.0.2/24"), nb)?;
    let server: SocketAddr = "10.89.0.1:7000".parse()?;
    let listener = Arc::new(TcpListener::bind(&a, server)?);
    let handlers = Arc::new(AtomicUsize::new(0));
    // Blocked in accept for as long as the stacks live; they end with the
    // process.
    for _ in 0..SERVERS {
        let (listener, handlers) = (listener.clone(), handlers.clone());
        thread::spawn(move || {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok((stream, _)) = listener.accept() {
                handlers.fetch_add(1, Ordering::SeqCst);
                // Aborted clients make the server's side fail; that is the
                // point, and the client's side judges success.
                let _ = serve(stream, &mut buf);
                handlers.fetch_sub(1, Ordering::SeqCst);
            }
        });
    }

    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    // Churns for `length` on WORKERS client threads, then waits for the
    // server's handlers to finish.
    let churn = |length: Duration| -> Result<(), Box<dyn std::error::Error>> {
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..WORKERS)
            .map(|i| {
                let (b, tally, stop) = (b.clone(), tally.clone(), stop.clone());
                let seed = 0x50a6 + i as u64 + tally.graceful.load(Ordering::Relaxed);
                thread::spawn(move || {
                    let mut rng = Rng::new(seed);
                    let mut scratch = vec![0u8; MAX_BYTES as usize];
                    while !stop.load(Ordering::Relaxed) {
                        if let Err(e) = churn_one(&b, server, &mut rng, &tally, &mut scratch) {
                            log::warn!("soak: connection failed: {e}");
                            tally.failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        thread::sleep(length);
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().map_err(|_| "soak worker panicked")?;
        }
        let deadline = Instant::now() + STALL + Duration::from_secs(2);
        while handlers.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    };
    // Warm-up: a short churn, then an idle baseline once its connections
    // have left TIME-WAIT (allocator arenas, thread stacks and tables have
    // reached their working size by then).
    let total = Duration::from_secs(seconds);
    churn(WARM_UP)?;
    thread::sleep(SETTLE);
    let before = Usage::trimmed([&a, &b])?;
    let counted_from = (tally.graceful.load(Ordering::Relaxed), tally.aborted.load(Ordering::Relaxed));
    churn(total)?;
    let churned = Usage::trimmed([&a, &b])?;
    thread::sleep(SETTLE);
    let after = Usage::trimmed([&a, &b])?;
    let elapsed = started.elapsed().as_secs_f64();
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let (graceful, aborted, bytes, failures) =
        (load(&tally.graceful), load(&tally.aborted), load(&tally.bytes), load(&tally.failures));
    let lingering = handlers.load(Ordering::SeqCst);

    let rows = vec![
        vec![
            "resident memory (KiB)".into(),
            before.rss_kib.to_string(),
            churned.rss_kib.to_string(),
            after.rss_kib.to_string(),
        ],
        vec![
            "  of which TCP buffers (KiB)".into(),
            before.buffer_kib.to_string(),
            churned.buffer_kib.to_string(),
            after.buffer_kib.to_string(),
        ],
        vec!["open descriptors".into(), before.fds.to_string(), churned.fds.to_string(), after.fds.to_string()],
        vec![
            "stack sockets (both stacks)".into(),
            before.sockets.to_string(),
            churned.sockets.to_string(),
            after.sockets.to_string(),
        ],
        vec![
            "connections (graceful + aborted)".into(),
            format!("{} + {}", counted_from.0, counted_from.1),
            format!("{graceful} + {aborted}"),
            "-".into(),
        ],
    ];
    println!(
        "soak: {seconds} s of churn by {WORKERS} client threads; samples idle after a {} s warm-up churn, at the \
         end of the churn, and {} s later",
        WARM_UP.as_secs(),
        SETTLE.as_secs()
    );
    println!("{}", table::render(&["", "idle before", "end of churn", "settled"], &rows));
    println!("  {} MiB written, {failures} failures, {lingering} server handlers still open", bytes >> 20);

    let detail = json!({
        "seconds": elapsed,
        "workers": WORKERS,
        "rss_kib": { "start": before.rss_kib, "end_of_churn": churned.rss_kib, "settled": after.rss_kib },
        "tcp_buffer_kib": { "start": before.buffer_kib, "end_of_churn": churned.buffer_kib, "settled": after.buffer_kib },
        "fds": { "start": before.fds, "end_of_churn": churned.fds, "settled": after.fds },
        "sockets": { "start": before.sockets, "end_of_churn": churned.sockets, "settled": after.sockets },
        "connections_graceful": graceful,
        "connections_aborted": aborted,
        "connections_before_first_sample": counted_from.0 + counted_from.1,
        "bytes": bytes,
        "failures": failures,
        "server_handlers_left": lingering,
    });
    let figures = vec![
        Figure::measured(
            "soak_rss_growth_percent",
            (after.rss_kib as f64 - before.rss_kib as f64) * 100.0 / before.rss_kib.max(1) as f64,
            "%",
            5.0,
            Better::Lower,
            detail.clone(),
        ),
        Figure::measured("soak_fd_growth", after.fds as f64 - before.fds as f64, "count", 0.0, Better::Lower, detail),
    ];
    Ok((figures, failures == 0 && lingering == 0))
}
