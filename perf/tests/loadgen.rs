//! A short capacity run end to end: `loadgen` starts a real `tickstock serve --feed upstream`,
//! plays into it, holds clients, and must produce a valid, self-consistent report.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `tickstock` binary of this workspace and profile, built if needed (a test of one
/// package does not build another package's binaries).
fn tickstock() -> PathBuf {
    let loadgen = PathBuf::from(env!("CARGO_BIN_EXE_loadgen"));
    let dir = loadgen.parent().expect("target dir");
    let status = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "tickstock-shell", "--bin", "tickstock"])
        .args(if dir.ends_with("release") { vec!["--release"] } else { vec![] })
        .status()
        .expect("cargo runs");
    assert!(status.success(), "tickstock builds");
    dir.join("tickstock")
}

/// Runs loadgen with `args` against this workspace's `tickstock`, writing into `out`; it must
/// succeed. Returns its standard output.
fn run_loadgen(args: &[&str], out: &Path) -> String {
    let run = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .arg("--tickstock")
        .arg(tickstock())
        .arg("--out")
        .arg(out)
        .output()
        .expect("loadgen runs");
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "loadgen failed:\n{stdout}\n{stderr}");
    stdout
}

/// The run's file ending in `.ext` in `out` (not the server's configuration).
fn result_file(out: &Path, ext: &str) -> PathBuf {
    std::fs::read_dir(out)
        .expect("out dir")
        .map(|e| e.expect("entry").path())
        .find(|p| {
            p.extension().is_some_and(|e| e == ext)
                && !p.to_string_lossy().ends_with("-server.toml")
        })
        .unwrap_or_else(|| panic!("no .{ext} in {}", out.display()))
}

#[test]
fn a_short_sweep_reports_valid_self_consistent_results() {
    let out = tempfile::tempdir().expect("tempdir");
    let args = [
        "--clients",
        "3,1",
        "--rates",
        "2000,500",
        "--step-secs",
        "1.5",
        "--warmup-secs",
        "0.5",
        "--source",
        "synthetic:300",
        "--budget-p99-ms",
        "250",
    ];
    let stdout = run_loadgen(&args, out.path());
    let file = |ext: &str| result_file(out.path(), ext);
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file("json")).expect("reads")).expect("JSON");
    assert_eq!(result["valid"], true, "{result:#}");
    for key in ["cpu_model", "kernel", "rustc", "git_commit"] {
        assert!(result["machine"][key].as_str().is_some_and(|v| !v.is_empty()), "machine.{key}");
    }
    assert_eq!(result["server_settings"]["feed"]["source"], "upstream");
    let steps = result["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 4, "1 and 3 clients × 500 and 2000 trades/s, sorted");
    let mut order = Vec::new();
    for step in steps {
        let (clients, rate) =
            (step["clients"].as_u64().expect("clients"), step["rate"].as_u64().expect("rate"));
        order.push((clients, rate));
        let sent = step["sent"].as_u64().expect("sent");
        assert_eq!(sent, rate * 3 / 2, "rate × 1.5 s trades sent");
        // One latency sample per trade per client: every trade reached every client.
        assert_eq!(step["latency_ms"]["samples"].as_u64(), Some(sent * clients));
        let l = &step["latency_ms"];
        let p = |k: &str| l[k].as_f64().expect("percentile");
        assert!(
            0.0 < p("p50")
                && p("p50") <= p("p90")
                && p("p90") <= p("p99")
                && p("p99") <= p("p999")
                && p("p999") <= p("max")
        );
        assert!(
            step["delivered_events_per_s"].as_f64().expect("rate") >= (sent * clients) as f64 / 3.0
        );
        assert!(
            step["server_cpu_cores"].as_f64().is_some_and(|c| c > 0.0),
            "server CPU read from /proc"
        );
        assert!(
            step["server_rss_mib"].as_f64().is_some_and(|m| m > 1.0),
            "server memory read from /proc"
        );
        assert_eq!(step["within_budget"], step["breaches"].as_array().expect("list").is_empty());
    }
    assert_eq!(order, vec![(1, 500), (1, 2000), (3, 500), (3, 2000)]);
    // Capacity answers agree with the steps.
    let by_clients = result["capacity"]["max_rate_by_clients"].as_array().expect("answers");
    for answer in by_clients {
        let clients = answer[0].as_u64().expect("clients");
        let held = steps
            .iter()
            .filter(|s| s["clients"].as_u64() == Some(clients))
            .all(|s| s["within_budget"] == true);
        if held {
            assert_eq!(answer[1].as_u64(), Some(2000), "{answer}");
        }
    }
    let html = std::fs::read_to_string(file("html")).expect("report");
    assert!(
        html.matches("<svg").count() >= 3,
        "latency-vs-rate per client count, and per-rate client charts"
    );
    assert!(stdout.contains("capacity: 3 clients"), "{stdout}");
    let log = std::fs::read_to_string(file("log")).expect("server log");
    assert!(log.contains("serving ws://"), "{log}");
}

#[test]
fn bad_arguments_and_a_missing_server_binary_are_clear_errors() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_loadgen")).args(args).output().expect("runs");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = run(&["--rates", "0"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--rates needs positive numbers"), "{stderr}");
    let (code, stderr) = run(&["--source", "kafka:x"]);
    assert_eq!(code, Some(2), "{stderr}");
    let out = tempfile::tempdir().expect("tempdir");
    let out_dir = out.path().to_str().expect("utf-8");
    let (code, stderr) = run(&["--tickstock", "/nonexistent/tickstock", "--out", out_dir]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot start /nonexistent/tickstock"), "{stderr}");
}

#[test]
fn watchlists_and_a_policy_mix_are_validated_per_client() {
    let out = tempfile::tempdir().expect("tempdir");
    run_loadgen(
        &[
            "--clients",
            "12",
            "--rates",
            "1000",
            "--step-secs",
            "1.5",
            "--warmup-secs",
            "0.5",
            "--source",
            "synthetic:200",
            "--budget-p99-ms",
            "250",
            "--watchlist",
            "5",
            "--watchlist-channels",
            "T,A,HL",
            "--policies",
            "close,conflate,shed",
        ],
        out.path(),
    );
    let json = result_file(out.path(), "json");
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).expect("reads")).expect("JSON");
    assert_eq!(result["valid"], true, "{result:#}");
    assert_eq!(result["plan"]["watchlist"][0], 5);
    let step = &result["steps"][0];
    let sent = step["sent"].as_u64().expect("sent");
    // Each client got only its own symbols' trades: far fewer samples than sent × clients,
    // and every one checked against the player's per-symbol counts and checksums.
    let samples = step["latency_ms"]["samples"].as_u64().expect("samples");
    assert!(samples > 0 && samples < sent * 12 / 4, "{samples} of {sent} × 12");
    assert!(step["reader_busy"].as_f64().is_some_and(|b| (0.0..=1.0).contains(&b)));
}

#[test]
fn compressed_clients_are_validated_and_counted_in_bytes_on_the_wire() {
    // Every message compressed (no size floor), so the two runs differ only in deflate.
    let config = tempfile::NamedTempFile::new().expect("config");
    std::fs::write(config.path(), "[server]\ncompression_min_bytes = 0\n").expect("writes");
    let config = config.path().to_str().expect("utf-8");
    let run = |compression: &str| {
        let out = tempfile::tempdir().expect("tempdir");
        run_loadgen(
            &[
                "--clients",
                "3",
                "--rates",
                "3000",
                "--step-secs",
                "1.5",
                "--warmup-secs",
                "0.5",
                "--source",
                "synthetic:300",
                "--budget-p99-ms",
                "250",
                "--server-config",
                config,
                "--compression",
                compression,
            ],
            out.path(),
        );
        result_json(out.path())
    };
    let (plain, deflated) = (run("none"), run("deflate"));
    for result in [&plain, &deflated] {
        assert_eq!(result["valid"], true, "every trade inflated and checked: {result:#}");
        let step = &result["steps"][0];
        assert!(step["server_threads_cpu"]["tickstock-engin"].as_f64().is_some(), "{step:#}");
    }
    assert_eq!(deflated["plan"]["deflate"], true);
    let per_event = |r: &serde_json::Value| r["steps"][0]["wire_bytes_per_event"].as_f64().unwrap();
    let (p, d) = (per_event(&plain), per_event(&deflated));
    assert!(p > 40.0, "a plain event is some tens of bytes: {p}");
    assert!(d < p * 0.8, "compressed: {d} bytes an event against {p}");
}

/// The run's result file, parsed.
fn result_json(out: &Path) -> serde_json::Value {
    let json = result_file(out, "json");
    serde_json::from_str(&std::fs::read_to_string(json).expect("reads")).expect("JSON")
}

#[test]
fn storms_and_hostile_clients_beside_measured_clients_cost_them_nothing_they_must_have() {
    // 10,000 connects in bursts, 1,000 clients dropping and resuming at once, and hostile
    // clients (slowloris on the handshake and on a frame, oversized and fragmented messages,
    // invalid UTF-8 split across fragments, subscriptions churned at the rate limit), each
    // checking the server's answer. The measured clients must get every trade, in order.
    let out = tempfile::tempdir().expect("tempdir");
    run_loadgen(
        &[
            "--clients",
            "3",
            "--rates",
            "2000",
            "--step-secs",
            "20",
            "--warmup-secs",
            "0.5",
            "--source",
            "synthetic:500",
            "--topics",
            "T.*",
            "--budget-p99-ms",
            "100000",
            "--disrupt",
            "burst=10000,storm=1000,hostile=7",
        ],
        out.path(),
    );
    let result = result_json(out.path());
    assert_eq!(result["valid"], true, "{result:#}");
    let d = &result["steps"][0]["disruptors"];
    let count = |name: &str| d[name].as_u64().unwrap_or(0);
    // Bursts of 10,000: how many connect in the step depends on the machine (a debug build
    // beside a CPU hog managed 5,756 in 12 s; release, 20,000); `tools/storms.sh` runs them
    // whole. Here: thousands, every one answered as the protocol says.
    assert!(count("burst_connects") >= 2_000, "bursts connected: {d}");
    // How many of the 1,000 have resumed by the step's end depends on the machine too (262
    // beside a CPU hog); every one that did is checked.
    assert!(count("storm_rounds") >= 1 && count("resumed") > 0, "a storm resumed: {d}");
    assert!(count("resume_trades") > 0, "and its trades were checked: {d}");
    assert!(count("hostile_sessions") >= 7, "every attack ran: {d}");
    assert_eq!(count("hostile_unexpected") + count("errors") + count("resume_gaps"), 0, "{d}");
}

#[test]
fn a_short_soak_writes_a_row_per_step_and_judges_rss_and_fds() {
    let out = tempfile::tempdir().expect("tempdir");
    let stdout = run_loadgen(
        &[
            "--clients",
            "2",
            "--rates",
            "1000",
            "--step-secs",
            "2",
            "--repeat",
            "3",
            "--warmup-secs",
            "0.5",
            "--source",
            "synthetic:200",
            "--budget-p99-ms",
            "100000",
            "--disrupt",
            "churn=2,slow=1,resume=2",
        ],
        out.path(),
    );
    assert!(stdout.contains("soak: after 1 warm-up steps"), "{stdout}");
    let result = result_json(out.path());
    let soak = &result["soak"];
    assert!(soak["rss_mib"][1].as_f64().is_some_and(|m| m > 1.0), "{soak}");
    assert!(soak["fds"][1].as_u64().is_some_and(|f| f > 2), "{soak}");
    assert!(soak["disruptors"]["churn_sessions"].as_u64().is_some_and(|n| n > 0), "{soak}");
    let csv = std::fs::read_dir(out.path())
        .expect("out")
        .map(|e| e.expect("entry").path())
        .find(|p| p.to_string_lossy().ends_with("-soak.csv"))
        .expect("a soak CSV");
    let rows = std::fs::read_to_string(csv).expect("reads");
    assert_eq!(rows.lines().count(), 4, "a header and a row per step:\n{rows}");
    assert!(rows.lines().next().unwrap().contains("server_rss_mib,server_fds"), "{rows}");
}
