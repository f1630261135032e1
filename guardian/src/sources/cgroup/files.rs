//! Reading a memory cgroup's files (v1 and v2) and parsing their formats.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use super::{CgroupError, Hierarchy};
use crate::model::{Bytes, MemoryEvents, MemoryReading, PressureStats};

/// v1 reports "no limit" as a huge page-aligned number (PAGE_COUNTER_MAX pages); anything at or
/// above 2^62 bytes is unlimited.
const V1_UNLIMITED: u64 = 1 << 62;

/// Parses `key value` lines (memory.stat, memory.events, memory.oom_control, cgroup.events).
pub fn parse_kv(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key, value.trim().parse().ok()?))
        })
        .collect()
}

/// Parses a PSI file (`some avg10=… avg60=… avg300=… total=…` and the `full` line).
pub fn parse_pressure(text: &str) -> Option<PressureStats> {
    let mut stats = PressureStats::default();
    let mut seen_some = false;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let target = match words.next()? {
            "some" => {
                seen_some = true;
                &mut stats.some
            }
            "full" => &mut stats.full,
            _ => return None,
        };
        for word in words {
            let (key, value) = word.split_once('=')?;
            match key {
                "avg10" => target.avg10 = value.parse().ok()?,
                "avg60" => target.avg60 = value.parse().ok()?,
                "avg300" => target.avg300 = value.parse().ok()?,
                "total" => target.total_us = value.parse().ok()?,
                _ => {}
            }
        }
    }
    seen_some.then_some(stats)
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|e| CgroupError::read(path, e))
}

fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    let text = read(path)?;
    text.trim().parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        content: text,
    })
}

/// A v2 limit file: a number, or "max" for none.
fn read_v2_limit(path: &Path) -> Result<Option<Bytes>, CgroupError> {
    let text = read(path)?;
    match text.trim() {
        "max" => Ok(None),
        n => n
            .parse()
            .map(|n| Some(Bytes(n)))
            .map_err(|_| CgroupError::Parse {
                path: path.to_path_buf(),
                content: text.clone(),
            }),
    }
}

/// Optional files (memory.peak needs 5.19) read as `None` when absent.
fn optional<T>(result: Result<T, CgroupError>) -> Result<Option<T>, CgroupError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(CgroupError::Gone { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads one memory cgroup: `memory_rel` is its path in the memory hierarchy and `unified_rel`
/// its path in the unified tree (for PSI on hybrid hosts); both relative to their roots.
pub fn read_memory(
    hierarchy: &Hierarchy,
    memory_rel: &Path,
    unified_rel: Option<&Path>,
) -> Result<MemoryReading, CgroupError> {
    let dir = hierarchy.memory_dir(memory_rel);
    if !dir.is_dir() {
        return Err(CgroupError::Gone { path: dir });
    }
    let pressure_file: Option<PathBuf> = if hierarchy.memory_is_v2() {
        Some(dir.join("memory.pressure"))
    } else {
        unified_rel
            .and_then(|rel| hierarchy.unified_dir(rel))
            .map(|d| d.join("memory.pressure"))
    };
    let pressure = match pressure_file {
        Some(file) => optional(read(&file))?.as_deref().and_then(parse_pressure),
        None => None,
    };
    let mut reading = if hierarchy.memory_is_v2() {
        read_v2(&dir)?
    } else {
        read_v1(&dir)?
    };
    reading.pressure = pressure;
    Ok(reading)
}

/// memory.stat fields that count bytes (the rest count events or pages scanned), v2 and v1
/// names; v1's hierarchical `total_<name>` variants are kept too.
const STAT_BYTE_FIELDS: &[&str] = &[
    // v2 (Documentation/admin-guide/cgroup-v2.rst, "memory.stat")
    "anon",
    "file",
    "kernel",
    "kernel_stack",
    "pagetables",
    "sec_pagetables",
    "percpu",
    "sock",
    "vmalloc",
    "shmem",
    "zswap",
    "zswapped",
    "file_mapped",
    "file_dirty",
    "file_writeback",
    "swapcached",
    "anon_thp",
    "file_thp",
    "shmem_thp",
    "slab_reclaimable",
    "slab_unreclaimable",
    "slab",
    // v1 (Documentation/admin-guide/cgroup-v1/memory.rst, "memory.stat file")
    "cache",
    "rss",
    "rss_huge",
    "mapped_file",
    "dirty",
    "writeback",
    "swap",
    // both
    "inactive_anon",
    "active_anon",
    "inactive_file",
    "active_file",
    "unevictable",
];

/// The byte fields of a memory cgroup's memory.stat under the kernel's names (see
/// [`STAT_BYTE_FIELDS`]), for a post-mortem's "what filled it".
pub fn read_memory_stat(
    hierarchy: &Hierarchy,
    memory_rel: &Path,
) -> Result<BTreeMap<String, Bytes>, CgroupError> {
    let text = read(&hierarchy.memory_dir(memory_rel).join("memory.stat"))?;
    Ok(stat_bytes(&text))
}

/// The byte fields of memory.stat text.
pub fn stat_bytes(text: &str) -> BTreeMap<String, Bytes> {
    parse_kv(text)
        .into_iter()
        .filter(|(k, _)| STAT_BYTE_FIELDS.contains(&k.strip_prefix("total_").unwrap_or(k)))
        .map(|(k, v)| (k.to_string(), Bytes(v)))
        .collect()
}

/// The kernel's high-water mark of a memory cgroup (v1 `memory.max_usage_in_bytes`, v2
/// `memory.peak`), or its usage on v2 kernels before 5.19 that have no peak file: one read.
pub fn read_high_water(hierarchy: &Hierarchy, memory_rel: &Path) -> Result<Bytes, CgroupError> {
    let dir = hierarchy.memory_dir(memory_rel);
    if !hierarchy.memory_is_v2() {
        return read_u64(&dir.join("memory.max_usage_in_bytes")).map(Bytes);
    }
    match optional(read_u64(&dir.join("memory.peak")))? {
        Some(peak) => Ok(Bytes(peak)),
        None => read_u64(&dir.join("memory.current")).map(Bytes),
    }
}

/// A memory cgroup's usage alone (v2 `memory.current`, v1 `memory.usage_in_bytes`): one read.
pub fn read_usage(hierarchy: &Hierarchy, memory_rel: &Path) -> Result<Bytes, CgroupError> {
    let file = if hierarchy.memory_is_v2() {
        "memory.current"
    } else {
        "memory.usage_in_bytes"
    };
    read_u64(&hierarchy.memory_dir(memory_rel).join(file)).map(Bytes)
}

/// A memory cgroup's usage and high-water mark with their files kept open, so each sampling
/// round is two `pread`s rather than two path walks, opens and closes (cgroupfs regenerates the
/// content on every read at offset 0).
#[derive(Debug)]
pub struct UsageCounters {
    usage: (PathBuf, std::fs::File),
    high_water: (PathBuf, std::fs::File),
}

impl UsageCounters {
    /// Opens the counters of the group at `memory_rel`.
    pub fn open(hierarchy: &Hierarchy, memory_rel: &Path) -> Result<Self, CgroupError> {
        let dir = hierarchy.memory_dir(memory_rel);
        let (usage, high) = if hierarchy.memory_is_v2() {
            let peak = dir.join("memory.peak");
            let high = if peak.exists() {
                peak
            } else {
                dir.join("memory.current")
            };
            (dir.join("memory.current"), high)
        } else {
            (
                dir.join("memory.usage_in_bytes"),
                dir.join("memory.max_usage_in_bytes"),
            )
        };
        let open = |p: PathBuf| {
            std::fs::File::open(&p)
                .map(|f| (p.clone(), f))
                .map_err(|e| CgroupError::read(&p, e))
        };
        Ok(Self {
            usage: open(usage)?,
            high_water: open(high)?,
        })
    }

    /// The usage and the high-water mark now; `Gone` once the group was removed.
    pub fn read(&self) -> Result<(Bytes, Bytes), CgroupError> {
        Ok((pread_u64(&self.usage)?, pread_u64(&self.high_water)?))
    }
}

fn pread_u64((path, file): &(PathBuf, std::fs::File)) -> Result<Bytes, CgroupError> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 32];
    let n = file.read_at(&mut buf, 0).map_err(|e| {
        // A removed cgroup's open files fail with ENODEV.
        if e.raw_os_error() == Some(libc::ENODEV) {
            CgroupError::Gone { path: path.clone() }
        } else {
            CgroupError::read(path, e)
        }
    })?;
    let text = String::from_utf8_lossy(&buf[..n]);
    text.trim()
        .parse()
        .map(Bytes)
        .map_err(|_| CgroupError::Parse {
            path: path.clone(),
            content: text.into_owned(),
        })
}

/// The counters of a parsed `memory.events`; absent keys (older kernels) count 0.
fn memory_events(events: &HashMap<&str, u64>) -> MemoryEvents {
    let get = |k: &str| events.get(k).copied().unwrap_or(0);
    MemoryEvents {
        low: get("low"),
        high: get("high"),
        max: get("max"),
        oom: get("oom"),
        oom_kill: get("oom_kill"),
    }
}

fn read_v2(dir: &Path) -> Result<MemoryReading, CgroupError> {
    let usage = Bytes(read_u64(&dir.join("memory.current"))?);
    let stat_text = read(&dir.join("memory.stat"))?;
    let stat = parse_kv(&stat_text);
    let events_text = read(&dir.join("memory.events"))?;
    let events = parse_kv(&events_text);
    let inactive_file = stat.get("inactive_file").copied().unwrap_or(0);
    Ok(MemoryReading {
        usage,
        peak: optional(read_u64(&dir.join("memory.peak")))?.map(Bytes),
        limit: read_v2_limit(&dir.join("memory.max"))?,
        high: read_v2_limit(&dir.join("memory.high"))?,
        working_set: Bytes(usage.0.saturating_sub(inactive_file)),
        anon: Bytes(stat.get("anon").copied().unwrap_or(0)),
        file: Bytes(stat.get("file").copied().unwrap_or(0)),
        shmem: Bytes(stat.get("shmem").copied().unwrap_or(0)),
        oom_kills: events.get("oom_kill").copied().unwrap_or(0),
        pressure: None,
        events: Some(memory_events(&events)),
        swap: optional(read_u64(&dir.join("memory.swap.current")))?.map(Bytes),
    })
}

fn read_v1(dir: &Path) -> Result<MemoryReading, CgroupError> {
    let usage = Bytes(read_u64(&dir.join("memory.usage_in_bytes"))?);
    let stat_text = read(&dir.join("memory.stat"))?;
    let stat = parse_kv(&stat_text);
    let oom_text = read(&dir.join("memory.oom_control"))?;
    let oom = parse_kv(&oom_text);
    let limit = read_u64(&dir.join("memory.limit_in_bytes"))?;
    // total_* include descendants, like v2's hierarchical memory.stat.
    let inactive_file = stat.get("total_inactive_file").copied().unwrap_or(0);
    Ok(MemoryReading {
        usage,
        peak: Some(Bytes(read_u64(&dir.join("memory.max_usage_in_bytes"))?)),
        limit: (limit < V1_UNLIMITED).then_some(Bytes(limit)),
        high: None,
        working_set: Bytes(usage.0.saturating_sub(inactive_file)),
        anon: Bytes(stat.get("total_rss").copied().unwrap_or(0)),
        file: Bytes(stat.get("total_cache").copied().unwrap_or(0)),
        shmem: Bytes(stat.get("total_shmem").copied().unwrap_or(0)),
        oom_kills: oom.get("oom_kill").copied().unwrap_or(0),
        pressure: None,
        events: None,
        // Present only when the kernel accounts swap (swapaccount=1).
        swap: optional(read_u64(&dir.join("memory.memsw.usage_in_bytes")))?
            .map(|memsw| Bytes(memsw.saturating_sub(usage.0))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_STAT: &str = include_str!("fixtures/v1-memory.stat");
    const V1_OOM_CONTROL: &str = include_str!("fixtures/v1-memory.oom_control");
    const V2_STAT: &str = include_str!("fixtures/v2-memory.stat");
    const V2_EVENTS: &str = include_str!("fixtures/v2-memory.events");
    const PROC_PRESSURE: &str = include_str!("fixtures/proc-pressure-memory");
    const PRESSURE_UNDER_LOAD: &str = include_str!("fixtures/memory.pressure-under-load");

    #[test]
    fn memory_stat_keeps_the_byte_fields_under_the_kernels_names() {
        let v1 = stat_bytes(V1_STAT);
        assert_eq!(v1["cache"], Bytes(964755456));
        assert!(v1.contains_key("total_shmem") && v1.contains_key("rss"));
        assert!(!v1.contains_key("pgfault") && !v1.contains_key("hierarchical_memory_limit"));
        let v2 = stat_bytes(V2_STAT);
        assert_eq!(v2["anon"], Bytes(65536));
        assert!(v2.contains_key("shmem") && v2.contains_key("kernel"));
        assert!(!v2.contains_key("pgfault") && !v2.contains_key("workingset_refault_anon"));
    }

    #[test]
    fn v1_memory_stat_parses_totals() {
        let stat = parse_kv(V1_STAT);
        assert_eq!(stat["cache"], 964755456);
        assert_eq!(stat["total_inactive_file"], 535392256);
        assert_eq!(stat["hierarchical_memory_limit"], 9223372036854771712);
    }

    #[test]
    fn v1_oom_control_has_the_kill_counter() {
        let oom = parse_kv(V1_OOM_CONTROL);
        assert_eq!(oom["oom_kill_disable"], 0);
        assert_eq!(oom["oom_kill"], 0);
    }

    #[test]
    fn v2_memory_stat_and_events_parse() {
        let stat = parse_kv(V2_STAT);
        assert_eq!(stat["anon"], 65536);
        assert_eq!(stat["inactive_file"], 0);
        let events = parse_kv(V2_EVENTS);
        assert_eq!(events.len(), 6);
        assert_eq!(events["oom_kill"], 0);
    }

    #[test]
    fn memory_events_counters_come_from_their_keys() {
        let text = "low 1\nhigh 22\nmax 333\noom 4\noom_kill 5\noom_group_kill 0\n";
        let e = memory_events(&parse_kv(text));
        assert_eq!(
            (e.low, e.high, e.max, e.oom, e.oom_kill),
            (1, 22, 333, 4, 5)
        );
        assert_eq!(memory_events(&parse_kv(V2_EVENTS)), MemoryEvents::default());
    }

    #[test]
    fn idle_host_pressure_is_zero() {
        let p = parse_pressure(PROC_PRESSURE).unwrap();
        assert_eq!(p.some.total_us, 0);
        assert_eq!(p.full.avg10, 0.0);
    }

    #[test]
    fn pressure_under_load_has_averages_and_totals() {
        let p = parse_pressure(PRESSURE_UNDER_LOAD).unwrap();
        assert!(p.some.avg10 > 0.0, "{p:?}");
        assert!(p.some.total_us >= p.full.total_us);
    }

    #[test]
    fn garbage_is_not_pressure() {
        assert_eq!(parse_pressure("hello world\n"), None);
        assert_eq!(parse_pressure(""), None);
    }
}
