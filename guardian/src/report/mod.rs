//! What guardian writes for people and tools: incident and episode reports, compose overrides.

pub mod episode;
pub mod incident;
pub mod profile;
pub mod table;

use std::path::Path;

/// Writes `bytes` to `path` atomically: a temporary `.<name>.<pid>.tmp` in the same directory
/// (created if missing), synced, then renamed over `path`, so a reader sees the old file or the
/// new one, never half of it. A crash can leave the temporary file; its name ends in `.tmp`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}
