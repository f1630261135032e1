//! What an OOM incident means: which killer acted when the kernel log is silent, the limit that
//! would have avoided it, and the next step in plain words. Pure functions of the incident.

use std::collections::BTreeMap;

use crate::{
    model::{Bytes, Filler, Incident, MemoryPart, Point, RssBreakdown},
    policy::profile::{recommend, ServiceUsage},
    report::profile::compose_size,
    sources::kmsg::OomKind,
};

/// A group whose high-water mark reached its limit (within a page batch) hit its own limit.
pub fn kind_from_counters(
    peak: Option<Bytes>,
    limit: Option<Bytes>,
) -> Option<(OomKind, &'static str)> {
    let (peak, limit) = (peak?, limit);
    match limit {
        Some(l) if peak.0 + (1 << 20) >= l.0 => Some((OomKind::Cgroup, "reached its limit")),
        _ => Some((OomKind::Global, "below its limit")),
    }
}

/// The least limit that could have held, a floor: peak × 1.2 rounded up (the unreclaimable peak
/// when the run had one, as `guardian profile` sizes), and for a cgroup OOM
/// max(limit × 1.2, limit + 100 MiB) (its real need was higher than what it could show); the
/// reason says when it was still growing at the kill.
pub fn suggest(i: &Incident) -> (Option<Bytes>, String) {
    let peak = i
        .peak
        .or_else(|| i.timeline.iter().map(|p| p.bytes).max())
        .unwrap_or_default();
    if peak.0 == 0 && i.limit.is_none() {
        return (
            None,
            "no usage was recorded, so no limit can be suggested".into(),
        );
    }
    let usage = ServiceUsage {
        project: i.container.as_ref().and_then(|c| c.project.clone()),
        service: i.name.clone(),
        runs: 1,
        peak,
        peak_unreclaimable: i.peak_unreclaimable,
        runs_without_unreclaimable: u64::from(i.peak_unreclaimable.is_none()),
        startup_peak: peak,
        typical_working_set: i.working_set.unwrap_or(peak),
        limit: i.limit,
        oom_killed: i.kind == Some(OomKind::Cgroup),
    };
    let r = recommend(&usage, 0.2);
    let mut reason = r.reason;
    if let Some(rate) = i.climb_per_s.filter(|r| *r >= STILL_GROWING_PER_S) {
        reason.push_str(&format!(
            "; still growing at {rate}/s at the kill, so a floor"
        ));
    }
    (Some(r.recommended_limit), reason)
}

/// A climb at least this fast (bytes per second) at the kill means the victim was still growing:
/// any limit suggested from what it reached is a floor, not its need.
pub const STILL_GROWING_PER_S: Bytes = Bytes(1 << 20);

/// How far back from the kill the climb rate looks, in milliseconds.
const CLIMB_WINDOW_MS: i64 = 2000;

/// The largest part of a cgroup's charge at the kill, from its memory.stat (kernel field names)
/// read when guardian saw the kill, and the victim's RSS from the kernel's kill record: by the
/// time memory.stat is read the victim's own pages may already be freed (the OOM reaper is
/// quick), so each part is at least the victim's share of it. v2 splits `anon`, `file` (which
/// includes `shmem`), `kernel` and `sock`; v1 `total_rss` and `total_cache` (which includes
/// `total_shmem`; the local names when the totals are absent). Page cache is `file` − `shmem`
/// so each byte counts once. `None` when nothing is known.
pub fn filled_by(stat: &BTreeMap<String, Bytes>, victim: Option<&RssBreakdown>) -> Option<Filler> {
    let get = |names: &[&str]| names.iter().find_map(|n| stat.get(*n)).map(|b| b.0);
    let v2 = stat.contains_key("anon");
    let (anon, file, shmem) = if v2 {
        (get(&["anon"]), get(&["file"]), get(&["shmem"]))
    } else {
        (
            get(&["total_rss", "rss"]),
            get(&["total_cache", "cache"]),
            get(&["total_shmem", "shmem"]),
        )
    };
    let at_least =
        |from_stat: Option<u64>, from_victim: Option<Bytes>| match (from_stat, from_victim) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0).max(b.map_or(0, |b| b.0))),
        };
    let shmem_stat = shmem.unwrap_or(0);
    let parts = [
        (MemoryPart::Anon, at_least(anon, victim.map(|v| v.anon_rss))),
        (
            MemoryPart::File,
            at_least(
                file.map(|f| f.saturating_sub(shmem_stat)),
                victim.map(|v| v.file_rss),
            ),
        ),
        (
            MemoryPart::Shmem,
            at_least(shmem, victim.map(|v| v.shmem_rss)),
        ),
        (MemoryPart::Kernel, get(&["kernel"])),
        (MemoryPart::Sock, get(&["sock"])),
    ];
    parts
        .into_iter()
        .filter_map(|(part, b)| Some((part, b?)))
        .filter(|(_, b)| *b > 0)
        .max_by_key(|(_, b)| *b)
        .map(|(part, b)| Filler {
            part,
            bytes: Bytes(b),
        })
}

/// How fast usage climbed over the last [`CLIMB_WINDOW_MS`] before the kill (points at t ≤ 0),
/// in bytes per second; `None` with fewer than two points there or no time between them. A
/// falling usage gives 0.
pub fn climb_per_s(timeline: &[Point]) -> Option<Bytes> {
    let recent: Vec<&Point> = timeline
        .iter()
        .filter(|p| p.t_ms <= 0 && p.t_ms >= -CLIMB_WINDOW_MS)
        .collect();
    let (first, last) = (recent.first()?, recent.last()?);
    let dt_ms = last.t_ms - first.t_ms;
    if dt_ms <= 0 {
        return None;
    }
    let rise = last.bytes.0.saturating_sub(first.bytes.0);
    Some(Bytes(rise * 1000 / dt_ms as u64))
}

/// Words for the part that filled the limit, and for tmpfs what a person must know: killing
/// processes frees none of it.
pub fn filler_words(i: &Incident) -> Option<String> {
    let f = i.filled_by?;
    let what = match f.part {
        MemoryPart::Anon => "anonymous memory (anon: heaps and stacks of its processes)",
        MemoryPart::File => "page cache (file: files read or written on disk)",
        MemoryPart::Shmem => "tmpfs and shared memory (shmem)",
        MemoryPart::Kernel => "kernel memory (kernel: slab, stacks, page tables)",
        MemoryPart::Sock => "socket buffers (sock)",
    };
    let mut words = format!("{what}, {} of the group's memory", f.bytes);
    if f.part == MemoryPart::Shmem {
        let mounts: Vec<String> = i
            .tmpfs
            .iter()
            .map(|m| match m.size {
                Some(s) => format!("{} ({s}, {})", m.path, m.source),
                None => format!("{} ({})", m.path, m.source),
            })
            .collect();
        words.push_str(
            ". Files in tmpfs outlive the process that wrote them: killing processes does not free this memory, deleting the files does",
        );
        if !mounts.is_empty() {
            words.push_str(&format!(
                "; the container's tmpfs mounts: {}",
                mounts.join(", ")
            ));
        }
    }
    Some(words)
}

/// One or two sentences a person can act on.
pub fn next_step(i: &Incident) -> String {
    let mut step = next_step_core(i);
    if let Some(rate) = i.climb_per_s.filter(|r| *r >= STILL_GROWING_PER_S) {
        step.push_str(&format!(
            " It was still growing at {rate}/s when it was killed: the suggested limit is a floor, it may need more."
        ));
    }
    if let Some(f) = i.filled_by.filter(|f| f.part == MemoryPart::Shmem) {
        step.push_str(&format!(
            " tmpfs/shared memory (shmem, {}) filled the limit: killing processes does not free it; delete the files, or give the tmpfs a size below the limit.",
            f.bytes
        ));
    }
    if i.container_survived == Some(true) {
        step.push_str(" The container survived: a child process was killed and the container went on running.");
    }
    step
}

fn next_step_core(i: &Incident) -> String {
    let climb = match (i.timeline.first(), i.timeline.last()) {
        (Some(a), Some(b)) if b.bytes > a.bytes => format!(
            " It climbed from {} to {} in the last {} s.",
            a.bytes,
            b.bytes,
            (b.t_ms - a.t_ms).max(0) / 1000
        ),
        _ => String::new(),
    };
    match (i.kind, i.suggested_limit, i.limit) {
        (Some(OomKind::Cgroup), Some(s), Some(l)) => format!(
            "{} hit its own memory limit of {l}. Raise it to at least {s} (e.g. `mem_limit: {}` or deploy.resources.limits.memory in the compose file), or find why it needs more.{climb}",
            i.name,
            compose_size(s)
        ),
        (Some(OomKind::Cgroup), _, _) => format!(
            "{} hit a memory limit of its cgroup. Raise that limit or find why it needs more.{climb}",
            i.name
        ),
        (Some(OomKind::Global), _, _) => {
            let top = i
                .neighbours
                .first()
                .map(|n| format!(" The largest other container was {} at {}.", n.name, n.usage))
                .unwrap_or_default();
            format!(
                "The host ran out of memory and the kernel chose {}; it was not over a limit of its own.{top} Give the heavy services limits (`guardian profile` suggests them) or budgets, or run fewer jobs at once.",
                i.name
            )
        }
        (None, _, _) => format!(
            "{} was OOM-killed; guardian could not tell whether its own limit or the host ran out. Compare its peak with its limit below.",
            i.name
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Point;

    const MIB: u64 = 1 << 20;

    fn incident(kind: Option<OomKind>, peak: u64, limit: Option<u64>) -> Incident {
        Incident {
            id: "x".into(),
            time: "2026-11-25T00:00:00Z".into(),
            kind,
            name: "ci/db".into(),
            limit: limit.map(|l| Bytes(l * MIB)),
            peak: Some(Bytes(peak * MIB)),
            timeline: vec![
                Point {
                    t_ms: -30_000,
                    bytes: Bytes(10 * MIB),
                },
                Point {
                    t_ms: 0,
                    bytes: Bytes(peak * MIB),
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn the_counters_tell_a_limit_hit_from_a_host_shortage() {
        assert_eq!(
            kind_from_counters(Some(Bytes(64 * MIB)), Some(Bytes(64 * MIB)))
                .unwrap()
                .0,
            OomKind::Cgroup
        );
        assert_eq!(
            kind_from_counters(Some(Bytes(20 * MIB)), Some(Bytes(64 * MIB)))
                .unwrap()
                .0,
            OomKind::Global
        );
        assert_eq!(
            kind_from_counters(Some(Bytes(20 * MIB)), None).unwrap().0,
            OomKind::Global
        );
        assert_eq!(kind_from_counters(None, Some(Bytes(1))), None);
    }

    #[test]
    fn a_cgroup_oom_suggests_above_its_limit_and_says_how() {
        let mut i = incident(Some(OomKind::Cgroup), 64, Some(64));
        let (s, reason) = suggest(&i);
        // max(64 × 1.2, 64 + 100) = 164 MiB, rounded up to 168 MiB.
        assert_eq!(s, Some(Bytes(168 * MIB)));
        assert!(reason.contains("OOM-killed"), "{reason}");
        i.suggested_limit = s;
        let step = next_step(&i);
        assert!(step.starts_with("ci/db hit its own memory limit of 64.0MiB. Raise it to at least 168.0MiB (e.g. `mem_limit: 168m`"), "{step}");
        assert!(
            step.contains("climbed from 10.0MiB to 64.0MiB in the last 30 s"),
            "{step}"
        );
    }

    fn stat(fields: &[(&str, u64)]) -> BTreeMap<String, Bytes> {
        fields
            .iter()
            .map(|(k, v)| (k.to_string(), Bytes(*v)))
            .collect()
    }

    #[test]
    fn tmpfs_that_filled_a_v1_group_is_named_shmem_not_page_cache() {
        // v1 memory.stat of a 64 MiB container after dd wrote into /dev/shm: cache includes shmem.
        let s = stat(&[
            ("total_rss", MIB),
            ("total_cache", 63 * MIB),
            ("total_shmem", 62 * MIB),
            ("total_mapped_file", 0),
        ]);
        assert_eq!(
            filled_by(&s, None),
            Some(Filler {
                part: MemoryPart::Shmem,
                bytes: Bytes(62 * MIB)
            })
        );
    }

    #[test]
    fn anonymous_memory_that_filled_a_v2_group_is_named_anon() {
        let s = stat(&[
            ("anon", 60 * MIB),
            ("file", 3 * MIB),
            ("shmem", MIB),
            ("kernel", MIB),
            ("sock", 0),
        ]);
        assert_eq!(filled_by(&s, None).unwrap().part, MemoryPart::Anon);
        assert_eq!(filled_by(&BTreeMap::new(), None), None);
    }

    #[test]
    fn a_victim_already_reaped_when_memory_stat_was_read_still_counts_by_its_rss() {
        // Captured in the cgroup v2 runner VM: the oomer's heap was freed before memory.stat was
        // read, leaving kernel memory the largest part; the kill record has its 31 MiB anon.
        let s = stat(&[
            ("anon", 0),
            ("file", 0),
            ("shmem", 0),
            ("kernel", 135168),
            ("sock", 0),
        ]);
        let rss = RssBreakdown {
            total_vm: Bytes(34 * MIB),
            anon_rss: Bytes(31 * MIB),
            file_rss: Bytes(MIB),
            shmem_rss: Bytes(0),
            pgtables: None,
            source: crate::model::Source::Tracepoint,
        };
        assert_eq!(
            filled_by(&s, Some(&rss)),
            Some(Filler {
                part: MemoryPart::Anon,
                bytes: Bytes(31 * MIB)
            })
        );
        // Not reaped yet (v1 on the host): the larger of the two, not their sum.
        let v1 = stat(&[
            ("total_rss", 32 * MIB),
            ("total_cache", 0),
            ("total_shmem", 0),
        ]);
        assert_eq!(filled_by(&v1, Some(&rss)).unwrap().bytes, Bytes(32 * MIB));
    }

    #[test]
    fn a_shmem_kill_says_killing_does_not_free_it_and_lists_the_mounts() {
        let mut i = incident(Some(OomKind::Cgroup), 64, Some(64));
        i.filled_by = Some(Filler {
            part: MemoryPart::Shmem,
            bytes: Bytes(62 * MIB),
        });
        i.tmpfs = vec![crate::model::TmpfsMount {
            path: "/dev/shm".into(),
            size: Some(Bytes(256 * MIB)),
            source: "HostConfig.ShmSize".into(),
        }];
        let words = filler_words(&i).unwrap();
        assert!(
            words.starts_with("tmpfs and shared memory (shmem), 62.0MiB"),
            "{words}"
        );
        assert!(words.contains("killing processes does not free"), "{words}");
        assert!(
            words.contains("/dev/shm (256.0MiB, HostConfig.ShmSize)"),
            "{words}"
        );
        assert!(next_step(&i).contains("killing processes does not free it"));
    }

    #[test]
    fn the_climb_rate_comes_from_the_last_two_seconds() {
        let p = |t_ms, mib: u64| Point {
            t_ms,
            bytes: Bytes(mib * MIB),
        };
        // 10 MiB at -30 s is outside the window; 8 → 48 MiB over 400 ms is 100 MiB/s.
        let t = [p(-30_000, 10), p(-400, 8), p(-200, 28), p(0, 48)];
        assert_eq!(climb_per_s(&t), Some(Bytes(100 * MIB)));
        assert_eq!(climb_per_s(&[p(0, 48)]), None);
        assert_eq!(climb_per_s(&[p(-1000, 48), p(0, 20)]), Some(Bytes(0)));
    }

    #[test]
    fn a_victim_still_growing_at_the_kill_is_told_the_suggestion_is_a_floor() {
        let mut i = incident(Some(OomKind::Cgroup), 48, Some(48));
        i.climb_per_s = Some(Bytes(100 * MIB));
        let (s, reason) = suggest(&i);
        assert_eq!(s, Some(Bytes(152 * MIB)));
        assert!(reason.contains("at least 148.0MiB"), "{reason}");
        i.suggested_limit = s;
        let step = next_step(&i);
        assert!(step.contains("Raise it to at least 152.0MiB"), "{step}");
        assert!(step.contains("still growing at 100.0MiB/s"), "{step}");
        i.climb_per_s = Some(Bytes(0));
        assert!(!next_step(&i).contains("still growing"));
    }

    #[test]
    fn a_child_killed_in_a_surviving_container_is_said_so() {
        let mut i = incident(Some(OomKind::Cgroup), 64, Some(64));
        i.container_survived = Some(true);
        assert!(next_step(&i).contains("The container survived"));
    }

    #[test]
    fn a_global_oom_names_the_largest_neighbour() {
        let mut i = incident(Some(OomKind::Global), 20, None);
        i.neighbours.push(crate::model::Neighbour {
            name: "ci/clickhouse".into(),
            usage: Bytes(900 * MIB),
            peak: Bytes(950 * MIB),
            limit: None,
            timeline: vec![],
        });
        let step = next_step(&i);
        assert!(step.contains("host ran out of memory"), "{step}");
        assert!(step.contains("ci/clickhouse at 900.0MiB"), "{step}");
    }
}
