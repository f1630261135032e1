//! The only writes guardian makes to cgroups: `memory.high` (v2) and `cgroup.freeze` (v2 and the
//! unified tree of hybrid hosts). Each returns the value it replaced, so the caller can restore it.

use std::path::{Path, PathBuf};

use crate::{
    model::Bytes,
    sources::cgroup::{CgroupError, Hierarchy, Mode},
};

/// Why a write could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("memory.high needs the memory controller on cgroup v2; this host is {0}, so guardian only observes here")]
    NoMemoryHigh(Mode),
    #[error("cgroup.freeze needs a cgroup v2 (unified) tree, and this host has none")]
    NoUnifiedTree,
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

fn read_trimmed(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| CgroupError::read(path, e))
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Sets `memory.high` of the v2 group at `rel` (`None` = "max", no throttling); returns the
/// previous value.
pub fn set_memory_high(
    hierarchy: &Hierarchy,
    rel: &Path,
    high: Option<Bytes>,
) -> Result<Option<Bytes>, ActionError> {
    if !hierarchy.memory_is_v2() {
        return Err(ActionError::NoMemoryHigh(hierarchy.mode));
    }
    let file: PathBuf = hierarchy.memory_dir(rel).join("memory.high");
    let previous = match read_trimmed(&file)?.as_str() {
        "max" => None,
        n => Some(Bytes(n.parse().map_err(|_| CgroupError::Parse {
            path: file.clone(),
            content: n.to_string(),
        })?)),
    };
    write(
        &file,
        &high.map_or_else(|| "max".to_string(), |b| b.0.to_string()),
    )?;
    Ok(previous)
}

/// Freezes (`true`) or thaws the unified-tree group at `rel`; returns whether it was frozen.
pub fn set_frozen(hierarchy: &Hierarchy, rel: &Path, frozen: bool) -> Result<bool, ActionError> {
    let dir = hierarchy
        .unified_dir(rel)
        .ok_or(ActionError::NoUnifiedTree)?;
    let file = dir.join("cgroup.freeze");
    let previous = read_trimmed(&file)? == "1";
    write(&file, if frozen { "1" } else { "0" })?;
    Ok(previous)
}
