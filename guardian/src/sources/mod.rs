//! Where facts come from: the kernel through eBPF and tracefs, the cgroup filesystems, Docker, and a fleet's Prometheus.

pub mod cgroup;
pub mod compose;
pub mod docker;
pub mod ebpf;
pub mod host;
pub mod kmsg;
pub mod oom;
pub mod profiles;
pub mod prometheus;
pub mod tracefs;

use std::os::fd::AsRawFd;

use tokio::io::{unix::AsyncFd, Interest};

/// Registers an fd-owning value with tokio's reactor.
///
/// Only for types that own their descriptor for their whole life (`File`, `EventFd`, nix's
/// `Inotify`, aya's `RingBuf`), which is what tokio's safety contract asks for.
pub(crate) fn owned_async_fd<T: AsRawFd>(
    inner: T,
    interest: Interest,
) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: every caller passes a value that owns its fd and never swaps or closes it while
    // the AsyncFd lives (see the list above).
    unsafe { AsyncFd::register_with_interest(inner, interest) }.map_err(std::io::Error::from)
}
