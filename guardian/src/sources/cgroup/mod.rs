//! The cgroup layer: where the memory controller lives on this host (v2, hybrid or v1), which
//! directories belong to a cgroup id or a process, what the kernel says about a group's memory,
//! and the kernel's own notifications (PSI triggers, v1 OOM eventfds, file-change watches).

mod files;
mod ids;
mod notify;
mod psi;

pub use files::{
    parse_kv, parse_pressure, read_high_water, read_memory, read_memory_stat, read_usage,
    stat_bytes, UsageCounters,
};
pub use ids::{pid_cgroups, CgroupIndex, ProcCgroups};
pub use notify::{FileWatch, V1OomNotifier};
pub use psi::{PsiKind, PsiTrigger};

use std::{
    io,
    path::{Path, PathBuf},
};

use serde::Serialize;

/// Errors of the cgroup layer; each names the file or directory involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no memory cgroup controller is mounted (neither cgroup v2 with `memory` nor a v1 `memory` hierarchy); mount one or boot with cgroups enabled")]
    NoMemoryController,
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path}: unexpected content {content:?}")]
    Parse { path: PathBuf, content: String },
    #[error("cgroup {path} is gone")]
    Gone { path: PathBuf },
    #[error("{path}: the kernel refused the PSI trigger {trigger:?}: {source}")]
    PsiRefused {
        path: PathBuf,
        trigger: String,
        source: io::Error,
    },
}

impl CgroupError {
    /// A failed write: `Gone` when the cgroup no longer exists.
    pub(crate) fn write(path: &Path, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::NotFound {
            CgroupError::Gone {
                path: path.to_path_buf(),
            }
        } else {
            CgroupError::Write {
                path: path.to_path_buf(),
                source,
            }
        }
    }

    /// A failed read: `Gone` when the cgroup no longer exists.
    pub(crate) fn read(path: &Path, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::NotFound {
            CgroupError::Gone {
                path: path.to_path_buf(),
            }
        } else {
            CgroupError::Read {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// How cgroups are mounted on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Only cgroup v2; the memory controller is enabled there.
    V2,
    /// The memory controller on a v1 hierarchy, plus a v2 (unified) tree without it.
    Hybrid,
    /// Only v1 hierarchies.
    V1,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::V2 => "cgroup v2",
            Mode::Hybrid => "hybrid (memory on v1, unified v2 tree)",
            Mode::V1 => "cgroup v1",
        })
    }
}

/// The mounted cgroup hierarchies that matter to guardian.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hierarchy {
    pub mode: Mode,
    /// Mount point of the cgroup2 tree (`/sys/fs/cgroup` or `/sys/fs/cgroup/unified`).
    pub unified: Option<PathBuf>,
    /// Root of the memory controller: the cgroup2 mount in v2 mode, else the v1 `memory` mount.
    pub memory: PathBuf,
}

impl Hierarchy {
    /// Reads `/proc/self/mountinfo` and the cgroup2 root's `cgroup.controllers`.
    pub fn detect() -> Result<Self, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(path).map_err(|e| CgroupError::read(path, e))?;
        Self::from_mountinfo(&text, |root| {
            std::fs::read_to_string(root.join("cgroup.controllers"))
                .map(|c| c.split_whitespace().any(|c| c == "memory"))
                .unwrap_or(false)
        })
    }

    /// Decides the mode from mountinfo text; `v2_has_memory` says whether a cgroup2 mount point
    /// has the memory controller.
    pub fn from_mountinfo(
        mountinfo: &str,
        v2_has_memory: impl Fn(&Path) -> bool,
    ) -> Result<Self, CgroupError> {
        let mut unified = None;
        let mut memory_v1 = None;
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount_point) = left.split_whitespace().nth(4) else {
                continue;
            };
            let mut right = right.split_whitespace();
            let (Some(fstype), _source, Some(super_opts)) =
                (right.next(), right.next(), right.next())
            else {
                continue;
            };
            let mount_point = PathBuf::from(unescape_mountinfo(mount_point));
            match fstype {
                "cgroup2" if unified.is_none() => unified = Some(mount_point),
                "cgroup" if super_opts.split(',').any(|o| o == "memory") => {
                    memory_v1 = Some(mount_point)
                }
                _ => {}
            }
        }
        match (unified, memory_v1) {
            (Some(u), None) if v2_has_memory(&u) => Ok(Hierarchy {
                mode: Mode::V2,
                memory: u.clone(),
                unified: Some(u),
            }),
            (Some(u), Some(m)) => Ok(Hierarchy {
                mode: Mode::Hybrid,
                unified: Some(u),
                memory: m,
            }),
            (None, Some(m)) => Ok(Hierarchy {
                mode: Mode::V1,
                unified: None,
                memory: m,
            }),
            _ => Err(CgroupError::NoMemoryController),
        }
    }

    /// Whether memory files follow the v2 interface (`memory.current`, `memory.high`, ...).
    pub fn memory_is_v2(&self) -> bool {
        self.mode == Mode::V2
    }

    /// The absolute directory of a memory cgroup given its path relative to the memory root.
    pub fn memory_dir(&self, relative: &Path) -> PathBuf {
        join_relative(&self.memory, relative)
    }

    /// The absolute directory of a unified-tree cgroup given its relative path.
    pub fn unified_dir(&self, relative: &Path) -> Option<PathBuf> {
        self.unified.as_deref().map(|u| join_relative(u, relative))
    }

    /// Where peaks come from on this kernel: the kernel's own high-water mark (v1
    /// `memory.max_usage_in_bytes`; v2 `memory.peak`, which kernels before 5.19 lack), or, without
    /// one, the highest of the daemon's samples of `memory.current`.
    pub fn peak_source(&self) -> PeakSource {
        if !self.memory_is_v2() {
            return PeakSource::HighWaterMark("memory.max_usage_in_bytes");
        }
        // The root group has no memory.peak on any kernel: look at a child.
        let child = std::fs::read_dir(&self.memory).ok().and_then(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .find(|p| p.join("memory.current").exists())
        });
        match child {
            Some(dir) if !dir.join("memory.peak").exists() => PeakSource::Sampled,
            _ => PeakSource::HighWaterMark("memory.peak"),
        }
    }
}

/// How exact a recorded peak is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeakSource {
    /// The kernel's high-water mark, in this file: exact, spikes between samples included.
    HighWaterMark(&'static str),
    /// No high-water mark (cgroup v2 before kernel 5.19): the highest sample of memory.current,
    /// so a spike shorter than the sampling interval can be missed.
    Sampled,
}

/// `root` + a cgroup path such as `/docker/abc` (leading slash ignored).
pub(crate) fn join_relative(root: &Path, relative: &Path) -> PathBuf {
    root.join(relative.strip_prefix("/").unwrap_or(relative))
}

/// mountinfo escapes space, tab, newline and backslash as octal `\NNN`.
fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let digits: String = chars.clone().take(3).collect();
            if let Ok(code) = u8::from_str_radix(&digits, 8) {
                out.push(code as char);
                chars.nth(2);
                continue;
            }
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = include_str!("fixtures/mountinfo-hybrid");
    const V2: &str = include_str!("fixtures/mountinfo-v2");

    #[test]
    fn hybrid_host_has_memory_on_v1_and_a_unified_tree() {
        let h = Hierarchy::from_mountinfo(HYBRID, |_| false).unwrap();
        assert_eq!(h.mode, Mode::Hybrid);
        assert_eq!(h.memory, Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(
            h.unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        assert!(!h.memory_is_v2());
    }

    #[test]
    fn pure_v2_host_uses_the_cgroup2_mount_for_memory() {
        let h = Hierarchy::from_mountinfo(V2, |p| p == Path::new("/sys/fs/cgroup")).unwrap();
        assert_eq!(h.mode, Mode::V2);
        assert_eq!(h.memory, Path::new("/sys/fs/cgroup"));
        assert!(h.memory_is_v2());
    }

    #[test]
    fn v2_without_memory_controller_and_no_v1_is_an_error() {
        let err = Hierarchy::from_mountinfo(V2, |_| false).unwrap_err();
        assert!(matches!(err, CgroupError::NoMemoryController));
    }

    #[test]
    fn v1_only_host() {
        let v1_only: String = HYBRID
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .collect::<Vec<_>>()
            .join("\n");
        let h = Hierarchy::from_mountinfo(&v1_only, |_| true).unwrap();
        assert_eq!(h.mode, Mode::V1);
        assert_eq!(h.unified, None);
    }

    #[test]
    fn relative_paths_join_under_the_root() {
        let h = Hierarchy::from_mountinfo(HYBRID, |_| false).unwrap();
        assert_eq!(
            h.memory_dir(Path::new("/docker/abc")),
            Path::new("/sys/fs/cgroup/memory/docker/abc")
        );
        assert_eq!(
            h.unified_dir(Path::new("/")).unwrap(),
            Path::new("/sys/fs/cgroup/unified")
        );
    }

    #[test]
    fn mountinfo_octal_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/mnt/with\040space"), "/mnt/with space");
    }
}
