//! The server under test: a `tickstock serve` child process fed by the player, or a server
//! someone else started; and its `/metrics`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tickstock_shell::config::Settings;

/// Tries of a `/metrics` scrape before a step is declared unmeasurable.
const SCRAPE_TRIES: usize = 3;
/// How long one scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a spawned server may take to say where it listens.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// The server the clients connect to.
#[derive(Debug)]
pub struct Server {
    /// Its WebSocket and HTTP address.
    pub addr: SocketAddr,
    /// Its process, when local, for CPU and memory.
    pub pid: Option<u32>,
    /// More servers the clients are spread over (`--connect A,B,...`: gateways of one
    /// ingest), with their pids when local: `/metrics` is summed over all of them.
    pub others: Vec<(SocketAddr, Option<u32>)>,
    /// The settings it runs with, when spawned.
    pub settings: Option<Settings>,
    child: Option<Child>,
}

/// How to reach the server under test.
#[derive(Clone, Debug)]
pub enum Launch {
    /// Spawn `tickstock serve --feed upstream` from this binary, with this configuration file
    /// (or the defaults) and the player's address and key written over it.
    Spawn {
        /// The `tickstock` binary.
        binary: PathBuf,
        /// A configuration file to start from.
        config: Option<PathBuf>,
    },
    /// A server already running, already pointed at the player (`upstream.url`).
    Connect {
        /// Their addresses, with their process ids when local (for CPU and memory); the
        /// clients are spread over them.
        servers: Vec<(SocketAddr, Option<u32>)>,
    },
}

/// The environment variable the spawned server reads the player's key from.
pub const KEY_ENV: &str = "TICKSTOCK_UPSTREAM_KEY";

impl Server {
    /// Starts (or finds) the server. A spawned one runs with the configuration written to
    /// `config_out` and writes its stderr to `log`.
    pub fn launch(
        launch: &Launch,
        upstream: SocketAddr,
        key: &str,
        connections: u32,
        config_out: &Path,
        log: &Path,
    ) -> Result<Server, String> {
        let (binary, config) = match launch {
            Launch::Connect { servers } => {
                let (&(addr, pid), others) =
                    servers.split_first().ok_or("--connect: no address")?;
                let others = others.to_vec();
                return Ok(Server { addr, pid, others, settings: None, child: None });
            }
            Launch::Spawn { binary, config } => (binary, config),
        };
        let mut table: toml::Table = match config {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .parse()
                .map_err(|e| format!("{}: {e}", path.display()))?,
            None => toml::Table::new(),
        };
        let section = |table: &mut toml::Table, name: &str| -> Result<toml::Table, String> {
            match table.remove(name) {
                Some(toml::Value::Table(t)) => Ok(t),
                None => Ok(toml::Table::new()),
                Some(_) => Err(format!("`{name}` in the server configuration is not a table")),
            }
        };
        let mut feed = section(&mut table, "feed")?;
        feed.insert("source".into(), "upstream".into());
        let mut up = section(&mut table, "upstream")?;
        up.insert("url".into(), format!("ws://{upstream}/stocks").into());
        up.insert("key_env".into(), KEY_ENV.into());
        up.insert("topics".into(), toml::Value::Array(vec!["T.*".into()]));
        // The player pauses between steps; that is not a stale feed.
        up.insert("stale_check".into(), "never".into());
        let mut server = section(&mut table, "server")?;
        server.insert("listen".into(), "127.0.0.1:0".into());
        for key in ["connections_max", "connections_per_user_max"] {
            let configured = server.get(key).and_then(toml::Value::as_integer).unwrap_or(0);
            server.insert(key.into(), configured.max(i64::from(connections)).into());
        }
        table.insert("feed".into(), feed.into());
        table.insert("upstream".into(), up.into());
        table.insert("server".into(), server.into());
        let path = config_out.to_path_buf();
        std::fs::write(&path, toml::to_string(&table).map_err(|e| e.to_string())?)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let settings =
            Settings::load(&path).map_err(|e| format!("the server configuration: {e}"))?;

        let mut child = Command::new(binary)
            .arg("--config")
            .arg(&path)
            .args(["--quiet", "serve", "--feed", "upstream"])
            .env(KEY_ENV, key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start {}: {e} (build it: cargo build --release -p tickstock-shell)",
                    binary.display()
                )
            })?;
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;
        let mut log_file =
            std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let (found, address) = mpsc::channel();
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(log_file, "{line}");
                if let Some(rest) = line.split("serving ws://").nth(1) {
                    let addr = rest.split('/').next().and_then(|a| a.parse::<SocketAddr>().ok());
                    if let (Some(tx), Some(addr)) = (found.take(), addr) {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Ok(addr) = address.recv_timeout(Duration::from_millis(50)) {
                let pid = Some(child.id());
                await_warm(addr, &mut child)?;
                return Ok(Server {
                    addr,
                    pid,
                    others: Vec::new(),
                    settings: Some(settings),
                    child: Some(child),
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                let tail = std::fs::read_to_string(log).unwrap_or_default();
                return Err(format!("the server exited ({status}) before listening:\n{tail}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!("the server did not start listening in {START_DEADLINE:?}"));
            }
        }
    }

    /// Whether a spawned server is still running (a server not spawned here: assumed so).
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_none_or(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stops a spawned server: SIGTERM, then SIGKILL after 5 s.
    pub fn stop(mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// `/metrics`, each metric summed over its labels (and over every server, with
    /// several); three tries, since a server far over capacity may answer slowly.
    pub fn metrics(&self) -> Result<Metrics, String> {
        let mut total = scrape_tries(self.addr)?;
        for (addr, _) in &self.others {
            for (name, value) in scrape_tries(*addr)?.0 {
                *total.0.entry(name).or_default() += value;
            }
        }
        Ok(total)
    }
}

/// One server's `/metrics`, in up to `SCRAPE_TRIES` tries.
fn scrape_tries(addr: SocketAddr) -> Result<Metrics, String> {
    let mut last = String::new();
    for _ in 0..SCRAPE_TRIES {
        match scrape(addr) {
            Ok(metrics) => return Ok(metrics),
            Err(error) => last = error,
        }
    }
    Err(last)
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Prometheus samples by metric name, summed over labels; a histogram's buckets stay apart,
/// keyed by name and bound: `tickstock_database_lag_seconds_bucket{le="1"}`.
#[derive(Clone, Debug, Default)]
pub struct Metrics(pub HashMap<String, f64>);

impl Metrics {
    /// A metric's value (0 when absent).
    pub fn get(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(0.0)
    }

    /// `later - self` for a counter, as a whole number.
    pub fn delta(&self, later: &Metrics, name: &str) -> u64 {
        (later.get(name) - self.get(name)).max(0.0) as u64
    }

    /// For histogram `name`: the smallest bucket bound holding `share` of the samples
    /// recorded between `self` and `later`, with the bounds the server wrote (read from
    /// the scrape, so they never drift from the server's). `None` when only `+Inf` holds
    /// them, or nothing was recorded.
    pub fn bound_holding(&self, later: &Metrics, name: &str, share: f64) -> Option<f64> {
        let samples = self.delta(later, &format!("{name}_count"));
        if samples == 0 {
            return None;
        }
        let needed = (samples as f64 * share).ceil() as u64;
        let prefix = format!("{name}_bucket{{le=\"");
        let mut bounds: Vec<(f64, &str)> = later
            .0
            .keys()
            .filter_map(|key| {
                let bound = key.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                Some((bound.parse::<f64>().ok().filter(|b| b.is_finite())?, key.as_str()))
            })
            .collect();
        bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        bounds.into_iter().find(|(_, key)| self.delta(later, key) >= needed).map(|(b, _)| b)
    }
}

/// Longest a server's warm restart (its journal replayed before it takes clients) is
/// waited for.
const WARM_DEADLINE: Duration = Duration::from_secs(600);

/// Waits while the server answers `/health` 503 `warming` (a warm restart replaying its
/// journal refuses clients until it is done), and then while an upgrade still gets 503 (an
/// event loop refuses them until its history holds the replayed events, a moment later).
fn await_warm(addr: SocketAddr, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + WARM_DEADLINE;
    loop {
        let warming = get(addr, "/health")
            .is_ok_and(|(head, body)| head.starts_with("HTTP/1.1 503") && body.contains("warming"))
            || matches!(
                tungstenite::connect(format!("ws://{addr}/stocks")),
                Err(tungstenite::Error::Http(response)) if response.status() == 503
            );
        if !warming {
            return Ok(());
        }
        if !matches!(child.try_wait(), Ok(None)) {
            return Err("the server exited while it warmed up".to_owned());
        }
        if Instant::now() > deadline {
            return Err(format!("the server was still warming up after {WARM_DEADLINE:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// GET `path`: the response's head and body.
fn get(addr: SocketAddr, path: &str) -> Result<(String, String), String> {
    let fail = |e: std::io::Error| format!("GET http://{addr}{path}: {e}");
    let mut stream = TcpStream::connect_timeout(&addr, SCRAPE_TIMEOUT).map_err(fail)?;
    stream.set_read_timeout(Some(SCRAPE_TIMEOUT)).map_err(fail)?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        .map_err(fail)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(fail)?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or(format!("GET {path}: no body"))?;
    Ok((head.to_owned(), body.to_owned()))
}

/// GET `/metrics` and sum each metric over its labels.
pub fn scrape(addr: SocketAddr) -> Result<Metrics, String> {
    let (head, body) = get(addr, "/metrics")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("GET /metrics: {}", head.lines().next().unwrap_or_default()));
    }
    Ok(parse_metrics(&body))
}

pub(crate) fn parse_metrics(body: &str) -> Metrics {
    let mut out = HashMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let name = series.split('{').next().unwrap_or(series);
        let bound = series.split("le=\"").nth(1).and_then(|rest| rest.split('"').next());
        let key = match bound {
            Some(bound) if name.ends_with("_bucket") => format!("{name}{{le=\"{bound}\"}}"),
            _ => name.to_owned(),
        };
        if let Ok(value) = value.parse::<f64>() {
            *out.entry(key).or_insert(0.0) += value;
        }
    }
    Metrics(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_series_over_labels() {
        let m = parse_metrics(
            "# HELP x\nt_rej{reason=\"a\"} 2\nt_rej{reason=\"b\"} 3\nt_acc 10\nbad line\n",
        );
        assert_eq!((m.get("t_rej"), m.get("t_acc"), m.get("none")), (5.0, 10.0, 0.0));
        let later = parse_metrics("t_acc 25\n");
        assert_eq!(m.delta(&later, "t_acc"), 15);
        let h = parse_metrics(
            "h_bucket{le=\"0.5\"} 3\nh_bucket{le=\"1\"} 7\nh_bucket{le=\"+Inf\"} 9\nh_count 9\n",
        );
        assert_eq!(h.get("h_bucket{le=\"1\"}"), 7.0);
        assert_eq!(h.get("h_bucket{le=\"+Inf\"}"), 9.0);
        assert_eq!(h.get("h_count"), 9.0);
        let none = Metrics::default();
        assert_eq!(none.bound_holding(&h, "h", 0.3), Some(0.5));
        assert_eq!(none.bound_holding(&h, "h", 0.5), Some(1.0));
        assert_eq!(none.bound_holding(&h, "h", 1.0), None, "only +Inf holds all 9");
        assert_eq!(h.bound_holding(&h, "h", 0.5), None, "nothing recorded between");
    }
}
