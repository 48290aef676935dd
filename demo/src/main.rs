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

fn main() -> ExitCode {
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
