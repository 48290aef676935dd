//! `plebnet node` as a user runs it, no root: two node processes over the
//! UdpNic on loopback; `curl` → node A's `forward` → overlay → node B's
//! `reverse` → a kernel HTTP server (Python's http.server). 20 MiB down and
//! up, sha256 compared; `plebnet ctl stats` answers; SIGTERM stops both
//! cleanly. And bad configurations fail with precise messages; `--check` prints the `[tls]` certificate's
//! pins (checked against openssl's) and refuses a key that is not the certificate's.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use plebnet_tests::Scratch;
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_plebnet");

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
struct Running {
    child: Child,
    name: String,
    /// stderr lines, collected by a reader thread.
    log: mpsc::Receiver<String>,
}

impl Running {
    /// Waits until a line containing `marker` appears on stderr (or stdout
    /// for `ready` lines), up to 30 s; returns that line.
    fn wait_for(&mut self, marker: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(marker) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!("{} never printed `{marker}`; it said:\n{}", self.name, seen.join("\n")),
            }
        }
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill with the PID of our own child and a valid signal.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        self.child.wait().expect("wait for child")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `cmd`, forwarding its stderr (and stdout, if `stdout`) lines.
fn spawn(name: &str, mut cmd: Command, stdout: bool) -> Running {
    cmd.stderr(Stdio::piped()).stdin(Stdio::piped());
    if stdout {
        cmd.stdout(Stdio::piped());
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let (tx, rx) = mpsc::channel();
    let mut pipes: Vec<Box<dyn std::io::Read + Send>> = vec![Box::new(child.stderr.take().unwrap())];
    if stdout {
        pipes.push(Box::new(child.stdout.take().unwrap()));
    }
    for pipe in pipes {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    Running { child, name: name.to_string(), log: rx }
}

fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }
}

fn sha256_file(path: &Path) -> String {
    let data = std::fs::read(path).unwrap();
    format!("{:x}", Sha256::digest(&data))
}

/// 20 MiB of seeded, incompressible-looking bytes.
fn write_blob(path: &Path, seed: u64) {
    let mut x = seed;
    let mut data = Vec::with_capacity(20 << 20);
    while data.len() < 20 << 20 {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        data.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    std::fs::File::create(path).unwrap().write_all(&data).unwrap();
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "120"])
        .args(args)
        .output()
        .expect("curl must be installed (scripts/test.sh installs it as root)");
    assert!(out.status.success(), "curl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn curl_through_two_nodes_forward_and_reverse() {
    let scratch = Scratch::new("fwd");
    let dir = &scratch.0;
    let served = dir.join("served");
    std::fs::create_dir_all(&served).unwrap();
    write_blob(&served.join("blob.bin"), 7);
    let upload_src = dir.join("upload.bin");
    write_blob(&upload_src, 8);

    let (udp_a, udp_b, fwd, http) = (free_port(true), free_port(true), free_port(false), free_port(false));
    let (ctl_a, ctl_b) = (dir.join("a.sock"), dir.join("b.sock"));
    let config_a = format!(
        r#"name = "a"
[[interface]]
kind = "udp"
addresses = ["10.77.0.1/24"]
listen = "127.0.0.1:{udp_a}"
[[interface.peer]]
endpoint = "127.0.0.1:{udp_b}"
prefixes = ["10.77.0.2/32"]
[[service]]
kind = "forward"
listen = "127.0.0.1:{fwd}"
connect = "10.77.0.2:80"
[control]
socket = "{}"
"#,
        ctl_a.display()
    );
    let config_b = format!(
        r#"name = "b"
[[interface]]
kind = "udp"
addresses = ["10.77.0.2/24"]
listen = "127.0.0.1:{udp_b}"
[[interface.peer]]
endpoint = "127.0.0.1:{udp_a}"
prefixes = ["10.77.0.1/32"]
[[service]]
kind = "reverse"
listen = "10.77.0.2:80"
connect = "127.0.0.1:{http}"
[control]
socket = "{}"
"#,
        ctl_b.display()
    );
    std::fs::write(dir.join("a.toml"), config_a).unwrap();
    std::fs::write(dir.join("b.toml"), config_b).unwrap();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/scripts/http_server.py");
    let mut py = Command::new("python3");
    py.arg(&script).args(["--bind", "127.0.0.1", "--port", &http.to_string(), "--dir"]).arg(&served);
    let mut server = spawn("http server", py, true);
    server.wait_for("ready");

    let mut nodes = Vec::new();
    for name in ["b", "a"] {
        let mut cmd = Command::new(BIN);
        cmd.args(["node", "--config"]).arg(dir.join(format!("{name}.toml")));
        let mut node = spawn(&format!("node {name}"), cmd, false);
        node.wait_for("running");
        nodes.push(node);
    }

    // Download: kernel server → B reverse → overlay → A forward → curl.
    let got = dir.join("got.bin");
    curl(&["-o", got.to_str().unwrap(), &format!("http://127.0.0.1:{fwd}/blob.bin")]);
    assert_eq!(sha256_file(&got), sha256_file(&served.join("blob.bin")), "download content differs");

    // Upload: curl → A → overlay → B → kernel server, which answers the hash.
    let answer = curl(&["-T", upload_src.to_str().unwrap(), &format!("http://127.0.0.1:{fwd}/uploaded.bin")]);
    let sent = sha256_file(&upload_src);
    assert_eq!(answer.trim(), sent, "the server hashed something else");
    assert_eq!(sha256_file(&served.join("uploaded.bin")), sent, "upload content differs");

    // The control socket reports counters and sockets.
    let out = Command::new(BIN).args(["ctl", "--socket"]).arg(&ctl_a).arg("stats").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ctl prints JSON");
    let udp = &stats["interfaces"][0]["counters"]["udp"];
    assert!(udp["rx_bytes"].as_u64().unwrap() > 20 << 20, "{stats}");
    assert_eq!(udp["rx_dropped_unknown_peer"].as_u64(), Some(0), "{stats}");
    assert!(stats["interfaces"][0]["counters"]["stack"]["rx_dropped_checksum"].is_u64(), "{stats}");
    assert_eq!(stats["services"][0]["accepted"].as_u64(), Some(2), "{stats}");

    for mut node in nodes {
        let status = node.terminate();
        assert!(status.success(), "{} exited with {status}", node.name);
    }
    assert!(!ctl_a.exists() && !ctl_b.exists(), "control sockets are removed on exit");
    drop(server.child.stdin.take());
    let _ = server.child.wait();
}

fn node_check(text: &str) -> (bool, String) {
    let scratch = Scratch::new(&format!("cfg{}", text.len()));
    let path = scratch.0.join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN).args(["node", "--check", "--config"]).arg(&path).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

const GOOD: &str = r#"[[interface]]
kind = "udp"
addresses = ["10.5.0.1/24"]
listen = "127.0.0.1:0"

[[interface.peer]]
endpoint = "127.0.0.1:4999"
prefixes = ["10.5.0.2/32"]
"#;

#[test]
fn a_good_config_checks() {
    let (ok, err) = node_check(GOOD);
    assert!(ok, "{err}");
}

#[test]
fn missing_field_is_a_precise_error() {
    let (ok, err) = node_check(&GOOD.replace("kind = \"udp\"\n", ""));
    assert!(!ok);
    assert!(err.contains("bad.toml:1:1") && err.contains("missing field `kind`"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn wrong_type_is_a_precise_error() {
    let (ok, err) = node_check(&GOOD.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:0\"\nmtu = \"large\""));
    assert!(!ok);
    assert!(err.contains("bad.toml:5:7: mtu: invalid type"), "{err}");
}

#[test]
fn overlapping_prefix_is_a_precise_error() {
    let text = format!("{GOOD}\n[[interface.peer]]\nendpoint = \"127.0.0.1:4998\"\nprefixes = [\"10.5.0.0/16\"]\n");
    let (ok, err) = node_check(&text);
    assert!(!ok);
    assert!(err.contains("bad.toml:12:13: interface[0].peer[1].prefixes: 10.5.0.0/16 overlaps 10.5.0.2/32"), "{err}");
}

#[test]
fn every_example_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = Command::new(BIN).args(["node", "--check", "--config"]).arg(&path).output().unwrap();
            assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
            checked += 1;
        }
    }
    assert!(checked >= 4, "expected the example configs in {}", dir.display());
}

#[test]
fn tun_without_privilege_says_what_is_missing() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/tun.toml");
    // As root, drop to nobody for this one command; otherwise we already are
    // unprivileged.
    // SAFETY: geteuid takes no arguments and cannot fail.
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
        c
    } else {
        Command::new(BIN)
    };
    let out = cmd.args(["node", "--config"]).arg(&config).output().expect("run plebnet");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("CAP_NET_ADMIN") && err.contains("UDP NIC"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// `plebnet node --check` prints the pins of the `[tls]` certificate — the same fingerprints openssl
/// computes — and refuses a key that does not belong to the certificate.
#[test]
fn check_prints_the_certificate_pins_and_refuses_a_foreign_key() {
    let scratch = Scratch::new("pins");
    let dir = &scratch.0;
    let sh = |script: &str| {
        let out = Command::new("sh").arg("-c").arg(script).current_dir(dir).output().expect("run sh");
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout b.key -out b.crt \
        -days 1 -subj /CN=node-b 2>/dev/null && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
        -out other.key 2>/dev/null");
    let spki = sh("openssl x509 -in b.crt -pubkey -noout | openssl pkey -pubin -outform der | sha256sum");
    let cert = sh("openssl x509 -in b.crt -outform der | sha256sum");
    let check = |key: &str| {
        let path = dir.join(format!("{key}.toml"));
        std::fs::write(&path, format!("{GOOD}\n[tls]\ncertificate = \"b.crt\"\nprivate_key = \"{key}\"\n")).unwrap();
        Command::new(BIN).args(["node", "--check", "--config"]).arg(&path).output().unwrap()
    };
    let out = check("b.key");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first_word = |s: &str| s.split_whitespace().next().unwrap_or_default().to_string();
    assert!(stdout.contains(&format!("certificate pin = \"spki-sha256:{}\"", first_word(&spki))), "{stdout}");
    assert!(stdout.contains(&format!("certificate pin = \"cert-sha256:{}\"", first_word(&cert))), "{stdout}");
    let out = check("other.key");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("does not belong to the certificate"), "{stderr}");
}
