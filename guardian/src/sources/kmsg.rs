//! The kernel log (`/dev/kmsg`): the OOM killer's own "Killed process N (comm)" line, which says
//! whether a memory cgroup hit its limit ("Memory cgroup out of memory") or the host ran out
//! ("Out of memory").

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom},
    os::unix::fs::OpenOptionsExt,
};

use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::mpsc,
};
use tracing::warn;

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
}
