//! The DTLS link between two plebnet stacks over real UDP sockets:
//!
//! * TCP-over-DTLS under 30 % loss with duplication and reordering on the
//!   underlay (plebnet's seeded `ImpairProxy` between the two sockets): the
//!   handshake completes and 16 MiB arrive intact (the link's loss repair
//!   at work); every datagram that crossed the wire, replayed, delivers
//!   nothing;
//! * silence to strangers: a million garbage, forged and ClientHello
//!   datagrams at the DTLS port during a 16 MiB transfer get no reply and
//!   reach nothing.

use std::net::{SocketAddr, UdpSocket as KernelUdp};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use plebnet::net::{Stack, StackConfig, TcpListener, TcpStream};
use plebnet::netstack::nic::{ImpairConfig, ImpairProxy};
use plebnet::netstack::rng::Rng;
use plebnet_tests::{Paced, kernel_drops, read_exact_hash, send_pattern, wait_until};
use plebnet_transport::dtls::{
    DtlsConfig, DtlsIdentity, DtlsLinkCounters, DtlsNic, DtlsNicConfig, DtlsPeer, DtlsSession, SessionEvent,
};

/// Bytes moved by each transfer (`PLEBNET_DTLS_MIB` overrides, in MiB).
fn size() -> usize {
    std::env::var("PLEBNET_DTLS_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(16) << 20
}
const A_IP: [u8; 4] = [10, 9, 0, 1];
const B_IP: [u8; 4] = [10, 9, 0, 2];

struct Pair {
    a: Stack,
    b: Stack,
    b_link: Arc<DtlsLinkCounters>,
    /// B's underlay address.
    eb: SocketAddr,
    proxy: Option<ImpairProxy>,
}

/// A (dials) and B (listens for A only), each pinning the other, joined
/// directly or through an impairing proxy.
fn dtls_pair(impair: Option<(ImpairConfig, ImpairConfig)>) -> Pair {
    let (ia, ib) = (DtlsIdentity::self_signed("a").unwrap(), DtlsIdentity::self_signed("b").unwrap());
    let sa = KernelUdp::bind("127.0.0.1:0").unwrap();
    let sb = KernelUdp::bind("127.0.0.1:0").unwrap();
    let (ea, eb) = (sa.local_addr().unwrap(), sb.local_addr().unwrap());
    let proxy = impair.map(|(ab, ba)| ImpairProxy::start(ea, eb, ab, ba, 8192).unwrap());
    // Where each side sees the other.
    let (b_for_a, a_for_b) = match &proxy {
        Some(p) => (p.addr_for_a(), p.addr_for_b()),
        None => (eb, ea),
    };
    let peer = |pin, ip: [u8; 4], endpoint, initiate| DtlsPeer {
        pin,
        prefixes: vec![format!("{}.{}.{}.{}/32", ip[0], ip[1], ip[2], ip[3]).parse().unwrap()],
        endpoint: Some(endpoint),
        initiate,
    };
    let na = DtlsNic::from_socket(
        sa,
        DtlsConfig::new(ia.clone()),
        vec![peer(ib.pin(), B_IP, b_for_a, true)],
        DtlsNicConfig::default(),
    )
    .unwrap();
    let nb = DtlsNic::from_socket(
        sb,
        DtlsConfig::new(ib),
        vec![peer(ia.pin(), A_IP, a_for_b, false)],
        DtlsNicConfig::default(),
    )
    .unwrap();
    let (a_link, b_link) = (na.link_counters(), nb.link_counters());
    let a = Stack::new(StackConfig::with_address("10.9.0.1/24").named("a"), na).unwrap();
    let b = Stack::new(StackConfig::with_address("10.9.0.2/24").named("b"), nb).unwrap();
    wait_until(Duration::from_secs(30), "the DTLS handshake", || {
        a_link.handshakes_completed.get() >= 1 && b_link.handshakes_completed.get() >= 1
    });
    Pair { a, b, b_link, eb, proxy }
}

/// A connected (A client, B server) TCP pair across the link.
fn connect(pair: &Pair) -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind(&pair.b, SocketAddr::from((B_IP, 7000))).unwrap();
    let acceptor = thread::spawn(move || listener.accept().unwrap().0);
    let client = TcpStream::connect(&pair.a, SocketAddr::from((B_IP, 7000))).unwrap();
    (client, acceptor.join().unwrap())
}

/// Moves `len` bytes A → B over a fresh connection; asserts the hashes.
fn transfer(pair: &Pair, port: u16, seed: u64, len: usize) -> TcpStream {
    let listener = TcpListener::bind(&pair.b, SocketAddr::from((B_IP, port))).unwrap();
    let acceptor = thread::spawn(move || listener.accept().unwrap().0);
    let client = TcpStream::connect(&pair.a, SocketAddr::from((B_IP, port))).unwrap();
    let served = acceptor.join().unwrap();
    let writer = thread::spawn(move || send_pattern(&client, seed, len).unwrap());
    let received = read_exact_hash(&served, len).unwrap();
    assert_eq!(writer.join().unwrap(), received, "{len} bytes over TCP-over-DTLS arrived intact");
    served
}

fn impaired(seed: u64, loss: f64) -> ImpairConfig {
    ImpairConfig {
        seed,
        loss,
        duplicate: 0.05,
        reorder: 0.10,
        reorder_delay: Duration::from_millis(3),
        ..ImpairConfig::default()
    }
}

#[test]
fn tcp_over_dtls_survives_30_percent_loss_and_replays_deliver_nothing() {
    let started = Instant::now();
    // 30% loss each way, with duplication and reordering: the handshake,
    // then 16 MiB over one TCP connection. The link's loss repair turns
    // most losses into late packets; TCP repairs the rest.
    let pair = dtls_pair(Some((impaired(0xd715_0001, 0.30), impaired(0xd715_0002, 0.30))));
    let handshake = started.elapsed();
    let proxy = pair.proxy.as_ref().unwrap();
    let phase = Instant::now();
    let served = transfer(&pair, 7001, 0xd7, size());
    let [ab, ba] = proxy.counters();
    assert!(ab.dropped_loss.get() > 0 && ab.duplicated.get() > 0 && ba.reordered.get() > 0, "impaired: {ab:?}");
    let link = &pair.b_link;
    assert!(link.tx_repair_retransmits.get() > 0 && link.rx_repair_duplicates.get() > 0, "{link:?}");
    eprintln!(
        "30% loss: handshake {:.2} s, {} MiB in {:.1} s; A->B underlay {:?}; B's link {:?}",
        handshake.as_secs_f64(),
        size() >> 20,
        phase.elapsed().as_secs_f64(),
        ab,
        link
    );

    // Replay what reached B, from A's address as B knows it, in chunks that
    // the socket buffer holds. Whatever B delivers meanwhile must have come
    // through the proxy's pipe (fresh traffic still in flight), one packet
    // per datagram at most.
    let replay = proxy.captured(true);
    assert!(replay.len() > 1000, "{} captured", replay.len());
    let piped = || proxy.counters()[0].delivered.get();
    let (rx0, piped0, seen0) = (pair.b_link.rx_packets.get(), piped(), pair.b_link.rx_datagrams.get());
    let mut sent = 0u64;
    for chunk in replay.chunks(256) {
        for datagram in chunk {
            proxy.inject(true, datagram, pair.eb).unwrap();
        }
        sent += chunk.len() as u64;
        wait_until(Duration::from_secs(20), "B reading the replay", || pair.b_link.rx_datagrams.get() - seen0 >= sent);
    }
    let delivered = pair.b_link.rx_packets.get() - rx0;
    let fresh = piped() - piped0;
    eprintln!("replayed {sent} datagrams: B delivered {delivered}, {fresh} fresh datagrams arrived meanwhile");
    // A few legitimate datagrams may already have left the proxy but not yet
    // been read by B when the counters were sampled (B's socket buffer): a
    // slack of 16. A replay window that let records through would deliver
    // thousands.
    assert!(delivered <= fresh + 16, "a replayed record was delivered: {delivered} > {fresh} + 16");
    drop(served);
}

/// The `n`th datagram of the flood: garbage, a record that looks like
/// application data, or a genuine ClientHello from an unknown identity.
fn hostile(rng: &mut Rng, hello: &[u8]) -> Vec<u8> {
    match rng.below(3) {
        0 => (0..rng.below(1501)).map(|_| rng.next_u64() as u8).collect(),
        1 => {
            let len = 40 + rng.below(1300) as usize;
            let mut record = vec![23, 0xFE, 0xFD, 0, 1];
            record.extend((0..6).map(|_| rng.next_u64() as u8));
            record.extend((len as u16).to_be_bytes());
            record.extend((0..len).map(|_| rng.next_u64() as u8));
            record
        }
        _ => hello.to_vec(),
    }
}

#[test]
fn a_million_stranger_datagrams_at_the_dtls_port_get_no_answer_and_reach_nothing() {
    const FLOOD: u64 = 1_000_000;
    let pair = dtls_pair(None);
    let drops_before = kernel_drops(pair.eb).expect("B's socket in /proc/net/udp");
    // A real ClientHello, from an identity B does not know.
    let stranger_id = DtlsIdentity::self_signed("stranger").unwrap();
    let mut hello = Vec::new();
    let mut session =
        DtlsSession::client(&DtlsConfig::new(stranger_id.clone()), stranger_id.pin(), Instant::now()).unwrap();
    session.handle_timeout(Instant::now(), &mut |e| {
        if let SessionEvent::Transmit(d) = e {
            hello = d.to_vec();
        }
    });
    assert!(!hello.is_empty());

    let (client, served) = connect(&pair);
    let stranger = KernelUdp::bind("127.0.0.1:0").unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let flood = {
        let (stranger, sent, eb) = (stranger.try_clone().unwrap(), sent.clone(), pair.eb);
        thread::spawn(move || {
            let mut rng = Rng::new(0xd715_5eed);
            for _ in 0..FLOOD {
                stranger.send_to(&hostile(&mut rng, &hello), eb).unwrap();
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    wait_until(Duration::from_secs(30), "the flood under way", || sent.load(Ordering::Relaxed) >= FLOOD / 10);
    // The transfer is paced to span most of the flood.
    let paced = Paced::new(client, size(), sent.clone(), FLOOD);
    let writer = thread::spawn(move || send_pattern(paced, 0x5eed, size()).unwrap());
    let received = read_exact_hash(&served, size()).unwrap();
    assert_eq!(writer.join().unwrap(), received, "the 16 MiB transfer arrived intact");
    let done_at = sent.load(Ordering::Relaxed);
    flood.join().unwrap();
    eprintln!("transfer finished after {done_at} of {FLOOD} stranger datagrams");
    assert!(done_at >= FLOOD * 8 / 10, "the transfer ran alongside the flood");

    // Every stranger datagram is counted by the link or dropped by the kernel.
    let b = &pair.b_link;
    wait_until(Duration::from_secs(30), "B draining its socket", || {
        b.rx_dropped_stranger.get() + kernel_drops(pair.eb).unwrap() - drops_before >= FLOOD
    });
    let kernel = kernel_drops(pair.eb).unwrap() - drops_before;
    eprintln!("link counted {} stranger datagrams, kernel dropped {kernel}", b.rx_dropped_stranger.get());
    assert!(b.rx_dropped_stranger.get() <= FLOOD && b.rx_dropped_stranger.get() > FLOOD / 2);
    assert_eq!(b.handshakes_started.get(), 1, "no stranger's ClientHello started a handshake");
    assert_eq!(b.rx_dropped_spoofed_source.get(), 0);

    // Nothing came back to the stranger (its socket would hold it).
    stranger.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    let got = stranger.recv_from(&mut buf);
    assert!(
        matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the stranger got an answer: {got:?}"
    );
}
