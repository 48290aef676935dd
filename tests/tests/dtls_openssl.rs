//! DTLS interop with real OpenSSL (`openssl` 3, DTLS 1.2) on loopback:
//! plebnet's DTLS client against `openssl s_server -dtls1_2`, and
//! `openssl s_client -dtls1_2` against plebnet's DTLS server. In each the
//! handshake completes, each side checks the other's certificate (plebnet
//! by pin; OpenSSL prints what it got), and data passes both ways.

use std::io::{BufRead, BufReader, Write};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use plebnet_transport::dtls::{DtlsConfig, DtlsIdentity, DtlsSocket, DtlsVersion};
use plebnet_transport::tls::Pin;

/// An OpenSSL-made ECDSA P-256 certificate and key in a fresh directory.
struct OpensslIdentity {
    dir: PathBuf,
    pin: Pin,
}

impl OpensslIdentity {
    fn new(tag: &str) -> Option<Self> {
        if Command::new("openssl").arg("version").output().is_err() {
            // scripts/test.sh installs it; a bare machine may lack it, CI not.
            let why = "no openssl binary (scripts/test.sh installs it)";
            assert!(std::env::var("PLEBNET_REQUIRE_PRIVILEGED").as_deref() != Ok("1"), "{why}");
            eprintln!("SKIPPED: {why}");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("plebnet-dtls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(&dir).output().unwrap();
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=openssl-peer",
        ]);
        run(&["x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der"]);
        let der = std::fs::read(dir.join("cert.der")).unwrap();
        let pin = Pin::cert_sha256(&der.into());
        Some(Self { dir, pin })
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for OpensslIdentity {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running openssl command: its stdin, and its stdout lines on a channel.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Peer {
    fn spawn(args: &[&str], cwd: &Path) -> Self {
        let mut child = Command::new("openssl")
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stdin = child.stdin.take().unwrap();
        Self { child, stdin, lines }
    }

    /// Waits for a line containing `needle`; returns everything read so far.
    fn expect(&self, needle: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_secs(20)) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    seen.push(line);
                    if hit {
                        return seen;
                    }
                }
                Err(e) => panic!("openssl never printed {needle:?} ({e}); it printed: {seen:#?}"),
            }
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `openssl s_server -dtls1_2` on a free loopback port with `id`'s
/// certificate, asking for a client certificate if `verify`; returns once
/// it listens.
fn s_server(id: &OpensslIdentity, verify: bool) -> (Peer, u16) {
    let port = free_udp_port();
    let (accept, cert, key) = (format!("127.0.0.1:{port}"), id.file("cert.pem"), id.file("key.pem"));
    let mut args = vec!["s_server", "-dtls1_2", "-accept", &accept, "-cert", &cert, "-key", &key];
    if verify {
        args.extend(["-verify", "1"]);
    }
    let server = Peer::spawn(&args, &id.dir);
    server.expect("ACCEPT");
    (server, port)
}

#[test]
fn plebnet_client_against_openssl_s_server_dtls1_2() {
    let Some(peer_id) = OpensslIdentity::new("server") else { return };
    let (server, port) = s_server(&peer_id, true);

    let ours = DtlsIdentity::self_signed("plebnet-client").unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let config = DtlsConfig::new(ours).version(DtlsVersion::V1_2);
    let mut dtls = DtlsSocket::connect(
        socket,
        format!("127.0.0.1:{port}").parse().unwrap(),
        &config,
        peer_id.pin,
        Duration::from_secs(20),
    )
    .expect("handshake with openssl s_server");
    assert_eq!(dtls.version(), Some(DtlsVersion::V1_2));

    dtls.send(b"hello from plebnet\n").unwrap();
    let printed = server.expect("hello from plebnet");
    eprintln!("s_server: {printed:#?}");
    (&server.stdin).write_all(b"hello from openssl\n").unwrap();
    let got = dtls.recv(Some(Duration::from_secs(20))).unwrap();
    assert_eq!(got, b"hello from openssl\n");

    // A wrong pin is refused with an error naming the mismatch.
    drop(dtls);
    drop(server);
    let (_server, port) = s_server(&peer_id, false);
    let wrong = DtlsIdentity::self_signed("someone-else").unwrap().pin();
    let err = DtlsSocket::connect(
        UdpSocket::bind("127.0.0.1:0").unwrap(),
        format!("127.0.0.1:{port}").parse().unwrap(),
        &config,
        wrong,
        Duration::from_secs(20),
    )
    .expect_err("a server that does not match the pin");
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("matches no configured pin"), "{err}");
}

#[test]
fn openssl_s_client_against_plebnet_server_dtls1_2() {
    let Some(peer_id) = OpensslIdentity::new("client") else { return };
    let ours = DtlsIdentity::self_signed("plebnet-server").unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let config = DtlsConfig::new(ours).version(DtlsVersion::V1_2);
    let pin = peer_id.pin;
    let server = std::thread::spawn(move || DtlsSocket::accept(socket, &config, vec![pin], Duration::from_secs(20)));

    let client = Peer::spawn(
        &[
            "s_client",
            "-dtls1_2",
            "-connect",
            &addr.to_string(),
            "-cert",
            &peer_id.file("cert.pem"),
            "-key",
            &peer_id.file("key.pem"),
            "-quiet",
        ],
        &peer_id.dir,
    );
    let mut dtls = server.join().unwrap().expect("openssl s_client's handshake with plebnet");
    assert_eq!(dtls.version(), Some(DtlsVersion::V1_2));

    (&client.stdin).write_all(b"hello from openssl\n").unwrap();
    let got = dtls.recv(Some(Duration::from_secs(20))).unwrap();
    assert_eq!(got, b"hello from openssl\n");
    dtls.send(b"hello from plebnet\n").unwrap();
    client.expect("hello from plebnet");
    dtls.close();
}
