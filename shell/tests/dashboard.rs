//! The dashboard at `/` in a real headless Chromium, against the real binary, as a user runs
//! it: `tools/dashboard_check.py` drives the browser (through Playwright) and checks the page.
//! In a test binary of its own, so that no other test's server shares the machine with the
//! browser while it measures whether the page keeps drawing.

use std::fs;
use std::process::Command;

mod common;
use common::process::{finish, python_with, run_script, serving, signal};

/// The Chromium the dashboard test drives: `TICKSTOCK_TEST_CHROMIUM`, else Debian's
/// `/usr/bin/chromium`. A missing one fails with what to do, never skips.
fn chromium() -> String {
    let chromium =
        std::env::var("TICKSTOCK_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    let found = Command::new(&chromium)
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(
        found,
        "no Chromium at {chromium}: run tools/test.sh, which installs Debian's `chromium` \
         (or set TICKSTOCK_TEST_CHROMIUM)"
    );
    chromium
}

/// `tools/dashboard_check.py` against the dashboard at `addr`: what it measured, after every
/// check passed.
fn dashboard_check(python: &str, chromium: &str, addr: &str, more: &[&str]) -> serde_json::Value {
    let url = format!("http://{addr}/");
    let args = [&["--url", url.as_str(), "--chromium", chromium], more].concat();
    let out = run_script(python, "tools/dashboard_check.py", &args, 240);
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(report["ok"], true, "{report}");
    report["measured"].clone()
}

#[test]
fn the_dashboard_works_in_a_real_headless_chromium() {
    let python = python_with("playwright");
    let chromium = chromium();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tickstock.toml");
    fs::write(&config, "").unwrap();
    // On loopback with no keys, the page connects at once.
    let (child, addr, _log) = serving(&config, &[]);
    let measured = dashboard_check(&python, &chromium, &addr, &[]);
    assert!(measured.get("asked_for_key").is_none(), "{measured}");
    assert_eq!(measured["websockets"], serde_json::json!([format!("ws://{addr}/stocks")]));
    assert!(measured["feed"].as_str().unwrap().contains("Synthetic market"), "{measured}");
    assert!(measured["chart_bars_A"].as_u64().unwrap() >= 2, "{measured}");
    // Chromium offers permessage-deflate and the server takes it: the page's stream is
    // compressed (RFC 7692 against a real browser).
    let extensions = measured["extensions"].as_str().unwrap_or_default();
    assert!(extensions.starts_with("permessage-deflate"), "{measured}");
    signal(&child, "TERM");
    assert!(finish(child).status.success());

    // With keys, the page asks for one, keeps it in sessionStorage and never in a URL.
    let keys = dir.path().join("api_keys");
    fs::write(&keys, "dashboard-key-7f3a user=desk\n").unwrap();
    let with_keys = format!("[server]\napi_keys_file = {:?}\n", keys.display().to_string());
    fs::write(&config, with_keys).unwrap();
    let (child, addr, _log) = serving(&config, &[]);
    let measured = dashboard_check(&python, &chromium, &addr, &["--key", "dashboard-key-7f3a"]);
    assert!(measured["asked_for_key"].as_f64().is_some(), "{measured}");
    signal(&child, "TERM");
    assert!(finish(child).status.success());

    // An upstream that refuses connections: the page says the feed is down, and why.
    let key = dir.path().join("upstream.key");
    fs::write(&key, "upstream-key\n").unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("ws://{}/stocks", dead.local_addr().unwrap());
    drop(dead);
    let upstream = format!(
        "[feed]\nsource = \"upstream\"\n[upstream]\nurl = {dead_url:?}\nkey_file = {:?}\n",
        key.display().to_string()
    );
    fs::write(&config, upstream).unwrap();
    let (child, addr, _log) = serving(&config, &[]);
    let measured = dashboard_check(&python, &chromium, &addr, &["--feed-down"]);
    let feed = measured["feed"].as_str().unwrap();
    assert!(feed.contains("Upstream feed DOWN") && feed.contains("refused"), "{measured}");
    signal(&child, "TERM");
    assert!(finish(child).status.success());

    // `server.dashboard = false`: the page is not served, the stream still is.
    fs::write(&config, "[server]\ndashboard = false\n").unwrap();
    let (child, addr, _log) = serving(&config, &[]);
    for path in ["/", "/dashboard.js"] {
        let answer = common::process::http(&addr, &format!("GET {path} HTTP/1.1\r\n\r\n"));
        assert!(answer.starts_with("HTTP/1.1 404"), "{path}: {answer}");
    }
    assert!(
        common::process::http(&addr, "GET /health HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200")
    );
    signal(&child, "TERM");
    assert!(finish(child).status.success());
}
