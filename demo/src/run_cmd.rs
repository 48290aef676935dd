//! `plebnet run [--config FILE | flags] -- CMD ARGS…`: runs an unmodified
//! program on a plebnet stack through `libplebnet_preload.so`.
//!
//! The launcher validates the configuration (so mistakes are reported here,
//! with file and line, not inside the program), finds the library, sets
//! `LD_PRELOAD` and `PLEBNET_CONFIG` (a file) or `PLEBNET_CONFIG_TOML` (the
//! configuration built from the flags), and execs the program. The program
//! starts its own stack at its first INET socket (docs/shim.md).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::Args;
use plebnet::config::NodeConfig;

/// The library's file name.
const LIBRARY: &str = "libplebnet_preload.so";

/// Options of `plebnet run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// A node configuration (TOML, docs/config.md); its `[preload]` section
    /// sets strict mode, the loopback policy and the hosts table. Services
    /// and the control socket in it are ignored.
    #[arg(long, conflicts_with_all = ["addr", "listen", "peer", "mtu", "hosts"])]
    config: Option<PathBuf>,
    /// Overlay address with prefix of the program's UDP interface, e.g.
    /// `10.9.0.1/24` (repeat for IPv4 and IPv6).
    #[arg(long)]
    addr: Vec<String>,
    /// Underlay UDP address the interface binds, e.g. `127.0.0.1:7001`.
    #[arg(long)]
    listen: Option<String>,
    /// A peer: `PREFIX=ENDPOINT`, e.g. `10.9.0.2=127.0.0.1:7002` (a bare
    /// address means /32 or /128; repeat for more peers or prefixes).
    #[arg(long)]
    peer: Vec<String>,
    /// The interface's MTU (default 1400).
    #[arg(long)]
    mtu: Option<usize>,
    /// A name the program resolves to an overlay address: `NAME=ADDRESS`.
    #[arg(long = "host", id = "hosts")]
    hosts: Vec<String>,
    /// Refuse every destination outside the overlay (and DNS through the
    /// kernel); also applies on top of `--config`.
    #[arg(long)]
    strict: bool,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

type Error = Box<dyn std::error::Error>;

/// Runs `plebnet run`; returns only on failure (the program replaces us).
pub fn run(args: &RunArgs) -> Result<ExitCode, Error> {
    let library = find_library()?;
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    match &args.config {
        Some(path) => {
            NodeConfig::load(path)?;
            let abs = std::fs::canonicalize(path)?;
            cmd.env("PLEBNET_CONFIG", abs).env_remove("PLEBNET_CONFIG_TOML");
            if args.strict {
                cmd.env("PLEBNET_STRICT", "1");
            }
        }
        None => {
            let text = config_from_flags(args)?;
            NodeConfig::parse(Path::new("(plebnet run flags)"), &text)?;
            cmd.env("PLEBNET_CONFIG_TOML", text).env_remove("PLEBNET_CONFIG");
        }
    }
    let preload = match std::env::var_os("LD_PRELOAD") {
        Some(old) if !old.is_empty() => {
            let mut v = library.clone().into_os_string();
            v.push(":");
            v.push(old);
            v
        }
        _ => library.into_os_string(),
    };
    cmd.env("LD_PRELOAD", preload);
    let err = cmd.exec();
    Err(format!("cannot run `{}`: {err}", args.command[0].to_string_lossy()).into())
}

/// `PLEBNET_PRELOAD`, or the library next to this executable.
fn find_library() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os("PLEBNET_PRELOAD") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(format!("PLEBNET_PRELOAD={} is not a file", p.display()).into());
        }
        return Ok(std::fs::canonicalize(p)?);
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or("cannot tell where the plebnet executable is")?;
    let candidate = dir.join(LIBRARY);
    if candidate.is_file() {
        return Ok(candidate);
    }
    Err(format!(
        "cannot find {LIBRARY} next to {}: build it with `cargo build -p plebnet-preload` (same profile as \
         plebnet), or set PLEBNET_PRELOAD to its path",
        exe.display()
    )
    .into())
}

/// A TOML string, quoted.
fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The configuration the flags describe, as a node file.
fn config_from_flags(args: &RunArgs) -> Result<String, Error> {
    if args.addr.is_empty() {
        return Err("give --config FILE, or --addr (with --listen and --peer) for a UDP interface".into());
    }
    let listen = args.listen.as_deref().ok_or("--listen ADDR:PORT is needed with --addr (the underlay UDP socket)")?;
    let mut t = String::from("name = \"run\"\n\n[[interface]]\nname = \"udp0\"\nkind = \"udp\"\n");
    let addrs: Vec<String> = args.addr.iter().map(|a| quoted(a)).collect();
    let _ = writeln!(t, "addresses = [{}]", addrs.join(", "));
    let _ = writeln!(t, "listen = {}", quoted(listen));
    if let Some(mtu) = args.mtu {
        let _ = writeln!(t, "mtu = {mtu}");
    }
    // Group prefixes by endpoint: one [[interface.peer]] per endpoint.
    let mut peers: Vec<(String, Vec<String>)> = Vec::new();
    for p in &args.peer {
        let (prefix, endpoint) = p
            .split_once('=')
            .ok_or_else(|| format!("--peer {p}: expected PREFIX=ENDPOINT, e.g. 10.9.0.2=127.0.0.1:7002"))?;
        let prefix = if prefix.contains('/') {
            prefix.to_string()
        } else if prefix.contains(':') {
            format!("{prefix}/128")
        } else {
            format!("{prefix}/32")
        };
        match peers.iter_mut().find(|(e, _)| e == endpoint) {
            Some((_, list)) => list.push(prefix),
            None => peers.push((endpoint.to_string(), vec![prefix])),
        }
    }
    for (endpoint, prefixes) in &peers {
        let list: Vec<String> = prefixes.iter().map(|p| quoted(p)).collect();
        let _ = write!(t, "\n[[interface.peer]]\nendpoint = {}\nprefixes = [{}]\n", quoted(endpoint), list.join(", "));
    }
    let _ = write!(t, "\n[preload]\nstrict = {}\n", args.strict);
    if !args.hosts.is_empty() {
        t.push_str("\n[preload.hosts]\n");
        for h in &args.hosts {
            let (name, ip) = h.split_once('=').ok_or_else(|| format!("--host {h}: expected NAME=ADDRESS"))?;
            let _ = writeln!(t, "{} = {}", quoted(name), quoted(ip));
        }
    }
    Ok(t)
}
