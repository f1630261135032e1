//! What guardian did to a group: the record kept in the store, shown by `status` and metrics.

use serde::{Deserialize, Serialize};

/// One write guardian made (or, in dry-run, would have made), with why and the values.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// Container id, or `cgroup:<path>`.
    pub subject: String,
    /// How a person names it (`project/service`, container name, or cgroup path).
    pub name: String,
    /// `set_high`, `restore_high`, `freeze`, `thaw`, `kill`.
    pub action: String,
    /// The file written.
    pub file: String,
    pub before: String,
    pub after: String,
    /// The ladder's step (1–4), 0 for relaxing, and none for restores at start-up/exit.
    pub step: Option<u8>,
    pub reason: String,
    /// What woke the policy: `memory.events`, `psi`, `poll`, `startup`, `shutdown`.
    pub trigger: String,
    /// From the wake-up (for eBPF: the kernel's timestamp) to the write issued, in microseconds.
    pub reaction_us: Option<u64>,
    /// How long the write itself took: lowering memory.high reclaims inside the write.
    pub write_us: Option<u64>,
    pub dry_run: bool,
}

/// A value guardian changed and must put back: the journal survives a crash, so a restarted
/// daemon (or `guardian restore`) restores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JournalEntry {
    /// Absolute path of the cgroup file.
    pub file: String,
    /// Its content before guardian's first write.
    pub original: String,
    pub subject: String,
    pub at_ms: i64,
}
