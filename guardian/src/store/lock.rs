//! The state directory's lock: one daemon per store. An exclusive `flock` on `guardian.lock`
//! held for the daemon's life says a daemon is alive; the kernel drops it when the process
//! dies however it dies, so unlike a pid file it cannot be left stale or name a reused pid.
//! The file holds the holder's pid only to name it in errors.

use std::{
    fs::{File, OpenOptions},
    io::{Read as _, Seek as _, Write as _},
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};

/// Errors taking the lock, in one line each.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the state directory {dir} is in use by a guardian daemon ({holder}); stop it, or pass another --state-dir")]
    Held { dir: PathBuf, holder: Holder },
    #[error("cannot lock {path}: {source}; run as root or pass --state-dir")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The process holding a state directory's lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Its pid, as it wrote it (unknown for the instant between locking and writing).
    pub pid: Option<u32>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "pid {pid}"),
            None => f.write_str("pid unknown"),
        }
    }
}

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct StateLock {
    _file: Flock<File>,
}

/// The lock file of `state_dir`.
pub fn lock_file(state_dir: &Path) -> PathBuf {
    state_dir.join("guardian.lock")
}

impl StateLock {
    /// Takes the lock of `state_dir` (which must exist) without waiting, and records our pid.
    pub fn acquire(state_dir: &Path) -> Result<Self, LockError> {
        let path = lock_file(state_dir);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                return Err(LockError::Held {
                    dir: state_dir.to_path_buf(),
                    holder: Holder {
                        pid: read_pid(&mut file),
                    },
                })
            }
            Err((_, errno)) => return Err(io(errno.into())),
        };
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(Self { _file: file })
    }
}

/// Who holds the lock of `state_dir`, if anyone; `None` too when there is no lock file (no
/// daemon ever ran there) or it cannot be read.
pub fn holder(state_dir: &Path) -> Option<Holder> {
    let file = File::open(lock_file(state_dir)).ok()?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_free) => None,
        Err((mut file, Errno::EWOULDBLOCK)) => Some(Holder {
            pid: read_pid(&mut file),
        }),
        Err(_) => None,
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_fails_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(holder(dir.path()), None);
        let first = StateLock::acquire(dir.path()).unwrap();
        let me = Some(std::process::id());
        assert_eq!(holder(dir.path()), Some(Holder { pid: me }));
        let e = StateLock::acquire(dir.path()).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert_eq!(text.lines().count(), 1);
        drop(first);
        assert_eq!(holder(dir.path()), None);
        StateLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn a_stale_pid_in_the_lock_file_is_not_a_holder() {
        let dir = tempfile::tempdir().unwrap();
        // pid 1 is alive, but nothing holds the lock: no daemon.
        std::fs::write(lock_file(dir.path()), "1\n").unwrap();
        assert_eq!(holder(dir.path()), None);
    }
}
