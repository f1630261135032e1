//! Userspace OOM killers (earlyoom, systemd-oomd, nohang): which are running, how they interact
//! with guardian, which of them killed a container (from their own log lines), and when a
//! container's death by signal is a memory incident at all. Pure functions of what the sources
//! read.

use crate::model::Cause;

/// A userspace OOM killer guardian knows, by its process name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Killer {
    pub name: &'static str,
    /// How it and guardian interact, in words.
    pub interaction: &'static str,
}

const KNOWN: &[Killer] = &[
    Killer {
        name: "earlyoom",
        interaction: "earlyoom kills the process with the highest oom_score when MemAvailable (and swap) fall below its -m/-s percentages, whatever guardian's budgets are; keep guardian's [enforce] reserve above earlyoom's threshold so the ladder throttles first, and guardian reports its kills as 'killed by earlyoom'",
    },
    Killer {
        name: "systemd-oomd",
        interaction: "systemd-oomd kills whole cgroups under a slice with ManagedOOMMemoryPressure=kill (e.g. docker's system.slice) when their PSI stays above its limit (default 60 % for 30 s) — before guardian's ladder reaches its freeze step; budgets keep pressure below oomd's threshold, and guardian reports its kills as 'killed by systemd-oomd'",
    },
    Killer {
        name: "nohang",
        interaction: "nohang kills or runs its own actions on low memory and high PSI by its config's thresholds; keep them below guardian's [enforce] reserve and critical_reserve so the ladder acts first",
    },
    Killer {
        name: "oomd",
        interaction: "oomd (Facebook's) kills cgroups by its own pressure rules; keep them looser than guardian's budgets so the ladder acts first",
    },
];

/// The known killers among the host's running process names (`/proc/<pid>/comm`).
pub fn running<'a>(comms: impl IntoIterator<Item = &'a str>) -> Vec<Killer> {
    let mut out: Vec<Killer> = Vec::new();
    for comm in comms {
        let comm = comm.trim();
        if let Some(k) = KNOWN.iter().find(|k| k.name == comm) {
            if !out.contains(k) {
                out.push(*k);
            }
        }
    }
    out
}

/// What a killer's log line says it killed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KillLine {
    pub killer: &'static str,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// The cgroup systemd-oomd killed.
    pub cgroup: Option<String>,
}

/// Parses one log message of a userspace killer (journald's `SYSLOG_IDENTIFIER` as `ident`):
/// earlyoom's `sending SIGKILL to process 1234 uid 0 "memload": badness 900, ...` and
/// systemd-oomd's `Killed /system.slice/docker-<id>.scope due to memory pressure ...`.
pub fn parse_kill_line(ident: &str, message: &str) -> Option<KillLine> {
    match ident {
        "earlyoom" => {
            let rest = message.split_once("sending SIG")?.1;
            let rest = rest.split_once(" to process ")?.1;
            let (pid, rest) = rest.split_once(' ')?;
            let comm = rest
                .split_once('"')
                .and_then(|(_, r)| r.split_once('"'))
                .map(|(c, _)| c.to_string());
            Some(KillLine {
                killer: "earlyoom",
                pid: pid.parse().ok(),
                comm,
                cgroup: None,
            })
        }
        "systemd-oomd" => {
            let rest = message.strip_prefix("Killed ")?;
            let (cgroup, _) = rest.split_once(" due to ")?;
            Some(KillLine {
                killer: "systemd-oomd",
                pid: None,
                comm: None,
                cgroup: Some(cgroup.to_string()),
            })
        }
        _ => None,
    }
}

/// The killer whose line names this container: its main pid, its main process' name or (for
/// systemd-oomd) a cgroup holding its id.
pub fn killer_of(
    lines: &[KillLine],
    container_id: &str,
    pid: Option<u32>,
    comm: Option<&str>,
) -> Option<&'static str> {
    lines
        .iter()
        .rev()
        .find(|l| {
            (pid.is_some() && l.pid == pid)
                || (comm.is_some() && l.comm.as_deref() == comm)
                || l.cgroup
                    .as_deref()
                    .is_some_and(|c| !container_id.is_empty() && c.contains(container_id))
        })
        .map(|l| l.killer)
}

/// What is known of a container that died.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Death<'a> {
    pub exit_code: Option<i64>,
    /// Docker's OOMKilled, or a kernel OOM kill guardian saw in it.
    pub kernel_oom: bool,
    /// Its last usage was at least 90 % of its limit or budget.
    pub near_limit: bool,
    /// The host's MemAvailable was below guardian's reserve.
    pub host_short: bool,
    /// A userspace killer's log line names it.
    pub killer: Option<&'a str>,
    /// Docker sent a `kill` event for it before it died: `docker stop` (SIGTERM, then SIGKILL
    /// after its grace period), `docker kill` or `docker compose down` ended it.
    pub stopped_through_docker: bool,
}

/// A share of its limit at or above which a container counts as near it.
pub const NEAR_LIMIT: f64 = 0.9;

/// Whether a death by signal is a memory incident: SIGKILL (137) or SIGTERM (143) and no kernel
/// OOM kill; a killer that says it did it is always one; otherwise only SIGKILL while memory
/// was short, and never one that Docker delivered (a `docker stop` that timed out: a budgeted
/// container sits near its budget by design, and a frozen one cannot handle SIGTERM).
pub fn signal_death(d: &Death) -> Option<Cause> {
    if d.kernel_oom || !matches!(d.exit_code, Some(137) | Some(143)) {
        return None;
    }
    match d.killer {
        Some(k) => Some(Cause::KilledBySignal {
            killer: Some(k.to_string()),
        }),
        None if d.exit_code == Some(137)
            && (d.near_limit || d.host_short)
            && !d.stopped_through_docker =>
        {
            Some(Cause::KilledBySignal { killer: None })
        }
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earlyoom_and_systemd_oomd_are_recognised_among_running_processes() {
        let found = running(["bash", "earlyoom\n", "dockerd", "systemd-oomd", "earlyoom"]);
        let names: Vec<_> = found.iter().map(|k| k.name).collect();
        assert_eq!(names, ["earlyoom", "systemd-oomd"]);
        assert!(found[1]
            .interaction
            .contains("ManagedOOMMemoryPressure=kill"));
        assert!(running(["systemd", "systemd-journal", "oom_reaper"]).is_empty());
    }

    #[test]
    fn earlyoom_kill_lines_name_the_pid_and_process() {
        // earlyoom 1.7 (Debian trixie) and 1.6 formats.
        let l = parse_kill_line(
            "earlyoom",
            "sending SIGTERM to process 4242 uid 0 \"memload\": badness 902, VmRSS 1190 MiB",
        )
        .unwrap();
        assert_eq!(
            l,
            KillLine {
                killer: "earlyoom",
                pid: Some(4242),
                comm: Some("memload".into()),
                cgroup: None
            }
        );
        let l = parse_kill_line(
            "earlyoom",
            "sending SIGKILL to process 77 uid 1000 \"node\": oom_score 600, VmRSS 800 MiB, cmdline \"node server.js\"",
        )
        .unwrap();
        assert_eq!((l.pid, l.comm.as_deref()), (Some(77), Some("node")));
        assert_eq!(
            parse_kill_line("earlyoom", "mem avail:  1200 of  1987 MiB (60.39%)"),
            None
        );
    }

    #[test]
    fn systemd_oomd_kill_lines_name_the_cgroup() {
        let l = parse_kill_line(
            "systemd-oomd",
            "Killed /system.slice/docker-4f2a9c.scope due to memory pressure for /system.slice being 72.31% > 50.00% for > 20s with reclaim activity",
        )
        .unwrap();
        assert_eq!(
            l.cgroup.as_deref(),
            Some("/system.slice/docker-4f2a9c.scope")
        );
        let lines = [l];
        assert_eq!(
            killer_of(&lines, "4f2a9c", None, None),
            Some("systemd-oomd")
        );
        assert_eq!(killer_of(&lines, "0000aa", Some(1), Some("x")), None);
    }

    #[test]
    fn a_sigkill_under_memory_pressure_is_not_called_a_kernel_oom_kill() {
        let by_earlyoom = Death {
            exit_code: Some(143),
            killer: Some("earlyoom"),
            ..Default::default()
        };
        assert_eq!(
            signal_death(&by_earlyoom),
            Some(Cause::KilledBySignal {
                killer: Some("earlyoom".into())
            })
        );
        let unknown = Death {
            exit_code: Some(137),
            near_limit: true,
            ..Default::default()
        };
        assert_eq!(
            signal_death(&unknown),
            Some(Cause::KilledBySignal { killer: None })
        );
    }

    #[test]
    fn a_docker_stop_timeout_with_room_to_spare_or_a_kernel_oom_is_not_a_signal_incident() {
        let stop = Death {
            exit_code: Some(137),
            ..Default::default()
        };
        assert_eq!(signal_death(&stop), None);
        let kernel = Death {
            exit_code: Some(137),
            kernel_oom: true,
            near_limit: true,
            ..Default::default()
        };
        assert_eq!(signal_death(&kernel), None);
        let clean = Death {
            exit_code: Some(0),
            near_limit: true,
            ..Default::default()
        };
        assert_eq!(signal_death(&clean), None);
        let sigterm_no_killer = Death {
            exit_code: Some(143),
            near_limit: true,
            ..Default::default()
        };
        assert_eq!(signal_death(&sigterm_no_killer), None);
    }

    #[test]
    fn a_docker_stop_of_a_container_held_at_its_budget_is_not_a_signal_incident() {
        let stopped = Death {
            exit_code: Some(137),
            near_limit: true,
            host_short: true,
            stopped_through_docker: true,
            ..Default::default()
        };
        assert_eq!(signal_death(&stopped), None);
        // A killer that names it still counts, whatever Docker did.
        let named = Death {
            killer: Some("systemd-oomd"),
            ..stopped
        };
        assert_eq!(
            signal_death(&named),
            Some(Cause::KilledBySignal {
                killer: Some("systemd-oomd".into())
            })
        );
    }
}
