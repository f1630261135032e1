//! Reading a memory cgroup's files (v1 and v2) and parsing their formats.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use super::{CgroupError, Hierarchy};
use crate::model::{Bytes, Counters, MemoryEvents, MemoryReading, PressureStats};

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

/// The files a sampling round reads, kept open, so each round is a few `pread`s rather than
/// path walks, opens and closes (cgroupfs regenerates the content on every read at offset 0).
#[derive(Debug)]
pub struct UsageCounters {
    v2: bool,
    usage: (PathBuf, std::fs::File),
    high_water: (PathBuf, std::fs::File),
    stat: (PathBuf, std::fs::File),
    /// v1 `memory.kmem.usage_in_bytes`, where the kernel accounts kernel memory.
    kmem: Option<(PathBuf, std::fs::File)>,
    /// v2 `memory.peak` opened for writing: on 6.12+ a write resets the peak seen through this
    /// descriptor alone (other readers keep the group's lifetime high-water mark).
    interval_peak: Option<(PathBuf, std::fs::File)>,
}

impl UsageCounters {
    /// Opens the counters of the group at `memory_rel`; on v2 it also tries to open
    /// `memory.peak` with a per-descriptor reset, and goes without it on kernels before 6.12.
    pub fn open(hierarchy: &Hierarchy, memory_rel: &Path) -> Result<Self, CgroupError> {
        let dir = hierarchy.memory_dir(memory_rel);
        let v2 = hierarchy.memory_is_v2();
        let (usage, high) = if v2 {
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
        let kmem = if v2 {
            None
        } else {
            open(dir.join("memory.kmem.usage_in_bytes")).ok()
        };
        let interval_peak = if v2 {
            open_resettable_peak(&dir.join("memory.peak"))
        } else {
            None
        };
        Ok(Self {
            v2,
            usage: open(usage)?,
            high_water: open(high)?,
            stat: open(dir.join("memory.stat"))?,
            kmem,
            interval_peak,
        })
    }

    /// Whether the kernel gives the highest usage between two rounds (v2 6.12+), so a spike
    /// under the group's lifetime high-water mark is still seen at its height.
    pub fn has_interval_peak(&self) -> bool {
        self.interval_peak.is_some()
    }

    /// The usage, high-water mark, peak since the previous read and unreclaimable memory now;
    /// `Gone` once the group was removed. memory.stat (the costly read: the kernel formats
    /// some forty lines) is read only when something moved since `prev`, the previous round:
    /// with the usage, the high-water mark and the interval peak all where they were, the
    /// split between cache and the rest is taken as unchanged — an idle container costs three
    /// small reads a round.
    pub fn read(&self, prev: Option<&Counters>) -> Result<Counters, CgroupError> {
        let interval_peak = match &self.interval_peak {
            Some(fd) => {
                let peak = pread_u64(fd)?;
                reset_peak(fd)?;
                Some(peak)
            }
            None => None,
        };
        let usage = pread_u64(&self.usage)?;
        let high_water = pread_u64(&self.high_water)?;
        if let Some(p) = prev.filter(|p| {
            p.usage == usage
                && p.high_water == high_water
                && interval_peak.is_none_or(|peak| peak <= usage)
        }) {
            return Ok(Counters {
                usage,
                high_water,
                interval_peak,
                unreclaimable: p.unreclaimable,
                reclaimable: p.reclaimable,
            });
        }
        let stat_text = pread_text(&self.stat)?;
        let stat = parse_kv(&stat_text);
        let unreclaimable = if self.v2 {
            unreclaimable_v2(&stat)
        } else {
            let kmem = match &self.kmem {
                Some(fd) => pread_u64(fd)?.0,
                None => 0,
            };
            unreclaimable_v1(&stat, kmem)
        };
        Ok(Counters {
            usage,
            high_water,
            interval_peak,
            unreclaimable: unreclaimable.min(usage),
            reclaimable: reclaimable_cache(&stat, self.v2),
        })
    }
}

/// `memory.peak` opened read-write and reset once, if this kernel resets it per descriptor
/// (6.12+; before, the file is read-only and the open fails).
fn open_resettable_peak(path: &Path) -> Option<(PathBuf, std::fs::File)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .ok()?;
    let fd = (path.to_path_buf(), file);
    reset_peak(&fd).ok()?;
    Some(fd)
}

fn reset_peak((path, file): &(PathBuf, std::fs::File)) -> Result<(), CgroupError> {
    use std::os::unix::fs::FileExt;
    file.write_at(b"reset\n", 0)
        .map(|_| ())
        .map_err(|e| gone_or(path, e, CgroupError::write))
}

/// A removed cgroup's open files fail with ENODEV.
fn gone_or(
    path: &Path,
    e: std::io::Error,
    other: fn(&Path, std::io::Error) -> CgroupError,
) -> CgroupError {
    if e.raw_os_error() == Some(libc::ENODEV) {
        CgroupError::Gone {
            path: path.to_path_buf(),
        }
    } else {
        other(path, e)
    }
}

/// A whole small file (memory.stat is a few KiB) read from offset 0.
fn pread_text((path, file): &(PathBuf, std::fs::File)) -> Result<String, CgroupError> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 16 << 10];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = file
            .read_at(&mut buf[len..], len as u64)
            .map_err(|e| gone_or(path, e, CgroupError::read))?;
        if n == 0 {
            break;
        }
        len += n;
    }
    buf.truncate(len);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn pread_u64((path, file): &(PathBuf, std::fs::File)) -> Result<Bytes, CgroupError> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 32];
    let n = file
        .read_at(&mut buf, 0)
        .map_err(|e| gone_or(path, e, CgroupError::read))?;
    let text = String::from_utf8_lossy(&buf[..n]);
    text.trim()
        .parse()
        .map(Bytes)
        .map_err(|_| CgroupError::Parse {
            path: path.clone(),
            content: text.into_owned(),
        })
}

/// What reclaim can free in a group, from the same memory.stat read as the unreclaimable part:
/// page cache that is neither shmem nor mapped (v2 `file` − `shmem` − `file_mapped` +
/// `slab_reclaimable`; v1 `total_cache` − `total_shmem` − `total_mapped_file`).
pub fn reclaimable_cache(stat: &HashMap<&str, u64>, v2: bool) -> Bytes {
    let get = |k: &str| stat.get(k).copied().unwrap_or(0);
    Bytes(if v2 {
        // v2 `file` holds shmem and the mapped pages too.
        (get("file").saturating_sub(get("shmem")))
            .saturating_sub(get("file_mapped"))
            .saturating_add(get("slab_reclaimable"))
    } else {
        get("total_cache")
            .saturating_sub(get("total_shmem"))
            .saturating_sub(get("total_mapped_file"))
    })
}

/// What cannot be reclaimed in a v2 group, from its memory.stat: `anon` + `shmem` (tmpfs,
/// shared memory: in `file`, yet only swap can take it) + `file_mapped` (program text,
/// libraries and mmapped files: the file pages a service needs to make progress, which reclaim
/// could only evict to fault them straight back) + kernel memory that cannot be reclaimed
/// (`kernel` − `slab_reclaimable`, or, before `kernel` existed (5.18), `kernel_stack` +
/// `pagetables` + `sec_pagetables` + `percpu` + `vmalloc` + `slab_unreclaimable`) + `sock`.
///
/// Its counterpart, what reclaim can free, is [`reclaimable_cache`].
/// Unmapped page cache is left out even on the active list: a file written and read back is
/// active, yet dropping it only costs reading it again. Mapped shmem is in both `shmem` and
/// `file_mapped`, so the sum can exceed the truth; [`MemoryReading::unreclaimable`] clamps it
/// to the usage.
pub fn unreclaimable_v2(stat: &HashMap<&str, u64>) -> Bytes {
    let get = |k: &str| stat.get(k).copied().unwrap_or(0);
    let kernel = match stat.get("kernel") {
        Some(k) => k.saturating_sub(get("slab_reclaimable")),
        None => [
            "kernel_stack",
            "pagetables",
            "sec_pagetables",
            "percpu",
            "vmalloc",
            "slab_unreclaimable",
        ]
        .into_iter()
        .map(get)
        .sum(),
    };
    Bytes(get("anon") + get("shmem") + get("file_mapped") + kernel + get("sock"))
}

/// What cannot be reclaimed in a v1 group: memory.stat's hierarchical `total_rss` (anonymous
/// memory; it already counts `total_rss_huge`) + `total_shmem` + `total_mapped_file` (as for
/// v2: the mapped file pages) + `kmem`, the group's `memory.kmem.usage_in_bytes`. v1 does not
/// split kernel memory, so reclaimable slab (dentries, inodes) counts too: a little high, on
/// the safe side of a limit.
pub fn unreclaimable_v1(stat: &HashMap<&str, u64>, kmem: u64) -> Bytes {
    let get = |k: &str| stat.get(k).copied().unwrap_or(0);
    Bytes(get("total_rss") + get("total_shmem") + get("total_mapped_file") + kmem)
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
        unreclaimable: unreclaimable_v2(&stat).min(usage),
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
    // Kernels built without kmem accounting have no such file: no kernel memory to count.
    let kmem = optional(read_u64(&dir.join("memory.kmem.usage_in_bytes")))?.unwrap_or(0);
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
        unreclaimable: unreclaimable_v1(&stat, kmem).min(usage),
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

    /// memory.stat of a container under a 512 MiB limit (this host, kernel 6.18, v1) that wrote a
    /// 200 MiB file and read it back twice; its memory.kmem.usage_in_bytes at the same moment.
    const V1_STAT_200M_FILE: &str = include_str!("fixtures/v1-memory.stat-200m-file-read-back");
    const V1_KMEM_200M_FILE: u64 = 6021120;

    #[test]
    fn a_file_written_and_read_back_is_reclaimable_on_v1() {
        let stat = parse_kv(V1_STAT_200M_FILE);
        assert!(stat["total_cache"] > 200 << 20);
        // total_rss 52 KiB + total_shmem 0 + total_mapped_file 504 KiB + kmem 5.7 MiB.
        assert_eq!(
            unreclaimable_v1(&stat, V1_KMEM_200M_FILE),
            Bytes(53248 + 516096 + V1_KMEM_200M_FILE)
        );
    }

    #[test]
    fn v1_unreclaimable_is_rss_shmem_mapped_file_and_kmem() {
        let stat = parse_kv(V1_STAT);
        // 920 MiB of cache, of which 409 MiB active: none of it counts but what is mapped.
        assert_eq!(unreclaimable_v1(&stat, 0), Bytes(2174976 + 561152));
        // rss already holds rss_huge: adding total_rss_huge would count THPs twice.
        let with_thp = V1_STAT.replace("total_rss_huge 0", "total_rss_huge 2097152");
        assert_eq!(
            unreclaimable_v1(&parse_kv(&with_thp), 4096),
            Bytes(2174976 + 561152 + 4096)
        );
    }

    #[test]
    fn v2_unreclaimable_is_anon_shmem_mapped_file_unreclaimable_kernel_and_sock() {
        let stat = parse_kv(V2_STAT);
        // anon 64 KiB + shmem 4 KiB + file_mapped 0 + (kernel 104 KiB − slab_reclaimable 4600)
        // + sock 0.
        assert_eq!(unreclaimable_v2(&stat), Bytes(65536 + 4096 + 106496 - 4600));
    }

    #[test]
    fn v2_before_the_kernel_field_sums_its_unreclaimable_parts() {
        // Kernels before 5.18 have no `kernel` line: stacks, page tables and unreclaimable slab.
        let old: String = V2_STAT
            .lines()
            .filter(|l| !l.starts_with("kernel "))
            .map(|l| format!("{l}\n"))
            .collect();
        let stat = parse_kv(&old);
        assert_eq!(
            unreclaimable_v2(&stat),
            Bytes(65536 + 4096 + 16384 + 20480 + 35384)
        );
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
