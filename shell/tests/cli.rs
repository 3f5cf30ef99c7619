//! The `tickstock` binary as a user runs it: help, the main job's output, clean shutdown on
//! SIGTERM, a SIGKILL mid-write and recovery, bad configuration, CSV import and replay, and a
//! disk that fills.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::Duration;

use tickstock_shell::journal;

fn tickstock() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tickstock"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn signal(child: &Child, name: &str) {
    let status =
        Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
}

fn finish(child: Child) -> Output {
    child.wait_with_output().unwrap()
}

#[test]
fn help_names_every_subcommand() {
    let output = tickstock().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = text(&output.stdout);
    for command in ["serve", "record", "replay", "import-csv", "config"] {
        assert!(help.contains(command), "{command} missing from --help");
        let sub = tickstock().args([command, "--help"]).output().unwrap();
        assert!(sub.status.success(), "{command} --help");
    }
}

#[test]
fn serve_writes_json_lines_in_seq_order() {
    let output = tickstock()
        .args(["--quiet", "serve", "--output", "stdout", "--duration-s", "2"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let mut trades = 0;
    for (expected_seq, line) in (1u64..).zip(stdout.lines()) {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["seq"], expected_seq, "{line}");
        trades += u64::from(value["ev"] == "T");
    }
    assert!(trades > 20_000, "about 20,000 trades/s for 2 s, got {trades}");
    assert!(text(&output.stderr).contains("stopped after"));
}

#[test]
fn sigterm_drains_flushes_the_journal_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let child = tickstock()
        .args(["--quiet", "serve", "--output", "none", "--journal"])
        .arg(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    sleep(Duration::from_millis(1_500));
    signal(&child, "TERM");
    let output = finish(child);
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let records: u64 = stderr
        .lines()
        .find_map(|line| line.strip_prefix("journal: ")?.split(' ').next()?.parse().ok())
        .expect("the report gives the journal's record count");
    assert!(records > 10_000, "{stderr}");
    let recovery = journal::recover(dir.path()).unwrap();
    assert_eq!(recovery.bytes_truncated, 0, "a clean stop leaves no torn tail");
    let mut ticks = 0;
    journal::reader::for_each(dir.path(), |_, record| {
        ticks += u64::from(matches!(record, journal::codec::Record::Tick(_)));
        true
    })
    .unwrap();
    assert_eq!(ticks, records, "every accepted trade reported is on disk");
}

#[test]
fn sigkill_mid_write_recovers_and_the_journal_replays() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fast.toml");
    fs::write(&config, "[synthetic]\ntrades_per_sec = 200000\n").unwrap();
    let journal_dir = dir.path().join("journal");
    let child = tickstock()
        .arg("--config")
        .arg(&config)
        .args(["--quiet", "record", "--journal"])
        .arg(&journal_dir)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    sleep(Duration::from_millis(1_200));
    signal(&child, "KILL");
    finish(child);
    let recovery = journal::recover(&journal_dir).unwrap();
    assert!(recovery.records_kept > 1_000, "{recovery:?}");
    // A second run appends a new segment after the recovered one.
    let output = tickstock()
        .args(["--quiet", "record", "--virtual-time", "--trades", "5000", "--journal"])
        .arg(&journal_dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("journal recovery: 1 segments"),
        "{}",
        text(&output.stderr)
    );
    assert_eq!(journal::segments(&journal_dir).unwrap().len(), 2);
    let replay = tickstock()
        .args(["--quiet", "replay", "--max", "--output", "none"])
        .arg(&journal_dir)
        .output()
        .unwrap();
    assert!(replay.status.success(), "{}", text(&replay.stderr));
}

#[test]
fn bad_configuration_is_refused_with_the_setting_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    fs::write(&path, "[pipeline]\nemitter_cycle = 5\n").unwrap();
    let output = tickstock().arg("--config").arg(&path).args(["serve"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("emitter_cycle"), "{}", text(&output.stderr));
    fs::write(&path, "[synthetic]\nsymbols = 0\n").unwrap();
    let output = tickstock().arg("--config").arg(&path).args(["serve"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("synthetic.symbols"));
    let output = tickstock().args(["replay", "--speed", "-3", "x"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let output = tickstock().arg("--config").arg(dir.path().join("missing.toml")).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("missing.toml"));
}

fn write_csv(path: &Path, bad_row: bool) -> u64 {
    let mut csv = String::from("ts,symbol,price,size\n");
    let mut rows = 0;
    for k in 0..2_000u64 {
        let symbol = ["AAPL", "MSFT", "BRK.B"][(k % 3) as usize];
        let price = 100.0 + (k % 17) as f64 * 0.01;
        csv.push_str(&format!(
            "{},{symbol},{price:.2},{}\n",
            1_795_530_600_000 + k * 50,
            100 + k % 5
        ));
        rows += 1;
        if bad_row && k == 1_000 {
            csv.push_str("1795962650000,AAPL,-4,100\n");
        }
    }
    fs::write(path, csv).unwrap();
    rows
}

#[test]
fn csv_import_is_all_or_nothing_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("trades.csv");
    let journal_dir = dir.path().join("journal");
    let rows = write_csv(&csv, true);
    let output = tickstock()
        .arg("import-csv")
        .arg(&csv)
        .arg("--journal")
        .arg(&journal_dir)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("line 1003") && stderr.contains("bad price"), "{stderr}");
    assert!(journal::segments(&journal_dir).unwrap().is_empty(), "a failed import writes nothing");

    let output = tickstock()
        .arg("import-csv")
        .arg(&csv)
        .arg("--skip-bad")
        .arg("--journal")
        .arg(&journal_dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains(&format!("imported {rows} trades of 3 symbols")));
    assert!(text(&output.stderr).contains("skipped 1 bad rows"));

    let replay =
        tickstock().args(["--quiet", "replay", "--max"]).arg(&journal_dir).output().unwrap();
    assert!(replay.status.success(), "{}", text(&replay.stderr));
    let stdout = text(&replay.stdout);
    let trades = stdout.lines().filter(|line| line.starts_with("{\"ev\":\"T\"")).count() as u64;
    assert_eq!(trades, rows);
    assert!(stdout.contains("\"sym\":\"BRK.B\""));
    assert!(stdout.lines().any(|line| line.starts_with("{\"ev\":\"AM\"")));
}

/// A 256 KiB tmpfs: the journal fills it within a second. Mounting needs root, which these
/// machines and their CI give; the test says so plainly if it is not.
struct SmallDisk {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new() -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        fs::create_dir(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(&path)
            .status();
        assert!(status.is_ok_and(|s| s.success()), "this test mounts a tmpfs and needs root");
        SmallDisk { path, _dir: dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

#[test]
fn a_full_disk_is_counted_and_reported_and_can_stop_the_server() {
    let disk = SmallDisk::new();
    let output = tickstock()
        .args(["--quiet", "record", "--virtual-time", "--trades", "50000", "--journal"])
        .arg(disk.path.join("continue"))
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "on_failure = continue keeps running: {stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    let failed: u64 = stderr
        .lines()
        .find_map(|line| {
            line.split(" dropped (ring full), ").nth(1)?.split(' ').next()?.parse().ok()
        })
        .expect("the report counts failed records");
    assert!(failed > 0, "{stderr}");
    // What did reach the disk is whole.
    let recovery = journal::recover(&disk.path.join("continue")).unwrap();
    assert!(recovery.records_kept > 0);

    let config = disk.path.parent().unwrap().join("shutdown.toml");
    fs::write(&config, "[journal]\non_failure = \"shutdown\"\n").unwrap();
    let _ = fs::remove_dir_all(disk.path.join("continue"));
    let output = tickstock()
        .arg("--config")
        .arg(&config)
        .args(["--quiet", "record", "--virtual-time", "--trades", "5000000", "--journal"])
        .arg(disk.path.join("shutdown"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stderr));
}

#[test]
fn the_upstream_feed_needs_a_key_and_never_prints_it() {
    let output = tickstock()
        .args(["serve", "--feed", "upstream"])
        .env_remove("TICKSTOCK_UPSTREAM_KEY")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("TICKSTOCK_UPSTREAM_KEY"), "{}", text(&output.stderr));

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("upstream.toml");
    // Port 9 (discard) on loopback: nothing listens, every connect is refused.
    fs::write(
        &config,
        "[upstream]\nurl = \"ws://127.0.0.1:9/stocks\"\nbackoff_ms_min = 10\nbackoff_ms_max = 50\n",
    )
    .unwrap();
    let secret = "sk-do-not-print-me-0123456789";
    let output = tickstock()
        .arg("--config")
        .arg(&config)
        .args(["serve", "--feed", "upstream", "--output", "none", "--duration-s", "1"])
        .env("TICKSTOCK_UPSTREAM_KEY", secret)
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("upstream: not streaming") && stderr.contains("connect"), "{stderr}");
    assert!(!stderr.contains(secret) && !text(&output.stdout).contains(secret), "the key leaked");
}
