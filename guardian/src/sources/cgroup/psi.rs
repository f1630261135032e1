//! PSI triggers: ask the kernel to wake us when a group (or the host) stalls on memory longer
//! than a threshold within a window, instead of polling `memory.pressure`.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::io::{unix::AsyncFd, Interest};

use super::CgroupError;

/// Which PSI line the trigger watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsiKind {
    /// Some task stalled.
    Some,
    /// All non-idle tasks stalled at once.
    Full,
}

/// Windows must be multiples of this for writers without CAP_SYS_RESOURCE.
const UNPRIVILEGED_WINDOW: Duration = Duration::from_secs(2);

/// An armed PSI trigger on one pressure file.
pub struct PsiTrigger {
    file: PathBuf,
    trigger: String,
    fd: AsyncFd<File>,
}

impl PsiTrigger {
    /// Arms `kind stall window` on `file` (a cgroup's `memory.pressure` or
    /// `/proc/pressure/memory`). If the kernel treats us as unprivileged and refuses the window,
    /// the window is rounded up to a multiple of 2 s and tried once more; [`Self::trigger`] says
    /// what was accepted.
    pub fn arm(
        file: &Path,
        kind: PsiKind,
        stall: Duration,
        window: Duration,
    ) -> Result<Self, CgroupError> {
        match Self::arm_exact(file, kind, stall, window) {
            Err(CgroupError::PsiRefused { source, .. })
                if source.raw_os_error() == Some(libc::EINVAL)
                    && !window
                        .as_micros()
                        .is_multiple_of(UNPRIVILEGED_WINDOW.as_micros()) =>
            {
                let rounded = UNPRIVILEGED_WINDOW
                    * window.as_micros().div_ceil(UNPRIVILEGED_WINDOW.as_micros()) as u32;
                Self::arm_exact(file, kind, stall, rounded)
            }
            other => other,
        }
    }

    fn arm_exact(
        file: &Path,
        kind: PsiKind,
        stall: Duration,
        window: Duration,
    ) -> Result<Self, CgroupError> {
        let trigger = format!(
            "{} {} {}",
            match kind {
                PsiKind::Some => "some",
                PsiKind::Full => "full",
            },
            stall.as_micros(),
            window.as_micros()
        );
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(file)
            .map_err(|e| CgroupError::read(file, e))?;
        // The kernel overwrites the last byte of the buffer with NUL; send the NUL ourselves so
        // it does not eat a digit.
        let mut buf = trigger.clone().into_bytes();
        buf.push(0);
        f.write_all(&buf)
            .map_err(|source| CgroupError::PsiRefused {
                path: file.to_path_buf(),
                trigger: trigger.clone(),
                source,
            })?;
        let fd = crate::sources::owned_async_fd(f, Interest::PRIORITY).map_err(|source| {
            CgroupError::Read {
                path: file.to_path_buf(),
                source,
            }
        })?;
        Ok(Self {
            file: file.to_path_buf(),
            trigger,
            fd,
        })
    }

    /// The pressure file this trigger is armed on.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The trigger as the kernel accepted it, e.g. `some 150000 2000000`.
    pub fn trigger(&self) -> &str {
        &self.trigger
    }

    /// Waits until the trigger fires. `Gone` when the cgroup was removed.
    pub async fn fired(&self) -> Result<(), CgroupError> {
        let mut guard =
            self.fd
                .ready(Interest::PRIORITY)
                .await
                .map_err(|source| CgroupError::Read {
                    path: self.file.clone(),
                    source,
                })?;
        let ready = guard.ready();
        guard.clear_ready();
        if ready.is_error() || !self.file.exists() {
            return Err(CgroupError::Gone {
                path: self.file.clone(),
            });
        }
        Ok(())
    }
}

impl std::fmt::Debug for PsiTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PsiTrigger")
            .field("file", &self.file)
            .field("trigger", &self.trigger)
            .finish()
    }
}
