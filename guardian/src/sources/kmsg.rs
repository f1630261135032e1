//! The kernel log (`/dev/kmsg`): the OOM killer's own "Killed process N (comm)" line, which says
//! whether a memory cgroup hit its limit ("Memory cgroup out of memory") or the host ran out
//! ("Out of memory").

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom},
    os::unix::fs::OpenOptionsExt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::mpsc,
};
use tracing::{debug, warn};

use crate::model::{KillLine, LoggedKill, OomKind};

/// The message of one kmsg record (`prio,seq,usec,flags;text`, continuation lines dropped) or
/// of a plain dmesg line.
fn record_text(record: &str) -> Option<&str> {
    Some(
        record
            .split_once(';')
            .map_or(record, |(_, t)| t)
            .lines()
            .next()?
            .trim(),
    )
}

/// Parses one kmsg record or plain dmesg line; `None` unless it is the OOM killer's kill line.
pub fn parse_kill_line(record: &str) -> Option<KillLine> {
    let text = record_text(record)?;
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

/// Parses one OOM summary record; `None` for any other line.
pub fn parse_summary_line(record: &str) -> Option<LoggedKill> {
    let usec = record
        .split_once(';')
        .and_then(|(header, _)| header.split(',').nth(2)?.parse().ok());
    let text = record_text(record)?;
    let fields = &text[text.find("oom-kill:")? + "oom-kill:".len()..];
    let field = |key: &str| {
        fields
            .split(',')
            .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
    };
    let kind = match field("constraint")? {
        "CONSTRAINT_MEMCG" => OomKind::Cgroup,
        _ => OomKind::Global,
    };
    Some(LoggedKill {
        task_memcg: field("task_memcg")?.to_string(),
        usec,
        line: KillLine {
            pid: field("pid")?.parse().ok()?,
            comm: field("task")?.to_string(),
            kind,
            text: text.to_string(),
        },
    })
}

/// The kills still in the kernel's log buffer that name their task's memory cgroup, oldest
/// first; empty without /dev/kmsg. Reads the buffer once, without waiting for new records.
pub fn logged_kills() -> Vec<LoggedKill> {
    let Ok(mut file) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/kmsg")
    else {
        return Vec::new();
    };
    let mut kills: Vec<LoggedKill> = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let record = String::from_utf8_lossy(&buf[..n]);
                if let Some(kill) = parse_summary_line(&record) {
                    kills.push(kill);
                } else if let Some(line) = parse_kill_line(&record) {
                    // The kill line follows its summary: it has the sizes.
                    if let Some(k) = kills
                        .iter_mut()
                        .rev()
                        .find(|k| k.line.pid == line.pid && k.line.text.contains("oom-kill:"))
                    {
                        k.line = line;
                    }
                }
            }
            // Records overwritten while we read: go on with the next one.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => break,
        }
    }
    kills
}

/// How often the kernel overwrote log records before the reader got to them: the ring buffer
/// wrapped while the reader was behind (a flood of messages, a slow consumer), so kill lines
/// logged in between may be missing. Shared between the reader and whoever reports it.
#[derive(Clone, Debug, Default)]
pub struct Wraps(Arc<AtomicU64>);

impl Wraps {
    /// The wraps seen so far.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts one wrap; true for the first, the one worth a warning.
    fn record(&self) -> bool {
        self.0.fetch_add(1, Ordering::Relaxed) == 0
    }
}

/// Records read in one go before the reader hands its kill lines on and lets other tasks run:
/// a log written faster than it is read never keeps the reader from yielding.
const BATCH: usize = 256;

/// How a round of reads ended.
#[derive(Debug)]
enum Drained {
    /// Nothing more to read now: wait until the kernel says there is.
    Idle,
    /// [`BATCH`] records read and more may be there: read on after yielding.
    Batch,
    /// A read error other than a wrap: the log cannot be read any more.
    Failed(std::io::Error),
}

/// Reads the records available now, up to [`BATCH`], and collects the kill lines among them.
/// EPIPE means the ring wrapped past the reader: the kernel has already moved it on to the
/// oldest record it still holds, so the wrap is counted (and said once) and reading goes on.
fn drain(log: &mut impl Read, buf: &mut [u8], wraps: &Wraps, kills: &mut Vec<KillLine>) -> Drained {
    for _ in 0..BATCH {
        match log.read(buf) {
            // /dev/kmsg has no end; should a read ever say so, wait rather than spin or stop.
            Ok(0) => return Drained::Idle,
            Ok(n) => kills.extend(parse_kill_line(&String::from_utf8_lossy(&buf[..n]))),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Drained::Idle,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                if wraps.record() {
                    warn!(
                        wraps = 1,
                        "the kernel log wrapped before guardian read it: kill lines logged \
                         meanwhile are lost (post-mortems fall back to the cgroup's counters); \
                         reading on from the oldest record; later wraps are counted at debug level"
                    );
                } else {
                    debug!(wraps = wraps.count(), "the kernel log wrapped again");
                }
            }
            Err(e) => return Drained::Failed(e),
        }
    }
    Drained::Batch
}

/// Streams the kill lines the kernel logs from now on; the returned counter says how often the
/// log wrapped before they were read. Without /dev/kmsg (no permission, a container) it says so
/// once and sends nothing.
pub fn watch(tx: mpsc::Sender<KillLine>) -> Wraps {
    let wraps = Wraps::default();
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/kmsg")
        .and_then(|mut f| f.seek(SeekFrom::End(0)).map(|_| f));
    let file: File = match file {
        Ok(f) => f,
        Err(e) => {
            warn!("no kernel log (/dev/kmsg: {e}): OOM kinds come from the cgroup's counters only");
            return wraps;
        }
    };
    let fd = match crate::sources::owned_async_fd(file, Interest::READABLE) {
        Ok(fd) => fd,
        Err(e) => {
            warn!("no kernel log: {e}");
            return wraps;
        }
    };
    tokio::spawn(read_loop(fd, tx, wraps.clone()));
    wraps
}

async fn read_loop(fd: AsyncFd<File>, tx: mpsc::Sender<KillLine>, wraps: Wraps) {
    let mut buf = vec![0u8; 8192];
    loop {
        let mut guard = match fd.readable().await {
            Ok(guard) => guard,
            Err(e) => {
                warn!("waiting for /dev/kmsg: {e}: no more kill lines from the kernel log");
                return;
            }
        };
        // One record per read.
        loop {
            let mut kills = Vec::new();
            let drained = drain(&mut guard.get_inner(), &mut buf, &wraps, &mut kills);
            for line in kills {
                if tx.send(line).await.is_err() {
                    return;
                }
            }
            match drained {
                Drained::Idle => {
                    guard.clear_ready();
                    break;
                }
                Drained::Batch => tokio::task::yield_now().await,
                Drained::Failed(e) => {
                    warn!("reading /dev/kmsg: {e}: no more kill lines from the kernel log");
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

    #[test]
    fn summary_lines_name_the_killed_tasks_cgroup() {
        // As 6.18 writes it for a container of the test engine (ids shortened).
        let k = parse_summary_line("6,9001,9148938248,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=44eb,mems_allowed=0,oom_memcg=/ci/guardian-test-docker/44eb,task_memcg=/ci/guardian-test-docker/44eb,task=memload,pid=18489,uid=0").unwrap();
        assert_eq!(k.task_memcg, "/ci/guardian-test-docker/44eb");
        assert_eq!(k.usec, Some(9148938248));
        assert_eq!(
            (k.line.pid, k.line.comm.as_str(), k.line.kind),
            (18489, "memload", OomKind::Cgroup)
        );
        let global = parse_summary_line("[ 87.5] oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/system.slice/x.service,task=x,pid=874,uid=0").unwrap();
        assert_eq!(global.line.kind, OomKind::Global);
        assert_eq!(global.usec, None);
        assert!(parse_summary_line("Memory cgroup out of memory: Killed process 1 (x)").is_none());
    }

    /// A /dev/kmsg stand-in: one scripted result per read, then "nothing more" forever.
    struct Script(std::collections::VecDeque<std::io::Result<&'static str>>);

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.pop_front() {
                Some(Ok(record)) => {
                    buf[..record.len()].copy_from_slice(record.as_bytes());
                    Ok(record.len())
                }
                Some(Err(e)) => Err(e),
                None => Err(std::io::ErrorKind::WouldBlock.into()),
            }
        }
    }

    fn wrapped() -> std::io::Result<&'static str> {
        Err(std::io::Error::from_raw_os_error(libc::EPIPE))
    }

    const KILL_BEFORE: &str = "3,1234,36736387,-;Memory cgroup out of memory: Killed process 166 (memload) total-vm:100000kB";
    const KILL_AFTER: &str = "3,1900,46736387,-;Memory cgroup out of memory: Killed process 177 (memload) total-vm:100000kB";

    #[test]
    fn a_wrapped_log_is_counted_and_reading_goes_on_to_the_next_kill_line() {
        let wraps = Wraps::default();
        let mut log = Script(
            [
                Ok(KILL_BEFORE),
                wrapped(),
                Ok("6,1800,46736000,-;eth0: link up"),
                Ok(KILL_AFTER),
            ]
            .into(),
        );
        let mut kills = Vec::new();
        let drained = drain(&mut log, &mut [0; 8192], &wraps, &mut kills);
        assert!(matches!(drained, Drained::Idle), "{drained:?}");
        assert_eq!(kills.iter().map(|k| k.pid).collect::<Vec<_>>(), [166, 177]);
        assert_eq!(wraps.count(), 1);
    }

    #[test]
    fn only_the_first_wrap_is_worth_a_warning_and_every_one_is_counted() {
        let wraps = Wraps::default();
        let mut log = Script([wrapped(), Ok(KILL_AFTER), wrapped(), wrapped()].into());
        let mut kills = Vec::new();
        drain(&mut log, &mut [0; 8192], &wraps, &mut kills);
        assert_eq!(wraps.count(), 3);
        assert!(!wraps.record(), "a later wrap is counted, not warned about");
        assert!(Wraps::default().record(), "the first wrap is");
    }

    #[test]
    fn a_log_written_faster_than_it_is_read_yields_after_a_batch() {
        let mut log = Script(
            std::iter::repeat_with(|| Ok(KILL_AFTER))
                .take(BATCH * 3)
                .collect(),
        );
        let mut kills = Vec::new();
        let drained = drain(&mut log, &mut [0; 8192], &Wraps::default(), &mut kills);
        assert!(matches!(drained, Drained::Batch), "{drained:?}");
        assert_eq!(kills.len(), BATCH, "the batch's kill lines are handed on");
    }

    #[test]
    fn an_empty_read_waits_for_the_kernel_instead_of_spinning_or_stopping() {
        let mut log = Script([Ok("")].into());
        let drained = drain(&mut log, &mut [0; 8192], &Wraps::default(), &mut Vec::new());
        assert!(matches!(drained, Drained::Idle), "{drained:?}");
        let mut log = Script([Err(std::io::ErrorKind::Interrupted.into()), Ok(KILL_AFTER)].into());
        let mut kills = Vec::new();
        drain(&mut log, &mut [0; 8192], &Wraps::default(), &mut kills);
        assert_eq!(kills.len(), 1, "an interrupted read is retried");
    }

    #[test]
    fn other_read_errors_end_the_round_with_the_error() {
        let mut log = Script([Err(std::io::Error::from_raw_os_error(libc::EIO))].into());
        let drained = drain(&mut log, &mut [0; 8192], &Wraps::default(), &mut Vec::new());
        assert!(
            matches!(&drained, Drained::Failed(e) if e.raw_os_error() == Some(libc::EIO)),
            "{drained:?}"
        );
    }
}
