//! Health levels: how close a container is to the ceiling that would stop it, and the host to
//! running out, in four levels (safe, warning, critical, emergency) with configurable
//! thresholds. A container is judged by its working set (usage − inactive_file, what the kernel
//! cannot drop without I/O) against the lowest ceiling in force: its memory limit, the
//! memory.high a person or guardian set, or its budget. The host is judged by what MemTotal has
//! left in MemAvailable (`/proc/meminfo`). Pure functions.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::model::Bytes;

/// The four levels, ordered: `Safe < Warning < Critical < Emergency`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Safe,
    Warning,
    Critical,
    Emergency,
}

impl Level {
    /// The level as a number for metrics: 0 safe … 3 emergency.
    pub fn as_number(self) -> u8 {
        self as u8
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Safe => "safe",
            Level::Warning => "warning",
            Level::Critical => "critical",
            Level::Emergency => "emergency",
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where each level starts, as a share of the ceiling (0–1, ascending). The defaults are the
/// ones teams already use in their own health reports: safe < 50 %, warning 50–75 %, critical
/// 75–90 %, emergency ≥ 90 %.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    pub warning: f64,
    pub critical: f64,
    pub emergency: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            warning: 0.5,
            critical: 0.75,
            emergency: 0.9,
        }
    }
}

impl Thresholds {
    /// Why these thresholds cannot be used, if they cannot: each a share in (0, 1], strictly
    /// ascending. The message starts with the offending key, as the config's errors do.
    pub fn invalid(&self) -> Option<String> {
        let keys = [
            ("warning", self.warning),
            ("critical", self.critical),
            ("emergency", self.emergency),
        ];
        if let Some((key, v)) = keys.iter().find(|(_, v)| !(*v > 0.0 && *v <= 1.0)) {
            return Some(format!(
                "{key} = {v} must be a share above 0 and at most 1 (0.5 = 50 %)"
            ));
        }
        keys.windows(2).find(|w| w[0].1 >= w[1].1).map(|w| {
            format!(
                "{} = {} must be below {} = {}: the levels ascend warning < critical < emergency",
                w[0].0, w[0].1, w[1].0, w[1].1
            )
        })
    }

    /// The level of a share of the ceiling.
    pub fn level(&self, share: f64) -> Level {
        if share >= self.emergency {
            Level::Emergency
        } else if share >= self.critical {
            Level::Critical
        } else if share >= self.warning {
            Level::Warning
        } else {
            Level::Safe
        }
    }
}

/// The ceiling a level was measured against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Against {
    /// memory.max / memory.limit_in_bytes (Docker's `--memory`).
    Limit,
    /// memory.high in force (cgroup v2), set by a person or by guardian's ladder.
    MemoryHigh,
    /// The container's budget (label, rule or profile).
    Budget,
    /// The host: MemTotal − MemAvailable against MemTotal.
    Host,
}

impl std::fmt::Display for Against {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Against::Limit => "limit",
            Against::MemoryHigh => "memory.high",
            Against::Budget => "budget",
            Against::Host => "host",
        })
    }
}

/// A level with the numbers that gave it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Health {
    pub level: Level,
    /// Used share of the ceiling, 0–1 (can exceed 1 above a budget or memory.high).
    pub share: f64,
    pub against: Against,
    /// The ceiling in bytes.
    pub ceiling: Bytes,
}

/// A container's level: its working set against the lowest of limit, memory.high and budget.
/// `None` when it has no ceiling at all (no limit, no memory.high, no budget): only the host's
/// level says anything about it then.
pub fn container(
    working_set: Bytes,
    limit: Option<Bytes>,
    high: Option<Bytes>,
    budget: Option<Bytes>,
    t: &Thresholds,
) -> Option<Health> {
    let (ceiling, against) = [
        (limit, Against::Limit),
        (high, Against::MemoryHigh),
        (budget, Against::Budget),
    ]
    .into_iter()
    .filter_map(|(b, a)| b.filter(|b| b.0 > 0).map(|b| (b, a)))
    .min_by_key(|(b, _)| *b)?;
    let share = working_set.0 as f64 / ceiling.0 as f64;
    Some(Health {
        level: t.level(share),
        share,
        against,
        ceiling,
    })
}

/// The host's level from `/proc/meminfo`: the share of MemTotal not available.
pub fn host(mem_total: Bytes, mem_available: Bytes, t: &Thresholds) -> Health {
    let total = mem_total.0.max(1);
    let share = total.saturating_sub(mem_available.0) as f64 / total as f64;
    Health {
        level: t.level(share),
        share,
        against: Against::Host,
        ceiling: mem_total,
    }
}

/// A level that changed since the last look.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LevelChange {
    /// Container id, or "host".
    pub key: String,
    pub from: Option<Level>,
    pub to: Level,
}

/// Which levels changed between `last` and `now` (keyed by container id or "host"); `last` is
/// updated. A key that disappeared from `now` is forgotten without a change (the container is
/// gone, its exit is its own event).
pub fn changes(
    last: &mut HashMap<String, Level>,
    now: &HashMap<String, Level>,
) -> Vec<LevelChange> {
    let mut out: Vec<LevelChange> = now
        .iter()
        .filter(|(k, level)| last.get(*k) != Some(*level))
        .map(|(k, level)| LevelChange {
            key: k.clone(),
            from: last.get(k).copied(),
            to: *level,
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    *last = now.clone();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn mib(n: u64) -> Bytes {
        Bytes(n * MIB)
    }

    #[test]
    fn the_default_levels_are_the_teams_own_bands() {
        let t = Thresholds::default();
        assert_eq!(t.level(0.49), Level::Safe);
        assert_eq!(t.level(0.50), Level::Warning);
        assert_eq!(t.level(0.749), Level::Warning);
        assert_eq!(t.level(0.75), Level::Critical);
        assert_eq!(t.level(0.90), Level::Emergency);
        assert_eq!(t.level(1.3), Level::Emergency);
    }

    #[test]
    fn a_container_is_judged_against_its_lowest_ceiling() {
        let t = Thresholds::default();
        // 300 MiB of 1 GiB limit is safe, but the 400 MiB budget makes it critical.
        let h = container(mib(300), Some(mib(1024)), None, Some(mib(400)), &t).unwrap();
        assert_eq!(
            (h.level, h.against, h.ceiling),
            (Level::Critical, Against::Budget, mib(400))
        );
        // memory.high lowered by the ladder below the budget takes over.
        let h = container(
            mib(300),
            Some(mib(1024)),
            Some(mib(320)),
            Some(mib(400)),
            &t,
        )
        .unwrap();
        assert_eq!(
            (h.level, h.against),
            (Level::Emergency, Against::MemoryHigh)
        );
    }

    #[test]
    fn a_container_without_any_ceiling_has_no_level_of_its_own() {
        assert_eq!(
            container(mib(300), None, None, None, &Thresholds::default()),
            None
        );
        // A zero limit (what some inspect paths report for "none") is no ceiling either.
        assert_eq!(
            container(mib(3), Some(Bytes(0)), None, None, &Thresholds::default()),
            None
        );
    }

    #[test]
    fn the_host_level_counts_what_is_not_available() {
        let t = Thresholds::default();
        let h = host(mib(24 * 1024), mib(2 * 1024), &t);
        assert_eq!(h.level, Level::Emergency);
        assert!((h.share - 22.0 / 24.0).abs() < 1e-9);
        assert_eq!(host(mib(24 * 1024), mib(20 * 1024), &t).level, Level::Safe);
    }

    #[test]
    fn configured_thresholds_must_be_ascending_shares() {
        let ok = Thresholds {
            warning: 0.6,
            critical: 0.8,
            emergency: 0.95,
        };
        assert_eq!(ok.invalid(), None);
        assert_eq!(ok.level(0.7), Level::Warning);
        let unordered = Thresholds {
            warning: 0.8,
            critical: 0.6,
            emergency: 0.95,
        };
        assert!(unordered
            .invalid()
            .unwrap()
            .starts_with("warning = 0.8 must be below critical = 0.6"));
        let percent = Thresholds {
            warning: 50.0,
            critical: 75.0,
            emergency: 90.0,
        };
        assert!(percent
            .invalid()
            .unwrap()
            .starts_with("warning = 50 must be a share"));
    }

    #[test]
    fn only_levels_that_changed_are_reported_once() {
        let mut last = HashMap::new();
        let now: HashMap<String, Level> = [
            ("a".to_string(), Level::Safe),
            ("host".to_string(), Level::Warning),
        ]
        .into();
        let first = changes(&mut last, &now);
        assert_eq!(first.len(), 2);
        assert_eq!(
            first[0],
            LevelChange {
                key: "a".into(),
                from: None,
                to: Level::Safe
            }
        );
        assert!(changes(&mut last, &now).is_empty());
        let later: HashMap<String, Level> = [("host".to_string(), Level::Critical)].into();
        assert_eq!(
            changes(&mut last, &later),
            vec![LevelChange {
                key: "host".into(),
                from: Some(Level::Warning),
                to: Level::Critical
            }]
        );
    }
}
