//! A private PostgreSQL cluster for a test: `initdb` in a temporary directory, the server on
//! a free loopback port, stopped when dropped. As PostgreSQL requires, it runs as a non-root
//! user: the `postgres` user of Debian's package when the tests run as root.
//!
//! The binaries come from `TICKSTOCK_TEST_PG_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin`, else `initdb` on the `PATH`. A missing PostgreSQL fails with
//! what to do (tools/test.sh installs Debian's `postgresql`), never skips.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The password of the cluster's `tickstock` superuser.
pub const PASSWORD: &str = "s3cret-for-tests";

fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("TICKSTOCK_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| dir.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.retain(|bin| bin.join("initdb").exists());
    versions.sort_by_key(|bin| {
        bin.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(newest) = versions.pop() {
        return newest;
    }
    let which = Command::new("sh").args(["-c", "command -v initdb"]).output();
    match which {
        Ok(out) if out.status.success() => {
            let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            path.parent().unwrap().to_owned()
        }
        _ => panic!(
            "PostgreSQL is missing (no initdb): run tools/test.sh, which installs Debian's \
             `postgresql`, or set TICKSTOCK_TEST_PG_BIN to its bin directory"
        ),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A free loopback port (free when asked: the cluster binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running cluster.
#[derive(Debug)]
pub struct Postgres {
    /// Its port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    running: bool,
}

impl Postgres {
    /// Creates and starts a cluster with a `tickstock` superuser (password [`PASSWORD`],
    /// scram-sha-256 over TCP) and a `tickstock` database.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new().prefix("tickstock-pg").tempdir_in("/tmp").unwrap();
        std::fs::write(dir.path().join("pw"), PASSWORD).unwrap();
        if is_root() {
            let owned = Command::new("chown").args(["-R", "postgres"]).arg(dir.path()).status();
            assert!(
                owned.is_ok_and(|s| s.success()),
                "cannot hand {} to the postgres user (run tools/test.sh, which installs \
                 Debian's postgresql and with it that user)",
                dir.path().display()
            );
        }
        let data = dir.path().join("data");
        let out = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "tickstock", "--auth-host=scram-sha-256", "--auth-local=trust"])
            .arg(format!("--pwfile={}", dir.path().join("pw").display()))
            .args(["-E", "UTF8", "--no-locale"])
            .output()
            .expect("initdb runs");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut cluster = Postgres { port: free_port(), bin, dir, running: false };
        cluster.start_server();
        let mut client = cluster.client_to("postgres");
        client.batch_execute("CREATE DATABASE tickstock").unwrap();
        cluster
    }

    fn start_server(&mut self) {
        let data = self.dir.path().join("data");
        let options = format!(
            // A test's cluster needs no durability across a power cut.
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        );
        let status = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-o", &options, "-w", "start"])
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl runs");
        assert!(status.success(), "postgres did not start: {}", self.log());
        self.running = true;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if postgres::Config::new()
                .host("127.0.0.1")
                .port(self.port)
                .user("tickstock")
                .password(PASSWORD)
                .dbname("postgres")
                .connect(postgres::NoTls)
                .is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "postgres did not start: {}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Stops the server (fast shutdown: connections are cut), keeping the cluster.
    pub fn stop(&mut self) {
        if std::mem::take(&mut self.running) {
            let status = as_postgres(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-m", "fast", "-w", "stop"])
                .stdout(Stdio::null())
                .status();
            assert!(status.is_ok_and(|s| s.success()), "postgres did not stop: {}", self.log());
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.start_server();
    }

    /// `database.url` for the `tickstock` database (the password goes separately).
    pub fn url(&self) -> String {
        format!("postgresql://tickstock@127.0.0.1:{}/tickstock", self.port)
    }

    /// A file holding the password, for `database.password_file`.
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("pw")
    }

    /// A client of the `tickstock` database.
    pub fn client(&self) -> postgres::Client {
        self.client_to("tickstock")
    }

    fn client_to(&self, dbname: &str) -> postgres::Client {
        postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user("tickstock")
            .password(PASSWORD)
            .dbname(dbname)
            .connect(postgres::NoTls)
            .unwrap()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `program` run as the `postgres` user when the tests run as root (PostgreSQL refuses
/// root), else as the test's own user.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}
