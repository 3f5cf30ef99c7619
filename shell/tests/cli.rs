//! The `tickstock` binary as a user runs it: help, the main job's output, clean shutdown on
//! SIGTERM (and a forced one on a second), SIGHUP, a SIGKILL mid-write and recovery, bad
//! configuration, settings from flags and the environment, the log, CSV import and replay,
//! and a disk that fills.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::Duration;

use tickstock_shell::journal;

mod common;
use common::process::{
    finish, http, listening, python_with, record, run_script, serving, signal, text, tickstock,
    timed_out,
};

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
    // Until the journal holds a good deal (not a fixed time: a busy machine starts slowly;
    // the flaky hunt found 7,000 trades in 1.5 s), then a moment more, mid-write.
    let journaled = |dir: &Path| -> u64 {
        fs::read_dir(dir).map_or(0, |entries| {
            entries.filter_map(Result::ok).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while journaled(dir.path()) < 256 * 1024 && std::time::Instant::now() < deadline {
        sleep(Duration::from_millis(20));
    }
    sleep(Duration::from_millis(200));
    signal(&child, "TERM");
    let output = finish(child);
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let records: u64 = stderr
        .lines()
        .find_map(|line| line.split_once(" journal: ")?.1.split(' ').next()?.parse().ok())
        .expect("the report gives the journal's record count");
    assert!(records > 5_000, "{stderr}");
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

#[test]
fn csv_columns_by_name_or_flag_and_a_second_import_needs_append() {
    let dir = tempfile::tempdir().unwrap();
    let named = dir.path().join("named.csv");
    fs::write(
        &named,
        "Symbol,TS,Price,Size,Exchange,ID,Conditions\nAAPL,1795530600000,187.25,100,4,T-42,\"12 37\"\nMSFT,1795530600050,410.5,20,11,77,\n",
    )
    .unwrap();
    let journal_dir = dir.path().join("journal");
    let import = |file: &Path, extra: &[&str]| {
        tickstock()
            .arg("import-csv")
            .arg(file)
            .arg("--journal")
            .arg(&journal_dir)
            .args(extra)
            .output()
            .unwrap()
    };
    let output = import(&named, &[]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let again = import(&named, &[]);
    assert!(!again.status.success(), "a second import into the same journal is refused");
    assert!(text(&again.stderr).contains("--append"), "{}", text(&again.stderr));
    // Headerless, the columns named by the flag.
    let bare = dir.path().join("bare.csv");
    fs::write(&bare, "1795530600100,410.75,MSFT,5,12\n").unwrap();
    let output = import(&bare, &["--append", "--columns", "ts,price,symbol,size,exchange"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("imported 1 trades"), "{}", text(&output.stderr));
    let replay =
        tickstock().args(["--quiet", "replay", "--max"]).arg(&journal_dir).output().unwrap();
    let stdout = text(&replay.stdout);
    let trades: Vec<&str> = stdout.lines().filter(|l| l.starts_with("{\"ev\":\"T\"")).collect();
    assert_eq!(trades.len(), 3, "{stdout}");
    assert!(trades[0].contains("\"x\":4") && trades[0].contains("\"c\":[12,37]"), "{}", trades[0]);
    assert!(trades[1].contains("\"x\":11") && trades[1].contains("\"i\":\"77\""), "{}", trades[1]);
    assert!(trades[2].contains("\"x\":12") && trades[2].contains("\"p\":410.75"), "{}", trades[2]);
    // A finer price than the engine keeps, a lower-case symbol: errors that say what to do.
    let fine = dir.path().join("fine.csv");
    fs::write(&fine, "ts,symbol,price,size\n1795530600200,aapl,1.5,1\n").unwrap();
    let output = import(&fine, &["--append"]);
    assert!(text(&output.stderr).contains("upper case"), "{}", text(&output.stderr));
    fs::write(&fine, "ts,symbol,price,size\n1795530600200,AAPL,1.1234567,1\n").unwrap();
    let output = import(&fine, &["--append"]);
    assert!(text(&output.stderr).contains("--round"), "{}", text(&output.stderr));
    assert!(import(&fine, &["--append", "--round"]).status.success());
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

/// Where `tickstock config` says the server listens, given a file, variables and flags.
fn listen_of(file: Option<&Path>, env: Option<&str>, flag: Option<&str>) -> String {
    let mut command = tickstock();
    command.env_remove("TICKSTOCK_SERVER__LISTEN");
    if let Some(file) = file {
        command.arg("--config").arg(file);
    }
    if let Some(env) = env {
        command.env("TICKSTOCK_SERVER__LISTEN", env);
    }
    if let Some(flag) = flag {
        command.args(["--listen", flag]);
    }
    let output = command.arg("config").output().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let line = stdout.lines().find(|l| l.starts_with("listen = ")).expect("listen is printed");
    line.trim_start_matches("listen = ").trim_matches('"').to_owned()
}

#[test]
fn a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.toml");
    fs::write(&file, "[server]\nlisten = \"127.0.0.1:1111\"\n").unwrap();
    assert_eq!(listen_of(None, None, None), "127.0.0.1:8765");
    assert_eq!(listen_of(Some(&file), None, None), "127.0.0.1:1111");
    assert_eq!(listen_of(Some(&file), Some("127.0.0.1:2222"), None), "127.0.0.1:2222");
    assert_eq!(
        listen_of(Some(&file), Some("127.0.0.1:2222"), Some("127.0.0.1:3333")),
        "127.0.0.1:3333"
    );
    // `config` prints the optional settings too, as comments that say what they do.
    let output = tickstock().arg("config").output().unwrap();
    let stdout = text(&output.stdout);
    for optional in [
        "# api_keys_file = ",
        "# jwt_algorithm = ",
        "# jwt_public_key_file = ",
        "# key_file = ",
        "# ca_file = ",
        "# engine_core = ",
        "# trades_max = ",
    ] {
        assert!(stdout.contains(optional), "{optional} missing from:\n{stdout}");
    }
}

#[test]
fn check_config_validates_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    fs::write(&good, "[synthetic]\nseed = 3\n").unwrap();
    let output = tickstock().arg("check-config").arg(&good).output().unwrap();
    assert!(output.status.success() && text(&output.stdout).contains("ok"), "{output:?}");
    let bad = dir.path().join("bad.toml");
    fs::write(&bad, "[server]\nconnections_max = 0\n").unwrap();
    let output = tickstock().arg("check-config").arg(&bad).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("server.connections_max"), "{output:?}");
    let output = tickstock()
        .arg("check-config")
        .arg(&good)
        .env("TICKSTOCK_SYNTHETIC__SEEDS", "1")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("TICKSTOCK_SYNTHETIC__SEEDS"), "{output:?}");
}

#[test]
fn sighup_does_not_kill_and_a_second_sigterm_forces_the_exit() {
    let child = tickstock()
        .args(["--listen", "127.0.0.1:0", "serve"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    sleep(Duration::from_millis(1_000));
    signal(&child, "HUP");
    sleep(Duration::from_millis(300));
    signal(&child, "TERM");
    let output = finish(child);
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "SIGHUP then SIGTERM: a clean stop\n{stderr}");
    assert!(stderr.contains("SIGHUP") && stderr.contains("stopped after"), "{stderr}");

    // stdout is a pipe nobody reads: once it is full the emitter waits on it, so the drain
    // cannot finish and only a second signal ends the run.
    let child = tickstock()
        .args(["serve", "--output", "stdout"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    sleep(Duration::from_millis(1_500));
    signal(&child, "TERM");
    sleep(Duration::from_millis(500));
    signal(&child, "TERM");
    sleep(Duration::from_millis(300));
    let output = finish(child);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("second signal while draining: exiting now"), "{stderr}");
    assert!(stderr.contains("so far: received"), "the report so far\n{stderr}");
}

#[test]
fn json_logs_have_a_timestamp_a_level_and_fields() {
    let output = tickstock()
        .args(["--log-format", "json", "--log-level", "debug", "serve", "--output", "none"])
        .args(["--duration-s", "1"])
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let mut lines = 0;
    for line in stderr.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(value["timestamp"].is_string() && value["level"].is_string(), "{line}");
        lines += 1;
    }
    assert!(lines >= 3 && stderr.contains("stopped after"), "{stderr}");
    let output = tickstock().args(["--log-level", "loud=9=9", "config"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "a bad level is refused");
    assert!(text(&output.stderr).contains("loud"), "{}", text(&output.stderr));
}

#[test]
fn the_log_tells_each_connection_and_never_a_key() {
    use std::io::{BufRead, BufReader};
    use tungstenite::Message;

    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let (key, wrong) = ("sk-client-key-0123456789", "sk-wrong-token-987654321");
    fs::write(&keys, format!("{key} user=desk1\n")).unwrap();
    let mut child = tickstock()
        .args(["--listen", "127.0.0.1:0", "--api-keys"])
        .arg(&keys)
        .arg("serve")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let collector = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.split_once("serving ws://") {
                let _ = tx.send(at.1.split('/').next().unwrap_or_default().to_owned());
            }
            lines.push(line);
        }
        lines
    });
    let addr = rx.recv_timeout(Duration::from_secs(10)).expect("the server says where it is");
    let session = |token: &str| {
        let (mut ws, _) = tungstenite::connect(format!("ws://{addr}/stocks")).unwrap();
        ws.send(Message::text(format!(r#"{{"action":"auth","params":"{token}"}}"#))).unwrap();
        ws.send(Message::text(r#"{"action":"subscribe","params":"T.*"}"#)).unwrap();
        let mut texts = String::new();
        while let Ok(Message::Text(text)) = ws.read() {
            texts.push_str(text.as_str());
            if texts.contains(r#""ev":"T""#) || texts.contains("auth_failed") {
                break;
            }
        }
        let _ = ws.close(None);
        while ws.read().is_ok() {}
        texts
    };
    assert!(session(key).contains(r#""ev":"T""#));
    assert!(session(wrong).contains("auth_failed"));
    // SIGHUP: the key file again, with the key replaced.
    let added = "sk-added-key-5555555555";
    fs::write(&keys, format!("{added} user=desk2\n")).unwrap();
    signal(&child, "HUP");
    sleep(Duration::from_millis(300));
    assert!(session(added).contains(r#""ev":"T""#), "the new key works without a restart");
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
    let lines = collector.join().unwrap();
    let log = lines.join("\n");
    for (what, needle) in [
        ("accepted", "connection accepted"),
        ("authenticated as the key's user", "user=\"desk1\""),
        ("auth failure", "authentication failed"),
        ("subscribed", "subscriptions changed"),
        ("closed with events and bytes", "connection closed"),
        ("reloaded, in counts", "credentials reloaded"),
        ("a removed key", "removed=1"),
    ] {
        assert!(log.contains(needle), "no {what} line in:\n{log}");
    }
    let closed = lines.iter().find(|l| l.contains("connection closed") && l.contains("desk1"));
    let closed = closed.expect("desk1's close is logged");
    assert!(closed.contains("events=") && closed.contains("bytes="), "{closed}");
    for line in &lines {
        let secret = [key, wrong, added].into_iter().find(|s| line.contains(s));
        assert!(secret.is_none(), "a secret in the log: {line}");
    }
}

/// CPU seconds a running child has used (user + system), from `/proc`.
fn cpu_seconds(child: &Child) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
    // Fields after the command name (which is in parentheses): utime and stime are the
    // 12th and 13th of them.
    let rest = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[test]
fn replay_at_the_recorded_pace_sleeps_instead_of_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("j");
    // 10 s of event time at the synthetic default of 20,000 trades/s, recorded in virtual
    // time (as fast as the engine goes).
    record(&journal, 200_000);
    let child = tickstock()
        .args(["--quiet", "replay", "--speed", "1", "--output", "none"])
        .arg(&journal)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    sleep(Duration::from_millis(1_000));
    let before = cpu_seconds(&child);
    sleep(Duration::from_millis(3_000));
    let used = (cpu_seconds(&child) - before) / 3.0;
    signal(&child, "TERM");
    assert!(finish(child).status.success());
    // A replay that yields between trades burns over a core here; one that sleeps until the
    // next millisecond's trades, under a tenth. Half a core leaves room for a slow machine.
    assert!(used < 0.5, "replay at --speed 1 used {used:.2} cores");
}

/// `(seq, line)` of every event line of a JSON-lines run.
fn events(stdout: &[u8]) -> Vec<(u64, String)> {
    text(stdout)
        .lines()
        .filter_map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).ok()?;
            Some((value["seq"].as_u64()?, line.to_owned()))
        })
        .collect()
}

#[test]
fn a_restart_after_kill_9_goes_on_exactly_where_an_uninterrupted_run_would() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    // The first run journals the live market for a while and is killed mid-write.
    let child = tickstock()
        .args(["--quiet", "serve", "--output", "none", "--journal"])
        .arg(&journal)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    sleep(Duration::from_millis(2_000));
    signal(&child, "KILL");
    let _ = finish(child);
    // The restart replays that journal, then goes live on the same journal.
    let restarted = tickstock()
        .args(["serve", "--output", "stdout", "--duration-s", "2", "--journal"])
        .arg(&journal)
        .output()
        .unwrap();
    let stderr = text(&restarted.stderr);
    assert!(restarted.status.success(), "{stderr}");
    assert!(stderr.contains("warm restart: journal replayed"), "{stderr}");
    let live = events(&restarted.stdout);
    assert!(live.len() > 1_000, "the restarted run streams ({} events)", live.len());
    // One uninterrupted pass over everything both runs journaled.
    let replay = tickstock().args(["--quiet", "replay", "--max"]).arg(&journal).output().unwrap();
    assert!(replay.status.success(), "{}", text(&replay.stderr));
    let pass: std::collections::HashMap<u64, String> = events(&replay.stdout).into_iter().collect();
    let first = live[0].0;
    assert!(first > 1_000, "seq goes on after the restart (first live seq {first})");
    assert!(!pass.is_empty() && pass.contains_key(&(first - 1)), "the replayed part comes first");
    for (seq, line) in &live {
        assert_eq!(pass.get(seq), Some(line), "event {seq} differs from the uninterrupted pass");
    }
    // Nothing of the replay went to stdout again: the live events start where it ended.
    assert!(live.windows(2).all(|w| w[1].0 > w[0].0), "in seq order, no repeat");
    assert!(!pass.contains_key(&(live.last().unwrap().0 + 1)), "and end where the pass ends");
}

#[test]
fn health_says_warming_and_clients_wait_while_the_journal_replays() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    record(&journal, 600_000);
    let (mut child, addr, lines) = listening(
        tickstock()
            .args(["--listen", "127.0.0.1:0", "serve", "--output", "websocket", "--journal"])
            .arg(&journal),
    );
    let (mut warming, mut refused, mut healthy) = (false, false, false);
    let mut answers = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !healthy && std::time::Instant::now() < deadline {
        let health = http(&addr, "GET /health HTTP/1.1\r\n\r\n");
        if answers.len() < 3 {
            answers.push(health.clone());
        }
        if health.starts_with("HTTP/1.1 503") && health.contains("warming") {
            warming = true;
            let upgrade = http(&addr, "GET /stocks HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
            refused |= upgrade.starts_with("HTTP/1.1 503") && upgrade.contains("warming");
        }
        healthy = health.starts_with("HTTP/1.1 200");
        if healthy {
            // The warm restart's feed is the live one behind the replay.
            assert!(
                health.contains(r#""feed":{"source":"synthetic","state":"running"}"#),
                "{health}"
            );
        }
        sleep(Duration::from_millis(10));
    }
    signal(&child, "TERM");
    let rest: Vec<String> = lines.collect();
    assert!(child.wait().unwrap().success());
    assert!(warming, "/health said warming while the journal replayed: {answers:?}");
    assert!(refused, "a client was told to wait while the journal replayed");
    assert!(healthy, "then healthy");
    let replayed =
        rest.iter().find(|l| l.contains("journal replayed")).expect("the replay's report");
    assert!(replayed.contains("trades=600000") && replayed.contains("seconds="), "{replayed}");
}

#[test]
fn health_names_a_journal_replay_as_the_feed() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    record(&journal, 20_000);
    let (mut child, addr, _log) = listening(
        tickstock()
            .args(["--listen", "127.0.0.1:0", "replay", "--speed", "1", "--output", "websocket"])
            .arg(&journal),
    );
    let health = http(&addr, "GET /health HTTP/1.1\r\n\r\n");
    signal(&child, "TERM");
    let _ = child.wait();
    assert!(health.contains(r#""feed":{"source":"journal replay","state":"running"}"#), "{health}");
}

type Ws = tungstenite::WebSocket<std::net::TcpStream>;

/// Connects, authenticates and subscribes to `T.*`, retrying while the server warms up.
fn subscribed(addr: &str) -> Ws {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = std::net::TcpStream::connect(addr).map_err(|e| e.to_string()).and_then(|s| {
            tungstenite::client(format!("ws://{addr}/stocks"), s).map_err(|e| e.to_string())
        });
        match attempt {
            Ok((mut ws, _)) => {
                ws.get_ref().set_read_timeout(Some(Duration::from_millis(200))).unwrap();
                ws.send(r#"{"action":"auth","params":"any"}"#.into()).unwrap();
                ws.send(r#"{"action":"subscribe","params":"T.*"}"#.into()).unwrap();
                return ws;
            }
            Err(error) => {
                assert!(std::time::Instant::now() < deadline, "cannot connect: {error}");
                sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Reads for `secs`: every event, in order, and every status.
fn read_for(ws: &mut Ws, secs: f64) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let (mut events, mut statuses) = (Vec::new(), Vec::new());
    let until = std::time::Instant::now() + Duration::from_secs_f64(secs);
    while std::time::Instant::now() < until {
        match ws.read() {
            Ok(tungstenite::Message::Text(text)) => {
                let items: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
                for item in items {
                    if item["ev"] == "status" {
                        statuses.push(item);
                    } else {
                        events.push(item);
                    }
                }
            }
            Ok(_) => {}
            Err(error) if timed_out(&error) => {}
            Err(_) => break,
        }
    }
    (events, statuses)
}

#[test]
fn a_client_resuming_across_a_kill_9_misses_nothing_and_sees_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let config = dir.path().join("tickstock.toml");
    // An fsync per record makes the journal writer far slower than the engine, and `wait`
    // lets nothing drop meanwhile: without `journal.emit_after_write` the client would see
    // thousands of events whose trades were still in the journal's ring when the process
    // was killed, and whose `seq` the restart gives to other events.
    fs::write(
        &config,
        "[journal]\nfsync = \"every_record\"\n[pipeline]\nemitter_backpressure = \"wait\"\n",
    )
    .unwrap();
    let journal_arg = journal.to_str().unwrap();
    let (child, addr, _lines) = serving(&config, &["--journal", journal_arg]);
    let mut ws = subscribed(&addr);
    let (before, _) = read_for(&mut ws, 2.0);
    signal(&child, "KILL");
    let _ = finish(child);
    assert!(before.len() > 50, "the first run streamed ({} trades)", before.len());
    let last = before.last().unwrap()["seq"].as_u64().unwrap();

    let (child, addr, lines) = serving(&config, &["--journal", journal_arg]);
    let mut ws = subscribed(&addr);
    ws.send(format!(r#"{{"action":"resume","params":{{"from_seq":{}}}}}"#, last + 1).into())
        .unwrap();
    let (after, statuses) = read_for(&mut ws, 2.0);
    drop(ws);
    signal(&child, "TERM");
    let log: Vec<String> = lines.collect();
    assert!(finish(child).status.success(), "{log:?}");
    assert!(log.iter().any(|l| l.contains("warm restart: journal replayed")), "{log:?}");
    assert!(
        statuses.iter().any(|s| s["status"] == "resumed" && s["from_seq"] == last + 1),
        "the resume was honoured: {statuses:?}"
    );

    // One uninterrupted pass over everything both runs journaled.
    let replay = tickstock().args(["--quiet", "replay", "--max"]).arg(&journal).output().unwrap();
    assert!(replay.status.success(), "{}", text(&replay.stderr));
    let pass: std::collections::BTreeMap<u64, serde_json::Value> = text(&replay.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["ev"] == "T")
        .map(|v| (v["seq"].as_u64().unwrap(), v))
        .collect();
    // Every trade the client saw before the kill is the uninterrupted run's, seq for seq.
    for event in &before {
        let seq = event["seq"].as_u64().unwrap();
        assert_eq!(pass.get(&seq), Some(event), "trade {seq} seen before the kill");
    }
    // After the resume: exactly the uninterrupted run's trades from `last + 1` on.
    assert!(after.len() > 50, "the restarted run streamed ({} trades)", after.len());
    let end = after.last().unwrap()["seq"].as_u64().unwrap();
    let expected: Vec<&serde_json::Value> = pass.range(last + 1..=end).map(|(_, v)| v).collect();
    let got: Vec<&serde_json::Value> = after.iter().collect();
    assert_eq!(got.len(), expected.len(), "no trade missing or repeated after the resume");
    assert!(got == expected, "the trades after the resume are the uninterrupted run's");
}

#[test]
fn a_warm_restart_encodes_only_the_replayed_events_the_resume_history_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    record(&journal, 100_000);
    let config = dir.path().join("tickstock.toml");
    // A slow live market, so the history holds still while the client looks.
    fs::write(&config, "[server]\nhistory_max_events = 50000\n[synthetic]\ntrades_per_sec = 5\n")
        .unwrap();
    let (child, addr, mut lines) = serving(&config, &["--journal", journal.to_str().unwrap()]);
    let kept = lines.find(|line| line.contains("refill the resume history")).expect("a report");
    assert!(kept.contains("kept=50000"), "{kept}");
    let not_encoded: u64 = kept
        .split("not_encoded=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .expect("a count of events not encoded");
    assert!(not_encoded > 20_000, "the older replayed events were never encoded: {kept}");
    // What the history holds is the newest replayed events: a resume from the start is too
    // old, one from well after the oldest kept is honoured (each live event evicts one, and a
    // minute's close brings an AM bar for every symbol of the replay: the CI run found 500
    // too few).
    let mut ws = subscribed(&addr);
    ws.send(r#"{"action":"resume","params":{"from_seq":1}}"#.into()).unwrap();
    let (_, statuses) = read_for(&mut ws, 1.0);
    let failed = statuses
        .iter()
        .find(|s| s["status"] == "resume_failed")
        .unwrap_or_else(|| panic!("too old: {statuses:?}"));
    let oldest = failed["oldest_seq"].as_u64().unwrap();
    assert!(oldest > not_encoded, "the history starts after the events not encoded: {failed}");
    let from = oldest + 20_000;
    // A fresh connection subscribes and resumes back to back (PROTOCOL.md: then the order is
    // strict); `subscribed` took `T.*`.
    drop(ws);
    let mut ws = subscribed(&addr);
    ws.send(r#"{"action":"subscribe","params":"A.*,AM.*"}"#.into()).unwrap();
    ws.send(format!(r#"{{"action":"resume","params":{{"from_seq":{from}}}}}"#).into()).unwrap();
    let (trades, statuses) = read_for(&mut ws, 1.0);
    assert!(statuses.iter().any(|s| s["status"] == "resumed"), "{statuses:?}");
    let seqs: Vec<u64> = trades.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.len() > 1_000 && seqs[0] >= from, "{} events from {:?}", seqs.len(), seqs.first());
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in seq order");
    drop(ws);
    signal(&child, "TERM");
    assert!(finish(child).status.success());
}

#[test]
fn a_warm_restart_logs_the_replayed_events_its_event_log_lacks() {
    // A journal recorded without an event log (as if the log had lost everything after
    // seq 0): the warm restart's replay must fill it, so a resume from the first seq is
    // served from disk beyond the history, with no gap and nothing twice.
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    record(&journal, 60_000);
    let config = dir.path().join("tickstock.toml");
    let events = dir.path().join("events");
    fs::write(
        &config,
        format!(
            "[server]\nhistory_max_events = 10000\nevent_log_dir = {:?}\n\
             [synthetic]\ntrades_per_sec = 5\n",
            events.to_str().unwrap()
        ),
    )
    .unwrap();
    let (child, addr, lines) = serving(&config, &["--journal", journal.to_str().unwrap()]);
    let mut ws = subscribed(&addr);
    ws.send(r#"{"action":"resume","params":{"from_seq":1}}"#.into()).unwrap();
    let (trades, statuses) = read_for(&mut ws, 4.0);
    assert!(statuses.iter().any(|s| s["status"] == "resumed"), "{statuses:?}");
    let seqs: Vec<u64> = trades.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in seq order, none twice");
    let ids: std::collections::BTreeSet<u64> =
        trades.iter().filter_map(|e| e["i"].as_str()?.parse().ok()).collect();
    // Every recorded trade came back (the live market adds a few of its own).
    assert!(trades.len() >= 60_000, "{} trades resumed", trades.len());
    assert!((1..=60_000).all(|id| ids.contains(&id)), "trade ids 1..=60,000 all there");
    drop(ws);
    signal(&child, "TERM");
    assert!(finish(child).status.success());
    let log: Vec<String> = lines.collect();
    let logged = log.iter().find(|line| line.contains("the event log lacked"));
    assert!(logged.is_some_and(|line| line.contains("after_seq=0")), "{log:#?}");
}

/// Runs `examples/NAME` with `args` under `python`, with a deadline; its output.
fn run_example(python: &str, name: &str, args: &[&str]) -> String {
    run_script(python, &format!("examples/{name}"), args, 60)
}

#[test]
fn the_python_examples_run_against_the_real_server_as_a_user_runs_them() {
    let websockets = python_with("websockets");
    let massive = python_with("massive");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tickstock.toml");
    fs::write(&config, "").unwrap();
    let (mut child, addr, _log) = serving(&config, &[]);
    let url = format!("ws://{addr}/stocks");
    let out = run_example(&websockets, "python_websockets.py", &["--url", &url, "--trades", "200"]);
    assert!(out.contains("status snapshot"), "the snapshot came first:\n{out}");
    assert!(out.contains("resumed from"), "and the resume after the reconnect:\n{out}");
    assert!(out.contains("T  AAPL"), "the busiest synthetic symbol is AAPL:\n{out}");
    assert!(out.contains("ok: "), "{out}");
    let out = run_example(&massive, "python_massive.py", &["--server", &addr, "--trades", "50"]);
    assert!(out.contains("trade AAPL") && out.contains("ok: "), "{out}");
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
}
