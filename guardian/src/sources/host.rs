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
