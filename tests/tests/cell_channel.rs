//! Cell channels over TLS over plebnet stacks: 32 circuits echoing 2 MiB each at once (every circuit's
//! content hashed both ways, then torn down with DESTROY), a peer that cuts a variable-length cell short
//! (every circuit, accept and the link queue report the same precise error), and a circuit that overflows
//! its queue and closes alone while another keeps working.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use plebnet::net::TcpStreamApi;
use plebnet_tests::cells::{join_bounded, server_side, spawn_bounded, tcp_pair};
use plebnet_tests::{pattern, stack_pair};
use plebnet_transport::cell::{Cell, Command, FIXED_CELL_LEN, FIXED_PAYLOAD_LEN};
use plebnet_transport::channel::{CellChannel, ChannelConfig, ChannelError, Circuit};
use plebnet_transport::tls::{TlsCellStream, client_config_pinned};
use sha2::{Digest, Sha256};

/// Channels `(client, server)` over a fresh plebnet stack pair; the server's uses `server_config`.
fn channel_pair(
    port: u16,
    server_config: ChannelConfig,
) -> (CellChannel<impl TcpStreamApi>, CellChannel<impl TcpStreamApi>) {
    let (a, b) = stack_pair(None);
    let (c, s) = tcp_pair(&a, &b, SocketAddr::from(([10, 7, 0, 1], port)));
    let (config, pin) = server_side(false);
    let server = spawn_bounded("tls accept", move || TlsCellStream::accept(s, config));
    let client = TlsCellStream::connect(c, "relay.test", client_config_pinned(pin)).unwrap();
    let server = join_bounded("tls accept", &server).unwrap();
    let (cr, cw) = client.split().unwrap();
    let (sr, sw) = server.split().unwrap();
    (CellChannel::new(cr, cw).unwrap(), CellChannel::with_config(sr, sw, server_config).unwrap())
}

/// Echoes every cell of `circuit` back on it, answering CREATE_FAST with CREATED_FAST, until the peer's
/// DESTROY; returns the hash and count of the RELAY payloads.
fn echo<S: TcpStreamApi>(circuit: Circuit<S>) -> io::Result<([u8; 32], usize)> {
    let mut hasher = Sha256::new();
    let mut count = 0;
    while let Some(cell) = circuit.recv()? {
        if cell.command == Command::CREATE_FAST {
            circuit.send(Command::CREATED_FAST, vec![0u8; 20])?;
            continue;
        }
        assert_eq!(cell.command, Command::RELAY);
        hasher.update(&cell.payload);
        count += 1;
        circuit.send(Command::RELAY, cell.payload)?;
    }
    assert_eq!(circuit.recv()?, None, "None again after DESTROY");
    let err = circuit.send(Command::RELAY, vec![1]).expect_err("no sending after the peer's DESTROY");
    assert!(err.to_string().contains(&format!("circuit {} was destroyed by the peer", circuit.id())), "{err}");
    Ok((hasher.finalize().into(), count))
}

/// Opens `circ_id`, sends CREATE_FAST, then `cells` RELAY cells of `pattern(seed)` keeping at most `window`
/// unanswered (the SENDME idea, so the peer's queue never overflows); hashes the echoes, then closes.
/// Returns (hash sent, hash echoed).
fn echo_client<S: TcpStreamApi>(
    channel: &CellChannel<S>,
    circ_id: u32,
    seed: u64,
    cells: usize,
    window: usize,
) -> io::Result<([u8; 32], [u8; 32])> {
    let data = pattern(seed, cells * FIXED_PAYLOAD_LEN);
    let circuit = channel.open_circuit(circ_id)?;
    circuit.send(Command::CREATE_FAST, vec![0u8; 20])?;
    let created = circuit.recv()?.expect("CREATED_FAST");
    assert_eq!(created.command, Command::CREATED_FAST);
    let mut chunks = data.chunks(FIXED_PAYLOAD_LEN);
    for chunk in chunks.by_ref().take(window) {
        circuit.send(Command::RELAY, chunk.to_vec())?;
    }
    let mut echoed = Sha256::new();
    for _ in 0..cells {
        let cell = circuit.recv()?.expect("an echo, not the end");
        assert_eq!((cell.circ_id, cell.command), (circ_id, Command::RELAY));
        echoed.update(&cell.payload);
        if let Some(chunk) = chunks.next() {
            circuit.send(Command::RELAY, chunk.to_vec())?;
        }
    }
    circuit.close()?;
    assert_eq!(circuit.recv()?, None, "None after our own close");
    Ok((Sha256::digest(&data).into(), echoed.finalize().into()))
}

#[test]
fn thirty_two_circuits_echo_2_mib_each_then_destroy() {
    const CIRCUITS: u32 = 32;
    const CELLS: usize = (2 << 20) / FIXED_CELL_LEN;
    let started = Instant::now();
    let (client, server) = channel_pair(4440, ChannelConfig::default());
    let (client, server) = (Arc::new(client), Arc::new(server));

    let srv = server.clone();
    let accepting = spawn_bounded("accept loop", move || {
        let mut echoes = Vec::new();
        for _ in 0..CIRCUITS {
            let circuit = srv.accept_circuit().unwrap().expect("a circuit");
            let id = circuit.id();
            echoes.push((id, spawn_bounded("echo", move || echo(circuit))));
        }
        echoes
    });
    client.send_link_cell(Command::PADDING, vec![]).unwrap();
    client.send_link_cell(Command::NETINFO, vec![1, 2, 3]).unwrap();
    let clients: Vec<_> = (1..=CIRCUITS)
        .map(|i| {
            let ch = client.clone();
            (
                0x8000_0000 | i,
                spawn_bounded("client circuit", move || echo_client(&ch, 0x8000_0000 | i, i.into(), CELLS, 256)),
            )
        })
        .collect();
    let link = server.recv_link_cell().unwrap().expect("NETINFO");
    assert_eq!((link.circ_id, link.command, &link.payload[..3]), (0, Command::NETINFO, &[1, 2, 3][..]));

    let mut sent = std::collections::HashMap::new();
    for (id, rx) in &clients {
        let (out, back) = join_bounded("client circuit", rx).unwrap();
        assert_eq!(out, back, "circuit {id:#x}: echoed content equals sent content");
        sent.insert(*id, out);
    }
    for (id, rx) in join_bounded("accept loop", &accepting) {
        let (got, count) = join_bounded("echo", &rx).unwrap();
        assert_eq!(count, CELLS, "circuit {id:#x}: cells at the server");
        assert_eq!(Some(&got), sent.get(&id), "circuit {id:#x}: server got what the client sent");
    }
    let elapsed = started.elapsed();

    let (cs, ss) = (client.stats(), server.stats());
    eprintln!("client {cs:?}\nserver {ss:?}");
    let per_circuit = CELLS as u64 + 1; // RELAY cells + CREATE(D)_FAST
    assert_eq!(ss.circuits_accepted, u64::from(CIRCUITS));
    assert_eq!(ss.circuits_destroyed_by_peer, u64::from(CIRCUITS));
    assert_eq!(ss.cells_in, u64::from(CIRCUITS) * (per_circuit + 1) + 2, "+DESTROY each, +PADDING, +NETINFO");
    assert_eq!((ss.dropped_padding, ss.link_cells_in), (1, 1));
    assert_eq!(cs.cells_in, u64::from(CIRCUITS) * per_circuit);
    assert_eq!(ss.cells_out, cs.cells_in);
    assert_eq!(cs.circuits_opened, u64::from(CIRCUITS));
    for s in [cs, ss] {
        assert_eq!((s.dropped_overflow, s.dropped_unknown_circuit, s.refused_circuits, s.open_circuits), (0, 0, 0, 0));
    }

    // The client closes the channel: the server's accept and link queue end cleanly.
    client.close().unwrap();
    assert!(server.accept_circuit().unwrap().is_none());
    assert_eq!(server.recv_link_cell().unwrap(), None);
    let mib = (CIRCUITS as usize * CELLS * FIXED_CELL_LEN) >> 20;
    eprintln!("{CIRCUITS} circuits, {mib} MiB each way, echoed in {elapsed:?}");
}

/// Bytes of a CREATE_FAST on circuit 5, then of a CERTS cell on circuit 0 that declares a 100-byte payload
/// but stops after 10: the stream then ends (close_notify) inside a cell.
fn truncated_stream() -> Vec<u8> {
    let mut bytes = vec![0u8; FIXED_CELL_LEN];
    let create = Cell { circ_id: 5, command: Command::CREATE_FAST, payload: vec![9u8; 20].into() };
    create.encode(&mut bytes).unwrap();
    bytes.extend_from_slice(&[0, 0, 0, 0, 129, 0, 100]);
    bytes.extend_from_slice(&[0xEE; 10]);
    bytes
}

#[test]
fn a_cell_cut_short_fails_every_circuit_with_the_decoder_error() {
    let (a, b) = stack_pair(None);
    let (c, s) = tcp_pair(&a, &b, "10.7.0.1:4441".parse().unwrap());
    let (config, pin) = server_side(false);
    let server = spawn_bounded("server", move || -> io::Result<_> {
        let (sr, sw) = TlsCellStream::accept(s, config)?.split()?;
        let channel = CellChannel::new(sr, sw)?;
        let local = channel.open_circuit(9)?;
        Ok((channel, local))
    });

    // A client that writes raw plaintext through rustls, not through a CellWriter.
    let name = rustls::pki_types::ServerName::try_from("relay.test").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(client_config_pinned(pin)), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, c);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    // The server's circuit 9 is open before the bad bytes leave.
    let (channel, local) = join_bounded("server", &server).unwrap();
    tls.write_all(&truncated_stream()).unwrap();
    tls.flush().unwrap();
    tls.conn.send_close_notify();
    while tls.conn.wants_write() {
        tls.conn.write_tls(&mut tls.sock).unwrap();
    }

    let created = channel.accept_circuit().unwrap().expect("circuit 5");
    let first = created.recv().unwrap().expect("the CREATE_FAST before the bad cell is delivered");
    assert_eq!((first.circ_id, first.command), (5, Command::CREATE_FAST));
    let want = "the cell channel failed (stream ended inside a cell: 17 bytes of it arrived but its header calls \
                for 107; the peer closed the stream mid-cell); every circuit on it is closed, reconnect";
    let errors = [
        created.recv().unwrap_err(),
        created.recv().unwrap_err(),
        local.recv().unwrap_err(),
        channel.accept_circuit().unwrap_err(),
        channel.recv_link_cell().unwrap_err(),
        channel.open_circuit(11).unwrap_err(),
        local.send(Command::RELAY, vec![1]).unwrap_err(),
    ];
    eprintln!("{}", errors[0]);
    for err in errors {
        assert_eq!(err.to_string(), want);
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let inner = err.get_ref().and_then(|e| e.downcast_ref::<ChannelError>());
        assert!(matches!(inner, Some(ChannelError::Link { kind: io::ErrorKind::UnexpectedEof, .. })), "{inner:?}");
    }
    assert_eq!(channel.stats().cells_in, 1);
    // The server closed its side in answer: the client sees a clean close_notify.
    let mut rest = Vec::new();
    assert_eq!(io::Read::read_to_end(&mut tls, &mut rest).unwrap(), 0);
}

#[test]
fn an_overflowing_circuit_closes_alone() {
    const QUEUE: usize = 64;
    const FLOOD: usize = 200; // cells on the flooded circuit, CREATE_FAST included
    const CELLS: usize = 1000;
    let (client, server) = channel_pair(4442, ChannelConfig { queue_cells: QUEUE, ..ChannelConfig::default() });

    // Circuit 1 floods the server, which does not read it yet.
    let flooded = client.open_circuit(1).unwrap();
    flooded.send(Command::CREATE_FAST, vec![0u8; 20]).unwrap();
    for i in 1..FLOOD {
        flooded.send(Command::RELAY, pattern(i as u64, FIXED_PAYLOAD_LEN)).unwrap();
    }
    let server_flooded = server.accept_circuit().unwrap().expect("circuit 1");
    assert_eq!(server_flooded.id(), 1);

    // Circuit 2, opened after the flood (so routed after every flood cell), still echoes.
    let client = Arc::new(client);
    let ch = client.clone();
    let client_side = spawn_bounded("client circuit 2", move || echo_client(&ch, 2, 77, CELLS, QUEUE / 2));
    let server_echo = server.accept_circuit().unwrap().expect("circuit 2");
    let server_side = spawn_bounded("echo circuit 2", move || echo(server_echo));
    let (out, back) = join_bounded("client circuit 2", &client_side).unwrap();
    let (got, count) = join_bounded("echo circuit 2", &server_side).unwrap();
    assert_eq!((out, count), (back, CELLS));
    assert_eq!(got, out);

    let stats = server.stats();
    eprintln!("server {stats:?}");
    assert_eq!((stats.circuits_overflowed, stats.dropped_overflow), (1, (FLOOD - QUEUE) as u64));
    assert_eq!(server_flooded.queued(), QUEUE);
    let first = server_flooded.recv().unwrap().unwrap();
    assert_eq!(first.command, Command::CREATE_FAST);
    for i in 1..QUEUE {
        let cell = server_flooded.recv().unwrap().expect("queued cells come before the error");
        assert_eq!(&cell.payload[..], &pattern(i as u64, FIXED_PAYLOAD_LEN)[..]);
    }
    let err = server_flooded.recv().unwrap_err();
    eprintln!("{err}");
    assert_eq!(err.kind(), io::ErrorKind::OutOfMemory);
    assert!(err.to_string().starts_with("circuit 1 overflowed its 64-cell receive queue"), "{err}");
    let send_err = server_flooded.send(Command::RELAY, vec![1]).unwrap_err();
    assert_eq!(send_err.to_string(), err.to_string());

    // Closing it tells the client with DESTROY (reason RESOURCELIMIT).
    server_flooded.close().unwrap();
    assert_eq!(flooded.recv().unwrap(), None);
    let err = flooded.send(Command::RELAY, vec![1]).unwrap_err();
    assert!(err.to_string().contains("circuit 1 was destroyed by the peer (DESTROY reason 5)"), "{err}");
    assert_eq!(client.stats().circuits_destroyed_by_peer, 1);
}
