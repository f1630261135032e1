//! The enforcement ladder as a pure function of (state, readings) -> decisions.
//!
//! 1. A group above its budget gets `memory.high` = budget: the kernel reclaims and throttles
//!    only that group.
//! 2. Host pressure: lower memory.high of squeezed groups step by step toward a floor (what
//!    cannot be reclaimed without swap — all but the page cache — plus 10%), lowest priority
//!    first and, within a priority, largest excess first.
//! 3. Critical pressure: freeze the lowest-priority group; thaw when pressure has passed.
//!    Critical needs a real shortage: MemAvailable below the reserve, not PSI alone.
//! 4. Only when allowed: kill a frozen group whose critical pressure did not pass.
//!
//! Relaxing is hysteretic: a squeezed group is released once it stays below a fraction of its
//! budget for `relax_after`, and limits lowered under pressure return to the budget only after the
//! host has been calm that long. What a group's memory.high was before guardian touched it is
//! the journal's business (actions/), not the policy's.
//!
//! The host is judged by what lies outside the throttled groups: a group held at its memory.high
//! stalls in its own reclaim, and the kernel's host-wide PSI (`/proc/pressure/memory`) counts
//! that stall too. Taken at face value, one budget biting on a roomy host reads as host-critical
//! and the ladder would freeze the very group it is throttling. So the pressure the ladder acts
//! on is the host's PSI minus the throttled groups' own (their `memory.pressure`, same averaging
//! window), and MemAvailable, which a throttled group cannot lower.

use std::collections::HashMap;

use serde::Serialize;

use crate::model::{Bytes, Guard};

/// The ladder's knobs, in the units the policy works in.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// `false` on v1/hybrid hosts: steps 1 and 2 need cgroup v2's memory.high.
    pub can_set_high: bool,
    pub allow_kill: bool,
    pub reserve: Bytes,
    pub critical_reserve: Bytes,
    pub psi_some: f64,
    pub psi_full: f64,
    pub step: f64,
    pub min_step: Bytes,
    pub floor: Bytes,
    pub step_interval_ms: i64,
    pub relax_after_ms: i64,
    pub release_below: f64,
    pub kill_after_ms: i64,
}

/// One budgeted group as read just now.
#[derive(Clone, Debug, PartialEq)]
pub struct Subject {
    /// Container id, or `cgroup:<path>` for a plain cgroup.
    pub key: String,
    pub guard: Guard,
    pub usage: Bytes,
    /// What reclaim cannot free without swap: usage minus reclaimable page cache.
    pub unreclaimable: Bytes,
    /// Its memory.high as the kernel has it now (`None` = max, or no such file).
    pub high: Option<Bytes>,
    /// Its own memory PSI, `some` and `full` avg10 in percent (cgroup v2 `memory.pressure`);
    /// 0 where the kernel does not expose it.
    pub psi_some_avg10: f64,
    pub psi_full_avg10: f64,
}

impl Subject {
    /// Held at its memory.high (usage within 10 % of it): its stalls are its limit's doing.
    fn throttled(&self) -> bool {
        self.high
            .is_some_and(|h| self.usage.0 as f64 >= h.0 as f64 * THROTTLED_AT)
    }
}

/// A group whose usage is at least this share of its memory.high is held there by the kernel.
const THROTTLED_AT: f64 = 0.9;

/// The host's pressure with the throttled groups' own stall taken out, in percent (avg10).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Outside {
    pub some: f64,
    pub full: f64,
    /// How many throttled groups' stall was taken out.
    pub throttled: usize,
}

impl Outside {
    /// PSI averages of one window are linear in the stall time, so the rest is the host's
    /// minus the throttled groups' (clamped: their stalls may overlap in time).
    pub fn of(host: &Host, subjects: &[Subject]) -> Self {
        let throttled: Vec<&Subject> = subjects.iter().filter(|s| s.throttled()).collect();
        let some: f64 = throttled.iter().map(|s| s.psi_some_avg10).sum();
        let full: f64 = throttled.iter().map(|s| s.psi_full_avg10).sum();
        Self {
            some: (host.psi_some_avg10 - some).max(0.0),
            full: (host.psi_full_avg10 - full).max(0.0),
            throttled: throttled.len(),
        }
    }
}

/// The host as read just now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Host {
    pub available: Bytes,
    pub psi_some_avg10: f64,
    pub psi_full_avg10: f64,
    /// The host's PSI trigger fired within its window.
    pub psi_triggered: bool,
}

/// How bad things are on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Calm,
    Pressure,
    Critical,
}

/// A write the ladder wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "act", content = "bytes")]
pub enum Act {
    /// Write memory.high.
    SetHigh(Bytes),
    /// Put memory.high back to what it was before guardian.
    RestoreHigh,
    Freeze,
    Thaw,
    Kill,
}

impl Act {
    /// Short name for logs, metrics and the store.
    pub fn name(&self) -> &'static str {
        match self {
            Act::SetHigh(_) => "set_high",
            Act::RestoreHigh => "restore_high",
            Act::Freeze => "freeze",
            Act::Thaw => "thaw",
            Act::Kill => "kill",
        }
    }
}

/// What to do to one group, and why, in words with the numbers that caused it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    pub key: String,
    pub act: Act,
    /// The ladder's step (1–4), or 0 for relaxing.
    pub step: u8,
    pub reason: String,
}

/// What the policy has done to a group and still holds.
#[derive(Clone, Debug, Default, PartialEq)]
struct Held {
    /// The memory.high guardian set, while it holds one.
    high: Option<Bytes>,
    frozen: bool,
    killed: bool,
    last_step_ms: Option<i64>,
    below_since_ms: Option<i64>,
}

/// The ladder, with what it holds between evaluations.
#[derive(Debug)]
pub struct Enforcer {
    params: Params,
    held: HashMap<String, Held>,
    calm_since_ms: Option<i64>,
    critical_since_ms: Option<i64>,
    last_freeze_ms: Option<i64>,
}

impl Enforcer {
    pub fn new(params: Params) -> Self {
        Self {
            params,
            held: HashMap::new(),
            calm_since_ms: None,
            critical_since_ms: None,
            last_freeze_ms: None,
        }
    }

    /// The host's level by its free memory and the pressure outside the throttled groups.
    ///
    /// Critical needs a shortage (MemAvailable below `reserve`) and either MemAvailable below
    /// `critical_reserve` or `full` stall outside the throttled groups at `psi_full`. The host's
    /// PSI trigger counts as pressure unless the throttled groups account for most of the stall.
    pub fn level(&self, host: &Host, subjects: &[Subject]) -> Level {
        self.level_of(host, &Outside::of(host, subjects))
    }

    fn level_of(&self, host: &Host, outside: &Outside) -> Level {
        let p = &self.params;
        let short = host.available < p.reserve;
        let trigger_outside = host.psi_triggered && outside.some * 2.0 >= host.psi_some_avg10;
        if host.available < p.critical_reserve || (short && outside.full >= p.psi_full) {
            Level::Critical
        } else if short
            || outside.some >= p.psi_some
            || outside.full >= p.psi_full
            || trigger_outside
        {
            Level::Pressure
        } else {
            Level::Calm
        }
    }

    /// Whether the policy holds anything of `key` (a squeezed limit or a freeze).
    #[cfg(test)]
    pub fn holds(&self, key: &str) -> bool {
        self.held
            .get(key)
            .is_some_and(|h| h.high.is_some() || h.frozen)
    }

    /// Forgets a group that is gone, or whose write failed.
    pub fn forget(&mut self, key: &str) {
        self.held.remove(key);
    }

    /// The lowest memory.high the ladder will set for `s`.
    fn floor(&self, s: &Subject) -> Bytes {
        let u = s.unreclaimable.0;
        Bytes(self.params.floor.0.max(u + u / 10))
    }

    /// One evaluation: the decisions for this moment, in the order to apply them. The policy
    /// assumes they are applied; a failed write is reported back with [`Enforcer::forget`].
    pub fn decide(&mut self, now_ms: i64, host: &Host, subjects: &[Subject]) -> Vec<Decision> {
        let outside = Outside::of(host, subjects);
        let level = self.level_of(host, &outside);
        match level {
            Level::Calm => {
                self.calm_since_ms.get_or_insert(now_ms);
                self.critical_since_ms = None;
            }
            Level::Pressure => {
                self.calm_since_ms = None;
                self.critical_since_ms = None;
            }
            Level::Critical => {
                self.calm_since_ms = None;
                self.critical_since_ms.get_or_insert(now_ms);
            }
        }
        let calm_long = self
            .calm_since_ms
            .is_some_and(|t| now_ms - t >= self.params.relax_after_ms);
        let mut out = Vec::new();
        let acting: Vec<&Subject> = subjects
            .iter()
            .filter(|s| !s.guard.avoid && s.guard.budget.is_some())
            .collect();
        if self.params.can_set_high {
            for s in &acting {
                self.budget_step(now_ms, calm_long, s, &mut out);
            }
            if level >= Level::Pressure {
                self.pressure_step(now_ms, host, outside, level, &acting, &mut out);
            }
        }
        if level == Level::Critical {
            self.freeze_step(now_ms, &acting, &mut out);
            self.kill_step(now_ms, &acting, &mut out);
        }
        if calm_long {
            for s in &acting {
                let held = self.held.entry(s.key.clone()).or_default();
                if held.frozen && !held.killed {
                    held.frozen = false;
                    out.push(Decision {
                        key: s.key.clone(),
                        act: Act::Thaw,
                        step: 0,
                        reason: format!("host calm for {} s", self.params.relax_after_ms / 1000),
                    });
                }
            }
        }
        out
    }

    /// Step 1 and its release: cap at the budget; raise back or release when calm.
    fn budget_step(&mut self, now_ms: i64, calm_long: bool, s: &Subject, out: &mut Vec<Decision>) {
        let Some(budget) = s.guard.budget.as_ref().map(|b| b.bytes) else {
            return;
        };
        let release_below = Bytes((budget.0 as f64 * self.params.release_below) as u64);
        let held = self.held.entry(s.key.clone()).or_default();
        match held.high {
            None => {
                // Someone else's lower memory.high already caps it: nothing to do.
                let capped_lower = s.high.is_some_and(|h| h <= budget);
                if s.usage > budget && !capped_lower {
                    held.high = Some(budget);
                    held.last_step_ms = Some(now_ms);
                    held.below_since_ms = None;
                    out.push(Decision {
                        key: s.key.clone(),
                        act: Act::SetHigh(budget),
                        step: 1,
                        reason: format!("usage {} above its budget {budget}", s.usage),
                    });
                }
            }
            Some(high) => {
                if s.usage >= release_below {
                    held.below_since_ms = None;
                } else {
                    let since = *held.below_since_ms.get_or_insert(now_ms);
                    if calm_long && now_ms - since >= self.params.relax_after_ms {
                        held.high = None;
                        held.below_since_ms = None;
                        out.push(Decision {
                            key: s.key.clone(),
                            act: Act::RestoreHigh,
                            step: 0,
                            reason: format!(
                                "usage {} below {release_below} for {} s and the host is calm",
                                s.usage,
                                self.params.relax_after_ms / 1000
                            ),
                        });
                        return;
                    }
                }
                if high < budget && calm_long {
                    held.high = Some(budget);
                    held.last_step_ms = Some(now_ms);
                    out.push(Decision {
                        key: s.key.clone(),
                        act: Act::SetHigh(budget),
                        step: 0,
                        reason: format!(
                            "host calm for {} s: back to its budget {budget}",
                            self.params.relax_after_ms / 1000
                        ),
                    });
                }
            }
        }
    }

    /// Step 2: lower the squeezed groups of the lowest priority that can still go lower.
    fn pressure_step(
        &mut self,
        now_ms: i64,
        host: &Host,
        outside: Outside,
        level: Level,
        acting: &[&Subject],
        out: &mut Vec<Decision>,
    ) {
        // Who can still go lower; the lowest priority among them goes first, each at most once
        // per step interval.
        let mut candidates: Vec<(&Subject, Bytes, Bytes)> = acting
            .iter()
            .filter_map(|s| {
                let held = self.held.get(&s.key)?;
                let high = held.high?;
                let floor = self.floor(s);
                (high > floor && !held.frozen).then_some((*s, high, floor))
            })
            .collect();
        let Some(lowest) = candidates.iter().map(|(s, ..)| s.guard.priority).min() else {
            return;
        };
        candidates.retain(|(s, ..)| {
            s.guard.priority == lowest
                && self
                    .held
                    .get(&s.key)
                    .and_then(|h| h.last_step_ms)
                    .is_none_or(|t| now_ms - t >= self.params.step_interval_ms)
        });
        let excess = |s: &Subject| {
            s.usage
                .0
                .saturating_sub(s.guard.budget.as_ref().map_or(0, |b| b.bytes.0))
        };
        candidates.sort_by_key(|(s, ..)| std::cmp::Reverse(excess(s)));
        for (s, high, floor) in candidates {
            let step = ((high.0 - floor.0) as f64 * self.params.step) as u64;
            let new = Bytes(
                high.0
                    .saturating_sub(step.max(self.params.min_step.0))
                    .max(floor.0),
            );
            let held = self.held.entry(s.key.clone()).or_default();
            held.high = Some(new);
            held.last_step_ms = Some(now_ms);
            out.push(Decision {
                key: s.key.clone(),
                act: Act::SetHigh(new),
                step: 2,
                reason: format!(
                    "host {}: MemAvailable {}, PSI some {:.1}% full {:.1}%{}{}; memory.high {high} -> {new} (floor {floor})",
                    if level == Level::Critical { "critical" } else { "under pressure" },
                    host.available,
                    outside.some,
                    outside.full,
                    if outside.throttled > 0 {
                        format!(
                            " outside {} throttled group(s) (host-wide {:.1}%/{:.1}%)",
                            outside.throttled, host.psi_some_avg10, host.psi_full_avg10
                        )
                    } else {
                        String::new()
                    },
                    if host.psi_triggered { ", PSI trigger fired" } else { "" },
                ),
            });
        }
    }

    /// Step 3: freeze the lowest-priority, largest group not yet frozen, one per step interval.
    fn freeze_step(&mut self, now_ms: i64, acting: &[&Subject], out: &mut Vec<Decision>) {
        if self
            .last_freeze_ms
            .is_some_and(|t| now_ms - t < self.params.step_interval_ms)
        {
            return;
        }
        let victim = acting
            .iter()
            .filter(|s| !self.held.get(&s.key).is_some_and(|h| h.frozen))
            .min_by_key(|s| (s.guard.priority, std::cmp::Reverse(s.usage)));
        if let Some(s) = victim {
            let held = self.held.entry(s.key.clone()).or_default();
            held.frozen = true;
            self.last_freeze_ms = Some(now_ms);
            out.push(Decision {
                key: s.key.clone(),
                act: Act::Freeze,
                step: 3,
                reason: format!(
                    "host critical; lowest priority ({}) and largest at {}",
                    s.guard.priority, s.usage
                ),
            });
        }
    }

    /// Step 4: with `allow_kill`, kill the lowest-priority frozen group once critical pressure
    /// has lasted `kill_after`.
    fn kill_step(&mut self, now_ms: i64, acting: &[&Subject], out: &mut Vec<Decision>) {
        let lasted = self.critical_since_ms.map_or(0, |t| now_ms - t);
        if !self.params.allow_kill || lasted < self.params.kill_after_ms {
            return;
        }
        let victim = acting
            .iter()
            .filter(|s| self.held.get(&s.key).is_some_and(|h| h.frozen && !h.killed))
            .min_by_key(|s| (s.guard.priority, std::cmp::Reverse(s.usage)));
        if let Some(s) = victim {
            let held = self.held.entry(s.key.clone()).or_default();
            held.killed = true;
            self.critical_since_ms = Some(now_ms);
            out.push(Decision {
                key: s.key.clone(),
                act: Act::Kill,
                step: 4,
                reason: format!(
                    "host critical for {} s even with it frozen; --allow-kill is set",
                    lasted / 1000
                ),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Budget, BudgetSource};

    const MIB: u64 = 1 << 20;

    fn params() -> Params {
        Params {
            can_set_high: true,
            allow_kill: false,
            reserve: Bytes(512 * MIB),
            critical_reserve: Bytes(128 * MIB),
            psi_some: 20.0,
            psi_full: 30.0,
            step: 0.25,
            min_step: Bytes(8 * MIB),
            floor: Bytes(32 * MIB),
            step_interval_ms: 1000,
            relax_after_ms: 10_000,
            release_below: 0.9,
            kill_after_ms: 30_000,
        }
    }

    fn subject(key: &str, budget_mib: u64, usage_mib: u64, priority: i32) -> Subject {
        Subject {
            key: key.into(),
            guard: Guard {
                budget: Some(Budget {
                    bytes: Bytes(budget_mib * MIB),
                    source: BudgetSource::Label,
                }),
                priority,
                avoid: false,
                ignored_labels: Vec::new(),
            },
            usage: Bytes(usage_mib * MIB),
            unreclaimable: Bytes(usage_mib * MIB / 4),
            high: None,
            psi_some_avg10: 0.0,
            psi_full_avg10: 0.0,
        }
    }

    fn calm() -> Host {
        Host {
            available: Bytes(4096 * MIB),
            ..Host::default()
        }
    }

    fn pressure() -> Host {
        Host {
            available: Bytes(300 * MIB),
            ..Host::default()
        }
    }

    fn critical() -> Host {
        Host {
            available: Bytes(100 * MIB),
            ..Host::default()
        }
    }

    #[test]
    fn over_budget_is_capped_at_its_budget_once() {
        let mut e = Enforcer::new(params());
        let s = [subject("a", 64, 80, 0), subject("b", 64, 40, 0)];
        let d = e.decide(0, &calm(), &s);
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].key.as_str(), d[0].act, d[0].step),
            ("a", Act::SetHigh(Bytes(64 * MIB)), 1)
        );
        assert!(
            d[0].reason.contains("above its budget 64.0MiB"),
            "{}",
            d[0].reason
        );
        assert!(e.decide(100, &calm(), &s).is_empty());
        assert!(e.holds("a") && !e.holds("b"));
    }

    #[test]
    fn a_lower_memory_high_set_by_someone_else_is_left_alone() {
        let mut e = Enforcer::new(params());
        let mut s = subject("a", 64, 80, 0);
        s.high = Some(Bytes(48 * MIB));
        assert!(e.decide(0, &calm(), &[s]).is_empty());
    }

    #[test]
    fn avoided_and_budgetless_groups_are_never_touched() {
        let mut e = Enforcer::new(params());
        let mut avoided = subject("a", 64, 500, -10);
        avoided.guard.avoid = true;
        let mut observed = subject("b", 64, 500, -10);
        observed.guard.budget = None;
        assert!(e.decide(0, &critical(), &[avoided, observed]).is_empty());
    }

    #[test]
    fn pressure_lowers_the_lowest_priority_first_step_by_step_down_to_the_floor() {
        let mut e = Enforcer::new(params());
        let s = [subject("low", 128, 200, 0), subject("high", 128, 300, 5)];
        e.decide(0, &calm(), &s);
        // Both capped at 128 MiB; now pressure: only "low" (priority 0) goes down.
        let d = e.decide(1000, &pressure(), &s);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].key, "low");
        assert_eq!(d[0].step, 2);
        // floor = max(32, unreclaimable 50 + 10%) = 55 MiB; step = 25% of (128 - 55).
        let floor = 50 * MIB + 5 * MIB;
        let Act::SetHigh(first) = d[0].act else {
            panic!()
        };
        assert_eq!(
            first.0,
            128 * MIB - ((128 * MIB - floor) as f64 * 0.25) as u64
        );
        // Rate limited: nothing within the step interval.
        assert!(e.decide(1500, &pressure(), &s).is_empty());
        let mut last = first;
        for t in 2..20 {
            for d in e.decide(t * 1000, &pressure(), &s) {
                if let Act::SetHigh(b) = d.act {
                    assert_eq!(
                        d.key, "low",
                        "the higher priority waits for the lower's floor"
                    );
                    assert!(b < last && b.0 >= floor);
                    last = b;
                }
            }
            if last.0 == floor {
                break;
            }
        }
        assert_eq!(last.0, floor);
        // "low" is at its floor: now "high" is lowered.
        let d = e.decide(30_000, &pressure(), &s);
        assert_eq!(
            d.iter().map(|d| d.key.as_str()).collect::<Vec<_>>(),
            ["high"]
        );
    }

    #[test]
    fn calm_returns_lowered_limits_to_the_budget_then_releases_groups_that_shrank() {
        let mut e = Enforcer::new(params());
        let s = [subject("a", 128, 200, 0)];
        e.decide(0, &calm(), &s);
        e.decide(1000, &pressure(), &s);
        assert!(
            e.decide(2000, &calm(), &s).is_empty(),
            "hysteresis: not yet"
        );
        let d = e.decide(12_000, &calm(), &s);
        assert_eq!((d[0].act, d[0].step), (Act::SetHigh(Bytes(128 * MIB)), 0));
        // It shrinks below 90% of its budget: released after relax_after.
        let shrunk = [subject("a", 128, 100, 0)];
        assert!(e.decide(13_000, &calm(), &shrunk).is_empty());
        let d = e.decide(23_000, &calm(), &shrunk);
        assert_eq!(d[0].act, Act::RestoreHigh);
        assert!(!e.holds("a"));
    }

    #[test]
    fn critical_freezes_the_lowest_priority_and_thaws_when_calm() {
        let mut e = Enforcer::new(params());
        let s = [subject("a", 128, 100, 1), subject("b", 128, 90, 0)];
        let d = e.decide(0, &critical(), &s);
        let freezes: Vec<_> = d.iter().filter(|d| d.act == Act::Freeze).collect();
        assert_eq!(freezes.len(), 1);
        assert_eq!((freezes[0].key.as_str(), freezes[0].step), ("b", 3));
        let d = e.decide(1000, &critical(), &s);
        assert_eq!(
            d.iter().filter(|d| d.act == Act::Freeze).count(),
            1,
            "{d:?}"
        );
        assert!(e.decide(2000, &calm(), &s).is_empty());
        let d = e.decide(12_000, &calm(), &s);
        assert_eq!(d.iter().filter(|d| d.act == Act::Thaw).count(), 2);
    }

    #[test]
    fn kill_only_with_allow_kill_after_kill_after() {
        let s = [subject("a", 128, 100, 0)];
        let mut e = Enforcer::new(params());
        for t in 0..40 {
            assert!(e
                .decide(t * 1000, &critical(), &s)
                .iter()
                .all(|d| d.act != Act::Kill));
        }
        let mut e = Enforcer::new(Params {
            allow_kill: true,
            ..params()
        });
        let mut kills = Vec::new();
        for t in 0..40 {
            kills.extend(
                e.decide(t * 1000, &critical(), &s)
                    .into_iter()
                    .filter(|d| d.act == Act::Kill)
                    .map(|d| (t, d)),
            );
        }
        assert_eq!(kills.len(), 1);
        assert_eq!(kills[0].0, 30);
        assert!(
            kills[0].1.reason.contains("--allow-kill"),
            "{}",
            kills[0].1.reason
        );
    }

    #[test]
    fn without_memory_high_only_freezing_is_left() {
        let mut e = Enforcer::new(Params {
            can_set_high: false,
            ..params()
        });
        let s = [subject("a", 64, 200, 0)];
        assert!(e.decide(0, &pressure(), &s).is_empty());
        let d = e.decide(1000, &critical(), &s);
        assert_eq!(d.iter().map(|d| d.act).collect::<Vec<_>>(), [Act::Freeze]);
    }

    #[test]
    fn levels_follow_memavailable_and_psi() {
        let e = Enforcer::new(params());
        assert_eq!(e.level(&calm(), &[]), Level::Calm);
        assert_eq!(e.level(&pressure(), &[]), Level::Pressure);
        assert_eq!(e.level(&critical(), &[]), Level::Critical);
        let psi = Host {
            psi_some_avg10: 25.0,
            ..calm()
        };
        assert_eq!(e.level(&psi, &[]), Level::Pressure);
        let triggered = Host {
            psi_triggered: true,
            ..calm()
        };
        assert_eq!(e.level(&triggered, &[]), Level::Pressure);
        let full = Host {
            psi_full_avg10: 40.0,
            ..calm()
        };
        assert_eq!(
            e.level(&full, &[]),
            Level::Pressure,
            "PSI full alone, with MemAvailable above the reserve, is no shortage"
        );
        let full_and_short = Host {
            psi_full_avg10: 40.0,
            ..pressure()
        };
        assert_eq!(e.level(&full_and_short, &[]), Level::Critical);
    }

    /// A group held at its memory.high, stalling in its own reclaim as the runner VM's trial
    /// showed (host some 50 %, full 33 %, 2.6 GiB of 3 GiB available).
    fn throttled_at_its_budget() -> Subject {
        let mut s = subject("a", 48, 47, 0);
        s.high = Some(Bytes(48 * MIB));
        s.psi_some_avg10 = 52.0;
        s.psi_full_avg10 = 34.0;
        s
    }

    fn roomy_host_with_its_stall() -> Host {
        Host {
            available: Bytes(2662 * MIB),
            psi_some_avg10: 50.0,
            psi_full_avg10: 33.0,
            psi_triggered: true,
        }
    }

    #[test]
    fn a_budget_that_bites_on_a_roomy_host_throttles_and_never_freezes() {
        let mut e = Enforcer::new(params());
        let s = [throttled_at_its_budget()];
        assert_eq!(e.level(&roomy_host_with_its_stall(), &s), Level::Calm);
        for t in 0..120 {
            let d = e.decide(t * 1000, &roomy_host_with_its_stall(), &s);
            assert!(
                d.iter().all(|d| !matches!(d.act, Act::Freeze | Act::Kill)),
                "at {t} s: {d:?}"
            );
            assert!(
                d.iter().all(|d| d.step != 2),
                "its own stall must not lower its memory.high: {d:?}"
            );
        }
    }

    #[test]
    fn pressure_outside_the_throttled_groups_still_counts() {
        let e = Enforcer::new(params());
        let s = [throttled_at_its_budget()];
        let others_stall = Host {
            psi_some_avg10: 52.0 + 25.0,
            psi_full_avg10: 34.0 + 5.0,
            ..roomy_host_with_its_stall()
        };
        assert_eq!(e.level(&others_stall, &s), Level::Pressure);
        let and_short = Host {
            available: Bytes(300 * MIB),
            psi_full_avg10: 34.0 + 31.0,
            ..others_stall
        };
        assert_eq!(e.level(&and_short, &s), Level::Critical);
        // A group below its memory.high is not throttled: its stall stays in the host's.
        let mut below = throttled_at_its_budget();
        below.usage = Bytes(20 * MIB);
        assert_eq!(
            e.level(&roomy_host_with_its_stall(), &[below]),
            Level::Pressure
        );
    }

    #[test]
    fn a_shortage_critical_whatever_the_pressure_says() {
        let e = Enforcer::new(params());
        let s = [throttled_at_its_budget()];
        let short = Host {
            available: Bytes(100 * MIB),
            ..roomy_host_with_its_stall()
        };
        assert_eq!(e.level(&short, &s), Level::Critical);
    }
}
