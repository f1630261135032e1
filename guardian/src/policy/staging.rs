//! Staggered start-up: which services may start now, given their dependencies, what they are
//! expected to need while starting, and the memory the host has left. Pure functions.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::model::Bytes;

/// Why a stack cannot be ordered.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StagingError {
    #[error("service {service:?} depends on {missing:?}, which the compose file does not define")]
    UnknownDependency { service: String, missing: String },
    #[error("services {0:?} depend on each other in a cycle")]
    Cycle(Vec<String>),
    #[error("unknown service {0:?}; the compose file defines: {1}")]
    UnknownService(String, String),
}

/// What a service is expected to need, from recorded runs or its limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Need {
    /// Highest usage while starting (recorded start-up peak, else limit or reservation).
    pub startup: Option<Bytes>,
    /// Usage once settled (recorded peak, else the same fallback).
    pub steady: Option<Bytes>,
    pub source: NeedSource,
}

impl Need {
    /// A start-up peak guardian recorded (for this project or another): what memory admission
    /// needs. A limit or reservation is only a ceiling.
    pub fn is_recorded(&self) -> bool {
        matches!(
            self.source,
            NeedSource::Recorded | NeedSource::RecordedElsewhere
        ) && self.startup.is_some()
    }
}

/// Where a [`Need`] came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NeedSource {
    /// Start-up and steady peaks recorded by guardian.
    Recorded,
    /// Recorded for the same service under another project name: in the store, with the same
    /// image; in a profile file, any entry of that service when none has this project's name.
    /// CI jobs often name each run's project anew (`-p ci-$RUN_ID`).
    RecordedElsewhere,
    /// The compose limit.
    Limit,
    /// The compose reservation.
    Reservation,
    /// Nothing known.
    #[default]
    Unknown,
}

/// Dependency levels: level 0 has no dependencies, level n depends only on levels < n.
/// `wanted` limits the stack to those services and what they depend on (all when empty).
pub fn levels(
    depends_on: &BTreeMap<String, Vec<String>>,
    wanted: &[String],
) -> Result<Vec<Vec<String>>, StagingError> {
    let mut selected: BTreeSet<String> = BTreeSet::new();
    let mut stack: Vec<String> = if wanted.is_empty() {
        depends_on.keys().cloned().collect()
    } else {
        wanted.to_vec()
    };
    while let Some(s) = stack.pop() {
        let Some(deps) = depends_on.get(&s) else {
            return Err(StagingError::UnknownService(
                s,
                depends_on.keys().cloned().collect::<Vec<_>>().join(", "),
            ));
        };
        if selected.insert(s.clone()) {
            for d in deps {
                if !depends_on.contains_key(d) {
                    return Err(StagingError::UnknownDependency {
                        service: s.clone(),
                        missing: d.clone(),
                    });
                }
                stack.push(d.clone());
            }
        }
    }
    let mut placed: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<Vec<String>> = Vec::new();
    while placed.len() < selected.len() {
        let level: Vec<String> = selected
            .iter()
            .filter(|s| !placed.contains_key(*s))
            .filter(|s| depends_on[*s].iter().all(|d| placed.contains_key(d)))
            .cloned()
            .collect();
        if level.is_empty() {
            let stuck = selected
                .iter()
                .filter(|s| !placed.contains_key(*s))
                .cloned()
                .collect();
            return Err(StagingError::Cycle(stuck));
        }
        for s in &level {
            placed.insert(s.clone(), out.len());
        }
        out.push(level);
    }
    Ok(out)
}

/// A service that may start now, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    pub service: String,
    /// True when its start-up need exceeds the headroom but nothing else is starting: it
    /// starts alone rather than never.
    pub alone_over_budget: bool,
}

/// Picks the services to start now, in order.
///
/// `candidates` have all their dependencies ready; `in_flight` is how many started services are
/// not ready yet; `headroom` is what may still be used (available − reserve − what the
/// in-flight services are still expected to grow). Services with a recorded start-up peak are
/// admitted while they fit, however many are in flight; the others (a limit or nothing to go
/// by) while they fit and fewer than `max_parallel` are in flight. When
/// nothing is in flight, the first candidate always starts, so the stack never deadlocks.
pub fn admit(
    candidates: &[String],
    needs: &HashMap<String, Need>,
    in_flight: usize,
    mut headroom: Bytes,
    max_parallel: usize,
) -> Vec<Admission> {
    let mut out = Vec::new();
    for (flying, service) in (in_flight..).zip(candidates) {
        let recorded = needs.get(service).is_some_and(Need::is_recorded);
        // A recorded start-up peak is what memory admission needs; a limit is only a ceiling,
        // so without history --max-parallel bounds the wave too.
        if !recorded && flying >= max_parallel {
            break;
        }
        match needs.get(service).and_then(|n| n.startup) {
            Some(need) if need <= headroom => {
                headroom = Bytes(headroom.0 - need.0);
                out.push(Admission {
                    service: service.clone(),
                    alone_over_budget: false,
                });
            }
            Some(_) if flying == 0 => {
                out.push(Admission {
                    service: service.clone(),
                    alone_over_budget: true,
                });
                break;
            }
            Some(_) => break,
            None => out.push(Admission {
                service: service.clone(),
                alone_over_budget: false,
            }),
        }
    }
    out
}

/// One wave of [`plan_waves`]: the services that start together and what they need then.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Wave {
    pub services: Vec<String>,
    /// Start-up needs of this wave plus the steady needs of every earlier one.
    pub need: Bytes,
}

/// The waves `guardian up` would use with `available` bytes and no other load: dependency
/// levels split so that each wave's start-up needs, on top of the steady needs of what already
/// runs, fit (a service too big to fit runs alone).
pub fn plan_waves(
    levels: &[Vec<String>],
    needs: &HashMap<String, Need>,
    available: Bytes,
) -> Vec<Wave> {
    let startup_of = |s: &String| needs.get(s).and_then(|n| n.startup).map_or(0, |b| b.0);
    let steady_of = |s: &String| {
        needs
            .get(s)
            .and_then(|n| n.steady.or(n.startup))
            .map_or(0, |b| b.0)
    };
    let mut waves = Vec::new();
    let mut running = 0u64;
    for level in levels {
        let mut current: Vec<String> = Vec::new();
        let mut startup = 0u64;
        for s in level {
            if !current.is_empty() && running + startup + startup_of(s) > available.0 {
                let settled: u64 = current.iter().map(steady_of).sum();
                waves.push(Wave {
                    services: std::mem::take(&mut current),
                    need: Bytes(running + startup),
                });
                running += settled;
                startup = 0;
            }
            current.push(s.clone());
            startup += startup_of(s);
        }
        if !current.is_empty() {
            let settled: u64 = current.iter().map(steady_of).sum();
            waves.push(Wave {
                services: current,
                need: Bytes(running + startup),
            });
            running += settled;
        }
    }
    waves
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn deps(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(s, d)| (s.to_string(), d.iter().map(|x| x.to_string()).collect()))
            .collect()
    }

    fn need(startup: u64, steady: u64) -> Need {
        Need {
            startup: Some(Bytes(startup * MIB)),
            steady: Some(Bytes(steady * MIB)),
            source: NeedSource::Recorded,
        }
    }

    #[test]
    fn levels_follow_depends_on() {
        let d = deps(&[
            ("db", &[]),
            ("cache", &[]),
            ("app", &["db", "cache"]),
            ("web", &["app"]),
        ]);
        assert_eq!(
            levels(&d, &[]).unwrap(),
            vec![vec!["cache", "db"], vec!["app"], vec!["web"]]
        );
        // Asking for one service brings what it needs, not its dependents.
        assert_eq!(
            levels(&d, &["app".into()]).unwrap(),
            vec![vec!["cache", "db"], vec!["app"]]
        );
    }

    #[test]
    fn cycles_and_unknown_names_are_errors() {
        let d = deps(&[("a", &["b"]), ("b", &["a"])]);
        assert_eq!(
            levels(&d, &[]),
            Err(StagingError::Cycle(vec!["a".into(), "b".into()]))
        );
        let d = deps(&[("a", &["zz"])]);
        assert!(matches!(
            levels(&d, &[]),
            Err(StagingError::UnknownDependency { .. })
        ));
        assert!(matches!(
            levels(&deps(&[("a", &[])]), &["b".into()]),
            Err(StagingError::UnknownService(..))
        ));
    }

    #[test]
    fn admission_fits_known_needs_into_the_headroom() {
        let needs: HashMap<String, Need> = [
            ("a", need(100, 20)),
            ("b", need(100, 20)),
            ("c", need(100, 20)),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v))
        .collect();
        let all: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let admitted = admit(&all, &needs, 0, Bytes(250 * MIB), 8);
        assert_eq!(
            admitted
                .iter()
                .map(|a| a.service.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        // Nothing fits but nothing is starting either: the first starts alone, flagged.
        let admitted = admit(&all, &needs, 0, Bytes(50 * MIB), 8);
        assert_eq!(
            admitted,
            vec![Admission {
                service: "a".into(),
                alone_over_budget: true
            }]
        );
        // Something is starting: wait for it.
        assert!(admit(&all, &needs, 1, Bytes(50 * MIB), 8).is_empty());
        // Known needs are limited by memory, not by --max-parallel.
        assert_eq!(admit(&all, &needs, 3, Bytes(250 * MIB), 2).len(), 2);
    }

    #[test]
    fn without_history_at_most_max_parallel_start_at_once() {
        let all: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(admit(&all, &HashMap::new(), 0, Bytes(0), 2).len(), 2);
        assert_eq!(admit(&all, &HashMap::new(), 1, Bytes(0), 2).len(), 1);
    }

    #[test]
    fn waves_split_a_level_that_does_not_fit() {
        let d = deps(&[("db", &[]), ("a", &["db"]), ("b", &["db"]), ("c", &["db"])]);
        let needs: HashMap<String, Need> = [
            ("db", need(100, 50)),
            ("a", need(100, 20)),
            ("b", need(100, 20)),
            ("c", need(100, 20)),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v))
        .collect();
        let waves = plan_waves(&levels(&d, &[]).unwrap(), &needs, Bytes(300 * MIB));
        let names: Vec<Vec<&str>> = waves
            .iter()
            .map(|w| w.services.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(names, vec![vec!["db"], vec!["a", "b"], vec!["c"]]);
        assert_eq!(waves[1].need, Bytes(250 * MIB));
        assert!(waves.iter().all(|w| w.need.0 <= 300 * MIB));
    }
}
