//! Incidents other than the kernel's OOM kills: guardian's own freezes and kills, throttling at
//! memory.high, and warnings before a limit is reached. Which episode opens or ends is decided
//! here from readings and times the daemon passes in; what the incident says, too. No I/O.

use std::collections::HashMap;

use crate::model::{compose_size, Bytes, Cause, Incident};

/// Whether `guardian report ci` fails the run for an incident of this cause: anything that
/// stopped or killed a container does; a warning or a slowdown is annotated, not failed.
pub fn fails_ci(cause: &Cause) -> bool {
    !matches!(cause, Cause::Warning | Cause::Throttled)
}

/// A freeze by guardian's ladder that has begun or ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Freeze {
    /// When the ladder froze the group (ms since the Unix epoch).
    pub since_ms: i64,
    /// Whether its incident was already written while it lasted.
    pub reported: bool,
}

/// The groups guardian froze, and which of them were reported while frozen.
#[derive(Debug, Default)]
pub struct FreezeWatch {
    /// A freeze longer than this (ms) is reported while it lasts.
    report_after_ms: i64,
    frozen: HashMap<String, Freeze>,
}

impl FreezeWatch {
    pub fn new(report_after_ms: i64) -> Self {
        Self {
            report_after_ms,
            frozen: HashMap::new(),
        }
    }

    /// The ladder froze `key`; a second freeze of a group still frozen keeps the first time.
    pub fn frozen(&mut self, key: &str, now_ms: i64) {
        self.frozen.entry(key.to_string()).or_insert(Freeze {
            since_ms: now_ms,
            reported: false,
        });
    }

    /// The freezes that have lasted `report_after` and were not reported yet; marked reported.
    pub fn overdue(&mut self, now_ms: i64) -> Vec<(String, Freeze)> {
        let mut out = Vec::new();
        for (key, f) in &mut self.frozen {
            if !f.reported && now_ms - f.since_ms >= self.report_after_ms {
                f.reported = true;
                out.push((key.clone(), *f));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The group was thawed, killed or is gone: its freeze, if guardian held one, ends.
    pub fn ended(&mut self, key: &str) -> Option<Freeze> {
        self.frozen.remove(key)
    }
}

/// When a container is close enough to its limit for long enough to be warned about.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WarnParams {
    /// Share of the limit (or budget) that starts an episode, e.g. 0.9.
    pub share: f64,
    /// How long (ms) it must stay at or above `share` before the warning.
    pub hold_ms: i64,
    /// Below this share the episode is over and the next crossing warns again (hysteresis).
    pub rearm_share: f64,
}

#[derive(Clone, Copy, Debug, Default)]
struct WarnState {
    above_since_ms: Option<i64>,
    warned: bool,
}

/// A warning to give: the episode began at `since_ms`; usage is `share` of `limit`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Warning {
    pub since_ms: i64,
    pub share: f64,
    pub limit: Bytes,
}

/// Warning episodes per container: one warning per episode, re-armed under `rearm_share`.
#[derive(Debug)]
pub struct WarnEpisodes {
    params: WarnParams,
    state: HashMap<String, WarnState>,
}

impl WarnEpisodes {
    pub fn new(params: WarnParams) -> Self {
        Self {
            params,
            state: HashMap::new(),
        }
    }

    /// One reading of `key`: its working set against its limit (the lower of its memory limit
    /// and guardian's budget); `None` when it has neither. Returns the warning when one is due.
    pub fn observe(
        &mut self,
        key: &str,
        now_ms: i64,
        working_set: Bytes,
        limit: Option<Bytes>,
    ) -> Option<Warning> {
        let Some(limit) = limit.filter(|l| l.0 > 0) else {
            self.state.remove(key);
            return None;
        };
        let share = working_set.0 as f64 / limit.0 as f64;
        let s = self.state.entry(key.to_string()).or_default();
        if share >= self.params.share {
            let since = *s.above_since_ms.get_or_insert(now_ms);
            if !s.warned && now_ms - since >= self.params.hold_ms {
                s.warned = true;
                return Some(Warning {
                    since_ms: since,
                    share,
                    limit,
                });
            }
        } else {
            s.above_since_ms = None;
            if share < self.params.rearm_share {
                s.warned = false;
            }
        }
        None
    }

    /// How many containers are in a warned episode now.
    pub fn in_warning(&self) -> usize {
        self.state.values().filter(|s| s.warned).count()
    }

    /// A container that is gone.
    pub fn forget(&mut self, key: &str) {
        self.state.remove(key);
    }
}

/// When stalling at memory.high counts as being throttled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ThrottleParams {
    /// Share of wall time (0–1) the group's tasks were all stalled on memory (PSI `full`) in a
    /// sampling interval, at or above which the interval counts as throttled.
    pub full_share: f64,
    /// How long (ms) throttling must last before it is reported.
    pub after_ms: i64,
}

#[derive(Clone, Copy, Debug)]
struct ThrottleState {
    last: (i64, u64),
    episode: Option<(i64, u64, bool)>,
}

/// A throttling episode to report (begun) or close (ended).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Throttle {
    /// Throttled since `since_ms`, `lost_us` of full stall so far.
    Begun { since_ms: i64, lost_us: u64 },
    /// A reported episode ended at `until_ms` with `lost_us` of full stall in all.
    Ended {
        since_ms: i64,
        until_ms: i64,
        lost_us: u64,
    },
}

/// Throttling episodes per group, from its memory.pressure `full total=` (microseconds).
#[derive(Debug)]
pub struct ThrottleEpisodes {
    params: ThrottleParams,
    state: HashMap<String, ThrottleState>,
}

impl ThrottleEpisodes {
    pub fn new(params: ThrottleParams) -> Self {
        Self {
            params,
            state: HashMap::new(),
        }
    }

    /// One reading: the group's PSI `full total` (µs) and whether it is at its memory.high
    /// (usage within 10 % of it). An interval counts when both hold; an episode ends at the
    /// first interval that does not.
    pub fn observe(
        &mut self,
        key: &str,
        now_ms: i64,
        full_total_us: u64,
        at_high: bool,
    ) -> Option<Throttle> {
        let Some(s) = self.state.get_mut(key) else {
            self.state.insert(
                key.to_string(),
                ThrottleState {
                    last: (now_ms, full_total_us),
                    episode: None,
                },
            );
            return None;
        };
        let (t0, total0) = s.last;
        s.last = (now_ms, full_total_us);
        let dt_us = (now_ms - t0).max(1) as f64 * 1000.0;
        let share = full_total_us.saturating_sub(total0) as f64 / dt_us;
        let throttled = at_high && share >= self.params.full_share;
        match (throttled, s.episode) {
            (true, None) => {
                s.episode = Some((t0, total0, false));
                None
            }
            (true, Some((since, start, false))) if now_ms - since >= self.params.after_ms => {
                s.episode = Some((since, start, true));
                Some(Throttle::Begun {
                    since_ms: since,
                    lost_us: full_total_us.saturating_sub(start),
                })
            }
            (false, Some((since, start, reported))) => {
                s.episode = None;
                reported.then_some(Throttle::Ended {
                    since_ms: since,
                    until_ms: t0,
                    lost_us: total0.saturating_sub(start),
                })
            }
            _ => None,
        }
    }

    /// A group that is gone: a reported episode ends with it.
    pub fn forget(&mut self, key: &str) -> Option<Throttle> {
        let s = self.state.remove(key)?;
        let (since, start, reported) = s.episode?;
        reported.then_some(Throttle::Ended {
            since_ms: since,
            until_ms: s.last.0,
            lost_us: s.last.1.saturating_sub(start),
        })
    }
}

/// The headline of an incident of a new kind, e.g. "Frozen by guardian".
pub fn headline(cause: &Cause) -> String {
    match cause {
        Cause::KernelOom => "OOM kill".into(),
        Cause::FrozenByGuardian => "Frozen by guardian".into(),
        Cause::KilledByGuardian => "Killed by guardian".into(),
        Cause::Throttled => "Throttled at memory.high".into(),
        Cause::KilledBySignal { killer: Some(k) } => format!("Killed by {k}"),
        Cause::KilledBySignal { killer: None } => {
            "Killed by a signal, not the kernel's OOM killer".into()
        }
        Cause::Warning => "Memory warning".into(),
    }
}

fn secs(ms: i64) -> String {
    format!("{:.0} s", ms as f64 / 1000.0)
}

/// One or two sentences a person can act on, for the kinds this module decides.
pub fn next_step(i: &Incident) -> String {
    let name = &i.name;
    match &i.cause {
        Cause::FrozenByGuardian | Cause::KilledByGuardian => {
            let Some(d) = &i.decision else {
                return format!("guardian stopped {name} under critical host memory pressure.");
            };
            let what = if i.cause == Cause::KilledByGuardian {
                "killed it (step 4, allowed by --allow-kill) after the host stayed critical with it frozen"
            } else {
                "froze it (step 3) because the host was critical"
            };
            let lasted = match (&i.cause, i.duration_ms, &i.ended) {
                (Cause::FrozenByGuardian, Some(ms), None) => {
                    format!(
                        " It has been frozen for {} and stays so until the host is calm.",
                        secs(ms)
                    )
                }
                (Cause::FrozenByGuardian, Some(ms), Some(_)) => {
                    format!(" It was frozen for {}.", secs(ms))
                }
                _ => String::new(),
            };
            format!(
                "guardian {what}: MemAvailable {} against a reserve of {} (critical below {}), host PSI some {:.1}% full {:.1}%; {name} was the lowest priority ({}) and largest at {}.{lasted} To avoid it: lower the budgets of the other services so the host keeps {} free, give {name} a higher `guardian.priority` label, lower `[enforce] critical_reserve` if the host can spare it, or run fewer jobs at once.",
                d.host_available,
                d.reserve,
                d.critical_reserve,
                d.host_psi_some_avg10,
                d.host_psi_full_avg10,
                d.priority,
                d.usage,
                d.reserve,
            )
        }
        Cause::Throttled => {
            let high = i.memory_high.map_or_else(
                || "its memory.high".to_string(),
                |h| format!("its memory.high of {h}"),
            );
            let who = match i.budget {
                Some(b) => format!(
                    "guardian set it from its budget of {b}: raise the budget (`guardian.budget` label or a `[[budget]]` rule, e.g. `guardian.budget={}`)",
                    compose_size(Bytes(b.0 + b.0 / 2))
                ),
                None => "guardian did not set it (no budget): raise memory.high where it is set (a `docker run --memory-reservation`/systemd MemoryHigh= or by hand)".to_string(),
            };
            format!(
                "{name} was held at {high} and stalled {} of {} in reclaim (PSI full). {who}, or make it use less memory.",
                secs(i.lost_ms.unwrap_or(0.0) as i64),
                secs(i.duration_ms.unwrap_or(0)),
            )
        }
        Cause::KilledBySignal { killer } => {
            let by = killer.as_deref().map_or_else(
                || "a signal (SIGKILL) from userspace".to_string(),
                |k| k.to_string(),
            );
            format!(
                "{name} was killed by {by}, not by the kernel's OOM killer (its oom_kill counter did not change) while memory was short. A userspace OOM killer acts on its own thresholds before guardian's budgets do: give {name} a limit or budget (`guardian profile` suggests one) so it cannot grow into the host's reserve, or tune that killer."
            )
        }
        Cause::Warning => {
            let limit = i.budget.or(i.limit);
            let used = i.working_set.unwrap_or_default();
            match limit {
                Some(l) => format!(
                    "{name} used {used} of its {} {l} ({:.0} %) for {}; if it grows further it will be {}. Raise it to at least {} or find what grows.",
                    if i.budget.is_some() { "budget" } else { "limit" },
                    used.0 as f64 * 100.0 / l.0.max(1) as f64,
                    secs(i.duration_ms.unwrap_or(0)),
                    if i.budget.is_some() { "throttled at its budget" } else { "OOM-killed" },
                    compose_size(Bytes(l.0 + l.0 / 5)),
                ),
                None => format!("{name} is close to its limit."),
            }
        }
        Cause::KernelOom => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LadderDecision;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_long_freeze_is_reported_once_while_it_lasts_and_ends_on_thaw() {
        let mut w = FreezeWatch::new(30_000);
        w.frozen("a", 1_000);
        w.frozen("a", 2_000);
        assert!(w.overdue(30_999).is_empty(), "not yet 30 s");
        let due = w.overdue(31_000);
        assert_eq!(
            due,
            [(
                "a".to_string(),
                Freeze {
                    since_ms: 1_000,
                    reported: true
                }
            )]
        );
        assert!(w.overdue(60_000).is_empty(), "reported once");
        assert_eq!(
            w.ended("a"),
            Some(Freeze {
                since_ms: 1_000,
                reported: true
            })
        );
        assert_eq!(w.ended("a"), None);
    }

    #[test]
    fn a_short_freeze_is_reported_at_its_end() {
        let mut w = FreezeWatch::new(30_000);
        w.frozen("a", 0);
        assert!(w.overdue(5_000).is_empty());
        assert_eq!(w.ended("a").map(|f| f.reported), Some(false));
    }

    #[test]
    fn warnings_and_throttling_do_not_fail_ci_but_kills_and_freezes_do() {
        assert!(fails_ci(&Cause::KernelOom));
        assert!(fails_ci(&Cause::FrozenByGuardian));
        assert!(fails_ci(&Cause::KilledByGuardian));
        assert!(fails_ci(&Cause::KilledBySignal { killer: None }));
        assert!(!fails_ci(&Cause::Warning));
        assert!(!fails_ci(&Cause::Throttled));
    }

    fn warn() -> WarnEpisodes {
        WarnEpisodes::new(WarnParams {
            share: 0.9,
            hold_ms: 5_000,
            rearm_share: 0.85,
        })
    }

    #[test]
    fn a_container_above_ninety_percent_for_five_seconds_is_warned_once() {
        let mut w = warn();
        let limit = Some(Bytes(100 * MIB));
        assert_eq!(w.observe("a", 0, Bytes(95 * MIB), limit), None);
        assert_eq!(w.observe("a", 4_999, Bytes(95 * MIB), limit), None);
        let got = w.observe("a", 5_000, Bytes(95 * MIB), limit).unwrap();
        assert_eq!(got.since_ms, 0);
        assert!((got.share - 0.95).abs() < 1e-9);
        assert_eq!(w.in_warning(), 1);
        for t in 6..60 {
            assert_eq!(w.observe("a", t * 1000, Bytes(95 * MIB), limit), None);
        }
    }

    #[test]
    fn a_short_spike_is_not_warned() {
        let mut w = warn();
        let limit = Some(Bytes(100 * MIB));
        w.observe("a", 0, Bytes(95 * MIB), limit);
        w.observe("a", 3_000, Bytes(50 * MIB), limit);
        assert_eq!(w.observe("a", 6_000, Bytes(95 * MIB), limit), None);
        assert_eq!(w.observe("a", 10_000, Bytes(95 * MIB), limit), None);
        assert!(w.observe("a", 11_000, Bytes(95 * MIB), limit).is_some());
    }

    #[test]
    fn a_warning_is_rearmed_only_below_the_hysteresis_share() {
        let mut w = warn();
        let limit = Some(Bytes(100 * MIB));
        w.observe("a", 0, Bytes(95 * MIB), limit);
        assert!(w.observe("a", 5_000, Bytes(95 * MIB), limit).is_some());
        // Dipping to 88 % is not the end of the episode.
        w.observe("a", 6_000, Bytes(88 * MIB), limit);
        w.observe("a", 7_000, Bytes(95 * MIB), limit);
        assert_eq!(w.observe("a", 20_000, Bytes(95 * MIB), limit), None);
        // Below 85 % it is; the next crossing warns again.
        w.observe("a", 21_000, Bytes(80 * MIB), limit);
        assert_eq!(w.in_warning(), 0);
        w.observe("a", 22_000, Bytes(95 * MIB), limit);
        assert!(w.observe("a", 27_000, Bytes(95 * MIB), limit).is_some());
    }

    #[test]
    fn a_container_without_a_limit_is_never_warned() {
        let mut w = warn();
        for t in 0..20 {
            assert_eq!(w.observe("a", t * 1000, Bytes(95 * MIB), None), None);
        }
    }

    fn throttle() -> ThrottleEpisodes {
        ThrottleEpisodes::new(ThrottleParams {
            full_share: 0.2,
            after_ms: 10_000,
        })
    }

    #[test]
    fn sustained_full_stall_at_memory_high_is_reported_with_the_time_lost() {
        let mut t = throttle();
        assert_eq!(t.observe("a", 0, 0, true), None);
        // 500 ms of full stall per second: 50 %.
        for s in 1..10 {
            assert_eq!(t.observe("a", s * 1000, s as u64 * 500_000, true), None);
        }
        assert_eq!(
            t.observe("a", 10_000, 5_000_000, true),
            Some(Throttle::Begun {
                since_ms: 0,
                lost_us: 5_000_000
            })
        );
        assert_eq!(t.observe("a", 11_000, 5_500_000, true), None, "once");
        // Released: the stall stops growing.
        assert_eq!(
            t.observe("a", 12_000, 5_500_000, true),
            Some(Throttle::Ended {
                since_ms: 0,
                until_ms: 11_000,
                lost_us: 5_500_000
            })
        );
    }

    #[test]
    fn stalls_below_memory_high_or_too_short_are_not_throttling() {
        let mut t = throttle();
        t.observe("a", 0, 0, false);
        for s in 1..20 {
            assert_eq!(t.observe("a", s * 1000, s as u64 * 900_000, false), None);
        }
        let mut t = throttle();
        t.observe("b", 0, 0, true);
        for s in 1..5 {
            assert_eq!(t.observe("b", s * 1000, s as u64 * 900_000, true), None);
        }
        assert_eq!(
            t.observe("b", 5_000, 3_600_000, true),
            None,
            "ended unreported"
        );
        // 10 % stall is under the 20 % threshold.
        let mut t = throttle();
        for s in 0..30 {
            assert_eq!(t.observe("c", s * 1000, s as u64 * 100_000, true), None);
        }
    }

    fn frozen_incident() -> Incident {
        Incident {
            name: "ci/worker".into(),
            cause: Cause::FrozenByGuardian,
            duration_ms: Some(42_000),
            decision: Some(LadderDecision {
                step: 3,
                rule: "host critical; lowest priority (0) and largest at 900.0MiB".into(),
                usage: Bytes(900 * MIB),
                priority: 0,
                host_available: Bytes(100 * MIB),
                host_psi_some_avg10: 12.0,
                host_psi_full_avg10: 31.0,
                reserve: Bytes(512 * MIB),
                critical_reserve: Bytes(128 * MIB),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_freeze_says_why_and_which_budget_or_reserve_to_change() {
        let i = frozen_incident();
        let step = next_step(&i);
        assert!(step.starts_with("guardian froze it (step 3) because the host was critical: MemAvailable 100.0MiB against a reserve of 512.0MiB (critical below 128.0MiB)"), "{step}");
        assert!(step.contains("frozen for 42 s and stays so"), "{step}");
        assert!(
            step.contains("lower the budgets of the other services"),
            "{step}"
        );
        assert!(step.contains("`guardian.priority`"), "{step}");
        assert!(step.contains("critical_reserve"), "{step}");
        assert_eq!(headline(&i.cause), "Frozen by guardian");
    }

    #[test]
    fn throttling_names_who_set_memory_high() {
        let mut i = Incident {
            name: "ci/db".into(),
            cause: Cause::Throttled,
            memory_high: Some(Bytes(64 * MIB)),
            budget: Some(Bytes(64 * MIB)),
            lost_ms: Some(7_400.0),
            duration_ms: Some(12_000),
            ..Default::default()
        };
        let step = next_step(&i);
        assert!(step.contains("stalled 7 s of 12 s"), "{step}");
        assert!(
            step.contains("guardian set it from its budget of 64.0MiB"),
            "{step}"
        );
        i.budget = None;
        assert!(next_step(&i).contains("guardian did not set it"));
    }

    #[test]
    fn a_userspace_kill_is_not_called_an_oom_kill() {
        let i = Incident {
            name: "ci/db".into(),
            cause: Cause::KilledBySignal {
                killer: Some("earlyoom".into()),
            },
            ..Default::default()
        };
        assert_eq!(headline(&i.cause), "Killed by earlyoom");
        assert!(next_step(&i).contains("not by the kernel's OOM killer"));
    }
}
