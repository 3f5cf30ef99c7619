//! The `tickstock` binary as a child process: start it, signal it, talk HTTP to it, and run
//! the Python scripts that drive it (the examples, the dashboard check).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::Duration;

/// The `tickstock` binary of this build.
pub fn tickstock() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tickstock"))
}

/// Bytes as text, lossily.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Sends signal `name` (`TERM`, `HUP`, `KILL`) to `child`.
pub fn signal(child: &Child, name: &str) {
    let status =
        Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
}

/// Waits for `child`; its output.
pub fn finish(child: Child) -> Output {
    child.wait_with_output().unwrap()
}

/// One HTTP request to `addr`; the whole response.
pub fn http(addr: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else { return String::new() };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.write_all(request.as_bytes());
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// Whether a read of a socket with a read timeout only timed out (nothing came yet).
pub fn timed_out(error: &tungstenite::Error) -> bool {
    matches!(error, tungstenite::Error::Io(e)
        if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
}

/// Log lines, as they come.
pub type Log = Box<dyn Iterator<Item = String>>;

/// Starts `serve` on the WebSocket output with `args` after `--config`; its address and its
/// log lines (from the first).
pub fn serving(config: &Path, args: &[&str]) -> (Child, String, Log) {
    listening(
        tickstock()
            .arg("--config")
            .arg(config)
            .args(["--listen", "127.0.0.1:0", "serve", "--output", "websocket"])
            .args(args),
    )
}

/// Spawns `command` with its log piped and reads the log until it says where it serves:
/// the child, that address, and its log lines (from the first).
pub fn listening(command: &mut Command) -> (Child, String, Log) {
    use std::io::BufRead;
    let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut before = Vec::new();
    let addr = loop {
        let line = lines.next().expect("the server logs where it listens").unwrap();
        if let Some((_, rest)) = line.split_once("serving ws://") {
            break rest.split('/').next().unwrap().to_owned();
        }
        before.push(line);
    };
    (child, addr, Box::new(before.into_iter().chain(lines.map_while(Result::ok))))
}

/// Records `trades` synthetic trades in virtual time (as fast as the engine goes) into the
/// journal `dir`, quietly.
pub fn record(dir: &Path, trades: u64) {
    let status = tickstock()
        .args(["--quiet", "record", "--virtual-time", "--trades", &trades.to_string(), "--journal"])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

/// The test Python (tools/test.sh's virtualenv, or `TICKSTOCK_TEST_PYTHON`), which must have
/// `module`: a missing one fails with what to do, never skips.
pub fn python_with(module: &str) -> String {
    let python = std::env::var("TICKSTOCK_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let found = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "{python} has no `{module}` package: run tools/test.sh, which installs it in a \
         virtualenv (or set TICKSTOCK_TEST_PYTHON)"
    );
    python
}

/// Runs the script at `path` (from the workspace root) with `args` under `python`, for at
/// most `deadline_s`; its output, after it succeeded.
pub fn run_script(python: &str, path: &str, args: &[&str], deadline_s: u64) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    let mut child = Command::new(python)
        .arg(&script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(deadline_s);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().map(|o| (text(&o.stdout), text(&o.stderr)));
            panic!("{path} ran past {deadline_s} s: {output:?}");
        }
        sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().unwrap();
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{path} failed:\n{stdout}\n{stderr}");
    stdout
}
