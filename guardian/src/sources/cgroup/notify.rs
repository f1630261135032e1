//! Kernel notifications about a cgroup without polling: the v1 OOM eventfd and inotify on
//! cgroup files such as v2 `memory.events` (the kernel calls fsnotify when their counters move).

use std::{
    fs::File,
    os::fd::{AsFd, AsRawFd, RawFd},
    path::{Path, PathBuf},
};

use nix::sys::{
    eventfd::{EfdFlags, EventFd},
    inotify::{AddWatchFlags, InitFlags, Inotify},
};
use tokio::io::{unix::AsyncFd, Interest};

use super::CgroupError;

fn io_err(path: &Path, errno: nix::errno::Errno) -> CgroupError {
    CgroupError::read(path, std::io::Error::from(errno))
}

/// The v1 memory controller's OOM notification: an eventfd registered through
/// `cgroup.event_control` that the kernel signals whenever the group hits OOM.
pub struct V1OomNotifier {
    dir: PathBuf,
    efd: AsyncFd<EventFd>,
    // Held open: the registration lives as long as this file and the eventfd.
    _oom_control: File,
}

impl V1OomNotifier {
    /// Registers for OOM notifications of the v1 memory cgroup at `dir` (absolute).
    pub fn arm(dir: &Path) -> Result<Self, CgroupError> {
        let control_path = dir.join("memory.oom_control");
        let oom_control =
            File::open(&control_path).map_err(|e| CgroupError::read(&control_path, e))?;
        let efd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
            .map_err(|e| io_err(dir, e))?;
        let event_control = dir.join("cgroup.event_control");
        let registration = format!("{} {}", efd.as_raw_fd(), oom_control.as_raw_fd());
        std::fs::write(&event_control, registration).map_err(|source| CgroupError::Write {
            path: event_control.clone(),
            source,
        })?;
        let efd = crate::sources::owned_async_fd(efd, Interest::READABLE).map_err(|source| {
            CgroupError::Read {
                path: dir.to_path_buf(),
                source,
            }
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            efd,
            _oom_control: oom_control,
        })
    }

    /// The memory cgroup directory being watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits for the next OOM in the group; returns how many the kernel signalled since the last
    /// call. `Gone` when the group was removed (the kernel signals that too).
    pub async fn next(&self) -> Result<u64, CgroupError> {
        loop {
            let mut guard = self
                .efd
                .readable()
                .await
                .map_err(|source| CgroupError::Read {
                    path: self.dir.clone(),
                    source,
                })?;
            match guard.get_inner().read() {
                Ok(count) => {
                    if !self.dir.exists() {
                        return Err(CgroupError::Gone {
                            path: self.dir.clone(),
                        });
                    }
                    return Ok(count);
                }
                Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(e) => return Err(io_err(&self.dir, e)),
            }
        }
    }
}

/// inotify's fd for tokio (nix's `Inotify` has `AsFd` but tokio wants `AsRawFd`).
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Wakes up when a cgroup file changes (`memory.events`, `cgroup.events`).
pub struct FileWatch {
    path: PathBuf,
    inotify: AsyncFd<InotifyFd>,
}

impl FileWatch {
    /// Watches `path` for modification.
    pub fn new(path: &Path) -> Result<Self, CgroupError> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| io_err(path, e))?;
        inotify
            .add_watch(path, AddWatchFlags::IN_MODIFY)
            .map_err(|e| io_err(path, e))?;
        let inotify = crate::sources::owned_async_fd(InotifyFd(inotify), Interest::READABLE)
            .map_err(|source| CgroupError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            inotify,
        })
    }

    /// The file being watched.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits until the file changes. `Gone` when it was removed with its cgroup.
    pub async fn changed(&self) -> Result<(), CgroupError> {
        loop {
            let mut guard = self
                .inotify
                .readable()
                .await
                .map_err(|source| CgroupError::Read {
                    path: self.path.clone(),
                    source,
                })?;
            match guard.get_inner().0.read_events() {
                Ok(events) => {
                    if events
                        .iter()
                        .any(|e| e.mask.contains(AddWatchFlags::IN_IGNORED))
                    {
                        return Err(CgroupError::Gone {
                            path: self.path.clone(),
                        });
                    }
                    return Ok(());
                }
                Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(e) => return Err(io_err(&self.path, e)),
            }
        }
    }
}
