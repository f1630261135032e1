//! The kernel log (`/dev/kmsg`): the OOM killer's own "Killed process N (comm)" line, which says
//! whether a memory cgroup hit its limit ("Memory cgroup out of memory") or the host ran out
//! ("Out of memory").

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom},
    os::unix::fs::OpenOptionsExt,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::mpsc,
};
use tracing::warn;

/// Which OOM killer acted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OomKind {
    /// A memory cgroup reached its own limit.
    Cgroup,
    /// The host ran out of memory.
    Global,
}

/// One "Killed process" line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillLine {
    pub pid: u32,
    pub comm: String,
    pub kind: OomKind,
    /// The line as the kernel wrote it.
    pub text: String,
}

/// Parses one kmsg record (`prio,seq,usec,flags;text`) or a plain dmesg line; `None` unless it
/// is the OOM killer's kill line.
pub fn parse_kill_line(record: &str) -> Option<KillLine> {
    let text = record
        .split_once(';')
        .map_or(record, |(_, t)| t)
        .lines()
        .next()?
        .trim();
    let (kind, rest) = if let Some(i) = text.find("Memory cgroup out of memory: Killed process ") {
        (
            OomKind::Cgroup,
            &text[i + "Memory cgroup out of memory: Killed process ".len()..],
        )
    } else if let Some(i) = text.find("Out of memory: Killed process ") {
        (
            OomKind::Global,
            &text[i + "Out of memory: Killed process ".len()..],
        )
    } else {
        return None;
    };
    let (pid, rest) = rest.split_once(' ')?;
    let comm = rest.strip_prefix('(')?.split_once(')')?.0;
    Some(KillLine {
        pid: pid.parse().ok()?,
        comm: comm.to_string(),
        kind,
        text: text.to_string(),
    })
}

/// Streams the kill lines the kernel logs from now on. Without /dev/kmsg (no permission, a
/// container) it says so once and sends nothing.
pub fn watch(tx: mpsc::Sender<KillLine>) {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/kmsg")
        .and_then(|mut f| f.seek(SeekFrom::End(0)).map(|_| f));
    let file: File = match file {
        Ok(f) => f,
        Err(e) => {
            warn!("no kernel log (/dev/kmsg: {e}): OOM kinds come from the cgroup's counters only");
            return;
        }
    };
    let fd = match crate::sources::owned_async_fd(file, Interest::READABLE) {
        Ok(fd) => fd,
        Err(e) => {
            warn!("no kernel log: {e}");
            return;
        }
    };
    tokio::spawn(read_loop(fd, tx));
}

async fn read_loop(fd: AsyncFd<File>, tx: mpsc::Sender<KillLine>) {
    let mut buf = vec![0u8; 8192];
    loop {
        let Ok(mut guard) = fd.readable().await else {
            return;
        };
        // One record per read; EPIPE means records were overwritten before we read them.
        loop {
            match guard.get_inner().read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if let Some(line) = parse_kill_line(&String::from_utf8_lossy(&buf[..n])) {
                        if tx.send(line).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(e) => {
                    warn!("reading /dev/kmsg: {e}");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memcg_and_global_kill_lines_parse() {
        let memcg = parse_kill_line("3,1234,36736387,-;Memory cgroup out of memory: Killed process 166 (memload) total-vm:100000kB, anon-rss:97812kB, file-rss:4kB, shmem-rss:1100kB, UID:0 pgtables:232kB oom_score_adj:0").unwrap();
        assert_eq!(
            (memcg.pid, memcg.comm.as_str(), memcg.kind),
            (166, "memload", OomKind::Cgroup)
        );
        let global = parse_kill_line(
            "[   87.537230] Out of memory: Killed process 874 (my app) total-vm:698600kB",
        )
        .unwrap();
        assert_eq!(
            (global.pid, global.comm.as_str(), global.kind),
            (874, "my app", OomKind::Global)
        );
        assert!(parse_kill_line("6,1,2,-;memload invoked oom-killer: gfp_mask=0xcc0").is_none());
    }
}
