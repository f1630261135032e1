//! The daemon's enforcement: which groups have budgets, what wakes the ladder (the host's PSI
//! trigger, each group's memory.events, a short usage poll), and applying its decisions through
//! the journaled executor. Reads (sources) → decisions (policy) → writes (actions) → store.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{info, warn};

use crate::model::now_ms;
use crate::{
    actions::{ActionError, Executor, Target},
    config::EnforceConfig,
    model::{
        cgroup_guard, resolve_guard, ActionRecord, BudgetRule, Bytes, Container, ContainerTable,
        Guard, LabelPolicy, LadderDecision, ProfileBudget,
    },
    policy::{
        enforce::{Act, Enforcer, Host, Level, Outside, Params, Subject},
        reload::{budget_changes, BudgetChange},
    },
    sources::{
        cgroup::{read_memory, CgroupError, FileWatch, Hierarchy, PsiKind, PsiTrigger},
        host,
        profiles::budgets_from,
    },
    store::Store,
};

/// Reclaim stalls and memory.events changes come in bursts (a group held at its memory.high
/// changes memory.events at every throttle); one evaluation per this long is enough for them.
/// PSI triggers (rate-limited by the kernel) and the poll always evaluate.
const BURST_DEBOUNCE: Duration = Duration::from_millis(50);

/// What woke the ladder, and when: the reaction time runs from here to the write.
#[derive(Clone, Copy, Debug)]
pub struct Wake {
    pub trigger: &'static str,
    pub at: Instant,
}

impl Wake {
    pub fn now(trigger: &'static str) -> Self {
        Self {
            trigger,
            at: Instant::now(),
        }
    }
}

/// A freeze, kill or thaw the ladder made, with the readings it decided on: the daemon turns
/// these into incidents.
#[derive(Clone, Debug)]
pub struct LadderEvent {
    /// Container id, or `cgroup:<path>`.
    pub key: String,
    pub name: String,
    pub act: Act,
    pub decision: LadderDecision,
    pub budget: Option<Bytes>,
    pub memory_high: Option<Bytes>,
}

/// A group with a guard, and the watch on its memory.events.
struct Tracked {
    name: String,
    memory_rel: PathBuf,
    unified_rel: Option<PathBuf>,
    guard: Guard,
    watch: Option<JoinHandle<()>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(w) = self.watch.take() {
            w.abort();
        }
    }
}

/// Budgets, the ladder and the executor, owned by the daemon's one state task.
pub struct Enforcement {
    enforcer: Enforcer,
    executor: Executor,
    hierarchy: Hierarchy,
    rules: Vec<BudgetRule>,
    /// The `cgroup = ...` rules: key, path and guard.
    cgroup_rules: Vec<(String, PathBuf, Guard)>,
    profiles: Vec<ProfileBudget>,
    tracked: BTreeMap<String, Tracked>,
    wake_tx: mpsc::Sender<Wake>,
    psi_window: Duration,
    last_psi: Option<Instant>,
    last_eval: Option<Instant>,
    level: Level,
    actions_total: BTreeMap<&'static str, u64>,
    /// The container guardian itself runs in (the container image): never throttled, frozen
    /// or killed by its own ladder, whatever rule or label would give it a budget.
    own_container: Option<String>,
    /// How container labels are believed (`trusted_labels`, floor, host size).
    labels: LabelPolicy,
    /// Containers whose unusable labels were already logged (once each).
    told_labels: std::collections::HashSet<String>,
    /// The store refused a journal write (full disk): said once until one succeeds.
    journal_failing: bool,
    reserve: Bytes,
    critical_reserve: Bytes,
    /// Freezes, kills and thaws made since the daemon last took them.
    events: Vec<LadderEvent>,
}

impl Enforcement {
    /// Sets up from the config; puts back whatever a previous daemon left changed (a crash).
    pub fn start(
        config: &EnforceConfig,
        rules: Vec<BudgetRule>,
        hierarchy: Hierarchy,
        store: &Store,
        wake_tx: mpsc::Sender<Wake>,
    ) -> anyhow::Result<Self> {
        let executor = Executor::new(hierarchy.clone(), config.dry_run);
        let restored = executor.restore_all(store, "startup")?;
        if !restored.is_empty() {
            warn!(
                count = restored.len(),
                "restored what a previous guardian left changed"
            );
        }
        if !executor.can_set_high() {
            warn!(mode = %hierarchy.mode, "budgets need cgroup v2 (memory.high): on this host guardian observes, and under critical pressure can only freeze");
        }
        let (profiles, errors) = budgets_from(&config.profiles);
        for e in errors {
            warn!("profile skipped, its budgets are not used: {e}");
        }
        let params = Params {
            can_set_high: executor.can_set_high(),
            allow_kill: config.allow_kill,
            reserve: config.reserve.0,
            critical_reserve: config.critical_reserve.0,
            psi_some: config.psi_some,
            psi_full: config.psi_full,
            step: config.step,
            min_step: config.min_step.0,
            floor: config.floor.0,
            step_interval_ms: config.step_interval.0.as_millis() as i64,
            relax_after_ms: config.relax_after.0.as_millis() as i64,
            release_below: config.release_below,
            kill_after_ms: config.kill_after.0.as_millis() as i64,
        };
        arm_host_trigger(config, wake_tx.clone());
        info!(
            dry_run = config.dry_run,
            allow_kill = config.allow_kill,
            rules = rules.len(),
            profile_budgets = profiles.len(),
            "enforcing budgets"
        );
        let cgroup_rules = rules
            .iter()
            .filter_map(|r| {
                let path = PathBuf::from(r.cgroup.as_deref()?);
                Some((format!("cgroup:{}", path.display()), path, cgroup_guard(r)))
            })
            .collect();
        let mut me = Self {
            enforcer: Enforcer::new(params),
            executor,
            hierarchy,
            rules,
            cgroup_rules,
            profiles,
            tracked: BTreeMap::new(),
            wake_tx,
            psi_window: config.psi_window.0,
            last_psi: None,
            last_eval: None,
            level: Level::Calm,
            actions_total: BTreeMap::new(),
            own_container: crate::sources::docker::own_container_id(),
            labels: config.label_policy(),
            told_labels: Default::default(),
            journal_failing: false,
            reserve: config.reserve.0,
            critical_reserve: config.critical_reserve.0,
            events: Vec::new(),
        };
        if let Some(id) = &me.own_container {
            info!(container = %&id[..12], "guardian runs in this container; it never throttles, freezes or kills it");
        }
        me.refresh_cgroup_rules();
        Ok(me)
    }

    /// A reload (SIGHUP): new `[[budget]]` rules and profiles. Only groups whose budget changed
    /// are touched: the ladder re-decides those on its next evaluation, and a group that lost
    /// its budget gets its values put back now. Nothing else is restored or re-applied. The
    /// ladder's own knobs (`[enforce]` other than `profiles`) take a restart.
    pub fn reload(
        &mut self,
        config: &EnforceConfig,
        rules: Vec<BudgetRule>,
        table: &ContainerTable,
        store: &Store,
    ) -> Vec<BudgetChange> {
        let budgets = |me: &Self| -> BTreeMap<String, Bytes> {
            me.tracked
                .iter()
                .filter_map(|(k, t)| Some((k.clone(), t.guard.budget.as_ref()?.bytes)))
                .collect()
        };
        let before = budgets(self);
        let (profiles, errors) = budgets_from(&config.profiles);
        for e in errors {
            warn!("profile skipped, its budgets are not used: {e}");
        }
        self.profiles = profiles;
        self.cgroup_rules = rules
            .iter()
            .filter_map(|r| {
                let path = PathBuf::from(r.cgroup.as_deref()?);
                Some((format!("cgroup:{}", path.display()), path, cgroup_guard(r)))
            })
            .collect();
        self.rules = rules;
        self.tracked.retain(|k, _| !k.starts_with("cgroup:"));
        self.refresh_cgroup_rules();
        self.sync_containers(table, store);
        let changes = budget_changes(&before, &budgets(self));
        for change in &changes {
            info!(subject = %change.key, before = ?change.before, after = ?change.after, "budget reloaded");
            if change.released() {
                self.enforcer.forget(&change.key);
                if let Err(e) = self.executor.restore_subject(store, &change.key, "reload") {
                    warn!(subject = %change.key, "restoring after its budget was removed: {e}");
                }
            }
        }
        changes
    }

    /// Follows the container table: guards running containers with a budget, drops the rest.
    pub fn sync_containers(&mut self, table: &ContainerTable, store: &Store) {
        let mut running = std::collections::HashSet::new();
        for c in table.iter().filter(|c| c.run_state().is_alive()) {
            running.insert(c.id.clone());
            self.track_container(c);
        }
        let ended: Vec<String> = self
            .tracked
            .keys()
            .filter(|k| !k.starts_with("cgroup:") && !running.contains(*k))
            .cloned()
            .collect();
        for key in ended {
            self.untrack(&key, store);
        }
    }

    /// Starts (or refreshes) guarding a running container.
    fn track_container(&mut self, c: &Container) {
        if self.own_container.as_deref() == Some(c.id.as_str()) {
            return;
        }
        let Some(cg) = &c.cgroup else { return };
        let memory_rel = match (&cg.memory_path, &cg.path) {
            (Some(m), _) => m.clone(),
            (None, Some(u)) if self.hierarchy.memory_is_v2() => u.clone(),
            _ => return,
        };
        let guard = resolve_guard(c, &self.rules, &self.profiles, &self.labels);
        if !guard.ignored_labels.is_empty() && self.told_labels.insert(c.id.clone()) {
            for why in &guard.ignored_labels {
                warn!(subject = %c.display_name(), "label {why}; still watched");
            }
        }
        self.track(
            c.id.clone(),
            c.display_name(),
            memory_rel,
            cg.path.clone(),
            guard,
        );
    }

    fn track(
        &mut self,
        key: String,
        name: String,
        memory_rel: PathBuf,
        unified_rel: Option<PathBuf>,
        guard: Guard,
    ) {
        if guard.budget.is_none() || guard.avoid {
            self.tracked.remove(&key);
            return;
        }
        if let Some(t) = self.tracked.get_mut(&key) {
            t.guard = guard;
            return;
        }
        let budget = guard
            .budget
            .as_ref()
            .map(|b| (b.bytes, b.source.to_string()));
        info!(subject = %name, budget = ?budget, priority = guard.priority, "guarding");
        let watch = self
            .hierarchy
            .memory_is_v2()
            .then(|| {
                watch_events(
                    &self.hierarchy.memory_dir(&memory_rel),
                    self.wake_tx.clone(),
                )
            })
            .flatten();
        self.tracked.insert(
            key,
            Tracked {
                name,
                memory_rel,
                unified_rel,
                guard,
                watch,
            },
        );
    }

    /// Stops guarding a container that exited; its cgroup (and what guardian set there) is gone.
    pub fn untrack(&mut self, key: &str, store: &Store) {
        if self.tracked.remove(key).is_some() {
            self.enforcer.forget(key);
            if let Err(e) = self.executor.forget_gone(store, key) {
                warn!("journal: {e}");
            }
        }
    }

    /// The budget of a guarded container or cgroup.
    pub fn budget_of(&self, key: &str) -> Option<Bytes> {
        self.tracked
            .get(key)
            .and_then(|t| t.guard.budget.as_ref().map(|b| b.bytes))
    }

    /// Guards the cgroups named by `cgroup = ...` rules once they exist (one that goes away
    /// is dropped when reading it finds it gone).
    fn refresh_cgroup_rules(&mut self) {
        for i in 0..self.cgroup_rules.len() {
            let (key, path, guard) = &self.cgroup_rules[i];
            if self.tracked.contains_key(key) || !self.hierarchy.memory_dir(path).is_dir() {
                continue;
            }
            let unified = self.hierarchy.unified.as_ref().map(|_| path.clone());
            let (key, path, guard) = (key.clone(), path.clone(), guard.clone());
            self.track(key, path.display().to_string(), path, unified, guard);
        }
    }

    /// A reclaim stall seen by eBPF (`ts_ns` on the kernel's monotonic clock) in the unified
    /// group at `path`: wakes the ladder when a guarded group stalled, at most every 50 ms, with
    /// the reaction time counted from the kernel's timestamp.
    pub fn on_reclaim_stall(&mut self, path: &Path, ts_ns: u64, store: &Store) {
        let guarded = self.tracked.values().any(|t| {
            t.unified_rel
                .as_deref()
                .is_some_and(|u| path.starts_with(u))
        });
        if !guarded {
            return;
        }
        let ago = Duration::from_nanos(crate::sources::ebpf::monotonic_ns().saturating_sub(ts_ns));
        let at = Instant::now().checked_sub(ago).unwrap_or_else(Instant::now);
        self.evaluate(
            Wake {
                trigger: "ebpf",
                at,
            },
            store,
        );
    }

    /// One pass of the ladder: read, decide, write, record.
    pub fn evaluate(&mut self, wake: Wake, store: &Store) {
        // Nothing has a budget and no rule names a cgroup: nothing to read or decide.
        if self.tracked.is_empty() && self.cgroup_rules.is_empty() {
            return;
        }
        if matches!(wake.trigger, "ebpf" | "memory.events")
            && self.last_eval.is_some_and(|t| t.elapsed() < BURST_DEBOUNCE)
        {
            return;
        }
        self.last_eval = Some(Instant::now());
        if wake.trigger == "psi" {
            self.last_psi = Some(wake.at);
        }
        self.refresh_cgroup_rules();
        let pressure = host::memory_pressure();
        let host = Host {
            available: host::mem_available().unwrap_or(Bytes(u64::MAX)),
            psi_some_avg10: pressure.as_ref().map_or(0.0, |p| p.some.avg10),
            psi_full_avg10: pressure.as_ref().map_or(0.0, |p| p.full.avg10),
            psi_triggered: self.last_psi.is_some_and(|t| t.elapsed() < self.psi_window),
        };
        let mut subjects = Vec::with_capacity(self.tracked.len());
        let mut gone = Vec::new();
        for (key, t) in &self.tracked {
            match read_memory(&self.hierarchy, &t.memory_rel, t.unified_rel.as_deref()) {
                Ok(r) => subjects.push(Subject {
                    key: key.clone(),
                    guard: t.guard.clone(),
                    usage: r.usage,
                    // The one definition (sources::cgroup::files::unreclaimable_v2/_v1):
                    // anon, shmem, mapped file pages and kernel memory, at most the usage.
                    unreclaimable: r.unreclaimable,
                    high: r.high,
                    psi_some_avg10: r.pressure.as_ref().map_or(0.0, |p| p.some.avg10),
                    psi_full_avg10: r.pressure.as_ref().map_or(0.0, |p| p.full.avg10),
                }),
                Err(CgroupError::Gone { .. }) => gone.push(key.clone()),
                Err(e) => warn!(subject = %t.name, "reading its cgroup: {e}"),
            }
        }
        for key in gone {
            self.untrack(&key, store);
        }
        let level = self.enforcer.level(&host, &subjects);
        if level != self.level {
            let outside = Outside::of(&host, &subjects);
            info!(level = ?level, available = %host.available, psi_some_avg10 = host.psi_some_avg10, psi_full_avg10 = host.psi_full_avg10, outside_some_avg10 = outside.some, outside_full_avg10 = outside.full, throttled = outside.throttled, trigger = %wake.trigger, "host memory level");
            self.level = level;
        }
        for d in self.enforcer.decide(now_ms(), &host, &subjects) {
            let Some(t) = self.tracked.get(&d.key) else {
                continue;
            };
            let target = Target {
                subject: &d.key,
                memory_rel: &t.memory_rel,
                unified_rel: t.unified_rel.as_deref(),
            };
            match self.executor.apply(store, &target, d.act) {
                Ok(w) => {
                    // Until the write was issued; the write's own reclaim is reported apart.
                    let reaction = wake.at.elapsed().saturating_sub(w.took);
                    if std::mem::take(&mut self.journal_failing) {
                        info!("the store journals again: squeezes and freezes resume");
                    }
                    let record = ActionRecord {
                        at_ms: now_ms(),
                        subject: d.key.clone(),
                        name: t.name.clone(),
                        action: d.act.name().to_string(),
                        file: w.file.display().to_string(),
                        before: w.before,
                        after: w.after,
                        step: Some(d.step),
                        reason: d.reason.clone(),
                        trigger: wake.trigger.to_string(),
                        reaction_us: Some(reaction.as_micros() as u64),
                        write_us: Some(w.took.as_micros() as u64),
                        dry_run: self.executor.dry_run(),
                    };
                    info!(
                        subject = %t.name,
                        action = %d.act.name(),
                        step = d.step,
                        before = %record.before,
                        after = %record.after,
                        trigger = %wake.trigger,
                        reaction_us = reaction.as_micros() as u64,
                        write_us = w.took.as_micros() as u64,
                        dry_run = record.dry_run,
                        "{}",
                        d.reason
                    );
                    *self.actions_total.entry(d.act.name()).or_default() += 1;
                    if let Err(e) = store.record_action(&record) {
                        warn!("recording the action: {e}");
                    }
                    if d.act == Act::Kill {
                        warn!(subject = %t.name, "killed: {}", d.reason);
                    }
                    let wrote = !self.executor.dry_run();
                    if wrote && matches!(d.act, Act::Freeze | Act::Kill | Act::Thaw) {
                        let s = subjects.iter().find(|s| s.key == d.key);
                        self.events.push(LadderEvent {
                            key: d.key.clone(),
                            name: t.name.clone(),
                            act: d.act,
                            decision: LadderDecision {
                                step: d.step,
                                rule: d.reason.clone(),
                                usage: s.map(|s| s.usage).unwrap_or_default(),
                                priority: t.guard.priority,
                                host_available: host.available,
                                host_psi_some_avg10: host.psi_some_avg10,
                                host_psi_full_avg10: host.psi_full_avg10,
                                reserve: self.reserve,
                                critical_reserve: self.critical_reserve,
                            },
                            budget: t.guard.budget.as_ref().map(|b| b.bytes),
                            memory_high: s.and_then(|s| s.high),
                        });
                    }
                }
                Err(ActionError::Journal(e)) => {
                    // A full or read-only store: said once, not at every step.
                    if !self.journal_failing {
                        self.journal_failing = true;
                        warn!(subject = %t.name, action = %d.act.name(), "the store cannot journal the value this would replace ({e}): guardian makes no change it could not put back, so new squeezes and freezes wait until the store takes writes (what is already held stays)");
                    }
                    self.enforcer.forget(&d.key);
                }
                Err(e) => {
                    if !matches!(e, ActionError::Cgroup(CgroupError::Gone { .. })) {
                        warn!(subject = %t.name, action = %d.act.name(), "{e}");
                    }
                    self.enforcer.forget(&d.key);
                }
            }
        }
    }

    /// The freezes, kills and thaws made since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<LadderEvent> {
        std::mem::take(&mut self.events)
    }

    /// Puts back everything guardian changed; the daemon is stopping.
    pub fn shutdown(&mut self, store: &Store) {
        self.tracked.clear();
        match self.executor.restore_all(store, "shutdown") {
            Ok(done) => {
                info!(
                    restored = done.len(),
                    "restored every value guardian changed"
                );
            }
            Err(e) => {
                warn!("restoring at exit failed; the next start restores from the journal: {e}")
            }
        }
    }

    /// What the metrics say about the ladder: actions taken, groups guarded, the host's level.
    pub fn metrics(&self) -> crate::metrics::EnforcementSeries {
        crate::metrics::EnforcementSeries {
            actions_total: self.actions_total.clone(),
            guarded_groups: self.tracked.len() as u64,
            host_level: self.level as u8,
        }
    }
}

/// Wakes the ladder when a group's memory.events changes (a `high` or `max` event).
fn watch_events(dir: &Path, tx: mpsc::Sender<Wake>) -> Option<JoinHandle<()>> {
    let watch = FileWatch::new(&dir.join("memory.events"))
        .map_err(|e| warn!("no memory.events notifications, polling only: {e}"))
        .ok()?;
    Some(tokio::spawn(async move {
        while watch.changed().await.is_ok() {
            if tx.send(Wake::now("memory.events")).await.is_err() {
                break;
            }
        }
    }))
}

/// Wakes the ladder when the host's memory PSI trigger fires.
fn arm_host_trigger(config: &EnforceConfig, tx: mpsc::Sender<Wake>) {
    let trigger = match PsiTrigger::arm(
        Path::new(host::PRESSURE_FILE),
        PsiKind::Some,
        config.psi_stall.0,
        config.psi_window.0,
    ) {
        Ok(t) => t,
        Err(e) => {
            warn!("no host PSI trigger, using MemAvailable and the poll only: {e}");
            return;
        }
    };
    info!(trigger = trigger.trigger(), "host PSI trigger armed");
    tokio::spawn(async move {
        while trigger.fired().await.is_ok() {
            if tx.send(Wake::now("psi")).await.is_err() {
                break;
            }
        }
    });
}
