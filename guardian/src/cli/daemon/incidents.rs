//! The daemon's OOM incidents: captured the moment the kernel reports a kill (the victim's cgroup
//! and /proc vanish soon after), completed for two seconds by the other sources (the kernel log
//! line, Docker's `oom`/`die` events), then stored, written as reports and announced. What an
//! incident holds and how the witnesses merge is decided in `policy::postmortem`; this file keeps
//! the gathering window, the store, the report files and the hook.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tracing::{debug, info, warn};

use crate::{
    config::IncidentsConfig,
    model::{
        now_ms, unix_ms, Bytes, Container, ContainerTable, Incident, KillLine, LiveRun, OomKill,
        OomKind, Recorder, StallBrief,
    },
    policy::postmortem::{
        self, DockerAction, DockerAlone, Gathering, HostSeries, KillScene, WINDOW_MS,
    },
    report::incident::{has_files, remove_files, remove_partial, write_files},
    sources::{
        ebpf::{self, StallTotals},
        host, kmsg, oom,
    },
    store::{Store, StoreError},
};

/// How long an incident waits for its other sources before it is written.
const GATHER: Duration = Duration::from_secs(2);
/// How long an unmatched kernel log line waits for its eBPF event.
const LINE_KEEP: Duration = Duration::from_secs(10);

struct Pending {
    gathering: Gathering,
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

/// After a crash: drops half-written report files and writes the reports of stored incidents
/// that have none yet. The store is the truth; files follow it.
fn reconcile(dir: &Path, store: &Store) -> Result<usize, StoreError> {
    remove_partial(dir);
    // Ids first: a year of incidents whose files exist costs a directory check each, and only
    // the missing ones are read and rendered.
    let mut written = 0;
    for id in store.incident_ids()? {
        if !has_files(dir, &id) {
            if let Some(i) = store.incident(&id)? {
                if write_files(dir, &i).is_ok() {
                    written += 1;
                }
            }
        }
    }
    Ok(written)
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

    fn host_series(&self) -> HostSeries<'_> {
        HostSeries {
            available: &self.host,
            total: self.host_total,
        }
    }

    fn gathering(&self, container_id: &str) -> bool {
        (self.pending.iter()).any(|p| p.gathering.container_id.as_deref() == Some(container_id))
    }

    fn gather(&mut self, gathering: Gathering, window: Duration) {
        self.pending.push(Pending {
            gathering,
            due: Instant::now() + window,
        });
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
        if (self.pending.iter()).any(|p| p.gathering.incident.victim.pid == Some(pid)) {
            return;
        }
        let scene = KillScene {
            at_ms: now_ms(),
            table,
            recorder,
            host: self.host_series(),
            cmdline: oom::cmdline(pid, &self.redact),
            stalls: stalls.map(|s| StallBrief {
                count: s.count,
                total_ms: s.total_ns as f64 / 1e6,
                max_ms: s.max_ns as f64 / 1e6,
            }),
            budget,
        };
        let mut g = postmortem::from_kill(kill, &scene);
        if let Some(i) =
            (self.lines.iter()).position(|(_, l)| postmortem::line_matches(&g.incident, l))
        {
            let (_, line) = self.lines.remove(i).expect("position is in range");
            g.incident = postmortem::merge_kill_line(g.incident, &line);
        }
        self.gather(g, GATHER);
    }

    /// An incident with identity and timelines and nothing else yet (for episodes).
    pub(super) fn blank(
        &self,
        at_ms: i64,
        name: String,
        pid: Option<u32>,
        container: Option<&Container>,
        run: Option<&LiveRun>,
    ) -> Incident {
        postmortem::blank(at_ms, name, pid, container, run, self.host_series())
    }

    /// The OOM killer's log line: tells which killer acted. Kept for [`LINE_KEEP`] when its
    /// eBPF event has not come yet.
    pub fn on_kill_line(&mut self, line: KillLine) {
        if let Some(p) = (self.pending.iter_mut())
            .find(|p| postmortem::line_matches(&p.gathering.incident, &line))
        {
            let i = std::mem::take(&mut p.gathering.incident);
            p.gathering.incident = postmortem::merge_kill_line(i, &line);
            return;
        }
        self.lines.push_back((Instant::now(), line));
        while (self.lines.front()).is_some_and(|(t, _)| t.elapsed() > LINE_KEEP) {
            self.lines.pop_front();
        }
    }

    /// Docker's `oom` and `die` events: confirm an incident, or make one when no kernel event
    /// came (`postmortem::docker_alone`). A `die` after an incident of the same run completes
    /// that incident (`postmortem::complete_stored`) instead of making a second one.
    pub fn on_docker(&mut self, action: &str, c: &Container, recorder: &Recorder, store: &Store) {
        let Some(action) = DockerAction::from_event(action) else {
            return;
        };
        if action == DockerAction::Die && self.complete_stored(c, store) {
            return;
        }
        if !postmortem::docker_saw_oom(action, c) {
            return;
        }
        if let Some(p) =
            (self.pending.iter_mut()).find(|p| postmortem::same_container(&p.gathering, c))
        {
            let g = std::mem::take(&mut p.gathering);
            p.gathering = postmortem::merge_docker_event(g, action, c);
            return;
        }
        let run_start = postmortem::run_start_ms(c, now_ms());
        let stored = (store.has_oom_incident_for(&c.to_ref().id, run_start)).unwrap_or(false);
        match postmortem::docker_alone(action, stored) {
            DockerAlone::Make(note) => {
                let g = postmortem::from_docker_state(
                    c,
                    recorder.get(&c.id),
                    None,
                    note,
                    self.host_series(),
                    now_ms(),
                );
                self.gather(g, GATHER / 4);
            }
            DockerAlone::Ignore(why) => {
                debug!(container = %c.name, ?action, "no incident from Docker's event: {why}")
            }
        }
    }

    /// A container died after an incident of its run was written (a child was OOM-killed and
    /// the container went on): records its exit code in that incident and rewrites the reports.
    /// Returns whether there was such an incident.
    fn complete_stored(&self, c: &Container, store: &Store) -> bool {
        if self.gathering(&c.id) {
            return false;
        }
        let Some(started) = c.started_at.as_deref().and_then(crate::model::rfc3339_ms) else {
            return false;
        };
        // Only a kernel OOM kill of this run: a warning or a throttled episode before the death
        // must not swallow it.
        let Some(i) = (store.latest_oom_incident_for(&c.to_ref().id, started).ok()).flatten()
        else {
            return false;
        };
        let Some(i) = postmortem::complete_stored(i, c) else {
            return true;
        };
        if let Err(e) = store.put_incident(&i) {
            warn!(incident = %i.id, "storing the exit code failed: {e}");
        } else if let Err(e) = write_files(&self.dir, &i) {
            warn!(incident = %i.id, "rewriting the report files failed: {e}");
        }
        info!(incident = %i.id, name = %i.name, exit_code = ?c.exit_code, survived = ?i.container_survived, "container of an earlier incident exited");
        true
    }

    /// At (re)connection: containers OOM-killed in the last ten minutes that have no report
    /// yet — killed while guardian was not running or not connected (`postmortem::missed_kill`).
    pub fn on_inventory(&mut self, containers: &[Container], store: &Store) {
        let now = now_ms();
        let stopped: Vec<(&Container, i64)> = (containers.iter())
            .filter_map(|c| Some((c, postmortem::recently_stopped(c, now)?)))
            .collect();
        // The kernel's buffer is read only when some container died lately.
        let logged = if stopped.is_empty() {
            Vec::new()
        } else {
            kmsg::logged_kills()
        };
        let wall_ms = |usec: u64| unix_ms(ebpf::wall_time(usec * 1000));
        for (c, finished) in stopped {
            let Some(missed) = postmortem::missed_kill(c, finished, &logged, wall_ms) else {
                continue;
            };
            let since = now - postmortem::MISSED_WITHIN_MS;
            if (store.has_oom_incident_for(&c.to_ref().id, since)).unwrap_or(true)
                || self.gathering(&c.id)
            {
                continue;
            }
            let g = postmortem::from_docker_state(
                c,
                None,
                missed.line,
                missed.note,
                self.host_series(),
                now,
            );
            self.gather(g, GATHER / 4);
        }
    }

    /// Deletes incidents older than `retention` and beyond the newest `max_count`, with their
    /// report files (hourly, from the daemon's prune tick).
    pub fn prune(&self, store: &Store, retention: std::time::Duration, max_count: usize) {
        // Saturating: a retention of ages must keep everything, not wrap into the future.
        let before =
            now_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        match store.prune_incidents(before, max_count) {
            Ok(ids) if !ids.is_empty() => {
                remove_files(&self.dir, &ids);
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
        for Pending { mut gathering, .. } in due {
            let container = gathering
                .container_id
                .as_deref()
                .and_then(|id| table.get(id));
            gathering.incident.container_survived =
                postmortem::survived_at_end(&gathering, container);
            self.finish(gathering.incident, store);
        }
    }

    fn finish(&self, i: Incident, store: &Store) {
        let actions = store.actions(i.at_ms - WINDOW_MS, 50).unwrap_or_default();
        let i = postmortem::conclude(i, actions);
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
