//! `plebnet` — the command-line face of plebnet.
//!
//! * `plebnet demo` — the main job: stacks, traffic, a summary with hashes.
//! * `plebnet bench` — every figure the project tracks, as ratios against
//!   baselines measured in the same run.
//! * `plebnet node` — run a node from a TOML configuration; `plebnet ctl`
//!   asks a running node for its stats.
//! * `plebnet run -- CMD` — run an unmodified program on a plebnet stack
//!   through the LD_PRELOAD shim.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod node_cmd;
mod run_cmd;
mod table;

/// plebnet: a userspace TCP/IP transport for overlays and relays.
#[derive(Parser, Debug)]
#[command(name = "plebnet", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the built-in demonstration (no root, no configuration needed).
    Demo(demo::DemoArgs),
    /// Measure every tracked figure against its baseline.
    Bench(bench::BenchArgs),
    /// Run a node (interfaces, services, port forwards) from a TOML file
    /// until SIGINT or SIGTERM.
    Node(node_cmd::NodeArgs),
    /// Ask a running node for its state through its control socket.
    Ctl(node_cmd::CtlArgs),
    /// Run an unmodified program on a plebnet stack (LD_PRELOAD shim):
    /// `plebnet run --config FILE -- CMD ARGS...`.
    Run(run_cmd::RunArgs),
}

/// glibc malloc arenas the binary allows (glibc's default is eight per
/// core). plebnet runs a thread per stack driver and per spliced or served
/// connection; with an arena each, memory freed after a burst of
/// connections stays spread over many arenas as free but resident pages:
/// the soak's process settled 4–6 MB (20–35%) above its idle size with the
/// default and at or below it with 2, at the same throughput
/// (docs/reliability.md). A `MALLOC_ARENA_MAX` in the environment wins.
const MALLOC_ARENAS: libc::c_int = 2;

fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt takes two integers and changes only the
        // allocator's limits; called before any other thread exists.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) };
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Node(args) => node_cmd::run_node(&args),
        Command::Ctl(args) => node_cmd::run_ctl(&args),
        Command::Run(args) => run_cmd::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("plebnet: {e}");
            ExitCode::from(2)
        }
    }
}
