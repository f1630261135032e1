//! The host as a whole: free memory and memory pressure.

use std::io;

use super::cgroup::parse_pressure;
use crate::model::{Bytes, PressureStats};

/// The system-wide memory PSI file.
pub const PRESSURE_FILE: &str = "/proc/pressure/memory";

/// The host's MemAvailable from /proc/meminfo.
pub fn mem_available() -> io::Result<Bytes> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(Bytes::from_kib)
        .ok_or_else(|| io::Error::other("/proc/meminfo has no MemAvailable line"))
}

/// The host's memory pressure; `None` without PSI (kernel built or booted without it).
pub fn memory_pressure() -> Option<PressureStats> {
    std::fs::read_to_string(PRESSURE_FILE)
        .ok()
        .as_deref()
        .and_then(parse_pressure)
}

/// The host's MemTotal from /proc/meminfo: the most any unbounded service could take.
pub fn mem_total() -> io::Result<Bytes> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(Bytes::from_kib)
        .ok_or_else(|| io::Error::other("/proc/meminfo has no MemTotal line"))
}

/// Ownership and mode of `path` and of every directory above it, the file first — both as
/// written (each component `lstat`ed: a symlink on the way and the directory it sits in count)
/// and with symlinks resolved (the file really read or run): what
/// [`crate::policy::trust::judge`] decides on.
pub fn path_chain(path: &std::path::Path) -> io::Result<Vec<crate::policy::trust::PathFacts>> {
    use std::os::unix::fs::MetadataExt as _;
    let facts = |p: &std::path::Path, m: std::fs::Metadata| crate::policy::trust::PathFacts {
        path: p.to_path_buf(),
        uid: m.uid(),
        mode: m.mode() & 0o7777,
        is_dir: m.is_dir(),
        is_symlink: m.file_type().is_symlink(),
    };
    let absolute = std::path::absolute(path)?;
    let mut chain = Vec::new();
    for p in absolute.ancestors() {
        chain.push(facts(p, std::fs::symlink_metadata(p)?));
    }
    let real = std::fs::canonicalize(path)?;
    if real != absolute {
        for p in real.ancestors() {
            chain.push(facts(p, std::fs::metadata(p)?));
        }
    }
    Ok(chain)
}

/// For a daemon running as root: refuses (one line, with the fix) a file that users other than
/// root can change. Not root: nothing to protect, always `Ok`. A file that cannot be read is
/// left to the caller's own read to report.
pub fn check_trusted(path: &std::path::Path) -> Result<(), String> {
    let euid = nix::unistd::geteuid().as_raw();
    if euid != 0 {
        return Ok(());
    }
    match path_chain(path) {
        Ok(chain) => crate::policy::trust::judge(&chain, euid),
        Err(_) => Ok(()),
    }
}

/// The names (`/proc/<pid>/comm`) of the host's running processes.
pub fn process_names() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect()
}

/// The journal's messages of the userspace OOM killers in the last `seconds`, as
/// (SYSLOG_IDENTIFIER, MESSAGE), oldest first; empty without journalctl or a journal.
pub fn killer_journal(seconds: u64) -> Vec<(String, String)> {
    let out = std::process::Command::new("journalctl")
        .args(["--no-pager", "-q", "-o", "json"])
        .arg(format!("--since=-{seconds}s"))
        .args([
            "SYSLOG_IDENTIFIER=earlyoom",
            "SYSLOG_IDENTIFIER=systemd-oomd",
            "SYSLOG_IDENTIFIER=nohang",
        ])
        .stderr(std::process::Stdio::null())
        .output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            Some((
                v["SYSLOG_IDENTIFIER"].as_str()?.to_string(),
                v["MESSAGE"].as_str()?.to_string(),
            ))
        })
        .collect()
}
