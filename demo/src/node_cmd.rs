//! `plebnet node --config FILE` and `plebnet ctl --socket PATH stats`.
//!
//! The node runs until SIGINT or SIGTERM; the signals are blocked in every
//! thread and taken synchronously by the main thread with `sigwait`, so
//! shutdown happens in ordinary code: print the final counters, remove the
//! control socket, exit 0.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use plebnet::config::{NodeConfig, PeerPin};
use plebnet::node::{Node, NodeOptions, request};
use plebnet_transport::multipath::NodeMultipath;
use plebnet_transport::tls::{Pin, server_config};

/// Options of `plebnet node`.
#[derive(Args, Debug)]
pub struct NodeArgs {
    /// The node's TOML configuration (see docs/config.md and configs/).
    /// Services, including multipath forwards and responders
    /// (`mp@ADDR1,ADDR2:PORT`), are set there; the command line has no
    /// service flags.
    #[arg(long)]
    config: PathBuf,
    /// Write every packet each interface sends and receives to this pcap
    /// file (overrides the file's `pcap` keys).
    #[arg(long)]
    pcap: Option<PathBuf>,
    /// Only check the configuration, then exit; prints the pins of the
    /// node's `[tls]` certificate, for its peers' `pin` keys.
    #[arg(long)]
    check: bool,
}

/// Options of `plebnet ctl`.
#[derive(Args, Debug)]
pub struct CtlArgs {
    /// The node's control socket (`[control] socket` in its configuration).
    #[arg(long)]
    socket: PathBuf,
    /// The request; `stats` prints every counter and socket as JSON.
    #[arg(default_value = "stats")]
    request: String,
}

pub fn run_node(args: &NodeArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let config = NodeConfig::load(&args.config)?;
    let identity = identity_lines(&config)?;
    if args.check {
        println!(
            "{}: ok ({} interfaces, {} services)",
            args.config.display(),
            config.interfaces.len(),
            config.services.len()
        );
        for line in &identity {
            println!("{line}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let signals = signals::block_termination();
    let options = NodeOptions { pcap: args.pcap.clone(), multipath: Some(Arc::new(NodeMultipath::default())) };
    let node = Node::start(&config, &options)?;
    for line in &identity {
        eprintln!("plebnet node {}: {line}", node.name);
    }
    for i in &node.interfaces {
        let addrs: Vec<String> = i.addresses.iter().map(|a| a.to_string()).collect();
        eprintln!("plebnet node {}: interface {} ({:?} {}) {}", node.name, i.name, i.kind, i.underlay, addrs.join(" "));
    }
    for s in &node.services {
        eprintln!("plebnet node {}: {:?} listening on {}", node.name, s.config, s.bound);
    }
    if let Some(path) = node.control_socket() {
        eprintln!("plebnet node {}: control socket {}", node.name, path.display());
    }
    eprintln!("plebnet node {}: running; SIGINT or SIGTERM stops it", node.name);
    let signal = signals::wait(&signals);
    eprintln!("plebnet node {}: {signal}, stopping", node.name);
    let stats = node.stats();
    eprintln!("{}", serde_json::to_string(&stats["interfaces"]).unwrap_or_default());
    drop(node);
    Ok(ExitCode::SUCCESS)
}

/// The pins of the node's `[tls]` certificate, as a peer's `pin` key takes them; fails if its key does not
/// belong to it.
fn identity_lines(config: &NodeConfig) -> Result<Vec<String>, String> {
    let Some(identity) = &config.identity else { return Ok(Vec::new()) };
    server_config(identity.certificate.clone(), identity.private_key.clone_key())
        .map_err(|e| format!("[tls]: the private key does not belong to the certificate ({e})"))?;
    let mut pins = Vec::new();
    if let Some(spki) = Pin::spki_sha256(&identity.certificate) {
        pins.push(PeerPin::from(spki));
    }
    pins.push(PeerPin::from(Pin::cert_sha256(&identity.certificate)));
    Ok(pins.iter().map(|p| format!("certificate pin = \"{p}\"")).collect())
}

pub fn run_ctl(args: &CtlArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let answer = request(&args.socket, &args.request)?;
    print!("{answer}");
    Ok(ExitCode::SUCCESS)
}

/// Synchronous handling of SIGINT and SIGTERM.
mod signals {
    /// The set of signals that stop a node.
    pub struct Termination(libc::sigset_t);

    /// Blocks SIGINT and SIGTERM in this thread and in every thread it
    /// starts from now on. Call before any thread is spawned.
    pub fn block_termination() -> Termination {
        // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise
        // it, and pthread_sigmask only reads it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Termination(set)
        }
    }

    /// Waits until one of the signals arrives; returns its name.
    pub fn wait(set: &Termination) -> &'static str {
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` was initialised by block_termination; sigwait
            // writes the signal number into the live local.
            let r = unsafe { libc::sigwait(&set.0, &mut sig) };
            if r == 0 {
                return if sig == libc::SIGINT { "SIGINT" } else { "SIGTERM" };
            }
        }
    }
}
