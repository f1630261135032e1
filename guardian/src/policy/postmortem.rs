//! OOM incidents: how one is assembled from its witnesses (guardian's eBPF kill record, the
//! kernel log's line, Docker's events and state) and what it means (which killer acted when the
//! kernel log is silent, the limit that would have avoided it, the next step in plain words).
//! Pure functions: the daemon passes in what it read and stores what comes out.

use std::collections::{BTreeMap, VecDeque};

use crate::{
    model::{
        compose_size, time, ActionRecord, Bytes, Container, ContainerTable, Filler, Incident,
        KillLine, LiveRun, LoggedKill, MemoryPart, Neighbour, OomKill, OomKind, Point, Recorder,
        RssBreakdown, StallBrief, TriggerTask, Victim,
    },
    policy::profile::{recommend, ServiceUsage},
};

/// A group whose high-water mark reached its limit (within a page batch) hit its own limit.
pub fn kind_from_counters(
    peak: Option<Bytes>,
    limit: Option<Bytes>,
) -> Option<(OomKind, &'static str)> {
    let (peak, limit) = (peak?, limit);
    match limit {
        Some(l) if peak.0 + (1 << 20) >= l.0 => Some((OomKind::Cgroup, "reached its limit")),
        _ => Some((OomKind::Global, "below its limit")),
    }
}

/// The least limit that could have held, a floor: peak × 1.2 rounded up (the unreclaimable peak
/// when the run had one, as `guardian profile` sizes), and for a cgroup OOM
/// max(limit × 1.2, limit + 100 MiB) (its real need was higher than what it could show); the
/// reason says when it was still growing at the kill.
pub fn suggest(i: &Incident) -> (Option<Bytes>, String) {
    let peak = i
        .peak
        .or_else(|| i.timeline.iter().map(|p| p.bytes).max())
        .unwrap_or_default();
    if peak.0 == 0 && i.limit.is_none() {
        return (
            None,
            "no usage was recorded, so no limit can be suggested".into(),
        );
    }
    let usage = ServiceUsage {
        project: i.container.as_ref().and_then(|c| c.project.clone()),
        service: i.name.clone(),
        runs: 1,
        peak,
        peak_unreclaimable: i.peak_unreclaimable,
        runs_without_unreclaimable: u64::from(i.peak_unreclaimable.is_none()),
        startup_peak: peak,
        typical_working_set: i.working_set.unwrap_or(peak),
        limit: i.limit,
        oom_killed: i.kind == Some(OomKind::Cgroup),
    };
    let r = recommend(&usage, 0.2);
    let mut reason = r.reason;
    if let Some(rate) = i.climb_per_s.filter(|r| *r >= STILL_GROWING_PER_S) {
        reason.push_str(&format!(
            "; still growing at {rate}/s at the kill, so a floor"
        ));
    }
    (Some(r.recommended_limit), reason)
}

/// A climb at least this fast (bytes per second) at the kill means the victim was still growing:
/// any limit suggested from what it reached is a floor, not its need.
pub const STILL_GROWING_PER_S: Bytes = Bytes(1 << 20);

/// How far back from the kill the climb rate looks, in milliseconds.
const CLIMB_WINDOW_MS: i64 = 2000;

/// The largest part of a cgroup's charge at the kill, from its memory.stat (kernel field names)
/// read when guardian saw the kill, and the victim's RSS from the kernel's kill record: by the
/// time memory.stat is read the victim's own pages may already be freed (the OOM reaper is
/// quick), so each part is at least the victim's share of it. v2 splits `anon`, `file` (which
/// includes `shmem`), `kernel` and `sock`; v1 `total_rss` and `total_cache` (which includes
/// `total_shmem`; the local names when the totals are absent). Page cache is `file` − `shmem`
/// so each byte counts once. `None` when nothing is known.
pub fn filled_by(stat: &BTreeMap<String, Bytes>, victim: Option<&RssBreakdown>) -> Option<Filler> {
    let get = |names: &[&str]| names.iter().find_map(|n| stat.get(*n)).map(|b| b.0);
    let v2 = stat.contains_key("anon");
    let (anon, file, shmem) = if v2 {
        (get(&["anon"]), get(&["file"]), get(&["shmem"]))
    } else {
        (
            get(&["total_rss", "rss"]),
            get(&["total_cache", "cache"]),
            get(&["total_shmem", "shmem"]),
        )
    };
    let at_least =
        |from_stat: Option<u64>, from_victim: Option<Bytes>| match (from_stat, from_victim) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0).max(b.map_or(0, |b| b.0))),
        };
    let shmem_stat = shmem.unwrap_or(0);
    let parts = [
        (MemoryPart::Anon, at_least(anon, victim.map(|v| v.anon_rss))),
        (
            MemoryPart::File,
            at_least(
                file.map(|f| f.saturating_sub(shmem_stat)),
                victim.map(|v| v.file_rss),
            ),
        ),
        (
            MemoryPart::Shmem,
            at_least(shmem, victim.map(|v| v.shmem_rss)),
        ),
        (MemoryPart::Kernel, get(&["kernel"])),
        (MemoryPart::Sock, get(&["sock"])),
    ];
    parts
        .into_iter()
        .filter_map(|(part, b)| Some((part, b?)))
        .filter(|(_, b)| *b > 0)
        .max_by_key(|(_, b)| *b)
        .map(|(part, b)| Filler {
            part,
            bytes: Bytes(b),
        })
}

/// How fast usage climbed over the last [`CLIMB_WINDOW_MS`] before the kill (points at t ≤ 0),
/// in bytes per second; `None` with fewer than two points there or no time between them. A
/// falling usage gives 0.
pub fn climb_per_s(timeline: &[Point]) -> Option<Bytes> {
    let recent: Vec<&Point> = timeline
        .iter()
        .filter(|p| p.t_ms <= 0 && p.t_ms >= -CLIMB_WINDOW_MS)
        .collect();
    let (first, last) = (recent.first()?, recent.last()?);
    let dt_ms = last.t_ms - first.t_ms;
    if dt_ms <= 0 {
        return None;
    }
    let rise = last.bytes.0.saturating_sub(first.bytes.0);
    Some(Bytes(rise * 1000 / dt_ms as u64))
}

/// Words for the part that filled the limit, and for tmpfs what a person must know: killing
/// processes frees none of it.
pub fn filler_words(i: &Incident) -> Option<String> {
    let f = i.filled_by?;
    let what = match f.part {
        MemoryPart::Anon => "anonymous memory (anon: heaps and stacks of its processes)",
        MemoryPart::File => "page cache (file: files read or written on disk)",
        MemoryPart::Shmem => "tmpfs and shared memory (shmem)",
        MemoryPart::Kernel => "kernel memory (kernel: slab, stacks, page tables)",
        MemoryPart::Sock => "socket buffers (sock)",
    };
    let mut words = format!("{what}, {} of the group's memory", f.bytes);
    if f.part == MemoryPart::Shmem {
        let mounts: Vec<String> = i
            .tmpfs
            .iter()
            .map(|m| match m.size {
                Some(s) => format!("{} ({s}, {})", m.path, m.source),
                None => format!("{} ({})", m.path, m.source),
            })
            .collect();
        words.push_str(
            ". Files in tmpfs outlive the process that wrote them: killing processes does not free this memory, deleting the files does",
        );
        if !mounts.is_empty() {
            words.push_str(&format!(
                "; the container's tmpfs mounts: {}",
                mounts.join(", ")
            ));
        }
    }
    Some(words)
}

/// One or two sentences a person can act on.
pub fn next_step(i: &Incident) -> String {
    let mut step = next_step_core(i);
    if let Some(rate) = i.climb_per_s.filter(|r| *r >= STILL_GROWING_PER_S) {
        step.push_str(&format!(
            " It was still growing at {rate}/s when it was killed: the suggested limit is a floor, it may need more."
        ));
    }
    if let Some(f) = i.filled_by.filter(|f| f.part == MemoryPart::Shmem) {
        step.push_str(&format!(
            " tmpfs/shared memory (shmem, {}) filled the limit: killing processes does not free it; delete the files, or give the tmpfs a size below the limit.",
            f.bytes
        ));
    }
    if i.container_survived == Some(true) {
        step.push_str(" The container survived: a child process was killed and the container went on running.");
    }
    step
}

fn next_step_core(i: &Incident) -> String {
    let climb = match (i.timeline.first(), i.timeline.last()) {
        (Some(a), Some(b)) if b.bytes > a.bytes => format!(
            " It climbed from {} to {} in the last {} s.",
            a.bytes,
            b.bytes,
            (b.t_ms - a.t_ms).max(0) / 1000
        ),
        _ => String::new(),
    };
    match (i.kind, i.suggested_limit, i.limit) {
        (Some(OomKind::Cgroup), Some(s), Some(l)) => format!(
            "{} hit its own memory limit of {l}. Raise it to at least {s} (e.g. `mem_limit: {}` or deploy.resources.limits.memory in the compose file), or find why it needs more.{climb}",
            i.name,
            compose_size(s)
        ),
        (Some(OomKind::Cgroup), _, _) => format!(
            "{} hit a memory limit of its cgroup. Raise that limit or find why it needs more.{climb}",
            i.name
        ),
        (Some(OomKind::Global), _, _) => {
            let top = i
                .neighbours
                .first()
                .map(|n| format!(" The largest other container was {} at {}.", n.name, n.usage))
                .unwrap_or_default();
            format!(
                "The host ran out of memory and the kernel chose {}; it was not over a limit of its own.{top} Give the heavy services limits (`guardian profile` suggests them) or budgets, or run fewer jobs at once.",
                i.name
            )
        }
        (None, _, _) => format!(
            "{} was OOM-killed; guardian could not tell whether its own limit or the host ran out. Compare its peak with its limit below.",
            i.name
        ),
    }
}

// ─── Assembling an incident from its witnesses ───────────────────────────────────────────────
// An OOM kill is seen by up to three witnesses: guardian's eBPF program (the kill record, at
// once), the kernel log's "Killed process" line, and Docker (`oom`/`die` events, the container's
// State). The functions below build an incident from each and merge the others into it; the
// daemon (`cli::daemon::incidents`) only holds them while it gathers, stores and writes them.

/// Which witness saw a kill, as `Incident::sources` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Witness {
    /// guardian's eBPF program on `oom:mark_victim`.
    Ebpf,
    /// The OOM killer's line in the kernel log (/dev/kmsg).
    KernelLog,
    /// Docker's `oom` or `die` event.
    Docker,
    /// Docker's record of a container that already died (`State.OOMKilled`, `ExitCode`).
    DockerState,
}

impl Witness {
    /// The name in `Incident::sources`, the report's "Seen by" and the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Witness::Ebpf => "ebpf",
            Witness::KernelLog => "kernel log",
            Witness::Docker => "docker",
            Witness::DockerState => "docker state",
        }
    }
}

fn add_witness(i: &mut Incident, w: Witness) {
    if !i.sources.iter().any(|s| s == w.name()) {
        i.sources.push(w.name().into());
    }
}

/// An incident being gathered, with the full id of its container (to match Docker's events,
/// which carry the full id; the incident itself keeps the short one).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Gathering {
    pub incident: Incident,
    pub container_id: Option<String>,
}

/// The window a report covers, in milliseconds: the usage the recorder keeps per container.
pub const WINDOW_MS: i64 = crate::model::RECENT_MS;
/// Points within this long before the kill keep every fast sample; older ones are thinned.
const DENSE_MS: i64 = 5000;
/// Older than [`DENSE_MS`], one point (the highest) per this many milliseconds.
const SPARSE_STEP_MS: i64 = 250;
/// The kill's time comes from the kernel's clock (the eBPF event, converted to wall time once
/// at start), the samples' from the daemon's: they can disagree by a few milliseconds, so a
/// reading taken just after the kill (the victim's memory already freed) could land just before
/// it. Samples that close before the kill are left out; the kernel's high-water mark stands
/// at t = 0.
const KILL_SKEW_MS: i64 = 5;

/// A usage series (Unix ms, bytes) relative to the kill at `at_ms`: the last [`WINDOW_MS`] and
/// up to 1 s after, every sample of the last [`DENSE_MS`], and before that the highest of each
/// [`SPARSE_STEP_MS`], so a group sampled fast for a minute does not make a report of thousands
/// of points while no peak is lost.
pub fn relative(series: &VecDeque<(i64, Bytes)>, at_ms: i64) -> Vec<Point> {
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

/// `YYYYmmddTHHMMSSZ-<name>-<pid>` (`x` without a pid), the name's non-alphanumerics as `-`:
/// sortable, and safe as a file name.
pub fn incident_id(at_ms: i64, name: &str, pid: Option<u32>) -> String {
    let slug: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let pid = pid.map_or_else(|| "x".to_string(), |p| p.to_string());
    format!("{}-{slug}-{pid}", time::file_stamp(at_ms))
}

/// The host's MemAvailable of the last [`WINDOW_MS`] (Unix ms, bytes; /proc/meminfo, sampled
/// every round) and its MemTotal.
#[derive(Clone, Copy, Debug)]
pub struct HostSeries<'a> {
    pub available: &'a VecDeque<(i64, Bytes)>,
    pub total: Option<Bytes>,
}

/// An incident with identity and timelines (the container's recent usage, the host's
/// MemAvailable) and nothing else yet.
pub fn blank(
    at_ms: i64,
    name: String,
    pid: Option<u32>,
    container: Option<&Container>,
    run: Option<&LiveRun>,
    host: HostSeries,
) -> Incident {
    Incident {
        id: incident_id(at_ms, &name, pid),
        time: time::rfc3339_millis(at_ms),
        at_ms,
        name,
        container: container.map(Container::to_ref),
        limit: container.and_then(|c| c.memory_limit),
        peak: run.map(|r| r.record.peak).filter(|p| p.0 > 0),
        peak_unreclaimable: run.and_then(|r| r.record.peak_unreclaimable),
        timeline: run.map(|r| relative(&r.recent, at_ms)).unwrap_or_default(),
        host_available: relative(host.available, at_ms),
        host_total: host.total,
        ..Default::default()
    }
}

/// What the daemon knows around an eBPF kill record beside the record itself.
pub struct KillScene<'a> {
    /// When guardian saw the kill, Unix ms.
    pub at_ms: i64,
    pub table: &'a ContainerTable,
    pub recorder: &'a Recorder,
    pub host: HostSeries<'a>,
    /// The victim's /proc/<pid>/cmdline, truncated and redacted; `None` when it was gone.
    pub cmdline: Option<String>,
    /// Reclaim stalls of the victim's cgroup since guardian attached (eBPF).
    pub stalls: Option<StallBrief>,
    /// guardian's budget for the container.
    pub budget: Option<Bytes>,
}

/// An incident from guardian's eBPF kill record: the victim and its container, the memory its
/// cgroup had just after the kill (which wins over the recorder's last sample), the timelines
/// and the five largest neighbours.
pub fn from_kill(kill: &OomKill, scene: &KillScene) -> Gathering {
    let pid = kill.victim.pid;
    let cgroup = kill.victim.cgroup.as_ref();
    let container = cgroup.and_then(|c| scene.table.by_cgroup(c));
    let cgroup_path = cgroup
        .and_then(|c| c.path.clone().or_else(|| c.memory_path.clone()))
        .map(|p| p.display().to_string());
    let name = container
        .map(Container::display_name)
        .or_else(|| cgroup_path.clone())
        .unwrap_or_else(|| "unknown".to_string());
    let run = container.and_then(|c| scene.recorder.get(&c.id));
    let mut i = blank(scene.at_ms, name, Some(pid), container, run, scene.host);
    i.cgroup = cgroup_path;
    i.victim = Victim {
        pid: Some(pid),
        comm: kill.victim.comm.clone(),
        cmdline: scene.cmdline.clone(),
        rss: kill.rss.clone(),
        oom_score_adj: kill.oom_score_adj,
    };
    i.trigger = Some(TriggerTask {
        pid: kill.trigger_tgid,
        comm: kill.trigger.comm.clone(),
        container: (kill.trigger.cgroup.as_ref())
            .and_then(|c| scene.table.by_cgroup(c))
            .map(Container::display_name),
    });
    let memory = kill.memory.as_ref();
    i.limit = memory
        .and_then(|m| m.limit)
        .or(container.and_then(|c| c.memory_limit));
    i.memory_high = memory.and_then(|m| m.high);
    i.peak = memory.and_then(|m| m.peak).or(run.map(|r| r.record.peak));
    // The run's unreclaimable peak is as of the last sampling round; when the kill's reading
    // shows a higher high-water mark, memory rose since, and the stale value would size the
    // suggestion below what the container held: size from the high-water mark then.
    if i.peak > run.map(|r| r.record.peak) {
        i.peak_unreclaimable = None;
    }
    i.working_set = memory.map(|m| m.working_set);
    i.pressure = memory.and_then(|m| m.pressure);
    i.budget = scene.budget;
    mark_peak_at_kill(&mut i);
    i.memory_stat = kill.memory_stat.clone();
    i.tmpfs = container.map(|c| c.tmpfs.clone()).unwrap_or_default();
    i.reclaim_stalls = scene.stalls;
    add_witness(&mut i, Witness::Ebpf);
    i.neighbours = neighbours(scene.recorder, container, scene.at_ms);
    Gathering {
        incident: i,
        container_id: container.map(|c| c.id.clone()),
    }
}

/// The kernel's witness at the kill: a group whose high-water mark (memory.peak, v1
/// memory.max_usage_in_bytes) reached its limit (within 1 MiB) was at that limit when the OOM
/// killer ran, however long ago the last sample was; the peak then stands at t = 0.
fn mark_peak_at_kill(i: &mut Incident) {
    if let (Some(peak), Some(limit)) = (i.peak, i.limit) {
        if peak.0 + (1 << 20) >= limit.0 && i.timeline.last().is_none_or(|p| p.t_ms < 0) {
            i.timeline.push(Point {
                t_ms: 0,
                bytes: peak,
            });
        }
    }
}

/// The five largest other live containers by their latest usage, with their timelines.
fn neighbours(recorder: &Recorder, victim: Option<&Container>, at_ms: i64) -> Vec<Neighbour> {
    let mut out: Vec<Neighbour> = recorder
        .live()
        .filter(|l| victim.is_none_or(|c| c.id != l.record.container_id))
        .filter_map(|l| {
            let usage = (l.recent.back().map(|(_, u)| *u)).or(l.last.as_ref().map(|m| m.usage))?;
            Some(Neighbour {
                name: l.record.display_name(),
                usage,
                peak: l.record.peak,
                limit: l.record.memory_limit,
                timeline: relative(&l.recent, at_ms),
            })
        })
        .collect();
    out.sort_by_key(|n| std::cmp::Reverse(n.usage));
    out.truncate(5);
    out
}

/// Whether a kernel log line is the kill of this incident: the same victim pid.
pub fn line_matches(i: &Incident, line: &KillLine) -> bool {
    i.victim.pid == Some(line.pid)
}

/// Merges the OOM killer's log line: the log's kind (cgroup or global OOM) wins over anything
/// else; the victim's name from eBPF wins over the log's (both are the kernel's 15-character
/// `comm`, eBPF's is read first); the line itself is kept for the report.
pub fn merge_kill_line(mut i: Incident, line: &KillLine) -> Incident {
    i.kind = Some(line.kind);
    i.kind_evidence = Some("kernel log".into());
    i.kernel_line = Some(line.text.clone());
    if i.victim.comm.is_none() {
        i.victim.comm = Some(line.comm.clone());
    }
    add_witness(&mut i, Witness::KernelLog);
    i
}

/// The container events that witness an OOM kill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DockerAction {
    /// `oom`: the container's cgroup had an OOM kill.
    Oom,
    /// `die`: its main process exited.
    Die,
}

impl DockerAction {
    /// From the event's `Action`; `None` for the actions post-mortems ignore.
    pub fn from_event(action: &str) -> Option<Self> {
        match action {
            "oom" => Some(Self::Oom),
            "die" => Some(Self::Die),
            _ => None,
        }
    }
}

/// Whether a Docker event (with the container inspected right after it) says an OOM kill
/// happened: an `oom`, or a `die` with `State.OOMKilled`. A `die` with exit code 137 and no
/// OOMKilled is a SIGKILL from someone else (`docker stop` after its grace period,
/// `docker kill`): not an OOM kill.
pub fn docker_saw_oom(action: DockerAction, c: &Container) -> bool {
    action == DockerAction::Oom || c.oom_killed
}

/// Whether a Docker event is about the container of an incident being gathered: its known
/// id, or (when the kill came before guardian mapped the container) its id in the cgroup path.
pub fn same_container(g: &Gathering, c: &Container) -> bool {
    g.container_id.as_deref() == Some(c.id.as_str())
        || (g.incident.cgroup.as_deref()).is_some_and(|p| p.contains(&c.id))
}

/// Merges a Docker event into the incident of its container: names the container when the
/// kernel's record could not, and a `die` records the exit code and that it did not survive.
pub fn merge_docker_event(mut g: Gathering, action: DockerAction, c: &Container) -> Gathering {
    if g.container_id.is_none() {
        g.container_id = Some(c.id.clone());
        g.incident.container = Some(c.to_ref());
        g.incident.name = c.display_name();
        g.incident.limit = g.incident.limit.or(c.memory_limit);
    }
    if action == DockerAction::Die {
        g.incident.exit_code = c.exit_code;
        g.incident.container_survived = Some(false);
    }
    add_witness(&mut g.incident, Witness::Docker);
    g
}

/// Where the container's current run began, Unix ms, for "is there an incident of this run":
/// its `State.StartedAt`, but no later than [`WINDOW_MS`] before `now_ms`.
pub fn run_start_ms(c: &Container, now_ms: i64) -> i64 {
    (c.started_at.as_deref())
        .and_then(time::rfc3339_ms)
        .unwrap_or(i64::MAX)
        .min(now_ms - WINDOW_MS)
}

/// What to do with a Docker event that matches no incident being gathered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DockerAlone {
    /// Make an incident from Docker's record, with this note for the report.
    Make(&'static str),
    /// Nothing, for this reason.
    Ignore(&'static str),
}

/// Docker alone makes an incident when no kernel event came (eBPF off, or the kill happened
/// before guardian mapped the container), on the `die` (which has the exit code), and only when
/// the store has no incident of this run yet (`stored`).
pub fn docker_alone(action: DockerAction, stored: bool) -> DockerAlone {
    if stored {
        DockerAlone::Ignore("an incident of this run is already stored")
    } else if action != DockerAction::Die {
        DockerAlone::Ignore("waiting for the die event, which has the exit code")
    } else {
        DockerAlone::Make("guardian saw no kernel event for this kill (eBPF was off, or the container died before guardian mapped it); this report is from Docker's record")
    }
}

/// A container's death within this long (ms) of its incident with exit code 137 means it was
/// killed with its main process, and Docker's `die` came after the gathering window (2 s).
pub const DIED_WITH_KILL_MS: i64 = 4000;

/// Completes an incident already stored for this run with the container's death (a child was
/// OOM-killed and the container went on, or the `die` came after the gathering window): its
/// exit code, whether it survived, a note and the next step. `None` when the incident already
/// has an exit code (nothing to change).
pub fn complete_stored(mut i: Incident, c: &Container) -> Option<Incident> {
    if i.exit_code.is_some() {
        return None;
    }
    i.exit_code = c.exit_code;
    let died_with_it = c.exit_code == Some(137)
        && (c.finished_at.as_deref())
            .and_then(time::rfc3339_ms)
            .is_some_and(|f| f - i.at_ms < DIED_WITH_KILL_MS);
    if died_with_it {
        i.container_survived = Some(false);
    } else if i.container_survived == Some(true) {
        let code = c
            .exit_code
            .map_or_else(|| "?".to_string(), |e| e.to_string());
        i.notes.push(format!(
            "the container went on after the kill and exited later with code {code}"
        ));
    }
    i.next_step = next_step(&i);
    Some(i)
}

/// An incident from Docker's record of a dead container (`State.FinishedAt`, `ExitCode`,
/// `OOMKilled`), with the kernel log's line when the log buffer still had it. Docker's OOMKilled
/// flag is set by a kill of any process of the container: one that exited with another code
/// than 137 (SIGKILL) outlived the kill.
pub fn from_docker_state(
    c: &Container,
    run: Option<&LiveRun>,
    kernel: Option<&KillLine>,
    note: &str,
    host: HostSeries,
    now_ms: i64,
) -> Gathering {
    let at_ms = (c.finished_at.as_deref())
        .and_then(time::rfc3339_ms)
        .unwrap_or(now_ms);
    let mut i = blank(at_ms, c.display_name(), None, Some(c), run, host);
    i.exit_code = c.exit_code;
    if c.exit_code.is_some_and(|e| e != 137) {
        i.container_survived = Some(true);
    }
    if c.oom_killed || kernel.is_none() {
        add_witness(&mut i, Witness::DockerState);
    }
    if let Some(line) = kernel {
        i.victim.pid = Some(line.pid);
        i = merge_kill_line(i, line);
    }
    i.notes.push(note.to_string());
    Gathering {
        incident: i,
        container_id: Some(c.id.clone()),
    }
}

/// How far back (ms) guardian looks at (re)connection for kills it missed.
pub const MISSED_WITHIN_MS: i64 = 10 * WINDOW_MS;

/// When a container stopped within [`MISSED_WITHIN_MS`] before `now_ms` (its `FinishedAt`, Unix
/// ms); `None` when it runs or stopped earlier.
pub fn recently_stopped(c: &Container, now_ms: i64) -> Option<i64> {
    if !c.run_state().has_stopped() {
        return None;
    }
    (c.finished_at.as_deref())
        .and_then(time::rfc3339_ms)
        .filter(|f| *f >= now_ms - MISSED_WITHIN_MS)
}

/// A kill guardian missed (it was not running or not connected), found at (re)connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissedKill<'a> {
    /// The kernel log's line of the kill, when its buffer still had it.
    pub line: Option<&'a KillLine>,
    /// What the report says about where it comes from.
    pub note: &'static str,
}

/// Whether a container that stopped at `finished_ms` was OOM-killed: Docker's OOMKilled flag is
/// one witness (it misses kills now and then when several happen at once); the kernel's log
/// buffer (`logged`, oldest first; `wall_ms` turns its CLOCK_MONOTONIC µs into Unix ms) is the
/// other. The buffer keeps kills for days: only one of the container's cgroup in its last run
/// counts (give or take a few seconds: the log's clock is not NTP-steered), and without
/// Docker's flag only when the container itself died of SIGKILL (exit code 137; a child killed
/// in a container that went on does not).
pub fn missed_kill<'a>(
    c: &Container,
    finished_ms: i64,
    logged: &'a [LoggedKill],
    wall_ms: impl Fn(u64) -> i64,
) -> Option<MissedKill<'a>> {
    let started = c.started_at.as_deref().and_then(time::rfc3339_ms);
    let kernel = logged
        .iter()
        .rev()
        .find(|k| {
            let at = k.usec.map(&wall_ms);
            k.task_memcg.contains(c.id.as_str())
                && matches!((at, started), (Some(at), Some(s)) if at >= s - 5000 && at <= finished_ms + 10_000)
        })
        .filter(|_| c.exit_code == Some(137));
    match (kernel, c.oom_killed) {
        (None, false) => None,
        (Some(k), _) => Some(MissedKill {
            line: Some(&k.line),
            note: "killed while guardian was not watching; this report has what Docker and the kernel's log recorded",
        }),
        (None, true) => Some(MissedKill {
            line: None,
            note: "killed while guardian was not watching; this report has what Docker recorded",
        }),
    }
}

/// At the end of the gathering window, whether the container survived the kill when no `die`
/// said otherwise: alive (running or paused) in Docker's table then means a child was killed;
/// `None` when the incident already knows, or the container is unknown.
pub fn survived_at_end(g: &Gathering, now: Option<&Container>) -> Option<bool> {
    let i = &g.incident;
    if i.container_survived.is_some() || i.exit_code.is_some() {
        return i.container_survived;
    }
    now.map(|c| c.run_state().is_alive())
}

/// What an incident means, once gathered: what filled the group, how fast it climbed, the kind
/// from the counters when the kernel log was silent, guardian's actions around the kill (from
/// the window before it to 1 s after), the suggested limit and the next step.
pub fn conclude(mut i: Incident, actions: Vec<ActionRecord>) -> Incident {
    i.filled_by = filled_by(&i.memory_stat, i.victim.rss.as_ref());
    i.climb_per_s = climb_per_s(&i.timeline);
    if i.kind.is_none() {
        if let Some((kind, why)) = kind_from_counters(i.peak, i.limit) {
            i.kind = Some(kind);
            i.kind_evidence = Some(why.to_string());
        }
    }
    i.actions = actions
        .into_iter()
        .filter(|a| a.at_ms <= i.at_ms + 1000)
        .collect();
    let (limit, why) = suggest(&i);
    i.suggested_limit = limit;
    i.suggestion = why;
    i.next_step = next_step(&i);
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Point;

    const MIB: u64 = 1 << 20;

    fn incident(kind: Option<OomKind>, peak: u64, limit: Option<u64>) -> Incident {
        Incident {
            id: "x".into(),
            time: "2026-11-25T00:00:00Z".into(),
            kind,
            name: "ci/db".into(),
            limit: limit.map(|l| Bytes(l * MIB)),
            peak: Some(Bytes(peak * MIB)),
            timeline: vec![
                Point {
                    t_ms: -30_000,
                    bytes: Bytes(10 * MIB),
                },
                Point {
                    t_ms: 0,
                    bytes: Bytes(peak * MIB),
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn the_counters_tell_a_limit_hit_from_a_host_shortage() {
        assert_eq!(
            kind_from_counters(Some(Bytes(64 * MIB)), Some(Bytes(64 * MIB)))
                .unwrap()
                .0,
            OomKind::Cgroup
        );
        assert_eq!(
            kind_from_counters(Some(Bytes(20 * MIB)), Some(Bytes(64 * MIB)))
                .unwrap()
                .0,
            OomKind::Global
        );
        assert_eq!(
            kind_from_counters(Some(Bytes(20 * MIB)), None).unwrap().0,
            OomKind::Global
        );
        assert_eq!(kind_from_counters(None, Some(Bytes(1))), None);
    }

    #[test]
    fn a_cgroup_oom_suggests_above_its_limit_and_says_how() {
        let mut i = incident(Some(OomKind::Cgroup), 64, Some(64));
        let (s, reason) = suggest(&i);
        // max(64 × 1.2, 64 + 100) = 164 MiB, rounded up to 168 MiB.
        assert_eq!(s, Some(Bytes(168 * MIB)));
        assert!(reason.contains("OOM-killed"), "{reason}");
        i.suggested_limit = s;
        let step = next_step(&i);
        assert!(step.starts_with("ci/db hit its own memory limit of 64.0MiB. Raise it to at least 168.0MiB (e.g. `mem_limit: 168m`"), "{step}");
        assert!(
            step.contains("climbed from 10.0MiB to 64.0MiB in the last 30 s"),
            "{step}"
        );
    }

    fn stat(fields: &[(&str, u64)]) -> BTreeMap<String, Bytes> {
        fields
            .iter()
            .map(|(k, v)| (k.to_string(), Bytes(*v)))
            .collect()
    }

    #[test]
    fn tmpfs_that_filled_a_v1_group_is_named_shmem_not_page_cache() {
        // v1 memory.stat of a 64 MiB container after dd wrote into /dev/shm: cache includes shmem.
        let s = stat(&[
            ("total_rss", MIB),
            ("total_cache", 63 * MIB),
            ("total_shmem", 62 * MIB),
            ("total_mapped_file", 0),
        ]);
        assert_eq!(
            filled_by(&s, None),
            Some(Filler {
                part: MemoryPart::Shmem,
                bytes: Bytes(62 * MIB)
            })
        );
    }

    #[test]
    fn anonymous_memory_that_filled_a_v2_group_is_named_anon() {
        let s = stat(&[
            ("anon", 60 * MIB),
            ("file", 3 * MIB),
            ("shmem", MIB),
            ("kernel", MIB),
            ("sock", 0),
        ]);
        assert_eq!(filled_by(&s, None).unwrap().part, MemoryPart::Anon);
        assert_eq!(filled_by(&BTreeMap::new(), None), None);
    }

    #[test]
    fn a_victim_already_reaped_when_memory_stat_was_read_still_counts_by_its_rss() {
        // Captured in the cgroup v2 runner VM: the oomer's heap was freed before memory.stat was
        // read, leaving kernel memory the largest part; the kill record has its 31 MiB anon.
        let s = stat(&[
            ("anon", 0),
            ("file", 0),
            ("shmem", 0),
            ("kernel", 135168),
            ("sock", 0),
        ]);
        let rss = RssBreakdown {
            total_vm: Bytes(34 * MIB),
            anon_rss: Bytes(31 * MIB),
            file_rss: Bytes(MIB),
            shmem_rss: Bytes(0),
            pgtables: None,
            source: crate::model::Source::Tracepoint,
        };
        assert_eq!(
            filled_by(&s, Some(&rss)),
            Some(Filler {
                part: MemoryPart::Anon,
                bytes: Bytes(31 * MIB)
            })
        );
        // Not reaped yet (v1 on the host): the larger of the two, not their sum.
        let v1 = stat(&[
            ("total_rss", 32 * MIB),
            ("total_cache", 0),
            ("total_shmem", 0),
        ]);
        assert_eq!(filled_by(&v1, Some(&rss)).unwrap().bytes, Bytes(32 * MIB));
    }

    #[test]
    fn a_shmem_kill_says_killing_does_not_free_it_and_lists_the_mounts() {
        let mut i = incident(Some(OomKind::Cgroup), 64, Some(64));
        i.filled_by = Some(Filler {
            part: MemoryPart::Shmem,
            bytes: Bytes(62 * MIB),
        });
        i.tmpfs = vec![crate::model::TmpfsMount {
            path: "/dev/shm".into(),
            size: Some(Bytes(256 * MIB)),
            source: "HostConfig.ShmSize".into(),
        }];
        let words = filler_words(&i).unwrap();
        assert!(
            words.starts_with("tmpfs and shared memory (shmem), 62.0MiB"),
            "{words}"
        );
        assert!(words.contains("killing processes does not free"), "{words}");
        assert!(
            words.contains("/dev/shm (256.0MiB, HostConfig.ShmSize)"),
            "{words}"
        );
        assert!(next_step(&i).contains("killing processes does not free it"));
    }

    #[test]
    fn the_climb_rate_comes_from_the_last_two_seconds() {
        let p = |t_ms, mib: u64| Point {
            t_ms,
            bytes: Bytes(mib * MIB),
        };
        // 10 MiB at -30 s is outside the window; 8 → 48 MiB over 400 ms is 100 MiB/s.
        let t = [p(-30_000, 10), p(-400, 8), p(-200, 28), p(0, 48)];
        assert_eq!(climb_per_s(&t), Some(Bytes(100 * MIB)));
        assert_eq!(climb_per_s(&[p(0, 48)]), None);
        assert_eq!(climb_per_s(&[p(-1000, 48), p(0, 20)]), Some(Bytes(0)));
    }

    #[test]
    fn a_victim_still_growing_at_the_kill_is_told_the_suggestion_is_a_floor() {
        let mut i = incident(Some(OomKind::Cgroup), 48, Some(48));
        i.climb_per_s = Some(Bytes(100 * MIB));
        let (s, reason) = suggest(&i);
        assert_eq!(s, Some(Bytes(152 * MIB)));
        assert!(reason.contains("at least 148.0MiB"), "{reason}");
        i.suggested_limit = s;
        let step = next_step(&i);
        assert!(step.contains("Raise it to at least 152.0MiB"), "{step}");
        assert!(step.contains("still growing at 100.0MiB/s"), "{step}");
        i.climb_per_s = Some(Bytes(0));
        assert!(!next_step(&i).contains("still growing"));
    }

    #[test]
    fn a_child_killed_in_a_surviving_container_is_said_so() {
        let mut i = incident(Some(OomKind::Cgroup), 64, Some(64));
        i.container_survived = Some(true);
        assert!(next_step(&i).contains("The container survived"));
    }

    #[test]
    fn a_global_oom_names_the_largest_neighbour() {
        let mut i = incident(Some(OomKind::Global), 20, None);
        i.neighbours.push(crate::model::Neighbour {
            name: "ci/clickhouse".into(),
            usage: Bytes(900 * MIB),
            peak: Bytes(950 * MIB),
            limit: None,
            timeline: vec![],
        });
        let step = next_step(&i);
        assert!(step.contains("host ran out of memory"), "{step}");
        assert!(step.contains("ci/clickhouse at 900.0MiB"), "{step}");
    }

    // ── Assembly, with records captured from a real kill (see tests/fixtures/oom/README.md) ──

    use crate::model::{CgroupId, CgroupRef, MemoryReading, OomTask};
    // The captured records are read with guardian's own parsers (test-only use of sources).
    use crate::sources::{
        docker::container_from_inspect,
        kmsg::{parse_kill_line, parse_summary_line},
    };

    const KMSG: &str = include_str!("../../tests/fixtures/oom/kmsg.txt");
    const EVENTS: &str = include_str!("../../tests/fixtures/oom/docker-events.jsonl");
    const INSPECT_MAIN: &str = include_str!("../../tests/fixtures/oom/inspect-main-killed.json");
    const INSPECT_CHILD: &str = include_str!("../../tests/fixtures/oom/inspect-child-killed.json");
    /// The main container's id (`oom-main`), as the fixtures name it.
    const MAIN_ID: &str = "5d39896d22e80c732045f82145265925b07b560f0adf5c6a888fb8fc9419df78";

    /// The container as guardian's Docker source reads a captured `docker inspect`.
    fn inspected(json: &str) -> Container {
        let mut info: Vec<bollard::models::ContainerInspectResponse> =
            serde_json::from_str(json).unwrap();
        container_from_inspect(info.remove(0), "", None)
    }

    /// The container as Docker reported it while it ran, before the kill.
    fn running(json: &str, cgroup: u64) -> Container {
        Container {
            state: "running".into(),
            finished_at: None,
            exit_code: None,
            oom_killed: false,
            cgroup: Some(CgroupRef {
                id: CgroupId(cgroup),
                path: Some(format!("/guardian-test-docker/{}", &inspected(json).id).into()),
                memory_path: None,
            }),
            ..inspected(json)
        }
    }

    /// The Docker events of the capture: (action, container id, exit code).
    fn events() -> Vec<(String, String, Option<i64>)> {
        EVENTS
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let exit = v["Actor"]["Attributes"]["exitCode"].as_str();
                (
                    v["Action"].as_str().unwrap().to_string(),
                    v["Actor"]["ID"].as_str().unwrap().to_string(),
                    exit.map(|e| e.parse().unwrap()),
                )
            })
            .collect()
    }

    fn kill_lines() -> Vec<KillLine> {
        KMSG.lines().filter_map(parse_kill_line).collect()
    }

    fn ms(rfc3339: &str) -> i64 {
        time::rfc3339_ms(rfc3339).unwrap()
    }

    /// guardian's eBPF record of the kill of `oom-main` (pid and RSS as the kernel logged them),
    /// with its cgroup's reading right after: at its 32 MiB limit.
    fn ebpf_kill(cgroup: Option<CgroupRef>) -> OomKill {
        let task = |comm: &str| OomTask {
            pid: 16291,
            comm: Some(comm.into()),
            cgroup: cgroup.clone(),
        };
        OomKill {
            time: "2026-11-30T20:13:07.681Z".into(),
            ktime_ns: 23_092_608_934_000,
            victim: task("memload"),
            container: None,
            comm_source: crate::model::Source::Kernel,
            cgroup_source: crate::model::Source::Kernel,
            rss: Some(RssBreakdown {
                total_vm: Bytes::from_kib(34508),
                anon_rss: Bytes::from_kib(32256),
                file_rss: Bytes::from_kib(988),
                shmem_rss: Bytes(0),
                pgtables: Some(Bytes::from_kib(104)),
                source: crate::model::Source::Tracepoint,
            }),
            uid: Some(0),
            oom_score_adj: Some(0),
            trigger: task("memload"),
            trigger_tgid: 16291,
            memory: Some(MemoryReading {
                usage: Bytes(MIB),
                peak: Some(Bytes(32 * MIB)),
                limit: Some(Bytes(32 * MIB)),
                working_set: Bytes(MIB),
                ..Default::default()
            }),
            memory_stat: BTreeMap::new(),
        }
    }

    struct Daemon {
        table: ContainerTable,
        recorder: Recorder,
        host: VecDeque<(i64, Bytes)>,
    }

    /// The daemon's view at the kill: `oom-main` climbing to its limit, `oom-child` beside it.
    fn daemon(at_ms: i64) -> Daemon {
        let mut table = ContainerTable::new(10);
        let mut recorder = Recorder::new(10_000, 30_000);
        for (c, usage) in [
            (running(INSPECT_MAIN, 7), 30 * MIB),
            (running(INSPECT_CHILD, 8), 5 * MIB),
        ] {
            recorder.start(&c, at_ms - 1000);
            let round = crate::model::Counters {
                usage: Bytes(usage),
                high_water: Bytes(usage),
                interval_peak: None,
                unreclaimable: Bytes(usage),
                reclaimable: Bytes(0),
            };
            recorder.observe_counters(&c.id, round, at_ms - 500);
            table.upsert(c);
        }
        let host = (0..10)
            .map(|k| (at_ms - 9000 + k * 1000, Bytes(900 * MIB)))
            .collect();
        Daemon {
            table,
            recorder,
            host,
        }
    }

    fn from_ebpf(d: &Daemon, kill: &OomKill, at_ms: i64) -> Gathering {
        from_kill(
            kill,
            &KillScene {
                at_ms,
                table: &d.table,
                recorder: &d.recorder,
                host: HostSeries {
                    available: &d.host,
                    total: Some(Bytes(4 << 30)),
                },
                cmdline: Some("memload hog --step 1m".into()),
                stalls: None,
                budget: None,
            },
        )
    }

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

    #[test]
    fn an_ebpf_kill_names_the_container_and_marks_its_peak_at_the_kill() {
        let at = ms("2026-11-30T20:13:07.681Z");
        let d = daemon(at);
        let cgroup = d.table.get(MAIN_ID).unwrap().cgroup.clone();
        let g = from_ebpf(&d, &ebpf_kill(cgroup), at);
        let i = &g.incident;
        assert_eq!(g.container_id.as_deref(), Some(MAIN_ID));
        assert_eq!(i.id, "20261130T201307Z-oom-main-16291");
        assert_eq!(i.time, "2026-11-30T20:13:07.681Z");
        assert_eq!(i.name, "oom-main");
        assert_eq!(i.container.as_ref().unwrap().id, "5d39896d22e8");
        assert_eq!(i.victim.comm.as_deref(), Some("memload"));
        assert_eq!(
            i.trigger.as_ref().unwrap().container.as_deref(),
            Some("oom-main")
        );
        assert_eq!(
            (i.limit, i.peak),
            (Some(Bytes(32 * MIB)), Some(Bytes(32 * MIB)))
        );
        // The recorder's last sample at -500 ms, then the kernel's high-water mark at the kill.
        let t: Vec<(i64, Bytes)> = i.timeline.iter().map(|p| (p.t_ms, p.bytes)).collect();
        assert_eq!(t, [(-500, Bytes(30 * MIB)), (0, Bytes(32 * MIB))]);
        assert_eq!(i.sources, ["ebpf"]);
        assert_eq!(
            i.kind, None,
            "the kind waits for the kernel log or the counters"
        );
        let names: Vec<&str> = i.neighbours.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["oom-child"], "the victim is not its own neighbour");
        assert_eq!(i.host_available.len(), 10);
    }

    #[test]
    fn a_kill_in_an_unmapped_cgroup_is_named_by_its_path() {
        let at = ms("2026-11-30T20:13:07.681Z");
        let d = daemon(at);
        let path = parse_summary_line(KMSG.lines().next().unwrap())
            .unwrap()
            .task_memcg;
        let cgroup = CgroupRef {
            id: CgroupId(99),
            path: Some(path.clone().into()),
            memory_path: None,
        };
        let g = from_ebpf(&d, &ebpf_kill(Some(cgroup)), at);
        assert_eq!(g.container_id, None);
        assert_eq!(g.incident.name, path);
        assert_eq!(
            g.incident.limit,
            Some(Bytes(32 * MIB)),
            "from the cgroup's reading"
        );
    }

    #[test]
    fn the_kernel_log_line_sets_the_kind_and_keeps_ebpfs_name() {
        let at = ms("2026-11-30T20:13:07.681Z");
        let d = daemon(at);
        let mut kill = ebpf_kill(d.table.get(MAIN_ID).unwrap().cgroup.clone());
        kill.victim.comm = Some("memload-ebpf".into());
        let g = from_ebpf(&d, &kill, at);
        let lines = kill_lines();
        let (ours, other) = (&lines[0], &lines[1]);
        assert!(line_matches(&g.incident, ours));
        assert!(
            !line_matches(&g.incident, other),
            "another pid is another kill"
        );
        let i = merge_kill_line(g.incident, ours);
        assert_eq!(i.kind, Some(OomKind::Cgroup));
        assert_eq!(i.kind_evidence.as_deref(), Some("kernel log"));
        assert_eq!(i.victim.comm.as_deref(), Some("memload-ebpf"));
        assert!(i
            .kernel_line
            .as_deref()
            .unwrap()
            .starts_with("Memory cgroup out of memory: Killed process 16291 (memload)"));
        // The same line twice (a re-read buffer) is one witness.
        let i = merge_kill_line(i, ours);
        assert_eq!(i.sources, ["ebpf", "kernel log"]);
        // Without eBPF's name the log's is used.
        let mut nameless = Incident::default();
        nameless.victim.pid = Some(16291);
        assert_eq!(
            merge_kill_line(nameless, ours).victim.comm.as_deref(),
            Some("memload")
        );
    }

    #[test]
    fn dockers_oom_and_die_events_complete_the_incident_of_their_container() {
        let at = ms("2026-11-30T20:13:07.681Z");
        let d = daemon(at);
        let mut g = from_ebpf(
            &d,
            &ebpf_kill(d.table.get(MAIN_ID).unwrap().cgroup.clone()),
            at,
        );
        let dead = inspected(INSPECT_MAIN);
        let child = inspected(INSPECT_CHILD);
        for (action, id, exit) in events() {
            let Some(action) = DockerAction::from_event(&action) else {
                continue;
            };
            let c = if id == MAIN_ID { &dead } else { &child };
            assert_eq!(exit.is_some(), action == DockerAction::Die);
            if same_container(&g, c) && docker_saw_oom(action, c) {
                g = merge_docker_event(g, action, c);
            }
        }
        assert_eq!(g.incident.exit_code, Some(137));
        assert_eq!(g.incident.container_survived, Some(false));
        assert_eq!(g.incident.sources, ["ebpf", "docker"]);
        assert_eq!(
            survived_at_end(&g, Some(&dead)),
            Some(false),
            "the die decided"
        );
    }

    #[test]
    fn a_docker_event_names_a_kill_seen_before_its_container_was_mapped() {
        let at = ms("2026-11-30T20:13:07.681Z");
        let d = daemon(at);
        let path = parse_summary_line(KMSG.lines().next().unwrap())
            .unwrap()
            .task_memcg;
        let cgroup = CgroupRef {
            id: CgroupId(99),
            path: Some(path.into()),
            memory_path: None,
        };
        let g = from_ebpf(&d, &ebpf_kill(Some(cgroup)), at);
        let c = inspected(INSPECT_MAIN);
        assert!(
            same_container(&g, &c),
            "the cgroup path has the container id"
        );
        assert!(!same_container(&g, &inspected(INSPECT_CHILD)));
        let g = merge_docker_event(g, DockerAction::Oom, &c);
        assert_eq!(g.container_id.as_deref(), Some(MAIN_ID));
        assert_eq!(g.incident.name, "oom-main");
        assert_eq!(g.incident.exit_code, None, "an oom event has no exit code");
    }

    #[test]
    fn a_sigkill_without_oomkilled_is_not_an_oom_and_docker_alone_waits_for_the_die() {
        // `docker kill`: exit 137, OOMKilled false.
        let killed = Container {
            oom_killed: false,
            ..inspected(INSPECT_MAIN)
        };
        assert!(!docker_saw_oom(DockerAction::Die, &killed));
        assert!(docker_saw_oom(DockerAction::Oom, &killed));
        assert!(docker_saw_oom(DockerAction::Die, &inspected(INSPECT_MAIN)));
        assert_eq!(DockerAction::from_event("start"), None);
        assert!(matches!(
            docker_alone(DockerAction::Die, false),
            DockerAlone::Make(_)
        ));
        assert!(matches!(
            docker_alone(DockerAction::Oom, false),
            DockerAlone::Ignore(_)
        ));
        assert!(matches!(
            docker_alone(DockerAction::Die, true),
            DockerAlone::Ignore(_)
        ));
    }

    #[test]
    fn a_container_that_went_on_after_the_kill_is_completed_by_its_later_die() {
        // oom-child: a child killed at 20:13:08.1, the container exited 0 two seconds later;
        // its incident was stored at the end of the gathering window with the container alive.
        let c = inspected(INSPECT_CHILD);
        let stored = Incident {
            at_ms: ms("2026-11-30T20:13:08.108Z"),
            kind: Some(OomKind::Cgroup),
            name: "oom-child".into(),
            container_survived: survived_at_end(
                &Gathering::default(),
                Some(&running(INSPECT_CHILD, 8)),
            ),
            ..Default::default()
        };
        assert_eq!(stored.container_survived, Some(true));
        let i = complete_stored(stored, &c).unwrap();
        assert_eq!(i.exit_code, Some(0));
        assert_eq!(i.container_survived, Some(true));
        assert_eq!(
            i.notes,
            ["the container went on after the kill and exited later with code 0"]
        );
        assert!(
            i.next_step.contains("The container survived"),
            "{}",
            i.next_step
        );
        assert_eq!(
            complete_stored(i, &c),
            None,
            "an exit code already recorded stays"
        );
    }

    #[test]
    fn a_main_process_killed_with_a_late_die_did_not_survive() {
        let c = inspected(INSPECT_MAIN);
        let stored = Incident {
            at_ms: ms("2026-11-30T20:13:07.681Z"),
            container_survived: Some(true),
            ..Default::default()
        };
        let i = complete_stored(stored, &c).unwrap();
        assert_eq!(
            (i.exit_code, i.container_survived),
            (Some(137), Some(false))
        );
        assert!(i.notes.is_empty());
    }

    #[test]
    fn dockers_record_alone_makes_an_incident_at_the_containers_death() {
        let host = VecDeque::new();
        let host = HostSeries {
            available: &host,
            total: None,
        };
        let child = inspected(INSPECT_CHILD);
        let g = from_docker_state(&child, None, None, "from Docker", host, 0);
        let i = &g.incident;
        assert_eq!(i.at_ms, ms("2026-11-30T20:13:10.122784832Z"));
        assert_eq!(i.id, "20261130T201310Z-oom-child-x");
        assert_eq!((i.exit_code, i.container_survived), (Some(0), Some(true)));
        assert_eq!(i.sources, ["docker state"]);
        assert_eq!(i.limit, Some(Bytes(32 * MIB)));
        assert_eq!(i.notes, ["from Docker"]);
        // With the kernel's line the victim and the kind are known; Docker's flag still counts.
        let line = &kill_lines()[0];
        let g = from_docker_state(&inspected(INSPECT_MAIN), None, Some(line), "x", host, 0);
        assert_eq!(g.incident.victim.pid, Some(16291));
        assert_eq!(g.incident.kind, Some(OomKind::Cgroup));
        assert_eq!(
            g.incident.container_survived, None,
            "exit 137: the main process"
        );
        assert_eq!(g.incident.sources, ["docker state", "kernel log"]);
    }

    #[test]
    fn a_kill_missed_while_away_is_found_by_dockers_flag_or_the_kernels_buffer() {
        let logged: Vec<LoggedKill> = KMSG.lines().filter_map(parse_summary_line).collect();
        assert_eq!(logged.len(), 2);
        let main = inspected(INSPECT_MAIN);
        let finished = recently_stopped(&main, ms("2026-11-30T20:20:00Z")).unwrap();
        // The log's clock: the main kill's record (µs since boot) at the container's death.
        let boot_ms = finished - 23_092_608;
        let wall = |us: u64| boot_ms + (us / 1000) as i64;
        // Docker's flag and the kernel's line.
        let m = missed_kill(&main, finished, &logged, wall).unwrap();
        assert_eq!(m.line.unwrap().pid, 16291);
        // Docker missed the flag: the kernel's line of this run with exit 137 suffices.
        let unflagged = Container {
            oom_killed: false,
            ..main.clone()
        };
        assert!(missed_kill(&unflagged, finished, &logged, wall).is_some());
        // A kill days before this run is not this run's.
        let days_later = |us: u64| wall(us) - 3 * 86_400_000;
        assert_eq!(missed_kill(&unflagged, finished, &logged, days_later), None);
        // A child killed in a container that exited 0: Docker's flag only, no kernel line.
        let child = inspected(INSPECT_CHILD);
        let m = missed_kill(&child, ms("2026-11-30T20:13:10.122Z"), &logged, wall).unwrap();
        assert_eq!(m.line, None);
        assert!(m.note.contains("what Docker recorded"), "{}", m.note);
        // Stopped long ago, or running: not looked at.
        assert_eq!(recently_stopped(&main, ms("2026-11-30T21:00:00Z")), None);
        assert_eq!(recently_stopped(&running(INSPECT_MAIN, 7), finished), None);
    }

    #[test]
    fn concluding_takes_the_kind_from_the_counters_only_when_the_log_was_silent() {
        let action = |at_ms| ActionRecord {
            at_ms,
            ..Default::default()
        };
        let base = incident(None, 64, Some(64));
        let i = conclude(base.clone(), vec![action(-5000), action(500), action(2000)]);
        assert_eq!(i.kind, Some(OomKind::Cgroup));
        assert_eq!(i.kind_evidence.as_deref(), Some("reached its limit"));
        let at: Vec<i64> = i.actions.iter().map(|a| a.at_ms).collect();
        assert_eq!(at, [-5000, 500], "actions up to 1 s after the kill");
        assert_eq!(i.suggested_limit, Some(Bytes(168 * MIB)));
        assert!(
            i.next_step.contains("hit its own memory limit"),
            "{}",
            i.next_step
        );
        let logged = Incident {
            kind: Some(OomKind::Global),
            kind_evidence: Some("kernel log".into()),
            ..base
        };
        assert_eq!(conclude(logged, vec![]).kind, Some(OomKind::Global));
    }
}
