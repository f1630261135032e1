//! The daemon's incidents other than kernel OOM kills: guardian's own freezes and kills (from
//! the ladder's events), throttling at memory.high and warnings near a limit (from each sampling
//! round). The decisions are policy::incidents'; this wires readings in and incidents out
//! (store row, report files, hook, metrics).

use std::{
    collections::{BTreeMap, HashMap},
    io::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use tracing::{info, warn};

use super::{enforcement::LadderEvent, incidents::Incidents};
use crate::{
    config::IncidentsConfig,
    model::{now_ms, Bytes, Cause, ContainerTable, Incident, Recorder},
    policy::{
        enforce::Act,
        incidents::{
            next_step, FreezeWatch, Throttle, ThrottleEpisodes, ThrottleParams, WarnEpisodes,
            WarnParams,
        },
    },
    report::incident::write_files,
    sources::cgroup::{parse_pressure, Hierarchy},
    store::Store,
};

/// How far below `warn_share` a container must fall before it can be warned again.
const WARN_HYSTERESIS: f64 = 0.05;

fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64),
    )
    .to_string()
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
        }
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
        i.ended = Some(rfc3339(now));
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

    /// Freezes that have lasted long enough are reported while they last.
    pub fn tick(&mut self, store: &Store) {
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
            if let Some(cg) = &l.cgroup {
                if let Some(t) = read_throttle(hierarchy, cg, usage) {
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
                i.ended = Some(rfc3339(until_ms));
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
                    run_episode_hook(hook, &i, &path);
                }
            }
            Err(e) => {
                warn!(incident = %i.id, "writing the report files failed (the store has it; the next start writes them): {e}")
            }
        }
    }

    /// Prometheus lines: warnings given, containers in a warning episode.
    pub fn metrics(&self) -> String {
        let mut out = String::from(
            "# HELP guardian_memory_warnings_total Containers warned for staying near their limit or budget.\n# TYPE guardian_memory_warnings_total counter\n",
        );
        for ((container, service), n) in &self.warnings_total {
            out.push_str(&format!(
                "guardian_memory_warnings_total{{container=\"{container}\",service=\"{service}\"}} {n}\n"
            ));
        }
        out.push_str(&format!(
            "# HELP guardian_containers_in_warning Containers near their limit or budget now.\n# TYPE guardian_containers_in_warning gauge\nguardian_containers_in_warning {}\n",
            self.warnings.in_warning()
        ));
        out
    }
}

/// A group's PSI `full total` (µs), whether it is at its memory.high (usage within 10 %), that
/// memory.high and its file; `None` without a memory.high (v1, or `max`).
fn read_throttle(
    hierarchy: &Hierarchy,
    cg: &crate::model::CgroupRef,
    usage: Bytes,
) -> Option<(u64, bool, Bytes, String)> {
    if !hierarchy.memory_is_v2() {
        return None;
    }
    let dir = hierarchy.memory_dir(cg.memory_path.as_deref()?);
    let file = dir.join("memory.high");
    let high: u64 = std::fs::read_to_string(&file).ok()?.trim().parse().ok()?;
    let pressure = parse_pressure(&std::fs::read_to_string(dir.join("memory.pressure")).ok()?)?;
    Some((
        pressure.full.total_us,
        usage.0 as f64 >= high as f64 * 0.9,
        Bytes(high),
        file.display().to_string(),
    ))
}

/// Runs the hook for an incident of a new kind: the report's path as `$1` and in
/// `GUARDIAN_REPORT`, the incident's identity in the environment and its JSON on stdin.
/// (The OOM path's `run_hook` does the same for kernel OOM kills.)
fn run_episode_hook(hook: &str, i: &Incident, report: &Path) {
    let c = i.container.as_ref();
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg(hook)
        .arg("guardian-hook")
        .arg(report)
        .env("GUARDIAN_REPORT", report)
        .env("GUARDIAN_INCIDENT_ID", &i.id)
        .env("GUARDIAN_KIND", i.cause.name())
        .env("GUARDIAN_CONTAINER", c.map_or("", |c| c.name.as_str()))
        .env(
            "GUARDIAN_PROJECT",
            c.and_then(|c| c.project.as_deref()).unwrap_or(""),
        )
        .env(
            "GUARDIAN_SERVICE",
            c.and_then(|c| c.service.as_deref()).unwrap_or(""),
        )
        .stdin(std::process::Stdio::piped())
        .spawn();
    match child {
        Ok(mut child) => {
            let json = serde_json::to_vec(i).expect("incidents always serialize");
            let hook = hook.to_string();
            std::thread::spawn(move || {
                if let Some(mut stdin) = child.stdin.take() {
                    let _ = stdin.write_all(&json);
                }
                match child.wait() {
                    Ok(s) if s.success() => {}
                    Ok(s) => warn!(hook = %hook, "the incident hook failed: {s}"),
                    Err(e) => warn!(hook = %hook, "the incident hook: {e}"),
                }
            });
        }
        Err(e) => warn!(hook = %hook, "could not run the incident hook: {e}"),
    }
}
