//! Events guardian reports: OOM kills, reclaim stalls, pressure triggers and memcg OOM notices.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Bytes, CgroupId, ContainerRef, MemoryReading, PressureStats};

/// Where a fact came from, so a reader can judge it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Read in the kernel by guardian's eBPF program, at the moment of the event.
    Kernel,
    /// The kernel's trace record for the event.
    Tracepoint,
    /// Read from /proc by guardian after the event arrived.
    Procfs,
    /// Assumed from the task that triggered the kill (a cgroup OOM kills inside that cgroup).
    Trigger,
    /// Not available: the task was gone before guardian could look.
    Unavailable,
}

/// A cgroup named both by id and by path.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CgroupRef {
    pub id: CgroupId,
    /// Path in the unified (v2) hierarchy, relative to its root, e.g. `/docker/<id>`.
    pub path: Option<PathBuf>,
    /// Path in the v1 memory hierarchy on v1/hybrid hosts.
    pub memory_path: Option<PathBuf>,
}

/// A task as an OOM event names it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OomTask {
    pub pid: u32,
    pub comm: Option<String>,
    pub cgroup: Option<CgroupRef>,
}

/// Memory of the victim when it was chosen, in bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RssBreakdown {
    pub total_vm: Bytes,
    pub anon_rss: Bytes,
    pub file_rss: Bytes,
    pub shmem_rss: Bytes,
    pub pgtables: Option<Bytes>,
    pub source: Source,
}

/// One OOM kill.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OomKill {
    /// Wall-clock time, RFC 3339.
    pub time: String,
    /// CLOCK_MONOTONIC nanoseconds from the kernel.
    pub ktime_ns: u64,
    pub victim: OomTask,
    /// The container the victim ran in, when Docker knows it.
    pub container: Option<ContainerRef>,
    pub comm_source: Source,
    pub cgroup_source: Source,
    pub rss: Option<RssBreakdown>,
    pub uid: Option<u32>,
    pub oom_score_adj: Option<i16>,
    /// The task whose allocation triggered the kill (thread id, process id in `tgid`).
    pub trigger: OomTask,
    pub trigger_tgid: u32,
    /// The victim's memory cgroup just after the kill, while it still exists.
    pub memory: Option<MemoryReading>,
    /// The byte fields of that cgroup's memory.stat just after the kill (kernel names).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub memory_stat: std::collections::BTreeMap<String, Bytes>,
}

/// A direct-reclaim stall of a task in a memory cgroup above the reporting threshold.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReclaimStall {
    pub time: String,
    pub ktime_ns: u64,
    pub cgroup: CgroupRef,
    pub container: Option<ContainerRef>,
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    pub duration_us: u64,
    pub pages_reclaimed: u64,
}

/// A PSI trigger fired: the group (or the host) stalled longer than the threshold in the window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Pressure {
    pub time: String,
    /// The pressure file the trigger is armed on.
    pub file: PathBuf,
    /// The trigger as the kernel accepted it, e.g. `some 150000 2000000`.
    pub trigger: String,
    pub stats: Option<PressureStats>,
    pub container: Option<ContainerRef>,
}

/// The kernel's own memcg OOM notice (v1 `cgroup.event_control` eventfd, v2 `memory.events`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemcgOom {
    pub time: String,
    /// The memory cgroup directory.
    pub cgroup: PathBuf,
    /// OOM kills counted in that group so far, when the kernel reports it.
    pub oom_kills: Option<u64>,
    pub container: Option<ContainerRef>,
}

/// A container started, stopped, was OOM-killed (Docker's `oom`), paused or went away.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContainerChange {
    /// When guardian learnt of it and mapped the container's cgroup.
    pub time: String,
    /// When the engine says it happened.
    pub docker_time: String,
    /// Docker's action: create, start, die, oom, destroy, pause, unpause.
    pub action: String,
    pub container: ContainerRef,
    pub cgroup: Option<CgroupRef>,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
}

/// Reclaim-stall totals of one cgroup since guardian attached.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StallSummary {
    pub cgroup: CgroupRef,
    pub container: Option<ContainerRef>,
    pub count: u64,
    pub total_us: u64,
    pub max_us: u64,
    pub pages_reclaimed: u64,
    /// `[upper bound in µs, count]` per non-empty log2 bucket.
    pub histogram_us: Vec<(u64, u64)>,
}

/// Everything `guardian events` can print.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    OomKill(Box<OomKill>),
    ReclaimStall(ReclaimStall),
    Pressure(Pressure),
    MemcgOom(MemcgOom),
    Container(ContainerChange),
    /// Printed once at the end: per-cgroup stall totals and events lost to full ring buffers.
    Summary {
        stalls: Vec<StallSummary>,
        dropped_oom: u64,
        dropped_stall: u64,
    },
}
