//! What a compose stack will hold, from what is known about each service: recorded needs and
//! reservations are needs; a limit is only a ceiling; no limit (or one at or above the host's
//! memory) is unbounded. And the verdict that follows: it fits, it does not fit, or nothing
//! known says yet. Pure functions with the reason of each decision.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::staging::{Need, NeedSource};
use crate::model::Bytes;

/// What the resolved compose model says about one service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceFacts {
    /// Its memory limit; `None` for no limit (including a limit of 0).
    pub limit: Option<Bytes>,
    pub reservation: Option<Bytes>,
    /// Containers compose starts for it.
    pub replicas: u32,
    /// Sized tmpfs mounts and `shm_size`, per container.
    pub tmpfs: Bytes,
}

/// A start-up peak and steady need recorded by guardian, per container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub startup: Bytes,
    pub steady: Bytes,
    /// Recorded under another project name.
    pub elsewhere: bool,
}

/// How much is known about a service's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Knowledge {
    /// A recorded need or a reservation: counts toward the verdict.
    Known,
    /// Only a limit below the host's memory: a ceiling.
    Bounded,
    /// No limit, or one at or above the host's memory: the host is the ceiling.
    Unbounded,
}

/// One service as the plan sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServicePlan {
    pub replicas: u32,
    /// For all replicas. For a bounded service, its limits (what `up` admits by).
    #[serde(flatten)]
    pub need: Need,
    pub knowledge: Knowledge,
    /// The most all replicas can hold: their limits, or the host's memory when unbounded.
    pub ceiling: Bytes,
    /// Sized tmpfs and shm of all replicas where no limit bounds them (they are charged to the
    /// container, so a limit does bound them).
    pub unbounded_tmpfs: Option<Bytes>,
    pub reason: String,
}

/// Why compose will not start a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeftOut {
    pub service: String,
    pub reason: String,
}

/// The services to plan and those compose would not start: inactive profiles, replicas 0.
pub fn select(
    replicas: &BTreeMap<String, u32>,
    inactive_profiles: &BTreeMap<String, Vec<String>>,
) -> (Vec<String>, Vec<LeftOut>) {
    let mut left_out: Vec<LeftOut> = inactive_profiles
        .iter()
        .map(|(service, profiles)| LeftOut {
            service: service.clone(),
            reason: format!("profile {} not active", profiles.join(", ")),
        })
        .collect();
    let mut planned = Vec::new();
    for (service, n) in replicas {
        if *n == 0 {
            left_out.push(LeftOut {
                service: service.clone(),
                reason: "replicas: 0".into(),
            });
        } else {
            planned.push(service.clone());
        }
    }
    (planned, left_out)
}

/// Plans one service: a recorded need, else its reservation, else its limit as a ceiling, all
/// multiplied by its replicas.
pub fn plan_service(
    facts: &ServiceFacts,
    recorded: Option<Recorded>,
    host_total: Bytes,
) -> ServicePlan {
    let n = u64::from(facts.replicas.max(1));
    let times = |b: Bytes| Bytes(b.0.saturating_mul(n));
    let per = if n > 1 {
        format!(" × {n} replicas")
    } else {
        String::new()
    };
    let bounded_by = facts.limit.filter(|l| *l < host_total);
    let ceiling = bounded_by.map_or(host_total, |l| times(l).min(Bytes(u64::MAX)));
    let unbounded_tmpfs = (bounded_by.is_none() && facts.tmpfs.0 > 0).then(|| times(facts.tmpfs));
    let limit_note = match (facts.limit, bounded_by) {
        (Some(l), None) => format!("; limit {l} ≥ host memory {host_total}: unbounded"),
        (None, _) => "; no limit: unbounded".into(),
        (Some(_), Some(_)) => String::new(),
    };
    let (need, knowledge, reason) = match (recorded, facts.reservation) {
        (Some(r), _) if r.startup.0 > 0 || r.steady.0 > 0 => {
            let startup = if r.startup.0 > 0 { r.startup } else { r.steady };
            let source = if r.elsewhere {
                NeedSource::RecordedElsewhere
            } else {
                NeedSource::Recorded
            };
            (
                Need {
                    startup: Some(times(startup)),
                    steady: Some(times(r.steady)),
                    source,
                },
                Knowledge::Known,
                format!("recorded start-up {startup}, steady {}{per}", r.steady),
            )
        }
        (_, Some(res)) => (
            Need {
                startup: Some(times(res)),
                steady: Some(times(res)),
                source: NeedSource::Reservation,
            },
            Knowledge::Known,
            format!("reservation {res}{per}{limit_note}"),
        ),
        _ => match bounded_by {
            Some(limit) => (
                Need {
                    startup: Some(times(limit)),
                    steady: Some(times(limit)),
                    source: NeedSource::Limit,
                },
                Knowledge::Bounded,
                format!("no history: limit {limit}{per} is a ceiling, not a need"),
            ),
            None => (
                Need {
                    startup: None,
                    steady: None,
                    source: if facts.limit.is_some() {
                        NeedSource::Limit
                    } else {
                        NeedSource::Unknown
                    },
                },
                Knowledge::Unbounded,
                format!("no history{per}{limit_note}"),
            ),
        },
    };
    let reason = match unbounded_tmpfs {
        Some(t) => format!("{reason}; tmpfs/shm up to {t} not bounded by a limit"),
        None => reason,
    };
    ServicePlan {
        replicas: facts.replicas,
        need,
        knowledge,
        ceiling,
        unbounded_tmpfs,
        reason,
    }
}

/// The answer of `guardian preflight`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// What is known fits, and so does everything else even at its ceiling.
    Fits,
    /// What is known already does not fit.
    DoesNotFit,
    /// What is known fits, but services without history may need more than is left:
    /// run it once under the daemon.
    CannotTell,
}

/// Totals behind a [`Verdict`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Steady needs of the known services.
    pub known_steady: Bytes,
    /// The worst wave, counting known needs only.
    pub known_worst_wave: Bytes,
    /// Ceilings of the services with only a limit.
    pub bounded_ceiling: Bytes,
    /// Services with no bound but the host.
    pub unbounded: usize,
}

/// The verdict on what is known: a limit never makes a stack "not fit".
pub fn verdict(
    plans: &HashMap<String, ServicePlan>,
    known_worst_wave: Bytes,
    budget: Bytes,
) -> (Verdict, Totals) {
    let sum = |k: Knowledge, f: &dyn Fn(&ServicePlan) -> u64| -> u64 {
        plans.values().filter(|p| p.knowledge == k).map(f).sum()
    };
    let totals = Totals {
        known_steady: Bytes(sum(Knowledge::Known, &|p| p.need.steady.map_or(0, |b| b.0))),
        known_worst_wave,
        bounded_ceiling: Bytes(sum(Knowledge::Bounded, &|p| p.ceiling.0)),
        unbounded: plans
            .values()
            .filter(|p| p.knowledge == Knowledge::Unbounded)
            .count(),
    };
    let v = if totals.known_steady > budget || totals.known_worst_wave > budget {
        Verdict::DoesNotFit
    } else if totals.unbounded == 0
        && totals
            .known_steady
            .0
            .saturating_add(totals.bounded_ceiling.0)
            <= budget.0
    {
        Verdict::Fits
    } else {
        Verdict::CannotTell
    };
    (v, totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    const HOST: Bytes = Bytes(8 * GIB);

    fn facts(limit: Option<u64>, replicas: u32) -> ServiceFacts {
        ServiceFacts {
            limit: limit.map(Bytes),
            replicas,
            ..Default::default()
        }
    }

    #[test]
    fn replicas_multiply_the_ceiling_and_the_need() {
        let p = plan_service(&facts(Some(GIB), 3), None, HOST);
        assert_eq!(p.knowledge, Knowledge::Bounded);
        assert_eq!(p.ceiling, Bytes(3 * GIB));
        assert_eq!(p.need.startup, Some(Bytes(3 * GIB)));
        let rec = Recorded {
            startup: Bytes(100 * MIB),
            steady: Bytes(60 * MIB),
            elsewhere: false,
        };
        let p = plan_service(&facts(Some(GIB), 3), Some(rec), HOST);
        assert_eq!(p.knowledge, Knowledge::Known);
        assert_eq!(p.need.steady, Some(Bytes(180 * MIB)));
        assert!(p.reason.contains("× 3 replicas"), "{}", p.reason);
    }

    #[test]
    fn replicas_zero_and_inactive_profiles_are_left_out_with_reasons() {
        let replicas = [("web".to_string(), 3), ("zero".to_string(), 0)].into();
        let inactive = [("dbg".to_string(), vec!["debug".to_string()])].into();
        let (planned, left) = select(&replicas, &inactive);
        assert_eq!(planned, ["web"]);
        assert_eq!(
            left,
            [
                LeftOut {
                    service: "dbg".into(),
                    reason: "profile debug not active".into()
                },
                LeftOut {
                    service: "zero".into(),
                    reason: "replicas: 0".into()
                }
            ]
        );
    }

    #[test]
    fn a_limit_at_or_above_the_host_is_unbounded_with_the_host_as_ceiling() {
        let p = plan_service(&facts(Some(128 * GIB), 1), None, HOST);
        assert_eq!(p.knowledge, Knowledge::Unbounded);
        assert_eq!(p.ceiling, HOST);
        assert_eq!(p.need.startup, None);
        assert!(p.reason.contains("unbounded"), "{}", p.reason);
        // No limit at all (a limit of 0 arrives as None): the same.
        let p = plan_service(&facts(None, 1), None, HOST);
        assert_eq!((p.knowledge, p.ceiling), (Knowledge::Unbounded, HOST));
    }

    #[test]
    fn tmpfs_counts_only_where_no_limit_bounds_it() {
        let mut f = facts(None, 2);
        f.tmpfs = Bytes(96 * MIB);
        assert_eq!(
            plan_service(&f, None, HOST).unbounded_tmpfs,
            Some(Bytes(192 * MIB))
        );
        f.limit = Some(Bytes(256 * MIB));
        assert_eq!(plan_service(&f, None, HOST).unbounded_tmpfs, None);
    }

    #[test]
    fn limits_alone_never_make_a_stack_not_fit() {
        // 26 services with 6 GiB limits against an 8 GiB budget: nothing is known.
        let plans: HashMap<String, ServicePlan> = (0..26)
            .map(|i| {
                (
                    format!("s{i}"),
                    plan_service(&facts(Some(6 * GIB), 1), None, Bytes(24 * GIB)),
                )
            })
            .collect();
        let (v, t) = verdict(&plans, Bytes(0), Bytes(8 * GIB));
        assert_eq!(v, Verdict::CannotTell);
        assert_eq!(t.bounded_ceiling, Bytes(26 * 6 * GIB));
        // Small limits that fit even at their ceiling: it fits.
        let small: HashMap<String, ServicePlan> = (0..4)
            .map(|i| {
                (
                    format!("s{i}"),
                    plan_service(&facts(Some(GIB), 1), None, HOST),
                )
            })
            .collect();
        assert_eq!(verdict(&small, Bytes(0), Bytes(8 * GIB)).0, Verdict::Fits);
    }

    #[test]
    fn known_needs_over_the_budget_do_not_fit() {
        let mut f = facts(None, 1);
        f.reservation = Some(Bytes(6 * GIB));
        let plans: HashMap<String, ServicePlan> = [
            ("a".to_string(), plan_service(&f, None, HOST)),
            ("b".to_string(), plan_service(&f, None, HOST)),
        ]
        .into();
        let (v, t) = verdict(&plans, Bytes(6 * GIB), Bytes(8 * GIB));
        assert_eq!(v, Verdict::DoesNotFit);
        assert_eq!(t.known_steady, Bytes(12 * GIB));
    }
}
