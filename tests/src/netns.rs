//! Network namespaces that a test creates for itself (root only), and the
//! rule for tests that need root: skipped with a message when unprivileged,
//! unless `PLEBNET_REQUIRE_PRIVILEGED=1` (CI) makes that a failure.

use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};

/// True if this process may create namespaces and tun/tap devices. When it
/// may not: panics under `PLEBNET_REQUIRE_PRIVILEGED=1`, else prints why the
/// test is skipped and returns false.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let tun = std::path::Path::new("/dev/net/tun").exists();
    let ip = Command::new("ip").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if root && tun && ip {
        return true;
    }
    let why = format!("{test}: needs root, /dev/net/tun and iproute2 (root={root}, tun={tun}, ip={ip})");
    if std::env::var("PLEBNET_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{why}; PLEBNET_REQUIRE_PRIVILEGED=1 forbids skipping");
    }
    eprintln!("SKIPPED {why}");
    false
}

/// A network namespace, deleted (with everything in it) when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
    children: Vec<Child>,
}

impl Netns {
    /// Creates `plebnet-<tag>-<pid>` with its loopback up.
    pub fn create(tag: &str) -> Netns {
        let name = format!("plebnet-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        let ns = Netns { name, children: Vec::new() };
        ns.ip(&["netns", "add", &ns.name]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Runs a command inside the namespace and asserts that it succeeds.
    pub fn exec(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(
            out.status.success(),
            "in {}: {args:?} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A command that will run inside the namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }

    /// Starts a long-running command inside the namespace; it is killed
    /// (by PID) when the namespace is dropped.
    pub fn spawn(&mut self, mut cmd: Command) -> &mut Child {
        let child = cmd.spawn().expect("spawn in namespace");
        self.children.push(child);
        self.children.last_mut().unwrap()
    }

    /// Runs `f` on a thread that has entered the namespace, so sockets and
    /// devices it creates live there (they stay there when used from other
    /// threads afterwards).
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        std::thread::spawn(move || {
            // SAFETY: setns with a descriptor of a namespace file we hold
            // open; it changes only this thread's network namespace.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}
