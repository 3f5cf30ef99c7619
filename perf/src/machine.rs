//! What the run was measured on, and what a process costs, read from `/proc`.

use std::fs;
use std::process::Command;

use serde::Serialize;

/// The machine, toolchain and checkout a result came from.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// `model name` of the first CPU in `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Cores this process may run on.
    pub cores: usize,
    /// `MemTotal`, GiB.
    pub memory_gib: f64,
    /// `uname -r`.
    pub kernel: String,
    /// The compiler that built this binary (the server is built from the same workspace).
    pub rustc: String,
    /// `git rev-parse HEAD` of the working directory, `-dirty` with uncommitted changes.
    pub git_commit: String,
}

impl Machine {
    /// Reads it all; a value that cannot be read is `"unknown"`.
    pub fn describe() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name")?.split_once(':').map(|(_, v)| v))
            .map_or_else(|| "unknown".to_owned(), |model| model.trim().to_owned());
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned());
        let commit = output("git", &["rev-parse", "HEAD"]);
        let dirty = output("git", &["status", "--porcelain", "--untracked-files=no"]);
        let git_commit = match (commit, dirty) {
            (Some(commit), Some(dirty)) if !dirty.is_empty() => format!("{commit}-dirty"),
            (Some(commit), _) => commit,
            (None, _) => "unknown".to_owned(),
        };
        Machine {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: memory_kib / (1024.0 * 1024.0),
            kernel,
            rustc: env!("LOADGEN_RUSTC").to_owned(),
            git_commit,
        }
    }
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// CPU time and resident memory of one process at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcSample {
    /// User plus system CPU time of all its threads, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set, bytes.
    pub rss_bytes: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`; `None` once the process is gone.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name: state is field 3 of stat(5), so utime (14) and stime (15) are at 11, 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Some(ProcSample { cpu_ticks: utime + stime, rss_bytes: rss_kib * 1024 })
}

/// CPU time of each of `pid`'s threads, in clock ticks, summed by thread name with a
/// trailing `-N` index dropped (so `tickstock-loop-0` and `-1` are `tickstock-loop`); what a
/// step's server CPU went to. Empty once the process is gone. A thread that ends between two
/// samples takes its ticks with it (they stay in the process's total).
pub fn thread_ticks(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.flatten() {
        let Ok(stat) = fs::read_to_string(task.path().join("stat")) else { continue };
        let Some((head, rest)) = stat.rsplit_once(')') else { continue };
        let name = head.split_once('(').map_or("", |(_, name)| name);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        let base = match name.rsplit_once('-') {
            Some((base, index))
                if !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()) =>
            {
                base
            }
            _ => name,
        };
        *by_name.entry(base.to_owned()).or_insert(0) += ticks(11) + ticks(12);
    }
    by_name
}

/// How many files (sockets included) `pid` has open (`/proc/<pid>/fd`); `None` if unreadable.
pub fn open_fds(pid: u32) -> Option<u64> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// This process's soft limit on open files (`/proc/self/limits`); `None` if unreadable or
/// unlimited.
pub fn open_files_limit() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// Bytes that arrived in the receive queues of the local TCP sockets bound to `ports` and
/// were not read yet (`/proc/net/tcp` and `tcp6`, the `rx_queue` column); `None` if
/// unreadable. For loadgen's clients this is what the server delivered and the readers have
/// not taken: when it grows, the readers, not the server, are behind.
pub fn unread_bytes(ports: &std::collections::HashSet<u16>) -> Option<u64> {
    let mut total = None;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else { continue };
        let sum: u64 = text.lines().skip(1).filter_map(|line| unread_of(line, ports)).sum();
        total = Some(total.unwrap_or(0) + sum);
    }
    total
}

/// One `/proc/net/tcp` row's `rx_queue`, if its local port is one of `ports`.
fn unread_of(line: &str, ports: &std::collections::HashSet<u16>) -> Option<u64> {
    let mut fields = line.split_whitespace();
    let local = fields.nth(1)?;
    let queues = fields.nth(2)?;
    let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
    if !ports.contains(&port) {
        return None;
    }
    u64::from_str_radix(queues.split(':').nth(1)?, 16).ok()
}

/// `USER_HZ`: clock ticks per second in `/proc` CPU times (`getconf CLK_TCK`, else 100).
pub fn clock_ticks_per_sec() -> u64 {
    output("getconf", &["CLK_TCK"]).and_then(|s| s.parse().ok()).filter(|&hz| hz > 0).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unread_bytes_come_from_the_rx_queue_of_the_listed_ports() {
        let row = "   1: 0100007F:9C40 0100007F:223D 01 00000000:00012000 00:00000000 00000000     0        0 1 1 0000000000000000 20 4 30 10 -1";
        let ports: std::collections::HashSet<u16> = [0x9c40].into_iter().collect();
        assert_eq!(unread_of(row, &ports), Some(0x12000));
        assert_eq!(unread_of(row, &[1u16].into_iter().collect()), None);
        assert!(unread_bytes(&ports).is_some(), "/proc/net/tcp is readable here");
    }

    #[test]
    fn samples_this_process() {
        let own = sample(std::process::id()).expect("own /proc entry");
        assert!(own.rss_bytes > 0);
        let busy: u64 = (0..20_000_000u64).fold(0, |a, b| a.wrapping_add(b * b));
        std::hint::black_box(busy);
        let later = sample(std::process::id()).expect("own /proc entry");
        assert!(later.cpu_ticks >= own.cpu_ticks);
        assert_eq!(sample(u32::MAX), None);
        assert!(open_files_limit().is_some_and(|n| n > 0));
        let named = std::thread::Builder::new()
            .name("spin-7".to_owned())
            .spawn(|| {
                let busy: u64 = (0..40_000_000u64).fold(0, |a, b| a.wrapping_add(b * b));
                std::hint::black_box(busy);
                thread_ticks(std::process::id())
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(named.contains_key("spin"), "by name, the index dropped: {named:?}");
        let fds = open_fds(std::process::id()).expect("own fds");
        let extra = std::fs::File::open("/proc/self/stat").unwrap();
        assert_eq!(open_fds(std::process::id()), Some(fds + 1));
        drop(extra);
    }
}
