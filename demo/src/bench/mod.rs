//! `plebnet bench`: every tracked figure, each a ratio against a baseline
//! measured in the same run (medians of several runs, with min and max), as
//! a table and as JSON.
//!
//! Figures whose part of plebnet is not built yet are listed with
//! `"status": "not built"` and no value — never invented.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use crate::table;

mod curves;
mod flows;
mod goodput;
mod hol;
mod memlink;
mod multipath;
mod plot;
mod raw_smoltcp;
mod raw_tap;
mod shim;
mod soak;
mod tap;
mod tap_setup;
mod tls_cells;
mod udp;

/// Options of `plebnet bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Fewer and shorter runs (finishes in a couple of minutes).
    #[arg(long)]
    quick: bool,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write PNG plots into this directory (the multipath failover trace,
    /// the head-of-line curves, goodput against MTU and against loss); also
    /// measures those curves and the kernel-over-veth baseline.
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,
    /// Only run figures whose name contains this text.
    #[arg(long)]
    only: Option<String>,
    /// List measurable figures as "skipped" instead of measuring them
    /// (checks the report's shape quickly).
    #[arg(long, hide = true)]
    skip_measured: bool,
    /// Run only the soak instead: churn connections for this many seconds
    /// and report growth of resident memory and open descriptors.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    soak: Option<u64>,
}

/// Whether higher or lower values are better.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

/// One figure of the report (the JSON schema fixed by the Foundation issue).
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: &'static str,
    /// `null` unless measured.
    pub value: Option<f64>,
    pub unit: &'static str,
    pub goal: f64,
    pub better: Better,
    /// "measured", "not built" or "skipped".
    pub status: &'static str,
    /// Raw figures the value was computed from, and run statistics.
    pub detail: serde_json::Value,
}

/// What one measurement produced; `run`'s table adds the figure's name,
/// unit and goal.
pub enum Outcome {
    /// The value and the raw figures it came from.
    Measured(f64, serde_json::Value),
    /// Why it could not be measured on this host.
    Skipped(String),
}

impl Figure {
    /// A measured figure.
    pub fn measured(
        name: &'static str,
        value: f64,
        unit: &'static str,
        goal: f64,
        better: Better,
        detail: serde_json::Value,
    ) -> Self {
        Figure { name, value: Some(value), unit, goal, better, status: "measured", detail }
    }

    fn meets_goal(&self) -> Option<bool> {
        let v = self.value?;
        Some(match self.better {
            Better::Higher => v >= self.goal,
            Better::Lower => v <= self.goal,
        })
    }
}

/// Median, min and max of a sample.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

impl Stats {
    pub fn of(samples: &[f64]) -> Stats {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let median = if s.len() % 2 == 1 { s[s.len() / 2] } else { (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0 };
        Stats { median, min: s[0], max: s[s.len() - 1], runs: s.len() }
    }
}

/// How hard to measure, and where plots go.
#[derive(Debug, Clone, Copy)]
pub struct Effort {
    pub runs: usize,
    pub bytes: usize,
    pub plot: Option<&'static std::path::Path>,
}

/// Runs the benchmarks and prints the report.
pub fn run(args: &BenchArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if let Some(seconds) = args.soak {
        let (figures, clean) = soak::run(seconds)?;
        print_report(&figures);
        write_json(args, &figures)?;
        return Ok(if clean { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    // The plot directory lives for the whole run; leaking one path keeps `Effort` Copy.
    let plot: Option<&'static std::path::Path> = args.plot.clone().map(|p| &*Box::leak(p.into_boxed_path()));
    let effort =
        if args.quick { Effort { runs: 3, bytes: 64 << 20, plot } } else { Effort { runs: 5, bytes: 256 << 20, plot } };
    let wanted = |name: &str| args.only.as_deref().is_none_or(|o| name.contains(o));
    let mut figures = Vec::new();
    type Measure = fn(Effort) -> Result<Outcome, Box<dyn std::error::Error>>;
    let measured: [(&'static str, &'static str, f64, Better, Measure); 12] = [
        ("memlink_tcp_vs_raw_smoltcp", "ratio", 0.9, Better::Higher, memlink::tcp_vs_raw_smoltcp),
        ("udp_mtu1400_tcp_vs_raw_udp", "ratio", 0.8, Better::Higher, udp::mtu1400_tcp_vs_raw_udp),
        ("udp_jumbo_tcp_vs_kernel_tcp", "ratio", 0.5, Better::Higher, udp::jumbo_tcp_vs_kernel_tcp),
        ("tap_tcp_vs_raw_smoltcp", "ratio", 1.0, Better::Higher, tap::tcp_vs_raw_smoltcp),
        ("tls_cells_vs_kernel_tls", "ratio", 0.8, Better::Higher, tls_cells::cells_vs_kernel_tls),
        ("multipath_aggregate_vs_single", "ratio", 1.8, Better::Higher, multipath::aggregate_vs_single),
        ("multipath_failover_stall_s", "s", 1.0, Better::Lower, multipath::failover_stall),
        ("shim_iperf3_vs_api", "ratio", 0.7, Better::Higher, shim::iperf3_vs_api),
        ("conns_10k_vs_10_goodput", "ratio", 0.8, Better::Higher, flows::conns_10k_vs_10_goodput),
        ("rss_per_idle_conn_kib", "KiB", 64.0, Better::Lower, flows::rss_per_idle_conn_kib),
        ("connect_rate_vs_kernel", "ratio", 0.5, Better::Higher, flows::connect_rate_vs_kernel),
        ("hol_p99_dtls_vs_tls_2pct", "ratio", 0.33, Better::Lower, hol::p99_dtls_vs_tls_2pct),
    ];
    for (name, unit, goal, better, measure) in measured {
        if !wanted(name) {
            continue;
        }
        let outcome = if args.skip_measured {
            Outcome::Skipped("--skip-measured".to_string())
        } else {
            eprintln!("measuring {name} ({} runs of {} MiB)...", effort.runs, effort.bytes >> 20);
            measure(effort)?
        };
        figures.push(match outcome {
            Outcome::Measured(value, detail) => Figure::measured(name, value, unit, goal, better, detail),
            Outcome::Skipped(reason) => {
                let detail = serde_json::json!({ "reason": reason });
                Figure { name, value: None, unit, goal, better, status: "skipped", detail }
            }
        });
    }
    if let Some(dir) = plot
        && !args.skip_measured
    {
        add_curves(&mut figures, effort, dir)?;
    }
    print_report(&figures);
    write_json(args, &figures)?;
    Ok(ExitCode::SUCCESS)
}

/// With `--plot`: the goodput curves (against MTU and loss) and the
/// kernel-over-veth baseline, put in the detail of the figures they belong
/// to (those measured in this run).
fn add_curves(figures: &mut [Figure], effort: Effort, dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let bytes = effort.bytes / 2;
    let put = |figures: &mut [Figure], name: &str, key: &str, value: serde_json::Value| {
        if let Some(serde_json::Value::Object(detail)) =
            figures.iter_mut().find(|f| f.name == name).map(|f| &mut f.detail)
        {
            detail.insert(key.to_string(), value);
        }
    };
    let has = |figures: &[Figure], name: &str| figures.iter().any(|f| f.name == name);
    if has(figures, "udp_mtu1400_tcp_vs_raw_udp") {
        eprintln!("measuring goodput against MTU...");
        let curve = curves::by_mtu(bytes, dir)?;
        put(figures, "udp_mtu1400_tcp_vs_raw_udp", "goodput_by_mtu", curve);
    }
    if has(figures, "memlink_tcp_vs_raw_smoltcp") {
        eprintln!("measuring goodput against loss...");
        let curve = curves::by_loss(bytes, dir)?;
        put(figures, "memlink_tcp_vs_raw_smoltcp", "goodput_by_loss", curve);
    }
    if has(figures, "udp_jumbo_tcp_vs_kernel_tcp") {
        eprintln!("measuring kernel TCP over veth...");
        put(figures, "udp_jumbo_tcp_vs_kernel_tcp", "kernel_tcp_over_veth", curves::kernel_veth(bytes));
    }
    Ok(())
}

/// Writes the figures to `--json`'s file, if given.
fn write_json(args: &BenchArgs, figures: &[Figure]) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(figures)? + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn print_report(figures: &[Figure]) {
    let rows: Vec<Vec<String>> = figures
        .iter()
        .map(|f| {
            let value = f.value.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".to_string());
            let op = if f.better == Better::Higher { ">=" } else { "<=" };
            let verdict = match f.meets_goal() {
                Some(true) => "meets goal".to_string(),
                Some(false) => "BELOW GOAL".to_string(),
                None => f.status.to_string(),
            };
            vec![f.name.to_string(), value, f.unit.to_string(), format!("{op} {}", f.goal), verdict]
        })
        .collect();
    println!("{}", table::render(&["figure", "value", "unit", "goal", "status"], &rows));
}

/// Hands the allocator's free memory back to the kernel (`malloc_trim`),
/// so that a resident-memory sample counts what is in use, not what glibc
/// keeps cached from an earlier figure or burst.
pub(super) fn trim_heap() {
    // SAFETY: malloc_trim only releases free heap memory; it takes a plain
    // integer and touches no memory of ours.
    unsafe { libc::malloc_trim(0) };
}
