//! The daemon's incidents other than kernel OOM kills: guardian's own freezes and kills (from
//! the ladder's events), throttling at memory.high and warnings near a limit (from each sampling
//! round). The decisions are policy::incidents'; this wires readings in and incidents out
//! (store row, report files, hook, metrics).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tracing::{info, warn};

use super::{enforcement::LadderEvent, incidents::Incidents};
use crate::{
    config::IncidentsConfig,
    model::{now_ms, time, Bytes, Cause, Container, ContainerTable, Incident, Recorder},
    policy::{
        enforce::Act,
        incidents::{
            next_step, FreezeWatch, Throttle, ThrottleEpisodes, ThrottleParams, WarnEpisodes,
            WarnParams,
        },
        killers::{self, Death, NEAR_LIMIT},
    },
    report::incident::write_files,
    sources::{
        cgroup::{parse_pressure, Hierarchy},
        host,
    },
    store::Store,
};

/// How far below `warn_share` a container must fall before it can be warned again.
const WARN_HYSTERESIS: f64 = 0.05;
/// A death by signal is judged this long after Docker's `die`: long enough for a kernel OOM
/// kill's incident (gathered for 2 s) to be stored, and for a killer's log line to be written.
const DEATH_WAIT: Duration = Duration::from_secs(3);
/// How far back usage and the host's MemAvailable count as "when it died" (ms).
const DEATH_WINDOW_MS: i64 = 10_000;
/// The host counts as short of memory below this share of MemTotal.
const HOST_SHORT: f64 = 0.1;

/// A container that died of a signal, waiting for the other witnesses.
struct Dying {
    due: Instant,
    container_id: String,
    short_id: String,
    started_ms: i64,
    pid: Option<u32>,
    death: Death<'static>,
    incident: Incident,
}

/// What an incident is built from: the host's recent MemAvailable (kept by the OOM side), the
/// containers, and their recent usage.
pub struct Seen<'a> {
    pub incidents: &'a Incidents,
    pub table: &'a ContainerTable,
    pub recorder: &'a Recorder,
}

/// An incident of `cause` for the container (or cgroup) `key`, with its usage timeline.
fn open(seen: &Seen, at_ms: i64, key: &str, name: &str, cause: Cause) -> Incident {
    let container = seen.table.get(key);
    let mut i = seen.incidents.blank(
        at_ms,
        name.to_string(),
        None,
        container,
        seen.recorder.get(key),
    );
    i.id = format!("{}-{}", i.id.trim_end_matches("-x"), cause.name());
    i.cause = cause;
    i.cgroup = container
        .and_then(|c| c.cgroup.as_ref())
        .and_then(|c| c.path.clone().or_else(|| c.memory_path.clone()))
        .or_else(|| key.strip_prefix("cgroup:").map(PathBuf::from))
        .map(|p| p.display().to_string());
    i.sources.push("guardian".into());
    i
}

/// Freeze, kill, throttling and warning incidents being followed.
pub struct Episodes {
    dir: PathBuf,
    hook: Option<String>,
    freezes: FreezeWatch,
    /// The freeze incident of each frozen group, written when overdue or ended.
    frozen: HashMap<String, Incident>,
    warnings: WarnEpisodes,
    throttles: ThrottleEpisodes,
    throttled: HashMap<String, Incident>,
    /// Warnings given, by (container, service) label values.
    warnings_total: BTreeMap<(String, String), u64>,
    /// The host's MemAvailable over the last [`DEATH_WINDOW_MS`], and its MemTotal.
    host: VecDeque<(i64, Bytes)>,
    host_total: Option<Bytes>,
    dying: Vec<Dying>,
    /// Containers guardian's ladder killed: their death is its own incident already.
    killed: std::collections::HashSet<String>,
    /// Containers Docker sent a `kill` event for (`docker stop`, `docker kill`, compose down),
    /// with when: a death that follows is the user's stop, not a memory incident.
    docker_killed: HashMap<String, Instant>,
}

impl Episodes {
    pub fn start(config: &IncidentsConfig, state_dir: &Path) -> Self {
        Self {
            dir: config
                .dir
                .clone()
                .unwrap_or_else(|| state_dir.join("reports")),
            hook: config.hook.clone(),
            freezes: FreezeWatch::new(config.freeze_report_after.0.as_millis() as i64),
            frozen: HashMap::new(),
            warnings: WarnEpisodes::new(WarnParams {
                share: config.warn_share,
                hold_ms: config.warn_after.0.as_millis() as i64,
                rearm_share: config.warn_share - WARN_HYSTERESIS,
            }),
            throttles: ThrottleEpisodes::new(ThrottleParams {
                full_share: config.throttled_full,
                after_ms: config.throttled_after.0.as_millis() as i64,
            }),
            throttled: HashMap::new(),
            warnings_total: BTreeMap::new(),
            host: VecDeque::new(),
            host_total: host::mem_total().ok(),
            dying: Vec::new(),
            killed: std::collections::HashSet::new(),
            docker_killed: HashMap::new(),
        }
    }

    /// Docker's `kill` event (a signal sent through Docker: `docker stop`, `docker kill`).
    pub fn on_docker_kill(&mut self, container_id: &str) {
        let now = Instant::now();
        // Forget stops long past (a container killed through Docker that never died).
        self.docker_killed
            .retain(|_, at| now.duration_since(*at) < Duration::from_secs(600));
        self.docker_killed.insert(container_id.to_string(), now);
    }

    /// The ladder froze, killed or thawed a group.
    pub fn on_ladder(&mut self, events: Vec<LadderEvent>, seen: &Seen, store: &Store) {
        let now = now_ms();
        for e in events {
            match e.act {
                Act::Freeze => {
                    self.freezes.frozen(&e.key, now);
                    let mut i = open(seen, now, &e.key, &e.name, Cause::FrozenByGuardian);
                    i.decision = Some(e.decision);
                    i.budget = e.budget;
                    i.memory_high = e.memory_high;
                    self.frozen.entry(e.key).or_insert(i);
                }
                Act::Kill => {
                    self.killed.insert(e.key.clone());
                    self.end_freeze(&e.key, now, "then killed by guardian", store);
                    let mut i = open(seen, now, &e.key, &e.name, Cause::KilledByGuardian);
                    i.decision = Some(e.decision);
                    i.budget = e.budget;
                    i.memory_high = e.memory_high;
                    self.write(i, store);
                }
                Act::Thaw => self.end_freeze(&e.key, now, "thawed by guardian", store),
                _ => {}
            }
        }
    }

    /// A container stopped or went away: a freeze of it ends, and so does its throttling.
    pub fn on_gone(&mut self, key: &str, store: &Store) {
        self.end_freeze(key, now_ms(), "the container stopped", store);
        self.warnings.forget(key);
        if let Some(end) = self.throttles.forget(key) {
            self.throttle_event(key, end, store);
        }
    }

    /// Docker's `die` of a container that exited by SIGKILL or SIGTERM: if memory was short it
    /// may be a userspace killer's doing; judged after [`DEATH_WAIT`] (see [`Episodes::tick`]).
    /// `c` is Docker's state after the death; the table still has it running (its pid).
    pub fn on_die(&mut self, c: &Container, seen: &Seen, budget: Option<Bytes>) {
        if self.killed.remove(&c.id) || !matches!(c.exit_code, Some(137) | Some(143)) {
            return;
        }
        let now = now_ms();
        let run = seen.recorder.get(&c.id);
        let recent_max = run
            .and_then(|r| {
                r.recent
                    .iter()
                    .filter(|(t, _)| now - t <= DEATH_WINDOW_MS)
                    .map(|(_, b)| *b)
                    .max()
            })
            .unwrap_or_default();
        let limit = match (c.memory_limit, budget) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let near_limit = limit.is_some_and(|l| recent_max.0 as f64 >= l.0 as f64 * NEAR_LIMIT);
        let host_min = self
            .host
            .iter()
            .filter(|(t, _)| now - t <= DEATH_WINDOW_MS)
            .map(|(_, b)| *b)
            .min();
        let host_short = matches!((host_min, self.host_total), (Some(a), Some(t)) if (a.0 as f64) < t.0 as f64 * HOST_SHORT);
        let mut incident = open(seen, now, &c.id, &c.display_name(), Cause::KernelOom);
        incident.exit_code = c.exit_code;
        incident.limit = c.memory_limit;
        incident.budget = budget;
        incident.peak = run.map(|r| r.record.peak).filter(|p| p.0 > 0);
        incident.sources = vec!["docker".into()];
        incident.notes.push(format!(
            "exit code {} (killed by signal {}); Docker's OOMKilled {}; its usage reached {recent_max} in the last 10 s{}; the host's lowest MemAvailable then {}",
            c.exit_code.unwrap_or_default(),
            c.exit_code.unwrap_or_default() - 128,
            c.oom_killed,
            limit.map(|l| format!(" against {l}")).unwrap_or_default(),
            host_min.map_or_else(|| "unknown".to_string(), |b| b.to_string()),
        ));
        self.dying.push(Dying {
            due: Instant::now() + DEATH_WAIT,
            container_id: c.id.clone(),
            short_id: c.to_ref().id,
            started_ms: c
                .started_at
                .as_deref()
                .and_then(crate::model::rfc3339_ms)
                .unwrap_or(now - DEATH_WINDOW_MS),
            pid: seen.table.get(&c.id).and_then(|r| r.pid).or(c.pid),
            death: Death {
                exit_code: c.exit_code,
                kernel_oom: c.oom_killed,
                near_limit,
                host_short,
                killer: None,
                stopped_through_docker: self.docker_killed.remove(&c.id).is_some(),
            },
            incident,
        });
    }

    /// Deaths whose wait is over: a kernel OOM incident of the container wins; else a killer's
    /// log line names the killer; else a SIGKILL while memory was short is "killed by a signal".
    fn judge_deaths(&mut self, store: &Store) {
        let now = Instant::now();
        let (due, waiting): (Vec<Dying>, Vec<Dying>) = std::mem::take(&mut self.dying)
            .into_iter()
            .partition(|d| d.due <= now);
        self.dying = waiting;
        if due.is_empty() {
            return;
        }
        let lines: Vec<killers::KillLine> = host::killer_journal(60)
            .iter()
            .filter_map(|(ident, msg)| killers::parse_kill_line(ident, msg))
            .collect();
        for mut d in due {
            // Only a kernel OOM incident counts (a warning before the death does not).
            d.death.kernel_oom |= store
                .has_oom_incident_for(&d.short_id, d.started_ms)
                .unwrap_or(false);
            let killer = killers::killer_of(&lines, &d.container_id, d.pid, None);
            d.death.killer = killer;
            let Some(cause) = killers::signal_death(&d.death) else {
                continue;
            };
            let mut i = d.incident;
            i.id = format!("{}-{}", i.id.trim_end_matches("-oom"), cause.name());
            if let Some(k) = killer {
                i.sources.push(format!("{k} (journal)"));
            }
            i.cause = cause;
            self.write(i, store);
        }
    }

    /// The daemon stops: it thaws everything it froze, so every freeze ends now.
    pub fn shutdown(&mut self, store: &Store) {
        let now = now_ms();
        let keys: Vec<String> = self.frozen.keys().cloned().collect();
        for key in keys {
            self.end_freeze(&key, now, "thawed when guardian stopped", store);
        }
    }

    fn end_freeze(&mut self, key: &str, now: i64, how: &str, store: &Store) {
        let (Some(f), Some(mut i)) = (self.freezes.ended(key), self.frozen.remove(key)) else {
            return;
        };
        i.ended = Some(time::rfc3339_millis(now));
        i.duration_ms = Some(now - i.at_ms);
        i.notes.push(format!(
            "{how} after {:.1} s{}",
            (now - i.at_ms) as f64 / 1000.0,
            if f.reported {
                "; this report was first written while it was frozen"
            } else {
                ""
            }
        ));
        self.write(i, store);
    }

    /// Freezes that have lasted long enough are reported while they last; deaths whose wait is
    /// over are judged.
    pub fn tick(&mut self, store: &Store) {
        self.judge_deaths(store);
        let now = now_ms();
        for (key, _) in self.freezes.overdue(now) {
            if let Some(i) = self.frozen.get_mut(&key) {
                i.duration_ms = Some(now - i.at_ms);
                i.notes.push(format!(
                    "still frozen after {:.1} s when this report was written",
                    (now - i.at_ms) as f64 / 1000.0
                ));
                let i = i.clone();
                self.write(i, store);
            }
        }
    }

    /// One sampling round: warnings near a limit, and throttling at memory.high. `budget_of`
    /// gives guardian's budget of a container.
    pub fn sample(
        &mut self,
        hierarchy: &Hierarchy,
        seen: &Seen,
        budget_of: &dyn Fn(&str) -> Option<Bytes>,
        store: &Store,
    ) {
        let now = now_ms();
        if let Ok(a) = host::mem_available() {
            self.host.push_back((now, a));
        }
        while self
            .host
            .front()
            .is_some_and(|(t, _)| now - t > DEATH_WINDOW_MS)
        {
            self.host.pop_front();
        }
        let mut warned = Vec::new();
        let mut throttle = Vec::new();
        for l in seen.recorder.live() {
            let id = &l.record.container_id;
            let Some(&(_, usage)) = l.recent.back() else {
                continue;
            };
            // The working set is usage less the reclaimable page cache; the cache is known from
            // the last full reading (memory.stat), usage from this round.
            let cache = l
                .last
                .as_ref()
                .map_or(0, |m| m.usage.0.saturating_sub(m.working_set.0));
            let working_set = Bytes(usage.0.saturating_sub(cache));
            let budget = budget_of(id);
            let limit = match (l.record.memory_limit, budget) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(w) = self.warnings.observe(id, now, working_set, limit) {
                warned.push((id.clone(), l.record.display_name(), w, working_set, budget));
            }
            // memory.high as of the last full reading (every timeline point): a group without
            // one costs no file read here each round.
            let high = l.last.as_ref().and_then(|m| m.high);
            if let (Some(cg), Some(high)) = (&l.cgroup, high) {
                if let Some(t) = read_throttle(hierarchy, cg, usage, high) {
                    throttle.push((id.clone(), l.record.display_name(), t));
                }
            }
        }
        for (id, name, w, working_set, budget) in warned {
            let mut i = open(seen, now, &id, &name, Cause::Warning);
            i.working_set = Some(working_set);
            i.budget = budget.filter(|b| *b == w.limit);
            i.duration_ms = Some(now - w.since_ms);
            i.next_step = next_step(&i);
            let c = seen.table.get(&id);
            let service = c
                .and_then(|c| c.compose.as_ref())
                .map_or(String::new(), |s| s.service.clone());
            *self
                .warnings_total
                .entry((c.map_or(name.clone(), |c| c.name.clone()), service))
                .or_default() += 1;
            warn!(container = %name, working_set = %working_set, limit = %w.limit, share = w.share, since_ms = w.since_ms, "memory warning: {}", i.next_step);
            self.write(i, store);
        }
        for (id, name, (full_total_us, at_high, high, file)) in throttle {
            let Some(event) = self.throttles.observe(&id, now, full_total_us, at_high) else {
                continue;
            };
            if let Throttle::Begun { since_ms, .. } = event {
                let mut i = open(seen, since_ms, &id, &name, Cause::Throttled);
                i.memory_high = Some(high);
                // guardian's journal holds the original of every file it wrote.
                match store.journal_original(&file).ok().flatten() {
                    Some(original) => {
                        i.budget = budget_of(&id);
                        i.notes.push(format!(
                            "memory.high was set by guardian ({file}); before guardian it was {original}"
                        ));
                    }
                    None => i.notes.push(format!(
                        "memory.high was not set by guardian ({file} is not in its journal)"
                    )),
                }
                self.throttled.insert(id.clone(), i);
            }
            self.throttle_event(&id, event, store);
        }
    }

    fn throttle_event(&mut self, key: &str, event: Throttle, store: &Store) {
        let Some(i) = self.throttled.get_mut(key) else {
            return;
        };
        match event {
            Throttle::Begun { since_ms, lost_us } => {
                i.duration_ms = Some(now_ms() - since_ms);
                i.lost_ms = Some(lost_us as f64 / 1000.0);
            }
            Throttle::Ended {
                since_ms,
                until_ms,
                lost_us,
            } => {
                i.duration_ms = Some(until_ms - since_ms);
                i.lost_ms = Some(lost_us as f64 / 1000.0);
                i.ended = Some(time::rfc3339_millis(until_ms));
            }
        }
        let i = if matches!(event, Throttle::Ended { .. }) {
            self.throttled.remove(key).expect("looked up above")
        } else {
            i.clone()
        };
        self.write(i, store);
    }

    /// Stores the incident (replacing an earlier version of it), writes its reports, runs the
    /// hook.
    fn write(&self, mut i: Incident, store: &Store) {
        i.actions = store
            .actions(i.at_ms - crate::model::RECENT_MS, 50)
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a.at_ms <= now_ms() + 1000)
            .collect();
        i.next_step = next_step(&i);
        if let Err(e) = store.put_incident(&i) {
            warn!(incident = %i.id, "storing the incident failed: {e}");
            return;
        }
        match write_files(&self.dir, &i) {
            Ok(path) => {
                info!(incident = %i.id, name = %i.name, kind = i.cause.name(), ended = i.ended.is_some(), report = %path.display(), "{}", i.next_step);
                if let Some(hook) = &self.hook {
                    super::incidents::run_hook(hook, &i, &path);
                }
            }
            Err(e) => {
                warn!(incident = %i.id, "writing the report files failed (the store has it; the next start writes them): {e}")
            }
        }
    }

    /// What the metrics say about warnings: given so far, containers in a warning episode.
    pub fn metrics(&self) -> crate::metrics::WarningSeries {
        crate::metrics::WarningSeries {
            warnings_total: self.warnings_total.clone(),
            in_warning: self.warnings.in_warning() as u64,
        }
    }
}

/// A group's PSI `full total` (µs), whether it is at its memory.high (usage within 10 %), that
/// memory.high and its file; `None` without a memory.high (v1, or `max`).
fn read_throttle(
    hierarchy: &Hierarchy,
    cg: &crate::model::CgroupRef,
    usage: Bytes,
    high: Bytes,
) -> Option<(u64, bool, Bytes, String)> {
    if !hierarchy.memory_is_v2() {
        return None;
    }
    let dir = hierarchy.memory_dir(cg.memory_path.as_deref()?);
    let file = dir.join("memory.high");
    let pressure = parse_pressure(&std::fs::read_to_string(dir.join("memory.pressure")).ok()?)?;
    Some((
        pressure.full.total_us,
        usage.0 as f64 >= high.0 as f64 * 0.9,
        high,
        file.display().to_string(),
    ))
}
