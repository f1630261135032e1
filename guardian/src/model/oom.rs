//! The kernel log's record of an OOM kill: which killer acted (the memory cgroup's or the
//! host's), and the "Killed process" line that says so. Parsed by `sources::kmsg`.

use serde::{Deserialize, Serialize};

/// Which OOM killer acted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OomKind {
    /// A memory cgroup reached its own limit.
    Cgroup,
    /// The host ran out of memory.
    Global,
}

/// One kill as the kernel logged it: its "Killed process" line, or (from the log buffer, when
/// that line is gone) the OOM report's summary line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillLine {
    pub pid: u32,
    pub comm: String,
    pub kind: OomKind,
    /// The line as the kernel wrote it.
    pub text: String,
}

/// A kill still in the kernel's log buffer, with the memory cgroup of the killed task: from the
/// OOM report's summary line (`oom-kill:constraint=…,task_memcg=…,task=…,pid=…`), which the
/// kernel rate-limits with the rest of the report (ten per 5 s), so a burst of kills may leave
/// some without one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedKill {
    /// The killed task's memory cgroup, as the kernel names it.
    pub task_memcg: String,
    /// When, in microseconds of CLOCK_MONOTONIC (the record's own timestamp); `None` for a
    /// line without the /dev/kmsg header.
    pub usec: Option<u64>,
    /// Its "Killed process" line when the buffer still has it, else one made from the summary.
    pub line: KillLine,
}
