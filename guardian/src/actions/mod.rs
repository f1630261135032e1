//! The only writes guardian makes to cgroups: `memory.high` (v2), `cgroup.freeze` and
//! `cgroup.kill` (v2, and the unified tree of hybrid hosts). Every value guardian changes is
//! journaled in the store *before* the write, so a clean exit, a restart after a crash, or
//! `guardian restore` puts it back.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tracing::{info, warn};

use crate::{
    model::{now_ms, ActionRecord, JournalEntry},
    policy::enforce::Act,
    sources::cgroup::{CgroupError, Hierarchy, Mode},
    store::{Store, StoreError},
};

/// Why a write could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("memory.high needs the memory controller on cgroup v2; this host is {0}, so guardian only observes here")]
    NoMemoryHigh(Mode),
    #[error(
        "cgroup.freeze and cgroup.kill need a cgroup v2 (unified) tree, and this host has none"
    )]
    NoUnifiedTree,
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("journaling before the write: {0}")]
    Journal(#[from] StoreError),
}

/// The group an action is for.
#[derive(Clone, Debug)]
pub struct Target<'a> {
    /// Container id or `cgroup:<path>`: the journal's owner.
    pub subject: &'a str,
    /// Its path in the memory hierarchy, relative to the root.
    pub memory_rel: &'a Path,
    /// Its path in the unified tree (the same as `memory_rel` on v2).
    pub unified_rel: Option<&'a Path>,
}

/// A write made: which file, its content before and after, and how long the write itself
/// took (lowering memory.high reclaims synchronously inside the write).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub file: PathBuf,
    pub before: String,
    pub after: String,
    pub took: Duration,
}

fn read_trimmed(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| CgroupError::read(path, e))
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|e| CgroupError::write(path, e))
}

/// Makes the ladder's writes, journaled; in dry-run it reads but never writes.
#[derive(Clone, Debug)]
pub struct Executor {
    hierarchy: Hierarchy,
    dry_run: bool,
}

impl Executor {
    pub fn new(hierarchy: Hierarchy, dry_run: bool) -> Self {
        Self { hierarchy, dry_run }
    }

    /// Whether it only reads and logs.
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Whether memory.high can be written on this host.
    pub fn can_set_high(&self) -> bool {
        self.hierarchy.memory_is_v2()
    }

    fn high_file(&self, t: &Target) -> Result<PathBuf, ActionError> {
        if !self.hierarchy.memory_is_v2() {
            return Err(ActionError::NoMemoryHigh(self.hierarchy.mode));
        }
        Ok(self.hierarchy.memory_dir(t.memory_rel).join("memory.high"))
    }

    fn unified_file(&self, t: &Target, name: &str) -> Result<PathBuf, ActionError> {
        let rel = t.unified_rel.ok_or(ActionError::NoUnifiedTree)?;
        let dir = self
            .hierarchy
            .unified_dir(rel)
            .ok_or(ActionError::NoUnifiedTree)?;
        Ok(dir.join(name))
    }

    /// Writes `value` to `file`, journaling the original first (once per file).
    fn journaled(
        &self,
        store: &Store,
        subject: &str,
        file: PathBuf,
        value: &str,
    ) -> Result<Written, ActionError> {
        let before = read_trimmed(&file)?;
        let mut took = Duration::ZERO;
        if !self.dry_run {
            store.journal_insert(&JournalEntry {
                file: file.display().to_string(),
                original: before.clone(),
                subject: subject.to_string(),
                at_ms: now_ms(),
            })?;
            let start = Instant::now();
            write(&file, value)?;
            took = start.elapsed();
        }
        Ok(Written {
            file,
            before,
            after: value.to_string(),
            took,
        })
    }

    /// Puts `file` back to its journaled original and drops it from the journal.
    fn restore(&self, store: &Store, file: PathBuf) -> Result<Written, ActionError> {
        let key = file.display().to_string();
        let before = read_trimmed(&file)?;
        let Some(original) = store.journal_original(&key)? else {
            // Nothing journaled: guardian never changed it (or already restored it).
            return Ok(Written {
                file,
                after: before.clone(),
                before,
                took: Duration::ZERO,
            });
        };
        let mut took = Duration::ZERO;
        if !self.dry_run {
            let start = Instant::now();
            write(&file, &original)?;
            took = start.elapsed();
            store.journal_remove(&key)?;
        }
        Ok(Written {
            file,
            before,
            after: original,
            took,
        })
    }

    /// Applies one of the ladder's acts to `t`.
    pub fn apply(&self, store: &Store, t: &Target, act: Act) -> Result<Written, ActionError> {
        match act {
            Act::SetHigh(b) => {
                self.journaled(store, t.subject, self.high_file(t)?, &b.0.to_string())
            }
            Act::RestoreHigh => self.restore(store, self.high_file(t)?),
            Act::Freeze => self.journaled(
                store,
                t.subject,
                self.unified_file(t, "cgroup.freeze")?,
                "1",
            ),
            Act::Thaw => self.restore(store, self.unified_file(t, "cgroup.freeze")?),
            Act::Kill => self.kill(t),
        }
    }

    /// `cgroup.kill` (Linux 5.14+) kills every task of the group at once, frozen or not.
    fn kill(&self, t: &Target) -> Result<Written, ActionError> {
        let file = self.unified_file(t, "cgroup.kill")?;
        let start = Instant::now();
        if !self.dry_run {
            write(&file, "1")?;
        }
        Ok(Written {
            file,
            before: String::new(),
            after: "1".to_string(),
            took: start.elapsed(),
        })
    }

    /// Restores everything in the journal: at start-up (after a crash), at exit and by
    /// `guardian restore`; each restore is recorded as an action. Files whose cgroup is gone
    /// are dropped from the journal; nothing is left to restore there.
    pub fn restore_all(
        &self,
        store: &Store,
        trigger: &str,
    ) -> Result<Vec<ActionRecord>, StoreError> {
        self.restore_where(store, trigger, |_| true)
    }

    /// Restores what guardian holds changed for one subject: a group whose budget a reload
    /// removed.
    pub fn restore_subject(
        &self,
        store: &Store,
        subject: &str,
        trigger: &str,
    ) -> Result<Vec<ActionRecord>, StoreError> {
        self.restore_where(store, trigger, |e| e.subject == subject)
    }

    fn restore_where(
        &self,
        store: &Store,
        trigger: &str,
        wanted: impl Fn(&crate::model::JournalEntry) -> bool,
    ) -> Result<Vec<ActionRecord>, StoreError> {
        let mut done = Vec::new();
        for entry in store.journal()?.into_iter().filter(|e| wanted(e)) {
            let file = PathBuf::from(&entry.file);
            let action = match file.file_name().and_then(|n| n.to_str()) {
                Some("cgroup.freeze") => Act::Thaw,
                _ => Act::RestoreHigh,
            };
            match self.restore(store, file) {
                Ok(w) => {
                    info!(file = %entry.file, value = %w.after, subject = %entry.subject, trigger = %trigger, "restored");
                    let record = ActionRecord {
                        at_ms: now_ms(),
                        subject: entry.subject.clone(),
                        name: entry.subject.clone(),
                        action: action.name().to_string(),
                        file: entry.file.clone(),
                        before: w.before,
                        after: w.after,
                        step: None,
                        reason: format!("guardian {trigger}: put back what it changed"),
                        trigger: trigger.to_string(),
                        reaction_us: None,
                        write_us: Some(w.took.as_micros() as u64),
                        dry_run: self.dry_run,
                    };
                    // The value is back either way; a record that fails to save is only logged.
                    if let Err(e) = store.record_action(&record) {
                        warn!(file = %entry.file, "restored, but not recorded: {e}");
                    }
                    done.push(record);
                }
                Err(ActionError::Cgroup(CgroupError::Gone { .. })) => {
                    store.journal_remove(&entry.file)?;
                }
                Err(e) => warn!(file = %entry.file, "could not restore, kept in the journal: {e}"),
            }
        }
        Ok(done)
    }

    /// Drops journal entries of `subject` whose cgroup is gone (the container exited).
    pub fn forget_gone(&self, store: &Store, subject: &str) -> Result<(), StoreError> {
        for entry in store.journal()? {
            if entry.subject == subject && !Path::new(&entry.file).exists() {
                store.journal_remove(&entry.file)?;
            }
        }
        Ok(())
    }
}

/// Cgroups that hold a value guardian writes: a `memory.high` other than `max` (v2) or
/// `cgroup.freeze` = 1 (the unified tree). When the journal of original values is lost (an
/// unreadable store), these are the groups guardian may have left changed — others set
/// memory.high too (systemd's MemoryHigh=, Kubernetes) — each with the command that resets it.
/// Walks at most 8 levels below the roots.
pub fn possibly_changed(hierarchy: &Hierarchy) -> Vec<String> {
    fn walk(dir: &Path, depth: usize, v2_memory: bool, out: &mut Vec<String>) {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        if v2_memory {
            if let Some(high) = read("memory.high").filter(|h| h.trim() != "max") {
                out.push(format!(
                    "memory.high {} of {}: reset with `echo max > {}`",
                    high.trim(),
                    dir.display(),
                    dir.join("memory.high").display()
                ));
            }
        }
        if read("cgroup.freeze").is_some_and(|f| f.trim() == "1") {
            out.push(format!(
                "{} is frozen: thaw with `echo 0 > {}`",
                dir.display(),
                dir.join("cgroup.freeze").display()
            ));
        }
        if depth == 0 {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), depth - 1, v2_memory, out);
            }
        }
    }
    let mut out = Vec::new();
    if let Some(unified) = &hierarchy.unified {
        walk(unified, 8, hierarchy.memory_is_v2(), &mut out);
    }
    out
}
