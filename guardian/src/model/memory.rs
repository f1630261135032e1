//! Memory quantities and per-cgroup readings.

use serde::{Deserialize, Serialize};

/// A number of bytes.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Bytes(pub u64);

impl Bytes {
    /// From a count of kibibytes, as the kernel's trace records and /proc report them.
    pub const fn from_kib(kib: u64) -> Self {
        Self(kib.saturating_mul(1024))
    }
}

impl std::fmt::Display for Bytes {
    /// Binary units with one decimal, e.g. `64.0MiB`; exact bytes below 1 KiB.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        if self.0 < 1024 {
            return write!(f, "{}B", self.0);
        }
        let mut value = self.0 as f64 / 1024.0;
        let mut unit = 0;
        while value >= 1024.0 && unit < UNITS.len() - 1 {
            value /= 1024.0;
            unit += 1;
        }
        write!(f, "{value:.1}{}", UNITS[unit])
    }
}

impl std::str::FromStr for Bytes {
    type Err = String;

    /// Parses "512m", "1.5GiB", "64M", "4096": suffixes k/m/g/t with optional "i" and "b",
    /// all binary (1m = 1 MiB), as docker and compose read them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let value: f64 = num.parse().map_err(|_| {
            format!("invalid size {s:?}: expected a number with k/m/g/t suffix, e.g. 512m")
        })?;
        let unit = unit.trim().to_ascii_lowercase();
        let unit = unit.trim_end_matches('b').trim_end_matches('i');
        let scale: u64 = match unit {
            "" => 1,
            "k" => 1 << 10,
            "m" => 1 << 20,
            "g" => 1 << 30,
            "t" => 1 << 40,
            _ => {
                return Err(format!(
                    "invalid size {s:?}: unknown unit, use k, m, g or t"
                ))
            }
        };
        Ok(Bytes((value * scale as f64).round() as u64))
    }
}

/// One line of a PSI file: `some avg10=0.00 avg60=0.00 avg300=0.00 total=0`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PsiLine {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    /// Total stall time in microseconds.
    pub total_us: u64,
}

/// The contents of a `memory.pressure` (or `/proc/pressure/memory`) file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PressureStats {
    pub some: PsiLine,
    pub full: PsiLine,
}

/// The counters of a v2 `memory.events` file (Documentation/admin-guide/cgroup-v2.rst): how
/// often the group went over memory.low's protection, hit memory.high (throttled), hit
/// memory.max (reclaim at the limit), ran out (oom) and had a process OOM-killed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MemoryEvents {
    pub low: u64,
    pub high: u64,
    pub max: u64,
    pub oom: u64,
    pub oom_kill: u64,
}

/// What the kernel says about one memory cgroup at one moment, from either cgroup version.
///
/// Fields a version does not have are `None` (v1 has no `memory.high`, v2 before 5.19 no peak).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MemoryReading {
    /// v2 `memory.current`, v1 `memory.usage_in_bytes`.
    pub usage: Bytes,
    /// v2 `memory.peak`, v1 `memory.max_usage_in_bytes`.
    pub peak: Option<Bytes>,
    /// v2 `memory.max`, v1 `memory.limit_in_bytes`; `None` when unlimited.
    pub limit: Option<Bytes>,
    /// v2 `memory.high`; `None` when unlimited or on v1.
    pub high: Option<Bytes>,
    /// usage − inactive file pages, as kubelet and cAdvisor compute it.
    pub working_set: Bytes,
    /// Anonymous memory (v2 `anon`, v1 `total_rss`).
    pub anon: Bytes,
    /// Page cache (v2 `file`, v1 `total_cache`), shmem/tmpfs included.
    pub file: Bytes,
    /// tmpfs and shared memory (v2 `shmem`, v1 `total_shmem`): in `file`, yet not reclaimable
    /// without swap.
    pub shmem: Bytes,
    /// OOM kills in this group (v2 `memory.events` oom_kill, v1 `memory.oom_control` oom_kill).
    pub oom_kills: u64,
    /// Memory pressure of the group, where the kernel exposes it.
    pub pressure: Option<PressureStats>,
    /// v2 `memory.events`; `None` on v1.
    pub events: Option<MemoryEvents>,
    /// Swap in use: v2 `memory.swap.current`, v1 `memory.memsw.usage_in_bytes` − usage;
    /// `None` when the kernel does not account swap.
    pub swap: Option<Bytes>,
}
