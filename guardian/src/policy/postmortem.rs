//! What an OOM incident means: which killer acted when the kernel log is silent, the limit that
//! would have avoided it, and the next step in plain words. Pure functions of the incident.

use crate::{
    model::{Bytes, Incident},
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

/// The limit that would have held: peak × 1.2 rounded up, and for a cgroup OOM the limit it
/// died at is the floor (its real need was higher than what it could show).
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
        startup_peak: peak,
        typical_working_set: i.working_set.unwrap_or(peak),
        limit: i.limit,
        oom_killed: i.kind == Some(OomKind::Cgroup),
    };
    let r = recommend(&usage, 0.2);
    (Some(r.recommended_limit), r.reason)
}

/// One or two sentences a person can act on.
pub fn next_step(i: &Incident) -> String {
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
        assert_eq!(s, Some(Bytes(80 * MIB)));
        assert!(reason.contains("OOM-killed"), "{reason}");
        i.suggested_limit = s;
        let step = next_step(&i);
        assert!(step.starts_with("ci/db hit its own memory limit of 64.0MiB. Raise it to at least 80.0MiB (e.g. `mem_limit: 80m`"), "{step}");
        assert!(
            step.contains("climbed from 10.0MiB to 64.0MiB in the last 30 s"),
            "{step}"
        );
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
