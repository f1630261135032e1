//! An OOM incident: one kill, with what led to it, as the post-mortem report shows it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ActionRecord, Bytes, ContainerRef, OomKind, PressureStats, RssBreakdown, TmpfsMount};

/// A point of a timeline: milliseconds relative to the kill (negative = before) and a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Point {
    pub t_ms: i64,
    pub bytes: Bytes,
}

/// The killed process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Victim {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// Truncated; never the environment.
    pub cmdline: Option<String>,
    pub rss: Option<RssBreakdown>,
    pub oom_score_adj: Option<i16>,
}

/// The task whose allocation made the kernel kill.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TriggerTask {
    pub pid: u32,
    pub comm: Option<String>,
    /// The container it ran in, if any.
    pub container: Option<String>,
}

/// Another container's memory around the kill.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Neighbour {
    pub name: String,
    pub usage: Bytes,
    pub peak: Bytes,
    pub limit: Option<Bytes>,
    pub timeline: Vec<Point>,
}

/// Reclaim stalls of the victim's cgroup (eBPF), since guardian attached.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StallBrief {
    pub count: u64,
    pub total_ms: f64,
    pub max_ms: f64,
}

/// The parts a memory cgroup's charge is made of, as the kernel's memory.stat splits it; each
/// byte is in exactly one part, so the largest is what filled the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryPart {
    /// Anonymous memory: heaps, stacks (v2 `anon`, v1 `total_rss`).
    Anon,
    /// Page cache of files on disk (v2 `file` − `shmem`, v1 `total_cache` − `total_shmem`).
    File,
    /// tmpfs files and shared memory (v2 `shmem`, v1 `total_shmem`): killing processes does not
    /// free it, only deleting the files does.
    Shmem,
    /// Kernel memory charged to the group (v2 `kernel`: slab, stacks, page tables).
    Kernel,
    /// Network socket buffers (v2 `sock`).
    Sock,
}

/// The largest part of the group's charge at the kill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filler {
    pub part: MemoryPart,
    pub bytes: Bytes,
}

/// What stopped or slowed the container. Stored incidents from before this field load as
/// [`Cause::KernelOom`]; `kind` then says which OOM (cgroup or global).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The kernel's OOM killer (see `Incident::kind`).
    #[default]
    KernelOom,
    /// guardian's ladder froze it (step 3).
    FrozenByGuardian,
    /// guardian's ladder killed it (step 4, `--allow-kill`).
    KilledByGuardian,
    /// Held at its memory.high, stalled in reclaim.
    Throttled,
    /// SIGKILL without the kernel's OOM killer: `killer` names earlyoom, systemd-oomd, ... when
    /// their log said so.
    KilledBySignal { killer: Option<String> },
    /// Its memory crossed a share of its limit or budget for a while; nothing was killed yet.
    Warning,
}

impl Cause {
    /// Short machine name: `report list`, the hook's `GUARDIAN_KIND`, metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Cause::KernelOom => "oom",
            Cause::FrozenByGuardian => "frozen",
            Cause::KilledByGuardian => "killed",
            Cause::Throttled => "throttled",
            Cause::KilledBySignal { .. } => "signal",
            Cause::Warning => "warning",
        }
    }
}

/// The ladder's decision behind a freeze or a kill, with the readings it acted on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LadderDecision {
    /// The ladder's step: 3 freeze, 4 kill.
    pub step: u8,
    /// The ladder's reason, with the numbers that caused it.
    pub rule: String,
    /// The group's usage (memory.current / memory.usage_in_bytes) when it decided.
    pub usage: Bytes,
    /// Its `guardian.priority` (lower goes first).
    pub priority: i32,
    /// The host's MemAvailable (/proc/meminfo) and memory PSI avg10 in percent
    /// (/proc/pressure/memory) when it decided.
    pub host_available: Bytes,
    pub host_psi_some_avg10: f64,
    pub host_psi_full_avg10: f64,
    /// `[enforce] reserve` and `critical_reserve` of the running config.
    pub reserve: Bytes,
    pub critical_reserve: Bytes,
}

/// One OOM kill and its context, deduplicated across the eBPF event, the kernel log line,
/// Docker's `oom` event and the cgroup's counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// `YYYYmmddTHHMMSS-<name>-<pid>`: sortable and safe as a file name.
    pub id: String,
    /// RFC 3339 time of the kill.
    pub time: String,
    pub at_ms: i64,
    /// `None` when neither the kernel log nor the counters could tell.
    pub kind: Option<OomKind>,
    /// How the kind was known: "kernel log", "reached its limit", "below its limit".
    pub kind_evidence: Option<String>,
    /// How a person names it: `project/service`, the container name, or the cgroup path.
    pub name: String,
    pub container: Option<ContainerRef>,
    pub cgroup: Option<String>,
    pub victim: Victim,
    pub trigger: Option<TriggerTask>,
    /// The container's limit, guardian's budget and memory.high at the time.
    pub limit: Option<Bytes>,
    pub budget: Option<Bytes>,
    pub memory_high: Option<Bytes>,
    /// The kernel's high-water mark of the group.
    pub peak: Option<Bytes>,
    /// The run's unreclaimable peak until the kill (see `RunRecord::peak_unreclaimable`);
    /// `None` when guardian did not record the run, and for incidents stored before.
    #[serde(default)]
    pub peak_unreclaimable: Option<Bytes>,
    pub exit_code: Option<i64>,
    /// The group's usage over the last 60 s (sampled by the daemon).
    pub timeline: Vec<Point>,
    pub working_set: Option<Bytes>,
    pub pressure: Option<PressureStats>,
    pub reclaim_stalls: Option<StallBrief>,
    /// The host's MemAvailable over the same window.
    pub host_available: Vec<Point>,
    pub host_total: Option<Bytes>,
    /// The five largest other containers.
    pub neighbours: Vec<Neighbour>,
    /// What guardian did in the window.
    pub actions: Vec<ActionRecord>,
    pub suggested_limit: Option<Bytes>,
    pub suggestion: String,
    pub next_step: String,
    /// Which sources saw it: ebpf, kernel log, docker, docker state.
    pub sources: Vec<String>,
    /// What stopped or slowed it; the kernel's OOM killer for incidents stored before.
    #[serde(default)]
    pub cause: Cause,
    /// For a freeze or kill by guardian: the ladder's rule and readings.
    #[serde(default)]
    pub decision: Option<LadderDecision>,
    /// When an episode (a freeze, throttling, a warning) ended, RFC 3339; `None` while it lasts.
    #[serde(default)]
    pub ended: Option<String>,
    /// How long the episode lasted so far or in all, in milliseconds.
    #[serde(default)]
    pub duration_ms: Option<i64>,
    /// Time the group's tasks lost stalled on memory: the growth of the PSI `full total=`
    /// (microseconds) of its memory.pressure over the episode, in milliseconds.
    #[serde(default)]
    pub lost_ms: Option<f64>,
    /// The OOM killer's own line.
    pub kernel_line: Option<String>,
    /// What guardian could not know, in words (e.g. it was not watching yet).
    pub notes: Vec<String>,
    /// The victim cgroup's memory.stat read when guardian saw the kill (the victim's own pages
    /// may already be freed then: `filled_by` adds its RSS back), byte fields only, under the
    /// kernel's own names (v2: `anon`, `file`, `shmem`, `kernel`, `sock`, ...; v1: `rss`,
    /// `cache`, `shmem`, `mapped_file`, `total_*`, ...). Empty when the group was already gone.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub memory_stat: BTreeMap<String, Bytes>,
    /// The largest part of the group's memory at the kill (`memory_stat`, each part at least the
    /// victim's RSS of it from the kill record): what filled the limit.
    #[serde(default)]
    pub filled_by: Option<Filler>,
    /// The container's tmpfs mounts (Docker's HostConfig.Tmpfs, HostConfig.ShmSize, Mounts of
    /// type tmpfs): memory that outlives the processes that wrote it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<TmpfsMount>,
    /// Whether the container went on running after the kill (a child was killed, not its main
    /// process); `None` when guardian could not tell.
    #[serde(default)]
    pub container_survived: Option<bool>,
    /// How fast the group's usage was still climbing at the kill, in bytes per second, from the
    /// samples of the last two seconds; `None` with fewer than two samples there.
    #[serde(default)]
    pub climb_per_s: Option<Bytes>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incident_stored_before_causes_existed_loads_as_a_kernel_oom() {
        let mut old = serde_json::to_value(Incident {
            id: "20261125T000000Z-ci-db-42".into(),
            name: "ci/db".into(),
            ..Default::default()
        })
        .unwrap();
        for field in ["cause", "decision", "ended", "duration_ms", "lost_ms"] {
            old.as_object_mut().unwrap().remove(field);
        }
        let i: Incident = serde_json::from_value(old).unwrap();
        assert_eq!(i.cause, Cause::KernelOom);
        assert_eq!(i.decision, None);
    }

    #[test]
    fn a_cause_with_its_killer_round_trips() {
        let i = Incident {
            cause: Cause::KilledBySignal {
                killer: Some("earlyoom".into()),
            },
            ..Default::default()
        };
        let text = serde_json::to_string(&i).unwrap();
        assert!(
            text.contains(r#""cause":{"killed_by_signal":{"killer":"earlyoom"}}"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Incident>(&text).unwrap(), i);
    }
}
