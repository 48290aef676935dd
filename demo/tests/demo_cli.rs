//! The `plebnet demo` command as a newcomer runs it: exit status 0 and a
//! summary with matching hashes; a non-zero status when content differs.

use std::process::Command;

fn plebnet(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_plebnet")).args(args).output().expect("run plebnet");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The row of the summary table named `name`, without the name.
fn summary_row<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.trim_start().strip_prefix(name))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {name} row: {out}"))
}

/// The README's first command: through client → relay → exit over a two-leg tunnel, one leg killed halfway,
/// the content checked. The hashes in the table are compared here too, not only the verdict.
#[test]
fn demo_moves_data_through_the_relay_network_and_survives_a_dead_leg() {
    let (ok, out) = plebnet(&["demo", "--size", "16"]);
    assert!(ok, "{out}");
    assert!(out.contains("RESULT: 16 MiB arrived intact"), "{out}");
    assert_eq!(summary_row(&out, "sha256 sent (target)"), summary_row(&out, "sha256 received (client)"));
    assert_eq!(summary_row(&out, "content"), "match");
    assert!(out.contains("(the busiest) at"), "a leg was killed halfway: {out}");
    assert!(summary_row(&out, "leg 0 bytes").contains("killed") ^ summary_row(&out, "leg 1 bytes").contains("killed"));
}

#[test]
fn demo_over_lossy_links_still_matches() {
    let (ok, out) = plebnet(&["demo", "--size", "8", "--loss", "0.02", "--seed", "7"]);
    assert!(ok, "{out}");
    assert_eq!(summary_row(&out, "content"), "match");
    assert!(out.contains("dropped_loss"), "the summary lists the drops: {out}");
}

#[test]
fn demo_with_three_legs_and_each_scheduler_matches() {
    for scheduler in ["lowrtt", "minrtt", "redundant"] {
        let (ok, out) = plebnet(&["demo", "--size", "4", "--legs", "3", "--scheduler", scheduler]);
        assert!(ok, "{scheduler}: {out}");
        assert_eq!(summary_row(&out, "content"), "match", "{scheduler}");
    }
}

/// Corruption injected past the transport (in the client, after the tunnel delivered the bytes) must make
/// the demo fail: the check is real.
#[test]
fn demo_fails_when_content_differs() {
    let (ok, out) = plebnet(&["demo", "--size", "2", "--corrupt-after-transport", "1"]);
    assert!(!ok, "a corrupted stream must fail the demo: {out}");
    assert!(out.contains("MISMATCH"), "{out}");
}

#[test]
fn demo_rejects_bad_arguments_clearly() {
    for (args, message) in [
        (&["demo", "--loss", "1.5"][..], "--loss must be in [0, 1)"),
        (&["demo", "--legs", "9"][..], "--legs must be 1 to 4"),
        (&["demo", "--scheduler", "fastest"][..], "unknown scheduler"),
    ] {
        let (ok, out) = plebnet(args);
        assert!(!ok, "{args:?}");
        assert!(out.contains(message), "{args:?}: {out}");
    }
}

#[test]
fn bench_lists_every_figure_with_its_goal() {
    let dir = std::env::temp_dir().join(format!("plebnet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("out.json");
    // Only the not-built figures: the measured one is exercised by `plebnet bench`.
    let (ok, out) = plebnet(&["bench", "--only", "_", "--skip-measured", "--json", json.to_str().unwrap()]);
    assert!(ok, "{out}");
    let figures: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for name in [
        "memlink_tcp_vs_raw_smoltcp",
        "tap_tcp_vs_raw_smoltcp",
        "udp_mtu1400_tcp_vs_raw_udp",
        "udp_jumbo_tcp_vs_kernel_tcp",
        "tls_cells_vs_kernel_tls",
        "multipath_aggregate_vs_single",
        "multipath_failover_stall_s",
        "hol_p99_dtls_vs_tls_2pct",
        "shim_iperf3_vs_api",
        "conns_10k_vs_10_goodput",
        "rss_per_idle_conn_kib",
        "connect_rate_vs_kernel",
    ] {
        let f = figures.iter().find(|f| f["name"] == name).unwrap_or_else(|| panic!("{name} missing: {out}"));
        assert!(f["goal"].is_number(), "{name} has a goal");
        assert!(matches!(f["better"].as_str(), Some("higher" | "lower")));
        if f["status"] == "not built" {
            assert!(f["value"].is_null(), "{name}: a figure not built has no value");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
