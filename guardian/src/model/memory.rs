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

/// A size as compose reads it: whole MiB (`104m`), or GiB when exact (`2g`).
pub fn compose_size(b: Bytes) -> String {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    if b.0 >= GIB && b.0.is_multiple_of(GIB) {
        format!("{}g", b.0 / GIB)
    } else {
        format!("{}m", b.0.div_ceil(MIB))
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
    /// What reclaim cannot free, at most `usage`: anonymous memory, shmem, mapped file pages
    /// and unreclaimable kernel memory, from memory.stat (`sources::cgroup::unreclaimable_v2`,
    /// `unreclaimable_v1` say which fields). The rest of `usage` is page cache the kernel can
    /// drop under a smaller limit.
    pub unreclaimable: Bytes,
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

/// What one sampling round reads of a group through its open files
/// (`sources::cgroup::UsageCounters`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// v2 `memory.current`, v1 `memory.usage_in_bytes`.
    pub usage: Bytes,
    /// The group's lifetime high-water mark: v2 `memory.peak`, v1 `memory.max_usage_in_bytes`
    /// (`memory.current` on v2 kernels before 5.19).
    pub high_water: Bytes,
    /// The highest usage since the previous round: v2 `memory.peak` read through guardian's own
    /// descriptor and reset after each read (kernel 6.12+); `None` elsewhere.
    pub interval_peak: Option<Bytes>,
    /// What reclaim cannot free now, at most `usage` (see [`MemoryReading::unreclaimable`]).
    pub unreclaimable: Bytes,
    /// What reclaim can free now, from the same `memory.stat` read as `unreclaimable` (page
    /// cache that is neither shmem nor mapped, and reclaimable slab on v2) — not `usage` minus
    /// `unreclaimable`: usage is read a moment apart, and a spike freed in that moment would
    /// count as cache.
    pub reclaimable: Bytes,
}

impl Counters {
    /// The part of the usage reclaim can free: page cache that is neither shmem nor mapped.
    pub fn reclaimable(&self) -> Bytes {
        self.reclaimable
    }
}

/// The highest unreclaimable memory in the interval from the round `prev` to the round `now`.
///
/// The interval's usage peak P is `now.interval_peak` (v2 6.12+), or the lifetime high-water
/// mark when it rose since `prev` (a new high was set inside the interval), the larger when
/// both are known; without either the answer is the value now. At the moment of P, unreclaimable memory was P minus the
/// reclaimable page cache of that moment; page cache that only grew or only shrank over the
/// interval was at most the larger of its values at the two ends, so P − that is a lower bound:
/// exact when the page cache did not move during the interval (a spike of anonymous memory on
/// a steady cache, however short), low by at most how far it moved otherwise. Never below the
/// value now.
pub fn unreclaimable_high(prev: Option<&Counters>, now: &Counters) -> Bytes {
    let new_high = prev
        .filter(|p| now.high_water > p.high_water)
        .map(|_| now.high_water);
    let peak = now.interval_peak.max(new_high);
    let Some(peak) = peak else {
        return now.unreclaimable;
    };
    let reclaimable = prev.map_or(now.reclaimable(), |p| {
        p.reclaimable().max(now.reclaimable())
    });
    Bytes(peak.0.saturating_sub(reclaimable.0)).max(now.unreclaimable)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn round(usage: u64, high_water: u64, unreclaimable: u64) -> Counters {
        Counters {
            usage: Bytes(usage * MIB),
            high_water: Bytes(high_water * MIB),
            interval_peak: None,
            unreclaimable: Bytes(unreclaimable * MIB),
            reclaimable: Bytes((usage - unreclaimable) * MIB),
        }
    }

    #[test]
    fn a_spike_that_raises_the_high_water_mark_over_a_steady_cache_is_exact() {
        // 200 MiB of page cache and 3 MiB of anon; between two rounds a 150 MiB anon spike
        // came and went: the high-water mark rose to 353 MiB.
        let before = round(203, 207, 3);
        let after = round(203, 353, 3);
        assert_eq!(unreclaimable_high(Some(&before), &after), Bytes(153 * MIB));
    }

    #[test]
    fn writing_a_file_is_not_an_unreclaimable_peak() {
        // The cache grew from 0 to 100 MiB in the interval, with it the high-water mark.
        let before = round(3, 3, 3);
        let after = round(103, 103, 3);
        assert_eq!(unreclaimable_high(Some(&before), &after), Bytes(3 * MIB));
    }

    #[test]
    fn deleting_a_file_is_not_an_unreclaimable_peak() {
        // The peak was at the start, cache full; by the end the file was deleted.
        let before = round(203, 203, 3);
        let mut after = round(3, 203, 3);
        after.interval_peak = Some(Bytes(203 * MIB));
        assert_eq!(unreclaimable_high(Some(&before), &after), Bytes(3 * MIB));
    }

    #[test]
    fn without_a_new_high_the_interval_is_known_by_its_end_only() {
        // v1 and v2 before 6.12: a spike to 300 MiB under an earlier high of 400 MiB leaves
        // no trace in the lifetime mark.
        let before = round(203, 400, 3);
        let after = round(210, 400, 10);
        assert_eq!(unreclaimable_high(Some(&before), &after), Bytes(10 * MIB));
    }

    #[test]
    fn the_per_descriptor_peak_sees_a_spike_under_an_earlier_high() {
        // v2 6.12+: the same spike under a 400 MiB lifetime mark, seen through the reset fd.
        let before = round(203, 400, 3);
        let mut after = round(203, 400, 3);
        after.interval_peak = Some(Bytes(353 * MIB));
        assert_eq!(unreclaimable_high(Some(&before), &after), Bytes(153 * MIB));
    }

    #[test]
    fn a_spike_while_the_cache_grows_is_low_by_at_most_the_growth() {
        // Cache 0 -> 20 MiB; a 150 MiB spike when the cache was at 10 MiB: peak 163 MiB.
        let before = round(3, 3, 3);
        let mut after = round(23, 163, 3);
        after.interval_peak = Some(Bytes(163 * MIB));
        let got = unreclaimable_high(Some(&before), &after);
        let truth = Bytes(153 * MIB);
        assert!(got <= truth && truth.0 - got.0 <= 20 * MIB, "{got}");
    }

    #[test]
    fn a_new_lifetime_high_counts_even_where_the_per_descriptor_peak_started_late() {
        // The descriptor was opened (and reset) after the spike; the lifetime mark rose.
        let before = round(5, 5, 3);
        let mut after = round(5, 155, 3);
        after.interval_peak = Some(Bytes(5 * MIB));
        assert_eq!(unreclaimable_high(Some(&before), &after), Bytes(153 * MIB));
    }

    #[test]
    fn the_first_round_has_no_interval_without_a_per_descriptor_peak() {
        assert_eq!(
            unreclaimable_high(None, &round(203, 900, 3)),
            Bytes(3 * MIB)
        );
    }
}
