//! Plain data that flows through guardian: sizes, cgroup ids, memory readings and events. No I/O.

mod action;
mod budget;
mod container;
mod event;
mod incident;
mod memory;
mod oom;
mod profile;
mod recorder;
pub mod time;
mod usage;

pub use action::{ActionRecord, JournalEntry};
pub use budget::{
    cgroup_guard, label_budget, resolve_guard, Budget, BudgetRule, BudgetSource, Guard,
    LabelPolicy, ProfileBudget, SizeText, TrustedLabel, LABEL_AVOID, LABEL_BUDGET, LABEL_PRIORITY,
};
pub use container::{
    ComposeService, Condition, Container, ContainerRef, ContainerState, ContainerTable, Dependency,
    LimitKey, TmpfsMount,
};
pub use event::{
    CgroupRef, ContainerChange, Event, MemcgOom, OomKill, OomTask, Pressure, ReclaimStall,
    RssBreakdown, Source, StallSummary,
};
pub use incident::{
    Cause, Filler, Incident, LadderDecision, MemoryPart, Neighbour, Point, StallBrief, TriggerTask,
    Victim,
};
pub use memory::{
    compose_size, unreclaimable_high, Bytes, Counters, MemoryEvents, MemoryReading, PressureStats,
    PsiLine,
};
pub use oom::{KillLine, LoggedKill, OomKind};
pub use profile::{PeakKind, ProfileFile, Recommendation, ServiceUsage, PROFILE_SCHEMA};
pub use recorder::{Flush, LiveRun, Recorder, RECENT_MS};
pub use time::{now_ms, rfc3339_ms, unix_ms};
pub use usage::{RunRecord, Sample};

use serde::Serialize;

/// A cgroup v2 id: the inode number of the group's directory in the unified hierarchy, which is
/// what `bpf_get_current_cgroup_id()` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct CgroupId(pub u64);

impl std::fmt::Display for CgroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
