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
