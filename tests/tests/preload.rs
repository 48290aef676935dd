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
use std::sync::OnceLock;
use std::sync::mpsc;
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
    /// Both nodes in strict mode.
    strict: bool,
    /// Run every program inside this network namespace.
    netns: Option<String>,
}

impl Pair {
    fn new(net: u8) -> Pair {
        Pair { net, ports: free_udp_ports(), mtu: 1400, strict: false, netns: None }
    }

    fn ip(&self, node: u8) -> String {
        format!("10.{}.0.{node}", self.net)
    }

    /// `plebnet run` flags for node 1 or 2.
    fn flags(&self, node: u8) -> Vec<String> {
        let (me, other, port, peer_port) =
            if node == 1 { (1, 2, self.ports.0, self.ports.1) } else { (2, 1, self.ports.1, self.ports.0) };
        let mut flags: Vec<String> = vec![
            "--addr".into(),
            format!("{}/24", self.ip(me)),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--peer".into(),
            format!("{}=127.0.0.1:{peer_port}", self.ip(other)),
            "--mtu".into(),
            self.mtu.to_string(),
        ];
        if self.strict {
            flags.push("--strict".into());
        }
        flags
    }

    /// A command that runs `program args` preloaded as node `node`.
    fn run(&self, node: u8, extra: &[&str], program: &str, args: &[&str]) -> Command {
        let (bin, _) = artifacts();
        let mut cmd = match &self.netns {
            // `ip netns exec` execs the program, so the child's PID is the program's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
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
    // A waiter thread reaps the child and reports: no polling. On timeout
    // the child, not yet reaped, is killed by its PID.
    let pid = child.id() as libc::pid_t;
    let (done, exited) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait());
    });
    let status = match exited.recv_timeout(limit) {
        Ok(status) => status.expect("wait for the child"),
        Err(_) => {
            // SAFETY: kill(2) on the PID of our own child, which the waiter has not reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = exited.recv();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    };
    Output { status, stdout: t_out.join().unwrap(), stderr: t_err.join().unwrap() }
}

/// The lines a child writes to one of its pipes, read by a thread; the
/// child's output is drained for as long as it runs.
struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn new(pipe: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx, seen: Vec::new() }
    }

    /// Waits (at most `limit`) for a line containing `needle`.
    fn wait_for(&mut self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(e) => panic!("no line with {needle:?} within {limit:?} ({e}); got:\n{}", self.seen.join("\n")),
            }
        }
    }
}

/// Held by the tests that load both cores (iperf3, redis-benchmark) and by
/// the UDP test: UDP has no flow control, so a receiver starved of CPU by a
/// neighbour test loses datagrams. An `flock`, so it also works when each
/// test runs in its own process (nextest); released when dropped.
fn exclusive() -> std::fs::File {
    use std::os::fd::AsRawFd;
    let path = std::env::temp_dir().join("plebnet-preload-tests.lock");
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).unwrap();
    // SAFETY: flock on a descriptor we own.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(r, 0, "flock {}: {}", path.display(), std::io::Error::last_os_error());
    file
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
fn nc_server(pair: &Pair, args: &[&str]) -> (Proc, mpsc::Receiver<usize>, std::thread::JoinHandle<Vec<u8>>) {
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
    // Each read's running total goes to the test, which waits on it.
    let (progress, received) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            v.extend_from_slice(&buf[..n]);
            let _ = progress.send(v.len());
        }
        v
    });
    (server, received, reader)
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
    let _exclusive = exclusive();
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
    let mut arrived = 0;
    while arrived < data.len() {
        match count.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(total) => arrived = total,
            Err(_) => break,
        }
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

#[test]
fn redis_cli_sets_and_gets_1_mib_and_redis_benchmark_completes() {
    if !have(&["redis-server", "redis-cli", "redis-benchmark"]) {
        return;
    }
    let _exclusive = exclusive();
    let pair = Pair::new(96);
    let dir = temp_dir("redis");
    let ip = pair.ip(2);
    let mut cmd = pair.run(
        2,
        &[],
        "redis-server",
        &[
            "--bind",
            &ip,
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            // Its clients come from the overlay, not from loopback.
            "--protected-mode",
            "no",
            "--dir",
            dir.to_str().unwrap(),
        ],
    );
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut server = Proc(cmd.spawn().expect("start redis-server"));
    let mut log = Lines::new(server.0.stdout.take().unwrap());
    let _err = Lines::new(server.0.stderr.take().unwrap());
    log.wait_for("Ready to accept connections", Duration::from_secs(30));

    let value = random_bytes(1 << 20, 12);
    let file = dir.join("value");
    std::fs::write(&file, &value).unwrap();
    let mut set = pair.run(1, &[], "redis-cli", &["-h", &ip, "-p", "6379", "-x", "SET", "big"]);
    set.stdin(std::fs::File::open(&file).unwrap());
    let out = run_bounded(set, Duration::from_secs(30));
    assert!(out.status.success(), "redis-cli SET: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");

    // Not a terminal: redis-cli prints the raw value and a newline.
    let out =
        run_bounded(pair.run(1, &[], "redis-cli", &["-h", &ip, "-p", "6379", "GET", "big"]), Duration::from_secs(30));
    assert!(out.status.success(), "redis-cli GET: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout.len(), value.len() + 1, "GET returned {} bytes", out.stdout.len());
    assert_eq!(out.stdout.last(), Some(&b'\n'));
    assert_eq!(sha256(&out.stdout[..value.len()]), sha256(&value), "GET differs from SET");

    let out = run_bounded(
        pair.run(1, &[], "redis-benchmark", &["-h", &ip, "-p", "6379", "-n", "10000", "-q"]),
        Duration::from_secs(240),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "redis-benchmark: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for test in ["SET: ", "GET: ", "LRANGE_600 (first 600 elements): "] {
        let done = stdout.split(['\r', '\n']).any(|l| l.starts_with(test) && l.contains("requests per second"));
        assert!(done, "redis-benchmark did not finish {test:?}: {stdout}");
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An nginx configuration in `dir`: one process, everything it writes in
/// `dir`, serving `dir` on `ip:port`. Temp paths are set only for the
/// modules this nginx was built with (nginx-light lacks some).
fn nginx_config(dir: &Path, ip: &str, port: u16) -> String {
    let version = Command::new("nginx").arg("-V").output().expect("nginx -V");
    let built = String::from_utf8_lossy(&version.stderr).into_owned();
    let d = dir.display();
    let mut temps = format!("client_body_temp_path {d}/body;\n");
    for (module, directive, sub) in [
        ("http_proxy_module", "proxy_temp_path", "proxy"),
        ("http_fastcgi_module", "fastcgi_temp_path", "fastcgi"),
        ("http_uwsgi_module", "uwsgi_temp_path", "uwsgi"),
        ("http_scgi_module", "scgi_temp_path", "scgi"),
    ] {
        if !built.contains(&format!("--without-{module}")) {
            temps.push_str(&format!("    {directive} {d}/{sub};\n"));
        }
    }
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log notice;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n    access_log off;\n    {temps}    server {{\n        listen {ip}:{port};\n        root {d}/www;\n    }}\n}}\n"
    )
}

#[test]
fn nginx_serves_20_mib_to_curl() {
    if !have(&["nginx", "curl"]) {
        return;
    }
    let pair = Pair::new(97);
    let dir = temp_dir("nginx");
    std::fs::create_dir_all(dir.join("www")).unwrap();
    let data = random_bytes(20 << 20, 13);
    std::fs::write(dir.join("www/big"), &data).unwrap();
    let ip = pair.ip(2);
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_config(&dir, &ip, 8080)).unwrap();
    let error_log = dir.join("error.log");
    let mut cmd = pair.run(
        2,
        &[],
        "nginx",
        &["-c", conf.to_str().unwrap(), "-p", dir.to_str().unwrap(), "-e", error_log.to_str().unwrap()],
    );
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut server = Proc(cmd.spawn().expect("start nginx"));
    let _err = Lines::new(server.0.stderr.take().unwrap());
    // nginx logs its event method after it opened its listening sockets.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(&error_log).unwrap_or_default();
        if log.contains("event method") {
            break;
        }
        if let Some(status) = server.0.try_wait().unwrap() {
            panic!("nginx exited ({status}): {log}");
        }
        assert!(Instant::now() < deadline, "nginx did not start: {log}");
        std::thread::sleep(Duration::from_millis(20));
    }

    let url = format!("http://{ip}:8080/big");
    let out = run_bounded(pair.run(1, &[], "curl", &["-sS", "--fail", &url]), Duration::from_secs(60));
    assert!(out.status.success(), "curl from nginx: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout.len(), data.len());
    assert_eq!(sha256(&out.stdout), sha256(&data), "nginx's file differs");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `(bytes the receiver got, bytes the sender sent)` from `iperf3 --json`.
fn iperf3_totals(json: &[u8]) -> (u64, u64) {
    let script = "import json, sys\nd = json.load(sys.stdin)\nassert 'error' not in d, d.get('error')\n\
                  e = d['end']\nprint(e['sum_received']['bytes'], e['sum_sent']['bytes'])";
    let mut py = Command::new("python3");
    py.args(["-c", script]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = py.spawn().expect("python3");
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(json).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "iperf3 JSON: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(json)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|n| n.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

#[test]
fn iperf3_5_s_each_direction() {
    if !have(&["iperf3", "python3"]) {
        return;
    }
    let _exclusive = exclusive();
    let pair = Pair::new(98);
    let ip = pair.ip(2);
    let mut cmd = pair.run(2, &[], "iperf3", &["-s", "-B", &ip, "-p", "5201", "--forceflush"]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut server = Proc(cmd.spawn().expect("start iperf3 -s"));
    let mut log = Lines::new(server.0.stdout.take().unwrap());
    let _err = Lines::new(server.0.stderr.take().unwrap());
    // The server closes its listening socket after each test and listens
    // again: each client waits for that.
    for (test, reverse) in [(1, false), (2, true)] {
        log.wait_for(&format!("Server listening on 5201 (test #{test})"), Duration::from_secs(30));
        let mut args = vec!["-c", &ip, "-p", "5201", "-t", "5", "--json"];
        if reverse {
            args.push("-R");
        }
        let started = Instant::now();
        let out = run_bounded(pair.run(1, &[], "iperf3", &args), Duration::from_secs(60));
        assert!(
            out.status.success(),
            "iperf3 -c (reverse: {reverse}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let (received, sent) = iperf3_totals(&out.stdout);
        eprintln!(
            "iperf3 reverse={reverse}: sent {sent} B, received {received} B ({:.2} Gbit/s) in {:.1?}",
            received as f64 * 8.0 / 5e9,
            started.elapsed()
        );
        assert!(received > 0 && sent > 0, "iperf3 (reverse: {reverse}) moved nothing");
        assert!(received <= sent, "received {received} > sent {sent}");
    }
    drop(server);
}

/// A network namespace for the leak test, with a resolver on loopback
/// (`/etc/netns/NAME/resolv.conf`, which `ip netns exec` mounts over
/// /etc/resolv.conf) so that any DNS query would be seen on `lo`; both
/// removed when dropped, also when the test fails.
struct LeakNs {
    ns: plebnet_tests::netns::Netns,
    etc: PathBuf,
}

impl LeakNs {
    fn create() -> LeakNs {
        let ns = plebnet_tests::netns::Netns::create("leak");
        let etc = PathBuf::from("/etc/netns").join(ns.name());
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("resolv.conf"), "nameserver 127.0.0.53\n").unwrap();
        LeakNs { ns, etc }
    }
}

impl Drop for LeakNs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.etc);
        // self.ns deletes the namespace after this.
    }
}

/// tcpdump inside a namespace, writing every packet on every interface.
struct Capture {
    child: Proc,
    file: PathBuf,
}

impl Capture {
    fn start(ns: &str, file: PathBuf) -> Capture {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "tcpdump", "-i", "any", "-nn", "-U", "-Z", "root", "-w"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = Proc(cmd.spawn().expect("start tcpdump"));
        let mut err = Lines::new(child.0.stderr.take().unwrap());
        err.wait_for("listening on", Duration::from_secs(20));
        Capture { child, file }
    }

    /// Stops tcpdump (SIGINT, so the file is complete) and returns one
    /// line per packet.
    fn stop(mut self) -> Vec<String> {
        // SAFETY: kill(2) on the PID of our own child, not yet reaped.
        unsafe { libc::kill(self.child.0.id() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "tcpdump did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = Command::new("tcpdump").args(["-nn", "-r"]).arg(&self.file).output().expect("tcpdump -r");
        assert!(out.status.success(), "tcpdump -r: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
    }
}

#[test]
fn leak_test_strict_curl_in_a_namespace_sends_only_udp_nic_datagrams() {
    if !is_root() {
        eprintln!("SKIPPED: the leak test needs root (it creates a network namespace)");
        return;
    }
    if !have(&["ip", "tcpdump", "curl", "python3"]) {
        return;
    }
    let leak = LeakNs::create();
    let ns = leak.ns.name().to_string();
    let mut pair = Pair::new(99);
    pair.strict = true;
    pair.netns = Some(ns.clone());
    let dir = temp_dir("leak");
    let data = random_bytes(1 << 20, 14);
    std::fs::write(dir.join("f"), &data).unwrap();

    let capture = Capture::start(&ns, dir.join("leak.pcap"));
    let server = http_server(&pair, &dir, 8000);
    let host = format!("web.overlay={}", pair.ip(2));
    let names = ["--host", host.as_str()];

    // From the overlay: by address and by a name of the hosts table.
    for url in [format!("http://{}:8000/f", pair.ip(2)), "http://web.overlay:8000/f".to_string()] {
        let out = run_bounded(pair.run(1, &names, "curl", &["-sS", "--fail", &url]), Duration::from_secs(30));
        assert!(out.status.success(), "curl {url}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(sha256(&out.stdout), sha256(&data), "{url}");
    }
    // Refused: a non-overlay address (curl exit 7), an unknown name (exit 6).
    let out = run_bounded(
        pair.run(1, &names, "curl", &["-sS", "--max-time", "10", "http://192.0.2.1:8000/f"]),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "curl to 192.0.2.1: {stderr}");
    assert!(stderr.contains("strict: refused 192.0.2.1:8000"), "{stderr}");
    let out = run_bounded(
        pair.run(1, &names, "curl", &["-sS", "--max-time", "10", "http://unknown.invalid/"]),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(6), "curl to an unknown name: {}", String::from_utf8_lossy(&out.stderr));
    drop(server);

    let packets = capture.stop();
    let (a, b) = pair.ports;
    let allowed = [format!("IP 127.0.0.1.{a} > 127.0.0.1.{b}: UDP"), format!("IP 127.0.0.1.{b} > 127.0.0.1.{a}: UDP")];
    let strays: Vec<&String> = packets.iter().filter(|p| !allowed.iter().any(|ok| p.contains(ok.as_str()))).collect();
    eprintln!("leak test: {} packets in the namespace, {} not UdpNic datagrams", packets.len(), strays.len());
    // (UDP GSO/GRO super-datagrams count once; 2 MiB need well over 20.)
    assert!(packets.len() >= 20, "too few packets captured for 2 MiB over the overlay: {}", packets.len());
    assert!(strays.is_empty(), "packets other than the UdpNic datagrams between ports {a} and {b}:\n{strays:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}
