//! The LD_PRELOAD shim with real programs: two preloaded processes, each
//! with its own plebnet stack, joined by UdpNic on loopback.
//!
//! The tests build `libplebnet_preload.so` and the `plebnet` binary into
//! the target directory this test runs from (a cdylib is not built for
//! another crate's tests), then run programs with `plebnet run`. Programs
//! that are missing are installed by scripts/test.sh when it runs as root;
//! a test whose program is absent is skipped with a message only when not
//! root (as root, as in CI, it fails).

use std::io::{BufRead, BufReader, Read};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The workspace root.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// `(plebnet binary, libplebnet_preload.so)`, built once per test process
/// into the target directory and profile this test was built with.
fn artifacts() -> &'static (PathBuf, PathBuf) {
    static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/preload-<hash>
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf();
        let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace())
            .args(["build", "--quiet", "-p", "plebnet-preload", "-p", "plebnet-demo", "--target-dir"])
            .arg(&target_dir);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build of the shim and the plebnet binary failed");
        let so = profile_dir.join("libplebnet_preload.so");
        let bin = profile_dir.join("plebnet");
        assert!(so.is_file() && bin.is_file(), "{} or {} missing after the build", so.display(), bin.display());
        (bin, so)
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// True if every program is on PATH; otherwise skips (not root) or fails (root).
fn have(programs: &[&str]) -> bool {
    for p in programs {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {p}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            assert!(!is_root(), "{p} is missing; scripts/test.sh installs it when run as root");
            eprintln!("SKIPPED: {p} is not installed (scripts/test.sh installs it when run as root)");
            return false;
        }
    }
    true
}

/// Two free UDP ports on loopback for the two nodes' underlay sockets.
fn free_udp_ports() -> (u16, u16) {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    (a.local_addr().unwrap().port(), b.local_addr().unwrap().port())
}

/// The two nodes of one test: `10.<net>.0.1` and `10.<net>.0.2`.
struct Pair {
    net: u8,
    ports: (u16, u16),
    mtu: usize,
}

impl Pair {
    fn new(net: u8) -> Pair {
        Pair { net, ports: free_udp_ports(), mtu: 1400 }
    }

    fn ip(&self, node: u8) -> String {
        format!("10.{}.0.{node}", self.net)
    }

    /// `plebnet run` flags for node 1 or 2.
    fn flags(&self, node: u8) -> Vec<String> {
        let (me, other, port, peer_port) =
            if node == 1 { (1, 2, self.ports.0, self.ports.1) } else { (2, 1, self.ports.1, self.ports.0) };
        vec![
            "--addr".into(),
            format!("{}/24", self.ip(me)),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--peer".into(),
            format!("{}=127.0.0.1:{peer_port}", self.ip(other)),
            "--mtu".into(),
            self.mtu.to_string(),
        ]
    }

    /// A command that runs `program args` preloaded as node `node`.
    fn run(&self, node: u8, extra: &[&str], program: &str, args: &[&str]) -> Command {
        let (bin, _) = artifacts();
        let mut cmd = Command::new(bin);
        cmd.arg("run").args(self.flags(node)).args(extra).arg("--").arg(program).args(args);
        cmd.env_remove("PLEBNET_LOG");
        cmd
    }
}

/// A child killed (by PID) and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd` to completion within `limit`, returning its output.
fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let deadline = Instant::now() + limit;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: t_out.join().unwrap(), stderr: t_err.join().unwrap() }
}

fn sha256(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("plebnet-preload-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts the test HTTP server preloaded as node 2; returns it once it
/// printed "ready".
fn http_server(pair: &Pair, dir: &Path, port: u16) -> Proc {
    let script = workspace().join("tests/scripts/http_server.py");
    let ip = pair.ip(2);
    let mut cmd = pair.run(
        2,
        &[],
        "python3",
        &[script.to_str().unwrap(), "--bind", &ip, "--port", &port.to_string(), "--dir", dir.to_str().unwrap()],
    );
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = Proc(cmd.spawn().expect("start http_server.py"));
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("ready"), "http server said {line:?}");
    child
}

#[test]
fn curl_downloads_and_uploads_20_mib_through_python_http_server() {
    if !have(&["curl", "python3"]) {
        return;
    }
    let pair = Pair::new(91);
    let dir = temp_dir("http");
    let data = random_bytes(20 << 20, 7);
    std::fs::write(dir.join("big"), &data).unwrap();
    let _server = http_server(&pair, &dir, 8000);
    let url = format!("http://{}:8000/big", pair.ip(2));

    let out = run_bounded(pair.run(1, &[], "curl", &["-sS", "--fail", &url]), Duration::from_secs(60));
    assert!(out.status.success(), "curl download failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout.len(), data.len());
    assert_eq!(sha256(&out.stdout), sha256(&data), "download differs");

    let upload = dir.join("upload-src");
    std::fs::write(&upload, random_bytes(20 << 20, 8)).unwrap();
    let put_url = format!("http://{}:8000/uploaded", pair.ip(2));
    let out = run_bounded(
        pair.run(1, &[], "curl", &["-sS", "--fail", "-T", upload.to_str().unwrap(), &put_url]),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "curl upload failed: {}", String::from_utf8_lossy(&out.stderr));
    let sent = std::fs::read(&upload).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), sha256(&sent), "server's hash of the upload");
    assert_eq!(sha256(&std::fs::read(dir.join("uploaded")).unwrap()), sha256(&sent));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn python_select_poll_epoll_see_every_readiness_on_mixed_descriptors() {
    if !have(&["python3"]) {
        return;
    }
    let pair = Pair::new(92);
    let script = workspace().join("tests/scripts/readiness.py");
    let ip = pair.ip(1);
    let out = run_bounded(pair.run(1, &[], "python3", &[script.to_str().unwrap(), &ip]), Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "readiness.py failed:\n{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    // The unsupported calls it tried were logged, once each.
    assert_eq!(stderr.matches("option 9999) is not supported").count(), 1, "{stderr}");
    assert_eq!(stderr.matches("socket(AF_PACKET) refused").count(), 1, "{stderr}");
}

/// Starts `nc -v ARGS` preloaded as node 2, waits for its "Bound on" /
/// "Listening on" line, and collects its stdout in a thread.
fn nc_server(pair: &Pair, args: &[&str]) -> (Proc, Arc<AtomicUsize>, std::thread::JoinHandle<Vec<u8>>) {
    let mut all = vec!["-v"];
    all.extend_from_slice(args);
    let mut cmd = pair.run(2, &[], "nc", &all);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut server = Proc(cmd.spawn().expect("start nc server"));
    let mut out = server.0.stdout.take().unwrap();
    let mut err = BufReader::new(server.0.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.starts_with("Bound on") || line.starts_with("Listening on"), "nc said {line:?}");
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = err.read_to_string(&mut rest);
    });
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            v.extend_from_slice(&buf[..n]);
            counter.store(v.len(), Ordering::Release);
        }
        v
    });
    (server, count, reader)
}

#[test]
fn nc_to_nc_tcp_1_mib() {
    if !have(&["nc"]) {
        return;
    }
    let pair = Pair::new(93);
    let dir = temp_dir("nc-tcp");
    let data = random_bytes(1 << 20, 9);
    let file = dir.join("in");
    std::fs::write(&file, &data).unwrap();
    let ip = pair.ip(2);
    let (server, _, reader) = nc_server(&pair, &["-l", &ip, "9000"]);
    let mut client = pair.run(1, &[], "nc", &["-N", &ip, "9000"]);
    client.stdin(std::fs::File::open(&file).unwrap());
    let out = run_bounded(client, Duration::from_secs(30));
    assert!(out.status.success(), "nc client: {}", String::from_utf8_lossy(&out.stderr));
    let got = reader.join().unwrap();
    assert_eq!(got.len(), data.len());
    assert_eq!(sha256(&got), sha256(&data));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nc_to_nc_udp_1_mib() {
    if !have(&["nc"]) {
        return;
    }
    let mut pair = Pair::new(94);
    // nc sends what one read(2) of its input gives as one datagram (up to
    // 16 KiB); plebnet does not fragment IP, so the overlay MTU must hold it.
    pair.mtu = 32_000;
    let dir = temp_dir("nc-udp");
    let data = random_bytes(1 << 20, 10);
    let file = dir.join("in");
    std::fs::write(&file, &data).unwrap();
    let ip = pair.ip(2);
    let (server, count, reader) = nc_server(&pair, &["-u", "-l", &ip, "9001"]);
    // UDP has no end: the client stops after its input (-q 0), the test
    // stops the server once the whole file arrived or the deadline passed.
    let mut client = pair.run(1, &[], "nc", &["-u", "-q", "0", &ip, "9001"]);
    client.stdin(std::fs::File::open(&file).unwrap());
    let out = run_bounded(client, Duration::from_secs(30));
    assert!(out.status.success(), "nc client: {}", String::from_utf8_lossy(&out.stderr));
    // Wait (bounded) for the server's output to reach the file's length.
    let deadline = Instant::now() + Duration::from_secs(20);
    while count.load(Ordering::Acquire) < data.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(server);
    let received = reader.join().unwrap();
    assert_eq!(received.len(), data.len(), "the UDP server received {} of {} bytes", received.len(), data.len());
    assert_eq!(sha256(&received), sha256(&data));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn strict_mode_refuses_non_overlay_destinations_and_resolves_names_from_the_hosts_table() {
    if !have(&["curl", "python3"]) {
        return;
    }
    let pair = Pair::new(95);
    let dir = temp_dir("strict");
    let data = random_bytes(1 << 20, 11);
    std::fs::write(dir.join("f"), &data).unwrap();
    let _server = http_server(&pair, &dir, 8000);
    let host = format!("web.overlay={}", pair.ip(2));
    let strict = ["--strict", "--host", host.as_str()];

    // A name from the hosts table reaches the overlay.
    let out = run_bounded(
        pair.run(1, &strict, "curl", &["-sS", "--fail", "http://web.overlay:8000/f"]),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "curl by name: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(sha256(&out.stdout), sha256(&data));

    // A non-overlay address is refused at connect (curl exit 7), logged.
    let out = run_bounded(
        pair.run(1, &strict, "curl", &["-sS", "--max-time", "10", "http://192.0.2.1:8000/f"]),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "curl to a non-overlay address: {stderr}");
    assert!(stderr.contains("strict: refused 192.0.2.1:8000"), "{stderr}");

    // A name outside the table does not resolve (curl exit 6): no DNS query.
    let out = run_bounded(
        pair.run(1, &strict, "curl", &["-sS", "--max-time", "10", "http://unknown.invalid/"]),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "curl to an unknown name: {stderr}");
    assert!(stderr.contains("not in the [preload] hosts table"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
