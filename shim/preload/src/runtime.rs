//! The process-wide state: the configuration, the plebnet stacks (started
//! lazily at the first INET socket), the routing policy, logging, and what
//! happens across fork.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use plebnet::config::{LoopbackPolicy, NodeConfig, PreloadConfig};
use plebnet::node::{Node, NodeOptions};
use plebnet_netstack::Stack;

/// Environment variable naming the node configuration file.
pub const ENV_CONFIG: &str = "PLEBNET_CONFIG";
/// Environment variable holding the configuration itself (TOML text).
pub const ENV_CONFIG_TOML: &str = "PLEBNET_CONFIG_TOML";
/// `off` silences the shim's log lines; `debug` adds one per decision.
pub const ENV_LOG: &str = "PLEBNET_LOG";

/// The loaded configuration, or why the shim stays inert.
static SETTINGS: OnceLock<Option<NodeConfig>> = OnceLock::new();
/// The started node (or why it could not start).
static NODE: OnceLock<Result<Node, String>> = OnceLock::new();
/// Set in a child forked after the stack started: the stack's threads live
/// in the parent only.
static FORKED: AtomicBool = AtomicBool::new(false);
/// Log keys already printed.
static LOGGED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd)]
enum Level {
    Off,
    Warn,
    Debug,
}

fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| match std::env::var(ENV_LOG).as_deref() {
        Ok("off" | "0" | "none") => Level::Off,
        Ok("debug" | "2") => Level::Debug,
        _ => Level::Warn,
    })
}

/// Logs `msg` once per `key` to stderr (unless `PLEBNET_LOG=off`).
pub(crate) fn log_once(key: &str, msg: &str) {
    if level() == Level::Off {
        return;
    }
    let mut seen = LOGGED.lock().unwrap_or_else(|e| e.into_inner());
    if seen.len() < 4096 && seen.insert(key.to_string()) {
        drop(seen);
        sys_line(msg);
    }
}

/// Logs every time, at `PLEBNET_LOG=debug` only.
pub(crate) fn debug(msg: impl FnOnce() -> String) {
    if level() >= Level::Debug {
        sys_line(&msg());
    }
}

fn sys_line(msg: &str) {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    crate::sys::write_stderr(&format!("plebnet-preload[{pid}]: {msg}\n"));
}

/// The configuration, loaded on first use; `None` when the environment
/// names none or it does not load (the shim is then inert).
pub(crate) fn settings() -> Option<&'static NodeConfig> {
    SETTINGS
        .get_or_init(|| {
            let loaded = if let Ok(text) = std::env::var(ENV_CONFIG_TOML) {
                NodeConfig::parse(Path::new(ENV_CONFIG_TOML), &text).map_err(|e| e.to_string())
            } else if let Ok(path) = std::env::var(ENV_CONFIG) {
                NodeConfig::load(Path::new(&path)).map_err(|e| e.to_string())
            } else {
                Err(format!("neither {ENV_CONFIG} nor {ENV_CONFIG_TOML} is set; start programs with `plebnet run`"))
            };
            match loaded {
                Ok(mut c) => {
                    if std::env::var(ENV_STRICT).is_ok_and(|v| v == "1") {
                        c.preload.strict = true;
                    }
                    Some(c)
                }
                Err(e) => {
                    log_once("config", &format!("inactive: {e}"));
                    None
                }
            }
        })
        .as_ref()
}

/// The `[preload]` section (defaults when there is no configuration).
pub(crate) fn policy() -> PreloadConfig {
    settings().map(|c| c.preload.clone()).unwrap_or_default()
}

/// `PLEBNET_STRICT=1` turns strict mode on over any configuration.
pub const ENV_STRICT: &str = "PLEBNET_STRICT";

/// True in strict mode.
pub(crate) fn strict() -> bool {
    settings().is_some_and(|c| c.preload.strict)
}

/// True in a child forked after the stack started (its threads, and
/// possibly its locks' holders, live in the parent only).
pub(crate) fn forked() -> bool {
    FORKED.load(Ordering::Relaxed)
}

/// Starts the node's stacks if not started yet (the first INET socket).
pub(crate) fn ensure_started() {
    if settings().is_some() && !FORKED.load(Ordering::Relaxed) {
        let _ = node();
    }
}

fn node() -> Result<&'static Node, String> {
    if FORKED.load(Ordering::Relaxed) {
        return Err("this process was forked after its parent started the plebnet stack; the stack's threads \
                    live in the parent, so a forked child cannot open new plebnet sockets (exec'd programs get \
                    their own stack)"
            .to_string());
    }
    let config = settings().ok_or("no configuration")?;
    NODE.get_or_init(|| {
        let mut config = config.clone();
        // A preloaded program gets the interfaces only: services and the
        // control socket belong to `plebnet node`.
        if !config.services.is_empty() || config.control.is_some() {
            log_once("services", "the configuration's services and control socket are ignored under the shim");
        }
        config.services.clear();
        config.control = None;
        let started = Node::start(&config, &NodeOptions::default()).map_err(|e| e.to_string());
        if started.is_ok() {
            // SAFETY: at_exit is a plain extern "C" function living as long as the process.
            unsafe { libc::atexit(at_exit) };
        }
        match &started {
            Ok(n) => debug(|| {
                let ifs: Vec<String> = n.interfaces.iter().map(|i| format!("{} {}", i.name, i.underlay)).collect();
                format!("stack started: {}", ifs.join(", "))
            }),
            Err(e) => log_once("start", &format!("cannot start the plebnet stack: {e}")),
        }
        started
    })
    .as_ref()
    .map_err(|e| e.clone())
}

/// Where a socket operation goes.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    /// The kernel's stack: the shim steps aside.
    Kernel,
    /// A plebnet stack.
    Plebnet(Stack),
    /// Refused with this errno (strict mode, or the stack is unavailable).
    Refuse(libc::c_int),
}

/// `::ffff:a.b.c.d` as `a.b.c.d`.
pub(crate) fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn plebnet_or_refuse(pick: impl FnOnce(&Node) -> Option<Stack>, what: &str) -> Route {
    match node() {
        Ok(n) => match pick(n) {
            Some(s) => Route::Plebnet(s),
            None => Route::Refuse(libc::ENETUNREACH),
        },
        Err(e) => {
            log_once(&format!("down:{what}"), &format!("{what}: plebnet stack unavailable: {e}"));
            Route::Refuse(libc::ENETDOWN)
        }
    }
}

/// Is `ip` on one of the configuration's prefixes or routes?
fn overlay(config: &NodeConfig, ip: IpAddr) -> bool {
    config.interfaces.iter().flat_map(|i| &i.addresses).any(|a| a.get_ref().0.contains(ip))
        || config.routes.iter().any(|r| r.get_ref().dest.0.contains(ip))
}

/// The route for a connection or datagram to `dst`.
pub(crate) fn route_to(dst: SocketAddr) -> Route {
    let Some(config) = settings() else { return Route::Kernel };
    let ip = unmap(dst.ip());
    let policy = &config.preload;
    if ip.is_loopback() || ip.is_unspecified() {
        if policy.loopback == LoopbackPolicy::Plebnet {
            return plebnet_or_refuse(|n| n.interfaces.first().map(|i| i.stack.clone()), "loopback");
        }
        if policy.strict && dst.port() == 53 {
            log_once("dns53", "strict: refused a DNS query to a loopback resolver (use [preload] hosts)");
            return Route::Refuse(libc::ENETUNREACH);
        }
        return Route::Kernel;
    }
    if overlay(config, ip) {
        return plebnet_or_refuse(|n| n.stack_reaching(ip).cloned(), "connect");
    }
    if policy.strict {
        log_once(&format!("strict:{ip}"), &format!("strict: refused {dst}: not on an overlay prefix (ENETUNREACH)"));
        return Route::Refuse(libc::ENETUNREACH);
    }
    Route::Kernel
}

/// The route for binding to `local`.
pub(crate) fn route_bind(local: SocketAddr) -> Route {
    let Some(config) = settings() else { return Route::Kernel };
    let ip = unmap(local.ip());
    let policy = &config.preload;
    if ip.is_loopback() {
        if policy.loopback == LoopbackPolicy::Plebnet {
            return plebnet_or_refuse(|n| n.interfaces.first().map(|i| i.stack.clone()), "bind");
        }
        return Route::Kernel;
    }
    if ip.is_unspecified() {
        // A wildcard bind listens on plebnet when the node has an address
        // of that family (IPv6 `[::]` takes either).
        let has_family = config
            .interfaces
            .iter()
            .flat_map(|i| &i.addresses)
            .any(|a| local.is_ipv6() || a.get_ref().0.addr.is_ipv4() == ip.is_ipv4());
        if has_family {
            return plebnet_or_refuse(
                |n| {
                    n.stack_owning(local.ip())
                        .or_else(|| n.stack_owning(if local.is_ipv6() { "0.0.0.0".parse().ok()? } else { ip }))
                        .cloned()
                },
                "bind",
            );
        }
        return Route::Kernel;
    }
    if config.owns(ip) {
        return plebnet_or_refuse(|n| n.stack_owning(ip).cloned(), "bind");
    }
    if policy.strict {
        log_once(&format!("strictbind:{ip}"), &format!("strict: refused to bind {local}: not an overlay address"));
        return Route::Refuse(libc::EADDRNOTAVAIL);
    }
    Route::Kernel
}

/// The overlay MTU (for TCP_MAXSEG).
pub(crate) fn mtu() -> usize {
    settings().and_then(|c| c.interfaces.first()).map_or(1400, |i| i.effective_mtu())
}

/// Threads still moving the program's bytes towards plebnet.
pub(crate) static LIVE_WRITERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How long `exit` waits for queued data and FINs to be delivered.
const EXIT_LINGER: std::time::Duration = std::time::Duration::from_secs(5);

/// At `exit`: the stack lives in this process, so what the program wrote
/// but plebnet has not delivered yet (and the FINs) would die with it.
/// Close the program's sending sides, then wait (bounded) until the pumps
/// are done, every datagram left for the network, and every connection has
/// its data and FIN acknowledged.
extern "C" fn at_exit() {
    if FORKED.load(Ordering::Relaxed) {
        return;
    }
    let Some(Ok(node)) = NODE.get() else { return };
    crate::ffi::mark_internal_thread();
    crate::table::shutdown_writes();
    let deadline = std::time::Instant::now() + EXIT_LINGER;
    let pause = || std::thread::sleep(std::time::Duration::from_millis(2));
    while LIVE_WRITERS.load(Ordering::Acquire) > 0 && std::time::Instant::now() < deadline {
        pause();
    }
    for i in &node.interfaces {
        // UDP's sendto returned once plebnet queued the datagram; the
        // kernel's returns once the network has it. Same promise here.
        while std::time::Instant::now() < deadline
            && (i.stack.has_unsent_datagrams()
                || i.stack.tcp_socket_info().iter().any(|s| {
                    s.send_queue > 0 || matches!(s.state.as_str(), "FIN-WAIT-1" | "CLOSING" | "LAST-ACK" | "SYN-SENT")
                }))
        {
            pause();
        }
    }
    if std::time::Instant::now() >= deadline {
        debug(|| {
            let socks: Vec<String> = node
                .interfaces
                .iter()
                .flat_map(|i| i.stack.tcp_socket_info())
                .map(|s| format!("{:?}->{:?} {} sendq {}", s.local, s.remote, s.state, s.send_queue))
                .collect();
            format!(
                "exit: gave up after {EXIT_LINGER:?}: {} pump(s) writing; {}",
                LIVE_WRITERS.load(Ordering::Acquire),
                socks.join(", ")
            )
        });
    }
}

extern "C" fn after_fork_in_child() {
    if NODE.get().is_some() {
        FORKED.store(true, Ordering::Relaxed);
    }
    crate::table::after_fork_in_child();
}

extern "C" fn before_fork() {
    crate::table::before_fork();
}

extern "C" fn after_fork_in_parent() {
    crate::table::after_fork_in_parent();
}

/// Registers the fork handlers (once).
pub(crate) fn register_fork_handlers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: the three handlers are plain extern "C" functions that live as long as the library.
        unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork_in_parent), Some(after_fork_in_child)) };
    });
}
