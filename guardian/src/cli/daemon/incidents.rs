//! The daemon's OOM incidents: captured the moment the kernel reports a kill (the victim's cgroup
//! and /proc vanish soon after), completed for two seconds by the other sources (the kernel log
//! line, Docker's `oom`/`die` events), then stored, written as reports and announced.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tracing::{info, warn};

use crate::model::now_ms;
use crate::{
    config::IncidentsConfig,
    model::{
        Bytes, Container, ContainerTable, Incident, LiveRun, Neighbour, OomKill, Point, Recorder,
        StallBrief, TriggerTask, Victim,
    },
    policy::postmortem,
    report::incident::{reconcile, write_files},
    sources::{
        ebpf::{self, StallTotals},
        host,
        kmsg::{self, KillLine, OomKind},
        oom,
    },
    store::Store,
};

/// How long an incident waits for its other sources before it is written.
const GATHER: Duration = Duration::from_secs(2);
/// How long an unmatched kernel log line waits for its eBPF event.
const LINE_KEEP: Duration = Duration::from_secs(10);
/// The window a report covers: the usage the recorder keeps per container.
const WINDOW_MS: i64 = crate::model::RECENT_MS;

struct Pending {
    incident: Incident,
    /// Full container id, for matching Docker's events.
    container_id: Option<String>,
    due: Instant,
}

/// Incidents being gathered, and the host's recent MemAvailable.
pub struct Incidents {
    dir: PathBuf,
    hook: Option<String>,
    redact: Vec<String>,
    host: VecDeque<(i64, Bytes)>,
    host_total: Option<Bytes>,
    pending: Vec<Pending>,
    lines: VecDeque<(Instant, KillLine)>,
}

fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64),
    )
    .to_string()
}

fn incident_id(at_ms: i64, name: &str, pid: Option<u32>) -> String {
    let stamp: String = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_millis(at_ms.max(0) as u64),
    )
    .to_string()
    .chars()
    .filter(|c| *c != '-' && *c != ':')
    .collect();
    let slug: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!(
        "{stamp}-{slug}-{}",
        pid.map_or_else(|| "x".to_string(), |p| p.to_string())
    )
}

/// Points within this long before the kill keep every fast sample; older ones are thinned.
const DENSE_MS: i64 = 5000;
/// Older than [`DENSE_MS`], one point (the highest) per this many milliseconds.
const SPARSE_STEP_MS: i64 = 250;

/// The window of a usage series relative to the kill: every sample of the last [`DENSE_MS`],
/// and before that the highest of each [`SPARSE_STEP_MS`], so a group sampled fast for a minute
/// does not make a report of thousands of points while no peak is lost.
/// The kill's time comes from the kernel's clock (the eBPF event, converted to wall time once
/// at start), the samples' from the daemon's: they can disagree by a few milliseconds, so a
/// reading taken just after the kill (the victim's memory already freed) could land just before
/// it. Samples that close before the kill are left out; the kernel's high-water mark stands
/// at t = 0.
const KILL_SKEW_MS: i64 = 5;

fn relative(series: &VecDeque<(i64, Bytes)>, at_ms: i64) -> Vec<Point> {
    let mut out: Vec<Point> = Vec::new();
    for (t, b) in series.iter().filter(|(t, _)| {
        at_ms - t <= WINDOW_MS && *t <= at_ms + 1000 && !(at_ms - KILL_SKEW_MS < *t && *t < at_ms)
    }) {
        let t_ms = t - at_ms;
        if t_ms < -DENSE_MS {
            if let Some(last) = out.last_mut() {
                if last.t_ms.div_euclid(SPARSE_STEP_MS) == t_ms.div_euclid(SPARSE_STEP_MS) {
                    last.bytes = last.bytes.max(*b);
                    continue;
                }
            }
        }
        out.push(Point { t_ms, bytes: *b });
    }
    out
}

impl Incidents {
    /// Sets up the report directory and finishes what a crash left: stored incidents get their
    /// files, half-written files go.
    pub fn start(config: &IncidentsConfig, state_dir: &Path, store: &Store) -> Self {
        let dir = config
            .dir
            .clone()
            .unwrap_or_else(|| state_dir.join("reports"));
        match reconcile(&dir, store) {
            Ok(0) => {}
            Ok(n) => {
                info!(count = n, dir = %dir.display(), "wrote reports a previous guardian left unwritten")
            }
            Err(e) => warn!("checking reports: {e}"),
        }
        let host_total = <procfs::Meminfo as procfs::Current>::current()
            .ok()
            .map(|m| Bytes(m.mem_total));
        Self {
            dir,
            hook: config.hook.clone(),
            redact: config.redact.clone(),
            host: VecDeque::new(),
            host_total,
            pending: Vec::new(),
            lines: VecDeque::new(),
        }
    }

    /// Records the host's MemAvailable (every sampling round).
    pub fn sample_host(&mut self, now_ms: i64) {
        if let Ok(a) = host::mem_available() {
            self.host.push_back((now_ms, a));
        }
        while self
            .host
            .front()
            .is_some_and(|(t, _)| now_ms - t > WINDOW_MS)
        {
            self.host.pop_front();
        }
    }

    /// A kill from eBPF: capture everything at once.
    pub fn on_oom(
        &mut self,
        kill: &OomKill,
        table: &ContainerTable,
        recorder: &Recorder,
        stalls: Option<StallTotals>,
        budget: Option<Bytes>,
    ) {
        let pid = kill.victim.pid;
        if self
            .pending
            .iter()
            .any(|p| p.incident.victim.pid == Some(pid))
        {
            return;
        }
        let at_ms = now_ms();
        let cgroup = kill.victim.cgroup.as_ref();
        let container = cgroup.and_then(|c| table.by_cgroup(c)).cloned();
        let cgroup_path = cgroup
            .and_then(|c| c.path.clone().or_else(|| c.memory_path.clone()))
            .map(|p| p.display().to_string());
        let name = container
            .as_ref()
            .map(Container::display_name)
            .or_else(|| cgroup_path.clone())
            .unwrap_or_else(|| "unknown".to_string());
        let run = container.as_ref().and_then(|c| recorder.get(&c.id));
        let memory = kill.memory.as_ref();
        let trigger_container = kill
            .trigger
            .cgroup
            .as_ref()
            .and_then(|c| table.by_cgroup(c))
            .map(Container::display_name);
        let mut incident = self.blank(at_ms, name.clone(), Some(pid), container.as_ref(), run);
        incident.cgroup = cgroup_path;
        incident.victim = Victim {
            pid: Some(pid),
            comm: kill.victim.comm.clone(),
            cmdline: oom::cmdline(pid, &self.redact),
            rss: kill.rss.clone(),
            oom_score_adj: kill.oom_score_adj,
        };
        incident.trigger = Some(TriggerTask {
            pid: kill.trigger_tgid,
            comm: kill.trigger.comm.clone(),
            container: trigger_container,
        });
        incident.limit = memory
            .and_then(|m| m.limit)
            .or(container.as_ref().and_then(|c| c.memory_limit));
        incident.memory_high = memory.and_then(|m| m.high);
        incident.peak = memory.and_then(|m| m.peak).or(run.map(|r| r.record.peak));
        incident.working_set = memory.map(|m| m.working_set);
        incident.pressure = memory.and_then(|m| m.pressure);
        incident.budget = budget;
        // The kernel's witness at the kill: a group whose high-water mark (memory.peak, v1
        // memory.max_usage_in_bytes) reached its limit was at that limit when the OOM killer ran,
        // however long ago the last sample was.
        if let (Some(peak), Some(limit)) = (incident.peak, incident.limit) {
            if peak.0 + (1 << 20) >= limit.0 && incident.timeline.last().is_none_or(|p| p.t_ms < 0)
            {
                incident.timeline.push(Point {
                    t_ms: 0,
                    bytes: peak,
                });
            }
        }
        incident.memory_stat = kill.memory_stat.clone();
        incident.tmpfs = container
            .as_ref()
            .map(|c| c.tmpfs.clone())
            .unwrap_or_default();
        incident.reclaim_stalls = stalls.map(|s| StallBrief {
            count: s.count,
            total_ms: s.total_ns as f64 / 1e6,
            max_ms: s.max_ns as f64 / 1e6,
        });
        incident.sources.push("ebpf".into());
        incident.neighbours = recorder
            .live()
            .filter(|l| {
                container
                    .as_ref()
                    .is_none_or(|c| c.id != l.record.container_id)
            })
            .filter_map(|l| {
                let usage = l
                    .recent
                    .back()
                    .map(|(_, u)| *u)
                    .or(l.last.as_ref().map(|m| m.usage))?;
                Some(Neighbour {
                    name: l.record.display_name(),
                    usage,
                    peak: l.record.peak,
                    limit: l.record.memory_limit,
                    timeline: relative(&l.recent, at_ms),
                })
            })
            .collect();
        incident
            .neighbours
            .sort_by_key(|n| std::cmp::Reverse(n.usage));
        incident.neighbours.truncate(5);
        if let Some(i) = self.lines.iter().position(|(_, l)| l.pid == pid) {
            let (_, line) = self.lines.remove(i).expect("position is in range");
            apply_line(&mut incident, &line);
        }
        self.pending.push(Pending {
            incident,
            container_id: container.map(|c| c.id),
            due: Instant::now() + GATHER,
        });
    }

    /// An incident with identity, timelines and nothing else yet.
    pub(super) fn blank(
        &self,
        at_ms: i64,
        name: String,
        pid: Option<u32>,
        container: Option<&Container>,
        run: Option<&LiveRun>,
    ) -> Incident {
        Incident {
            id: incident_id(at_ms, &name, pid),
            time: rfc3339(at_ms),
            at_ms,
            name,
            container: container.map(Container::to_ref),
            limit: container.and_then(|c| c.memory_limit),
            peak: run.map(|r| r.record.peak).filter(|p| p.0 > 0),
            peak_unreclaimable: run.and_then(|r| r.record.peak_unreclaimable),
            timeline: run.map(|r| relative(&r.recent, at_ms)).unwrap_or_default(),
            host_available: relative(&self.host, at_ms),
            host_total: self.host_total,
            ..Default::default()
        }
    }

    /// The OOM killer's log line: tells which killer acted.
    pub fn on_kill_line(&mut self, line: KillLine) {
        if let Some(p) = self
            .pending
            .iter_mut()
            .find(|p| p.incident.victim.pid == Some(line.pid))
        {
            apply_line(&mut p.incident, &line);
            return;
        }
        self.lines.push_back((Instant::now(), line));
        while self
            .lines
            .front()
            .is_some_and(|(t, _)| t.elapsed() > LINE_KEEP)
        {
            self.lines.pop_front();
        }
    }

    /// Docker's `oom` and `die` events: confirm an incident, or make one when no kernel event
    /// came (eBPF off, or the kill happened before guardian watched the container). A `die`
    /// with exit code 137 and no `State.OOMKilled` is a SIGKILL from someone else (`docker stop`
    /// after its grace period, `docker kill`): not an OOM kill, no incident. A `die` after an
    /// incident of the same run completes that incident (the exit code of a container that
    /// survived the kill of a child) instead of making a second one.
    pub fn on_docker(&mut self, action: &str, c: &Container, recorder: &Recorder, store: &Store) {
        if action == "die" && self.complete_stored(c, store) {
            return;
        }
        if action != "oom" && !(action == "die" && c.oom_killed) {
            return;
        }
        if let Some(p) = self.pending.iter_mut().find(|p| {
            p.container_id.as_deref() == Some(c.id.as_str())
                || p.incident
                    .cgroup
                    .as_deref()
                    .is_some_and(|g| g.contains(&c.id))
        }) {
            if p.container_id.is_none() {
                p.container_id = Some(c.id.clone());
                p.incident.container = Some(c.to_ref());
                p.incident.name = c.display_name();
                p.incident.limit = p.incident.limit.or(c.memory_limit);
            }
            if action == "die" {
                p.incident.exit_code = c.exit_code;
                p.incident.container_survived = Some(false);
            }
            if !p.incident.sources.iter().any(|s| s == "docker") {
                p.incident.sources.push("docker".into());
            }
            return;
        }
        let run_start = c
            .started_at
            .as_deref()
            .and_then(crate::model::rfc3339_ms)
            .unwrap_or(i64::MAX)
            .min(now_ms() - WINDOW_MS);
        let recent = store
            .has_oom_incident_for(&c.to_ref().id, run_start)
            .unwrap_or(false);
        if recent || action != "die" {
            return;
        }
        self.add_from_docker_state(c, recorder.get(&c.id), None, "guardian saw no kernel event for this kill (eBPF was off, or the container died before guardian mapped it); this report is from Docker's record");
    }

    /// A container died after an incident of its run was written (a child was OOM-killed and
    /// the container went on): records its exit code in that incident and rewrites the reports.
    /// Returns whether there was such an incident.
    fn complete_stored(&self, c: &Container, store: &Store) -> bool {
        if self
            .pending
            .iter()
            .any(|p| p.container_id.as_deref() == Some(c.id.as_str()))
        {
            return false;
        }
        let Some(started) = c.started_at.as_deref().and_then(crate::model::rfc3339_ms) else {
            return false;
        };
        // Only a kernel OOM kill of this run: a warning or a throttled episode before the death
        // must not swallow it.
        let Some(mut i) = store
            .latest_oom_incident_for(&c.to_ref().id, started)
            .ok()
            .flatten()
        else {
            return false;
        };
        if i.exit_code.is_some() {
            return true;
        }
        i.exit_code = c.exit_code;
        // Killed with its main process, Docker's `die` only came after the gathering window.
        let died_with_it = c.exit_code == Some(137)
            && c.finished_at
                .as_deref()
                .and_then(crate::model::rfc3339_ms)
                .is_some_and(|f| f - i.at_ms < 2 * GATHER.as_millis() as i64);
        if died_with_it {
            i.container_survived = Some(false);
        } else if i.container_survived == Some(true) {
            i.notes.push(format!(
                "the container went on after the kill and exited later with code {}",
                c.exit_code
                    .map_or_else(|| "?".to_string(), |e| e.to_string())
            ));
        }
        i.next_step = postmortem::next_step(&i);
        if let Err(e) = store.put_incident(&i) {
            warn!(incident = %i.id, "storing the exit code failed: {e}");
        } else if let Err(e) = write_files(&self.dir, &i) {
            warn!(incident = %i.id, "rewriting the report files failed: {e}");
        }
        info!(incident = %i.id, name = %i.name, exit_code = ?c.exit_code, survived = ?i.container_survived, "container of an earlier incident exited");
        true
    }

    /// At (re)connection: containers OOM-killed in the last ten minutes that have no report
    /// yet — killed while guardian was not running or not connected. Docker's OOMKilled flag
    /// is one witness (it misses kills now and then when several happen at once); the kernel's
    /// log buffer, which names the killed task's cgroup, is the other.
    pub fn on_inventory(&mut self, containers: &[Container], store: &Store) {
        let since = now_ms() - 10 * WINDOW_MS;
        let finished_ms =
            |c: &Container| c.finished_at.as_deref().and_then(crate::model::rfc3339_ms);
        // Only deaths of the last ten minutes; the kernel's buffer is read only when there are.
        let stopped: Vec<(&Container, i64)> = containers
            .iter()
            .filter(|c| c.state == "exited" || c.state == "dead")
            .filter_map(|c| Some((c, finished_ms(c).filter(|f| *f >= since)?)))
            .collect();
        let logged = if stopped.is_empty() {
            Vec::new()
        } else {
            kmsg::logged_kills()
        };
        for (c, finished) in stopped {
            // The buffer keeps kills for days: only one in this container's last run counts
            // (give or take a few seconds: the log's clock is not NTP-steered), and without
            // Docker's flag only when the container itself died of SIGKILL (a child killed in a
            // container that went on does not).
            let started = c.started_at.as_deref().and_then(crate::model::rfc3339_ms);
            let kernel = logged.iter().rev().find(|k| {
                let at = k.usec.map(|us| crate::model::unix_ms(ebpf::wall_time(us * 1000)));
                k.task_memcg.contains(c.id.as_str())
                    && matches!((at, started), (Some(at), Some(s)) if at >= s - 5000 && at <= finished + 10_000)
            });
            let kernel = kernel.filter(|_| c.exit_code == Some(137));
            if !c.oom_killed && kernel.is_none() {
                continue;
            }
            if store
                .has_oom_incident_for(&c.to_ref().id, since)
                .unwrap_or(true)
                || self
                    .pending
                    .iter()
                    .any(|p| p.container_id.as_deref() == Some(c.id.as_str()))
            {
                continue;
            }
            self.add_from_docker_state(
                c,
                None,
                kernel.map(|k| &k.line),
                if kernel.is_some() {
                    "killed while guardian was not watching; this report has what Docker and the kernel's log recorded"
                } else {
                    "killed while guardian was not watching; this report has what Docker recorded"
                },
            );
        }
    }

    fn add_from_docker_state(
        &mut self,
        c: &Container,
        run: Option<&LiveRun>,
        kernel: Option<&KillLine>,
        note: &str,
    ) {
        let at_ms = c
            .finished_at
            .as_deref()
            .and_then(crate::model::rfc3339_ms)
            .unwrap_or_else(now_ms);
        let mut incident = self.blank(at_ms, c.display_name(), None, Some(c), run);
        incident.exit_code = c.exit_code;
        // Docker's OOMKilled flag is set by a kill of any process of the container: one that
        // exited with another code than 137 (SIGKILL) outlived the kill.
        if c.exit_code.is_some_and(|e| e != 137) {
            incident.container_survived = Some(true);
        }
        if c.oom_killed || kernel.is_none() {
            incident.sources.push("docker state".into());
        }
        if let Some(line) = kernel {
            incident.victim.pid = Some(line.pid);
            apply_line(&mut incident, line);
        }
        incident.notes.push(note.to_string());
        self.pending.push(Pending {
            incident,
            container_id: Some(c.id.clone()),
            due: Instant::now() + GATHER / 4,
        });
    }

    /// Deletes incidents older than `retention` and beyond the newest `max_count`, with their
    /// report files (hourly, from the daemon's prune tick).
    pub fn prune(&self, store: &Store, retention: std::time::Duration, max_count: usize) {
        let before = crate::model::now_ms() - retention.as_millis() as i64;
        match store.prune_incidents(before, max_count) {
            Ok(ids) if !ids.is_empty() => {
                crate::report::incident::remove_files(&self.dir, &ids);
                info!(count = ids.len(), "pruned old incidents and their reports");
            }
            Ok(_) => {}
            Err(e) => warn!("pruning old incidents: {e}"),
        }
    }

    /// Writes the incidents whose gathering time is over. A container that `table` still has
    /// running then (and Docker sent no `die` for) survived the kill: a child was killed.
    pub fn flush_due(&mut self, store: &Store, table: &ContainerTable, force: bool) {
        let now = Instant::now();
        let (due, waiting): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| force || p.due <= now);
        self.pending = waiting;
        for mut p in due {
            if p.incident.container_survived.is_none() && p.incident.exit_code.is_none() {
                p.incident.container_survived = p
                    .container_id
                    .as_deref()
                    .and_then(|id| table.get(id))
                    .map(|c| c.state == "running" || c.state == "paused");
            }
            self.finish(p.incident, store);
        }
    }

    fn finish(&self, mut i: Incident, store: &Store) {
        i.filled_by = postmortem::filled_by(&i.memory_stat, i.victim.rss.as_ref());
        i.climb_per_s = postmortem::climb_per_s(&i.timeline);
        if i.kind.is_none() {
            if let Some((kind, why)) = postmortem::kind_from_counters(i.peak, i.limit) {
                i.kind = Some(kind);
                i.kind_evidence = Some(why.to_string());
            }
        }
        i.actions = store
            .actions(i.at_ms - WINDOW_MS, 50)
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a.at_ms <= i.at_ms + 1000)
            .collect();
        let (limit, why) = postmortem::suggest(&i);
        i.suggested_limit = limit;
        i.suggestion = why;
        i.next_step = postmortem::next_step(&i);
        if let Err(e) = store.put_incident(&i) {
            warn!(incident = %i.id, "storing the incident failed: {e}");
            return;
        }
        match write_files(&self.dir, &i) {
            Ok(path) => {
                warn!(
                    incident = %i.id,
                    name = %i.name,
                    kind = ?i.kind,
                    report = %path.display(),
                    "OOM kill: {}",
                    i.next_step
                );
                if let Some(hook) = &self.hook {
                    run_hook(hook, &i, &path);
                }
            }
            Err(e) => {
                warn!(incident = %i.id, "writing the report files failed (the store has it; the next start writes them): {e}")
            }
        }
    }
}

fn apply_line(i: &mut Incident, line: &KillLine) {
    i.kind = Some(line.kind);
    i.kind_evidence = Some("kernel log".into());
    i.kernel_line = Some(line.text.clone());
    if i.victim.comm.is_none() {
        i.victim.comm = Some(line.comm.clone());
    }
    if !i.sources.iter().any(|s| s == "kernel log") {
        i.sources.push("kernel log".into());
    }
}

/// The environment an incident hook gets, besides the positional `$1` (the report's path):
/// the incident's id, kind (and for OOM kills which killer), container, compose project and service, victim, and report path.
/// Unknown values are empty strings, so a script can test `[ -n "$GUARDIAN_SERVICE" ]`.
pub fn hook_env(i: &Incident, report: &Path) -> Vec<(&'static str, String)> {
    let oom_kind = match i.kind {
        Some(OomKind::Cgroup) => "cgroup",
        Some(OomKind::Global) => "global",
        None => "",
    };
    let container = i.container.as_ref();
    vec![
        ("GUARDIAN_INCIDENT_ID", i.id.clone()),
        // `oom`, `frozen`, `killed`, `throttled`, `signal` or `warning` (model::Cause::name).
        ("GUARDIAN_KIND", i.cause.name().to_string()),
        // Which OOM killer: its own limit (cgroup) or the host's memory (global).
        ("GUARDIAN_OOM_KIND", oom_kind.to_string()),
        (
            "GUARDIAN_CONTAINER",
            container.map(|c| c.name.clone()).unwrap_or_default(),
        ),
        (
            "GUARDIAN_PROJECT",
            container
                .and_then(|c| c.project.clone())
                .unwrap_or_default(),
        ),
        (
            "GUARDIAN_SERVICE",
            container
                .and_then(|c| c.service.clone())
                .unwrap_or_default(),
        ),
        (
            "GUARDIAN_VICTIM_PID",
            i.victim.pid.map(|p| p.to_string()).unwrap_or_default(),
        ),
        (
            "GUARDIAN_VICTIM_COMM",
            i.victim.comm.clone().unwrap_or_default(),
        ),
        ("GUARDIAN_REPORT", report.display().to_string()),
    ]
}

/// Runs the configured hook for an incident of any kind: `sh -c <hook> guardian-hook <report>`
/// with [`hook_env`] in its environment and the incident's JSON on its stdin (as earlyoom's
/// `-N` script gets the details). Its outcome is logged, never waited on by the daemon's loop.
pub fn run_hook(hook: &str, incident: &Incident, report: &Path) {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(hook)
        .arg("guardian-hook")
        .arg(report)
        .envs(hook_env(incident, report))
        .stdin(std::process::Stdio::piped())
        .kill_on_drop(false)
        .spawn();
    match child {
        Ok(mut child) => {
            let hook = hook.to_string();
            let json = serde_json::to_vec(incident).expect("incidents always serialize");
            let stdin = child.stdin.take();
            tokio::spawn(async move {
                if let Some(mut stdin) = stdin {
                    use tokio::io::AsyncWriteExt as _;
                    // A hook that does not read its stdin closes the pipe: not an error.
                    let _ = stdin.write_all(&json).await;
                    drop(stdin);
                }
                match child.wait().await {
                    Ok(s) if s.success() => {}
                    Ok(s) => warn!(hook = %hook, "the incident hook failed: {s}"),
                    Err(e) => warn!(hook = %hook, "the incident hook: {e}"),
                }
            });
        }
        Err(e) => warn!(hook = %hook, "could not run the incident hook: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_samples_are_kept_near_the_kill_and_thinned_before_keeping_the_highest() {
        let at = 100_000;
        // 20 ms samples over the last 10 s: a peak of 50 at -8000 ms must survive the thinning.
        let series: VecDeque<(i64, Bytes)> = (0..500)
            .map(|k| {
                let t = at - 10_000 + k * 20;
                (t, Bytes(if t == at - 8000 { 50 } else { 10 }))
            })
            .collect();
        let points = relative(&series, at);
        let dense = points.iter().filter(|p| p.t_ms >= -DENSE_MS).count();
        let sparse = points.iter().filter(|p| p.t_ms < -DENSE_MS).count();
        assert_eq!(dense, 250, "every sample of the last 5 s");
        assert_eq!(sparse, 20, "one per 250 ms before");
        assert!(
            points.iter().any(|p| p.bytes == Bytes(50)),
            "the peak is kept"
        );
    }
}
