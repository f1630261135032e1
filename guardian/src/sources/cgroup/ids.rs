//! Naming cgroups: a process's groups from /proc, and a v2 cgroup id back to its directories.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{join_relative, CgroupError, Hierarchy};
use crate::model::{CgroupId, CgroupRef};

/// A process's cgroups, as `/proc/<pid>/cgroup` lists them (paths relative to each root).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcCgroups {
    /// The `0::` line: the unified (v2) group.
    pub unified: Option<PathBuf>,
    /// The v1 hierarchy that has the `memory` controller.
    pub memory_v1: Option<PathBuf>,
}

impl ProcCgroups {
    /// Parses the text of `/proc/<pid>/cgroup`.
    pub fn parse(text: &str) -> Self {
        let mut out = ProcCgroups::default();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if id == "0" && controllers.is_empty() {
                out.unified = Some(PathBuf::from(path));
            } else if controllers.split(',').any(|c| c == "memory") {
                out.memory_v1 = Some(PathBuf::from(path));
            }
        }
        out
    }

    /// This process's memory cgroup relative to the memory root, whichever version holds it.
    pub fn memory(&self, hierarchy: &Hierarchy) -> Option<&Path> {
        if hierarchy.memory_is_v2() {
            self.unified.as_deref()
        } else {
            self.memory_v1.as_deref()
        }
    }
}

/// The cgroups of process `pid`; `Gone` if it has exited.
pub fn pid_cgroups(pid: u32) -> Result<ProcCgroups, CgroupError> {
    read_proc_cgroups(&PathBuf::from(format!("/proc/{pid}/cgroup")))
}

fn read_proc_cgroups(path: &Path) -> Result<ProcCgroups, CgroupError> {
    std::fs::read_to_string(path)
        .map(|t| ProcCgroups::parse(&t))
        .map_err(|e| CgroupError::read(path, e))
}

/// Maps v2 cgroup ids to paths by walking the unified tree, caching what it found.
///
/// A miss triggers a new walk, at most once per `rescan_interval`, so a burst of events for a
/// group that has already vanished costs one walk, not one per event.
pub struct CgroupIndex {
    hierarchy: Hierarchy,
    paths: HashMap<CgroupId, PathBuf>,
    /// v1 memory paths found through a member process, kept for when the group has emptied.
    memory_paths: HashMap<CgroupId, PathBuf>,
    last_scan: Option<Instant>,
    rescan_interval: Duration,
}

impl CgroupIndex {
    /// An empty index over `hierarchy`'s unified tree; the first lookup walks it.
    pub fn new(hierarchy: Hierarchy) -> Self {
        Self {
            hierarchy,
            paths: HashMap::new(),
            memory_paths: HashMap::new(),
            last_scan: None,
            rescan_interval: Duration::from_millis(100),
        }
    }

    /// The hierarchy this index walks.
    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// The unified-tree path of `id`, relative to the root.
    pub fn path_of(&mut self, id: CgroupId) -> Option<PathBuf> {
        if let Some(p) = self.paths.get(&id) {
            return Some(p.clone());
        }
        let due = self
            .last_scan
            .is_none_or(|t| t.elapsed() >= self.rescan_interval);
        if due {
            self.rescan();
        }
        self.paths.get(&id).cloned()
    }

    /// Names `id` in every hierarchy: its unified path and, on v1/hybrid hosts, the memory
    /// cgroup of a process inside it (or the same relative path where that exists).
    pub fn resolve(&mut self, id: CgroupId) -> CgroupRef {
        let path = self.path_of(id);
        let memory_path = match (&path, self.hierarchy.memory_is_v2()) {
            (Some(p), true) => Some(p.clone()),
            (Some(p), false) => {
                // Pairing can walk the memory tree: do it once per group.
                let cached = self
                    .memory_paths
                    .get(&id)
                    .filter(|m| self.hierarchy.memory_dir(m).is_dir());
                match cached {
                    Some(m) => Some(m.clone()),
                    None => {
                        let found = self.v1_memory_path(p);
                        if let Some(m) = &found {
                            self.memory_paths.insert(id, m.clone());
                        }
                        found
                    }
                }
            }
            (None, _) => self.memory_paths.get(&id).cloned(),
        };
        CgroupRef {
            id,
            path,
            memory_path,
        }
    }

    /// The v1 memory cgroup that pairs with a unified-tree group: the one a member process is
    /// in; else the same relative path (how Docker and systemd lay out hybrid hosts); else the
    /// one memory directory whose path ends with the unified path (hosts where the two trees
    /// place the same groups under different ancestors, as a nested test runner does).
    fn v1_memory_path(&self, unified_rel: &Path) -> Option<PathBuf> {
        let dir = self.hierarchy.unified_dir(unified_rel)?;
        let suffix = unified_rel.strip_prefix("/").unwrap_or(unified_rel);
        let from_member = std::fs::read_to_string(dir.join("cgroup.procs"))
            .ok()
            .and_then(|procs| {
                procs
                    .lines()
                    .filter_map(|l| l.trim().parse::<u32>().ok())
                    .find_map(|pid| pid_cgroups(pid).ok()?.memory_v1)
            });
        // An exiting task has already left its v1 groups (it shows the root there) while the
        // unified tree still lists it: below the root, only a non-root answer is trusted.
        match from_member {
            Some(m) if m != Path::new("/") || suffix.as_os_str().is_empty() => return Some(m),
            _ => {}
        }
        if suffix.as_os_str().is_empty() {
            return None;
        }
        if join_relative(&self.hierarchy.memory, unified_rel).is_dir() {
            return Some(unified_rel.to_path_buf());
        }
        let root = &self.hierarchy.memory;
        let mut matches = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            if d.ends_with(suffix) {
                matches.push(Path::new("/").join(d.strip_prefix(root).ok()?));
            }
            for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
        (matches.len() == 1).then(|| matches.remove(0))
    }

    /// The v2 id of a unified-tree directory given relative to the root.
    pub fn id_of(&self, unified_rel: &Path) -> Result<CgroupId, CgroupError> {
        let dir = self
            .hierarchy
            .unified_dir(unified_rel)
            .ok_or(CgroupError::NoMemoryController)?;
        std::fs::metadata(&dir)
            .map(|m| CgroupId(m.ino()))
            .map_err(|e| CgroupError::read(&dir, e))
    }

    fn rescan(&mut self) {
        self.last_scan = Some(Instant::now());
        let Some(root) = self.hierarchy.unified.clone() else {
            return;
        };
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            let rel = Path::new("/").join(dir.strip_prefix(&root).unwrap_or(Path::new("")));
            self.paths.insert(CgroupId(meta.ino()), rel);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(entry.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_PROC_CGROUP: &str = include_str!("fixtures/proc-self-cgroup-hybrid");

    #[test]
    fn hybrid_proc_cgroup_has_v1_memory_and_unified_lines() {
        let c = ProcCgroups::parse(HYBRID_PROC_CGROUP);
        assert_eq!(c.unified.as_deref(), Some(Path::new("/")));
        assert_eq!(
            c.memory_v1.as_deref(),
            Some(Path::new("/process_api/23532cbd1b182470ddb14a4a1992cb9c"))
        );
    }

    #[test]
    fn pure_v2_proc_cgroup_has_only_the_unified_line() {
        let c = ProcCgroups::parse(include_str!("fixtures/proc-self-cgroup-v2"));
        assert_eq!(c.unified.as_deref(), Some(Path::new("/t")));
        assert_eq!(c.memory_v1, None);
    }
}
