//! Both circuit models behind `CircuitCarrier`: one TLS channel for all
//! circuits, and one TCP connection per circuit over a DTLS link. The same
//! generic exercise runs on each: several circuits at once, each created
//! with CREATE_FAST and then echoing cells, content compared by hash.

use std::net::{SocketAddr, UdpSocket as KernelUdp};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use plebnet::net::{NetStack, Stack, StackConfig, TcpListener, TcpStream};
use plebnet_tests::{sha256, stack_pair, wait_until};
use plebnet_transport::cell::Command;
use plebnet_transport::channel::CellChannel;
use plebnet_transport::circuits::{CircuitCarrier, CircuitEnd, ConnectionPerCircuit};
use plebnet_transport::dtls::{DtlsConfig, DtlsIdentity, DtlsNic, DtlsNicConfig, DtlsPeer};
use plebnet_transport::tls::{Pin, TlsCellStream, client_config_pinned, self_signed, server_config};

const CIRCUITS: u32 = 4;
const CELLS: u32 = 300;

fn payload(circ: u32, i: u32) -> Vec<u8> {
    (0..509u32).map(|k| (circ.wrapping_mul(131) ^ i.wrapping_mul(31) ^ k) as u8).collect()
}

/// Opens CIRCUITS circuits from `client`; `server` echoes each. Checks every
/// circuit's echoes hash to what it sent.
fn exercise<C: CircuitCarrier + 'static>(client: Arc<C>, server: Arc<C>) {
    let serving = {
        let server = server.clone();
        thread::spawn(move || {
            let mut handles = Vec::new();
            for _ in 0..CIRCUITS {
                let circuit = server.accept().unwrap().expect("a circuit");
                handles.push(thread::spawn(move || {
                    let create = circuit.recv().unwrap().unwrap();
                    assert_eq!(create.command, Command::CREATE_FAST);
                    circuit.send(Command::CREATED_FAST, Bytes::from_static(&[0; 20])).unwrap();
                    while let Some(cell) = circuit.recv().unwrap() {
                        assert_eq!(cell.circ_id, circuit.id());
                        circuit.send(cell.command, cell.payload).unwrap();
                    }
                }));
            }
            handles
        })
    };
    let clients: Vec<_> = (1..=CIRCUITS)
        .map(|id| {
            let client = client.clone();
            thread::spawn(move || {
                let circuit = Arc::new(client.open(id).unwrap());
                circuit.send(Command::CREATE_FAST, Bytes::from_static(&[0; 20])).unwrap();
                assert_eq!(circuit.recv().unwrap().unwrap().command, Command::CREATED_FAST);
                let sender = {
                    let circuit = circuit.clone();
                    thread::spawn(move || {
                        let mut sent = Vec::new();
                        for i in 0..CELLS {
                            let p = payload(id, i);
                            sent.extend_from_slice(&p);
                            circuit.send(Command::RELAY, Bytes::from(p)).unwrap();
                        }
                        sha256(&sent)
                    })
                };
                let mut got = Vec::new();
                for _ in 0..CELLS {
                    let cell = circuit.recv().unwrap().expect("an echo");
                    assert_eq!((cell.circ_id, cell.command), (id, Command::RELAY));
                    got.extend_from_slice(&cell.payload);
                }
                assert_eq!(sender.join().unwrap(), sha256(&got), "circuit {id}: echoes differ from what was sent");
                circuit.close().unwrap();
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    for h in serving.join().unwrap() {
        h.join().unwrap();
    }
}

#[test]
fn one_tls_channel_for_all_circuits() {
    let (a, b) = stack_pair(None);
    let (cert, key) = self_signed(&["channel.test"]).unwrap();
    let pin = Pin::cert_sha256(&cert);
    let listener = TcpListener::bind(&b, "10.7.0.2:9200".parse().unwrap()).unwrap();
    let sock = TcpStream::connect(&a, "10.7.0.2:9200".parse().unwrap()).unwrap();
    let (served, _) = listener.accept().unwrap();
    let accepting = thread::spawn(move || TlsCellStream::accept(served, server_config(cert, key).unwrap()).unwrap());
    let (r, w) = TlsCellStream::connect(sock, "channel.test", client_config_pinned(pin)).unwrap().split().unwrap();
    let client = CellChannel::new(r, w).unwrap();
    let (r, w) = accepting.join().unwrap().split().unwrap();
    let server = CellChannel::new(r, w).unwrap();
    exercise(Arc::new(client), Arc::new(server));
}

/// Two stacks on DtlsNics over loopback.
fn dtls_stacks() -> (Stack, Stack) {
    let (ia, ib) = (DtlsIdentity::self_signed("a").unwrap(), DtlsIdentity::self_signed("b").unwrap());
    let sa = KernelUdp::bind("127.0.0.1:0").unwrap();
    let sb = KernelUdp::bind("127.0.0.1:0").unwrap();
    let (ea, eb) = (sa.local_addr().unwrap(), sb.local_addr().unwrap());
    let peer = |pin, prefix: &str, endpoint, initiate| DtlsPeer {
        pin,
        prefixes: vec![prefix.parse().unwrap()],
        endpoint: Some(endpoint),
        initiate,
    };
    let na = DtlsNic::from_socket(
        sa,
        DtlsConfig::new(ia.clone()),
        vec![peer(ib.pin(), "10.8.0.2/32", eb, true)],
        DtlsNicConfig::default(),
    )
    .unwrap();
    let nb = DtlsNic::from_socket(
        sb,
        DtlsConfig::new(ib),
        vec![peer(ia.pin(), "10.8.0.1/32", ea, false)],
        DtlsNicConfig::default(),
    )
    .unwrap();
    let (ca, cb) = (na.link_counters(), nb.link_counters());
    let a = Stack::new(StackConfig::with_address("10.8.0.1/24"), na).unwrap();
    let b = Stack::new(StackConfig::with_address("10.8.0.2/24"), nb).unwrap();
    wait_until(Duration::from_secs(20), "the DTLS handshake", || {
        ca.handshakes_completed.get() == 1 && cb.handshakes_completed.get() == 1
    });
    (a, b)
}

#[test]
fn one_tcp_connection_per_circuit_over_dtls() {
    let (a, b) = dtls_stacks();
    let at: SocketAddr = "10.8.0.2:9300".parse().unwrap();
    let server = Arc::new(ConnectionPerCircuit::listener(b.clone(), at).unwrap());
    let client = ConnectionPerCircuit::dialer(a.clone(), at);
    exercise(Arc::new(client), server.clone());

    // A connection whose first cell is not a CREATE* is refused by name.
    let raw = a.tcp_connect(at).unwrap();
    let mut cell = bytes::BytesMut::new();
    plebnet_transport::cell::Cell { circ_id: 9, command: Command::RELAY, payload: Bytes::from_static(b"x") }
        .encode_to(&mut cell)
        .unwrap();
    std::io::Write::write_all(&mut &raw, &cell).unwrap();
    let err = server.accept().expect_err("a RELAY cell cannot open a circuit");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("not a CREATE"), "{err}");
}
