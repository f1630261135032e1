//! From observed peaks to memory limits: peak × (1 + margin), rounded up to a tidy size, and
//! OOM-aware. The peak is the unreclaimable one (page cache the kernel can drop does not need a
//! limit to hold it), or the high-water mark for runs recorded before guardian measured it.
//! OOM-aware — a service killed at its limit never showed its real peak, so its limit is the
//! floor and it grows by at least [`OOM_MIN_BUMP`] (as the Kubernetes VPA recommender bumps
//! OOM-killed containers).

use std::collections::BTreeMap;

use crate::model::{Bytes, LimitKey, RunRecord};
pub use crate::model::{PeakKind, Recommendation, ServiceUsage};

const MIB: u64 = 1 << 20;

/// Groups runs by (project, service), or container name outside compose.
pub fn summarize(runs: &[RunRecord]) -> Vec<ServiceUsage> {
    let mut groups: BTreeMap<(Option<String>, String), Vec<&RunRecord>> = BTreeMap::new();
    for r in runs {
        let service = r.service.clone().unwrap_or_else(|| r.name.clone());
        groups
            .entry((r.project.clone(), service))
            .or_default()
            .push(r);
    }
    groups
        .into_iter()
        .map(|((project, service), runs)| {
            let latest = runs
                .iter()
                .max_by_key(|r| r.started_at_ms)
                .expect("groups are non-empty");
            let ws_sum: u64 = runs.iter().map(|r| r.working_set_sum).sum();
            let ws_n: u64 = runs.iter().map(|r| r.working_set_samples).sum();
            ServiceUsage {
                project,
                service,
                runs: runs.len() as u64,
                peak: runs.iter().map(|r| r.peak).max().unwrap_or_default(),
                peak_unreclaimable: runs.iter().filter_map(|r| r.peak_unreclaimable).max(),
                // Runs the daemon sampled before it measured the unreclaimable peak; a run
                // never sampled at all (a start-up peak `guardian up` recorded, a container
                // that died before its first reading) measured neither and does not count.
                runs_without_unreclaimable: runs
                    .iter()
                    .filter(|r| r.peak_unreclaimable.is_none() && r.working_set_samples > 0)
                    .count() as u64,
                startup_peak: runs
                    .iter()
                    .map(|r| r.startup_peak)
                    .max()
                    .unwrap_or_default(),
                typical_working_set: Bytes(ws_sum.checked_div(ws_n).unwrap_or(0)),
                limit: latest.memory_limit,
                oom_killed: runs.iter().any(|r| r.oom_killed || r.oom_kills > 0),
            }
        })
        .collect()
}

/// Rounds up to a size a person would write: 8 MiB steps up to 256 MiB, 32 MiB up to 1 GiB,
/// 128 MiB up to 4 GiB, then 512 MiB.
pub fn tidy_round_up(b: Bytes) -> Bytes {
    let step = match b.0 {
        n if n <= 256 * MIB => 8 * MIB,
        n if n <= 1024 * MIB => 32 * MIB,
        n if n <= 4096 * MIB => 128 * MIB,
        _ => 512 * MIB,
    };
    // Sizes near the top of u64 come only from hand-made profiles; saturate there rather than
    // wrap to a limit of 0.
    Bytes(b.0.div_ceil(step).max(1).saturating_mul(step))
}

/// The least a limit grows by after an OOM kill at that limit, whatever the margin: a small
/// limit × 1.2 is still too small for a process that wanted far more (the Kubernetes VPA
/// recommender bumps OOM-killed containers by max(×1.2, +100 MiB) for the same reason).
pub const OOM_MIN_BUMP: Bytes = Bytes(100 * MIB);

/// The limit for one service, a floor: max(peak × (1 + margin), and if it was OOM-killed at
/// its limit, max(limit × (1 + margin), limit + [`OOM_MIN_BUMP`])), rounded up to a tidy size;
/// the peak is [`ServiceUsage::sizing_peak`].
pub fn recommend(usage: &ServiceUsage, margin: f64) -> Recommendation {
    let scaled = |b: Bytes| Bytes((b.0 as f64 * (1.0 + margin)).ceil() as u64);
    let (peak, sized_from) = usage.sizing_peak();
    let from_peak = scaled(peak);
    let after_oom = usage.limit.filter(|_| usage.oom_killed).map(|limit| {
        let bumped = Bytes(limit.0.saturating_add(OOM_MIN_BUMP.0));
        (limit, scaled(limit).max(bumped))
    });
    let (base, reason) = match after_oom {
        Some((limit, floor)) if floor >= from_peak => (
            floor,
            format!(
                "OOM-killed at its {limit} limit, so its real peak is unknown: at least {floor}, the larger of limit × {:.2} and limit + {OOM_MIN_BUMP}",
                1.0 + margin
            ),
        ),
        _ => (
            from_peak,
            match sized_from {
                PeakKind::Unreclaimable => format!(
                    "unreclaimable peak {peak} over {} run(s) × {:.2} (high-water mark {}, the rest page cache)",
                    usage.runs,
                    1.0 + margin,
                    usage.peak,
                ),
                PeakKind::HighWater => format!(
                    "peak {peak} over {} run(s) × {:.2}{}",
                    usage.runs,
                    1.0 + margin,
                    high_water_note(usage)
                ),
            },
        ),
    };
    Recommendation {
        usage: usage.clone(),
        recommended_limit: tidy_round_up(base),
        recommended_reservation: tidy_round_up(usage.typical_working_set),
        sized_from,
        reason,
    }
}

/// Why a service is sized from its high-water mark.
fn high_water_note(usage: &ServiceUsage) -> String {
    match usage.runs_without_unreclaimable {
        0 => String::new(),
        n if n == usage.runs => {
            " (high-water mark, page cache included: recorded before guardian measured the unreclaimable peak)".into()
        }
        n => format!(
            " (high-water mark, page cache included: {n} of the runs were recorded before guardian measured the unreclaimable peak)"
        ),
    }
}

/// How the user's compose file sets a service's memory; the override follows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BaseMemory {
    pub key: LimitKey,
    pub limit: Option<Bytes>,
    /// `memswap_limit` in bytes, -1 for unlimited swap.
    pub memswap: Option<i64>,
}

/// What the override sets for one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverrideEntry {
    /// Set `mem_limit` / `mem_reservation`.
    pub mem_limit: bool,
    /// Set `deploy.resources.limits.memory` / `reservations.memory`.
    pub deploy: bool,
    /// Never 0 (0 means no limit to compose).
    pub limit: Bytes,
    /// Never above the limit.
    pub reservation: Bytes,
    /// `memswap_limit`, when the base sets one: the same swap on top of the new limit.
    pub memswap: Option<Bytes>,
}

/// The override for one service: the key the base already uses (Compose v2 refuses a service
/// where `mem_limit` and `deploy.resources.limits.memory` disagree), `memswap_limit` moved with
/// the limit so it never falls below it, and never a limit of 0.
pub fn override_entry(rec: &Recommendation, base: &BaseMemory) -> OverrideEntry {
    let limit = Bytes(rec.recommended_limit.0.max(8 * MIB));
    let memswap = match (base.memswap, base.limit) {
        (None, _) | (Some(-1), _) => None,
        (Some(swap), Some(old)) => {
            Some(Bytes(limit.0 + (swap.max(0) as u64).saturating_sub(old.0)))
        }
        (Some(swap), None) => Some(Bytes((swap.max(0) as u64).max(limit.0))),
    };
    OverrideEntry {
        mem_limit: matches!(base.key, LimitKey::MemLimit | LimitKey::Both),
        deploy: matches!(base.key, LimitKey::Deploy | LimitKey::Both | LimitKey::None),
        limit,
        reservation: rec.recommended_reservation.min(limit),
        memswap,
    }
}

/// Combines profiles from several runners: per service the highest peaks, the sum of runs, and
/// OOM if any runner saw one; the limit is then recommended afresh.
pub fn merge(profiles: &[Vec<Recommendation>], margin: f64) -> Vec<Recommendation> {
    let mut by_key: BTreeMap<(Option<String>, String), ServiceUsage> = BTreeMap::new();
    for rec in profiles.iter().flatten() {
        let mut u = rec.usage.clone();
        // Profiles written before the unreclaimable peak existed have neither field.
        if u.peak_unreclaimable.is_none() {
            u.runs_without_unreclaimable = u.runs;
        }
        let u = &u;
        by_key
            .entry((u.project.clone(), u.service.clone()))
            .and_modify(|m| {
                m.runs += u.runs;
                m.peak = m.peak.max(u.peak);
                m.peak_unreclaimable = m.peak_unreclaimable.max(u.peak_unreclaimable);
                m.runs_without_unreclaimable += u.runs_without_unreclaimable;
                m.startup_peak = m.startup_peak.max(u.startup_peak);
                m.typical_working_set = m.typical_working_set.max(u.typical_working_set);
                m.limit = m.limit.max(u.limit);
                m.oom_killed |= u.oom_killed;
            })
            .or_insert_with(|| u.clone());
    }
    by_key.values().map(|u| recommend(u, margin)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(peak: u64, limit: Option<u64>, oom: bool) -> ServiceUsage {
        ServiceUsage {
            project: Some("ci".into()),
            service: "db".into(),
            runs: 1,
            peak: Bytes(peak),
            peak_unreclaimable: None,
            runs_without_unreclaimable: 1,
            startup_peak: Bytes(peak),
            typical_working_set: Bytes(peak / 2),
            limit: limit.map(Bytes),
            oom_killed: oom,
        }
    }

    #[test]
    fn tidy_sizes_round_up_by_range() {
        assert_eq!(tidy_round_up(Bytes(1)), Bytes(8 * MIB));
        assert_eq!(tidy_round_up(Bytes(100 * MIB)), Bytes(104 * MIB));
        assert_eq!(tidy_round_up(Bytes(300 * MIB)), Bytes(320 * MIB));
        assert_eq!(tidy_round_up(Bytes(2000 * MIB)), Bytes(2048 * MIB));
        assert_eq!(tidy_round_up(Bytes(4097 * MIB)), Bytes(4608 * MIB));
    }

    #[test]
    fn sizes_at_the_top_of_u64_saturate_instead_of_wrapping_to_a_limit_of_zero() {
        // The profile_toml fuzz target panics without the fix on a profile with a peak of
        // i64::MAX and a margin of 1 (fuzz/corpus/profile_toml/huge-peak.toml); a release
        // build wrapped the recommended limit to 0.
        assert_eq!(tidy_round_up(Bytes(u64::MAX)), Bytes(u64::MAX));
        let huge = usage(i64::MAX as u64, Some(i64::MAX as u64), true);
        let r = recommend(&huge, 1.0);
        assert_eq!(r.recommended_limit, Bytes(u64::MAX));
    }

    #[test]
    fn limit_is_peak_plus_margin_rounded_up() {
        let r = recommend(&usage(80 * MIB, Some(512 * MIB), false), 0.2);
        assert_eq!(r.recommended_limit, Bytes(96 * MIB));
        assert!(r.recommended_limit.0 >= (80.0 * 1.2 * MIB as f64) as u64);
        assert_eq!(r.recommended_reservation, Bytes(40 * MIB));
    }

    #[test]
    fn a_small_limit_killed_by_oom_gets_at_least_100_mib_more() {
        // 48 MiB × 1.2 = 57.6 MiB would fail again; +100 MiB is the larger: 148 MiB, rounded
        // up to the next 8 MiB step.
        let r = recommend(&usage(48 * MIB, Some(48 * MIB), true), 0.2);
        assert_eq!(r.recommended_limit, Bytes(152 * MIB));
        assert!(
            r.reason.contains("OOM-killed") && r.reason.contains("at least 148.0MiB"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn a_large_limit_killed_by_oom_gets_the_factor() {
        // 1 GiB × 1.2 = 1.2 GiB beats 1 GiB + 100 MiB; 1228.8 MiB rounds up to 1280 MiB.
        let r = recommend(&usage(1024 * MIB, Some(1024 * MIB), true), 0.2);
        assert!(r.reason.contains("at least 1.2GiB"), "{}", r.reason);
        assert_eq!(r.recommended_limit, Bytes(1280 * MIB));
    }

    #[test]
    fn a_peak_above_the_oom_floor_wins() {
        let r = recommend(&usage(300 * MIB, Some(64 * MIB), true), 0.2);
        assert_eq!(r.recommended_limit, Bytes(384 * MIB));
        assert!(r.reason.starts_with("peak 300.0MiB"), "{}", r.reason);
    }

    #[test]
    fn page_cache_does_not_size_the_limit() {
        // The case: 207 MiB high-water mark, 2.5 MiB that reclaim cannot free.
        let u = ServiceUsage {
            peak_unreclaimable: Some(Bytes(5 * MIB / 2)),
            runs_without_unreclaimable: 0,
            ..usage(207 * MIB, Some(512 * MIB), false)
        };
        let r = recommend(&u, 0.2);
        assert_eq!(r.recommended_limit, Bytes(8 * MIB));
        assert_eq!(r.sized_from, PeakKind::Unreclaimable);
        assert!(
            r.reason.starts_with("unreclaimable peak 2.5MiB") && r.reason.contains("207.0MiB"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn runs_recorded_before_the_unreclaimable_peak_size_from_the_high_water_mark_and_say_so() {
        let run = |id: &str, peak: u64, unreclaimable: Option<u64>| RunRecord {
            container_id: id.into(),
            name: "db".into(),
            peak: Bytes(peak * MIB),
            peak_unreclaimable: unreclaimable.map(|u| Bytes(u * MIB)),
            working_set_samples: 30,
            ..Default::default()
        };
        // A start-up peak `guardian up` recorded was never sampled: it measured neither peak
        // and does not send the service back to the high-water mark.
        let from_up = RunRecord {
            working_set_samples: 0,
            ..run("up", 20, None)
        };
        let u = &summarize(&[run("new", 210, Some(10)), from_up.clone()])[0];
        assert_eq!(u.runs_without_unreclaimable, 0);
        let u = &summarize(&[run("old", 200, None), run("new", 210, Some(10)), from_up])[0];
        assert_eq!(u.peak_unreclaimable, Some(Bytes(10 * MIB)));
        assert_eq!(u.runs_without_unreclaimable, 1);
        let r = recommend(u, 0.2);
        assert_eq!(r.sized_from, PeakKind::HighWater);
        assert_eq!(r.recommended_limit, Bytes(256 * MIB));
        assert!(
            r.reason.contains("1 of the runs were recorded before"),
            "{}",
            r.reason
        );
        let new_only = &summarize(&[run("new", 210, Some(10))])[0];
        assert_eq!(recommend(new_only, 0.2).recommended_limit, Bytes(16 * MIB));
    }

    #[test]
    fn a_profile_without_unreclaimable_peaks_keeps_merges_on_the_high_water_mark() {
        // A runner's profile written before the field existed: neither field in its TOML.
        let old: Recommendation = toml::from_str(
            "project = \"ci\"\nservice = \"db\"\nruns = 3\npeak = 209715200\nstartup_peak = 0\ntypical_working_set = 0\noom_killed = false\nrecommended_limit = 260046848\nrecommended_reservation = 8388608\nreason = \"peak\"\n",
        )
        .unwrap();
        let new = recommend(
            &ServiceUsage {
                peak_unreclaimable: Some(Bytes(10 * MIB)),
                runs_without_unreclaimable: 0,
                ..usage(210 * MIB, None, false)
            },
            0.2,
        );
        let merged = merge(&[vec![old], vec![new]], 0.2);
        assert_eq!(merged[0].usage.runs_without_unreclaimable, 3);
        assert_eq!(merged[0].sized_from, PeakKind::HighWater);
    }

    #[test]
    fn runs_group_by_service_with_the_highest_peak() {
        let run = |id: &str, service: &str, peak: u64, oom: bool| RunRecord {
            container_id: id.into(),
            name: id.into(),
            project: Some("ci".into()),
            service: Some(service.into()),
            peak: Bytes(peak),
            oom_killed: oom,
            working_set_sum: 10,
            working_set_samples: 2,
            ..Default::default()
        };
        let groups = summarize(&[
            run("a", "db", 5, false),
            run("b", "db", 9, false),
            run("c", "web", 3, true),
        ]);
        assert_eq!(groups.len(), 2);
        assert_eq!(
            (groups[0].service.as_str(), groups[0].peak, groups[0].runs),
            ("db", Bytes(9), 2)
        );
        assert_eq!(groups[0].typical_working_set, Bytes(5));
        assert!(groups[1].oom_killed);
    }

    #[test]
    fn a_replicated_service_is_sized_from_its_highest_replica() {
        let replica = |n: u32, peak: u64| RunRecord {
            container_id: format!("web-{n}"),
            name: format!("ci-web-{n}"),
            project: Some("ci".into()),
            service: Some("web".into()),
            peak: Bytes(peak * MIB),
            ..Default::default()
        };
        let u = summarize(&[replica(1, 40), replica(2, 100), replica(3, 60)]);
        assert_eq!(u.len(), 1);
        let r = recommend(&u[0], 0.2);
        assert_eq!(r.recommended_limit, Bytes(120 * MIB));
    }

    #[test]
    fn the_override_keeps_the_base_key_and_its_swap() {
        let r = recommend(&usage(80 * MIB, Some(256 * MIB), false), 0.2);
        let base = BaseMemory {
            key: LimitKey::MemLimit,
            limit: Some(Bytes(256 * MIB)),
            memswap: Some((512 * MIB) as i64),
        };
        let e = override_entry(&r, &base);
        assert!(e.mem_limit && !e.deploy);
        assert_eq!(e.limit, Bytes(96 * MIB));
        // 256 MiB of swap on top, as before.
        assert_eq!(e.memswap, Some(Bytes(352 * MIB)));
        let deploy = override_entry(&r, &BaseMemory::default());
        assert!(deploy.deploy && !deploy.mem_limit && deploy.memswap.is_none());
        let unlimited_swap = override_entry(
            &r,
            &BaseMemory {
                memswap: Some(-1),
                ..base
            },
        );
        assert_eq!(unlimited_swap.memswap, None);
    }

    #[test]
    fn the_override_never_sets_a_limit_of_zero() {
        let r = recommend(&usage(0, None, false), 0.2);
        let e = override_entry(&r, &BaseMemory::default());
        assert!(e.limit.0 > 0 && e.reservation <= e.limit);
    }

    #[test]
    fn merging_runner_profiles_takes_the_max_peak() {
        let a = vec![recommend(&usage(100 * MIB, None, false), 0.2)];
        let b = vec![recommend(&usage(200 * MIB, None, false), 0.2)];
        let merged = merge(&[a, b], 0.2);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].usage.peak, Bytes(200 * MIB));
        assert_eq!(merged[0].usage.runs, 2);
        assert_eq!(merged[0].recommended_limit, Bytes(240 * MIB));
    }
}
