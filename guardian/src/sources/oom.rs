//! An OOM kill as the kernel reported it (eBPF `oom:mark_victim`), completed from /proc and the
//! victim's cgroup while they still exist.

use guardian_common::{oom_field, OomEvent};

use super::{
    cgroup::{pid_cgroups, read_memory, read_memory_stat, CgroupIndex},
    ebpf::{self, comm_string},
};
use crate::model::{time, unix_ms, Bytes, CgroupId, OomKill, OomTask, RssBreakdown, Source};

/// Longest command line kept in a report: enough to tell what ran, short of dumping arguments.
const CMDLINE_MAX: usize = 256;

/// Turns the kernel's record into an [`OomKill`], filling what the tracepoint lacks from /proc
/// while the victim may still be there, and saying where each fact came from.
pub fn enrich(e: &OomEvent, index: &mut CgroupIndex) -> OomKill {
    let has = |bit| e.present & bit != 0;
    // /proc is read only for what the tracepoint lacks (6.1 has pid only): while the victim is
    // exiting, its status can block on the address space being torn down.
    let needs_proc = !(has(oom_field::COMM) && has(oom_field::RSS) && has(oom_field::UID));
    let proc_status = needs_proc
        .then(|| {
            procfs::process::Process::new(e.victim_pid as i32)
                .and_then(|p| p.status())
                .ok()
        })
        .flatten();

    let (victim_cgroup, cgroup_source) = if has(oom_field::VICTIM_CGROUP) {
        (index.resolve(CgroupId(e.victim_cgroup_id)), Source::Kernel)
    } else {
        let from_proc = pid_cgroups(e.victim_pid)
            .ok()
            .and_then(|c| c.unified)
            .and_then(|rel| index.id_of(&rel).ok());
        match from_proc {
            Some(id) => (index.resolve(id), Source::Procfs),
            None => (
                index.resolve(CgroupId(e.trigger_cgroup_id)),
                Source::Trigger,
            ),
        }
    };

    let (comm, comm_source) = if has(oom_field::COMM) {
        (Some(comm_string(&e.victim_comm)), Source::Tracepoint)
    } else if let Some(s) = &proc_status {
        (Some(s.name.clone()), Source::Procfs)
    } else {
        (None, Source::Unavailable)
    };

    let rss = if has(oom_field::RSS) {
        Some(RssBreakdown {
            total_vm: Bytes::from_kib(e.total_vm_kb),
            anon_rss: Bytes::from_kib(e.anon_rss_kb),
            file_rss: Bytes::from_kib(e.file_rss_kb),
            shmem_rss: Bytes::from_kib(e.shmem_rss_kb),
            pgtables: has(oom_field::PGTABLES).then(|| Bytes::from_kib(e.pgtables_kb)),
            source: Source::Tracepoint,
        })
    } else {
        proc_status.as_ref().map(|s| RssBreakdown {
            total_vm: Bytes::from_kib(s.vmsize.unwrap_or(0)),
            anon_rss: Bytes::from_kib(s.rssanon.unwrap_or(0)),
            file_rss: Bytes::from_kib(s.rssfile.unwrap_or(0)),
            shmem_rss: Bytes::from_kib(s.rssshmem.unwrap_or(0)),
            pgtables: s.vmpte.map(Bytes::from_kib),
            source: Source::Procfs,
        })
    };

    let uid = if has(oom_field::UID) {
        Some(e.uid)
    } else {
        proc_status.as_ref().map(|s| s.ruid)
    };
    let oom_score_adj = if has(oom_field::OOM_SCORE_ADJ) {
        Some(e.oom_score_adj)
    } else {
        std::fs::read_to_string(format!("/proc/{}/oom_score_adj", e.victim_pid))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    };

    let memory = victim_cgroup
        .memory_path
        .as_deref()
        .and_then(|mem| read_memory(index.hierarchy(), mem, victim_cgroup.path.as_deref()).ok());
    let memory_stat = victim_cgroup
        .memory_path
        .as_deref()
        .and_then(|mem| read_memory_stat(index.hierarchy(), mem).ok())
        .unwrap_or_default();
    let trigger_cgroup = index.resolve(CgroupId(e.trigger_cgroup_id));

    OomKill {
        time: time::rfc3339_millis(unix_ms(ebpf::wall_time(e.ts_ns))),
        ktime_ns: e.ts_ns,
        victim: OomTask {
            pid: e.victim_pid,
            comm,
            cgroup: Some(victim_cgroup),
        },
        container: None,
        comm_source,
        cgroup_source,
        rss,
        uid,
        oom_score_adj,
        trigger: OomTask {
            pid: e.trigger_pid,
            comm: Some(comm_string(&e.trigger_comm)),
            cgroup: Some(trigger_cgroup),
        },
        trigger_tgid: e.trigger_tgid,
        memory,
        memory_stat,
    }
}

/// The victim's command line, NUL-separated arguments joined by spaces and cut at
/// [`CMDLINE_MAX`] characters; `None` once the process is gone. Never its environment.
/// An argument containing one of the `redact` words (case-insensitive) loses its value: `k=v`
/// becomes `k=<redacted>`, and a bare flag takes the next argument with it.
pub fn cmdline(pid: u32, redact: &[String]) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    cmdline_text(&raw, redact)
}

/// What [`cmdline`] makes of the raw bytes of a `/proc/<pid>/cmdline` file (which the process
/// itself may have rewritten to anything): redacted, joined, cut; `None` when empty.
pub fn cmdline_text(raw: &[u8], redact: &[String]) -> Option<String> {
    let text = redact_args(&String::from_utf8_lossy(raw), redact);
    if text.is_empty() {
        return None;
    }
    Some(match text.char_indices().nth(CMDLINE_MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    })
}

fn redact_args(nul_separated: &str, redact: &[String]) -> String {
    let mut out = Vec::new();
    let mut hide_next = false;
    for arg in nul_separated.split('\0').filter(|a| !a.is_empty()) {
        if hide_next {
            out.push("<redacted>".to_string());
            hide_next = false;
            continue;
        }
        let lower = arg.to_lowercase();
        if redact.iter().any(|w| lower.contains(&w.to_lowercase())) {
            match arg.split_once('=') {
                Some((k, _)) => out.push(format!("{k}=<redacted>")),
                None => {
                    out.push(arg.to_string());
                    hide_next = arg.starts_with('-');
                }
            }
        } else {
            out.push(arg.to_string());
        }
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_arguments_are_redacted() {
        let words = vec!["password".to_string(), "token".to_string()];
        assert_eq!(
            redact_args("psql\0--password\0hunter2\0-h\0db\0", &words),
            "psql --password <redacted> -h db"
        );
        assert_eq!(
            redact_args("app\0--api-TOKEN=abc\0run\0", &words),
            "app --api-TOKEN=<redacted> run"
        );
    }
}
