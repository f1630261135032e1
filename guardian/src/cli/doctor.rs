//! `guardian doctor`: one row per capability guardian relies on, each with a fix.

use std::{path::Path, process::ExitCode, time::Duration};

use serde::Serialize;

use super::Output;
use crate::sources::{
    cgroup::{Hierarchy, Mode, PeakSource, PsiKind, PsiTrigger},
    docker,
    ebpf::{self, ProbeOptions, Probes},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    status: Status,
    detail: String,
    /// What to do about a WARN or FAIL, in one line.
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }
    fn problem(
        name: &'static str,
        status: Status,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            name,
            status,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

pub async fn run(output: Output) -> anyhow::Result<ExitCode> {
    let mut checks = vec![kernel(), privileges()];
    checks.extend(cgroups());
    checks.push(psi());
    checks.push(btf());
    checks.extend(tracefs_and_bpf());
    checks.push(docker_engine().await);
    checks.push(oom_killers());

    let ok = checks.iter().all(|c| c.status != Status::Fail);
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"ok": ok, "checks": checks}))?
        ),
        Output::Human => {
            for c in &checks {
                let status = match c.status {
                    Status::Ok => "OK  ",
                    Status::Warn => "WARN",
                    Status::Fail => "FAIL",
                };
                println!("{status}  {:<14} {}", c.name, c.detail);
                if let Some(fix) = &c.fix {
                    println!("      {:<14} fix: {fix}", "");
                }
            }
            println!(
                "{}",
                if ok {
                    "guardian can run on this host."
                } else {
                    "guardian cannot run on this host until the FAIL rows are fixed."
                }
            );
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Other OOM killers on the host act on their own thresholds, often before guardian's ladder.
fn oom_killers() -> Check {
    let names = crate::sources::host::process_names();
    let found = crate::policy::killers::running(names.iter().map(String::as_str));
    if found.is_empty() {
        return Check::ok(
            "oom-killers",
            "no userspace OOM killer running (earlyoom, systemd-oomd, nohang, oomd)",
        );
    }
    let list: Vec<&str> = found.iter().map(|k| k.name).collect();
    Check::problem(
        "oom-killers",
        Status::Warn,
        format!("{} running beside guardian", list.join(", ")),
        found
            .iter()
            .map(|k| k.interaction)
            .collect::<Vec<_>>()
            .join("; "),
    )
}

fn kernel() -> Check {
    match nix::sys::utsname::uname() {
        Ok(u) => Check::ok("kernel", u.release().to_string_lossy()),
        Err(e) => Check::problem(
            "kernel",
            Status::Warn,
            format!("uname failed: {e}"),
            "check /proc is mounted",
        ),
    }
}

fn privileges() -> Check {
    if ebpf::has_bpf_capabilities() {
        Check::ok(
            "privileges",
            format!(
                "uid {} with CAP_SYS_ADMIN or CAP_BPF+CAP_PERFMON",
                nix::unistd::geteuid()
            ),
        )
    } else {
        Check::problem(
            "privileges",
            Status::Fail,
            format!(
                "uid {} without CAP_BPF/CAP_PERFMON/CAP_SYS_ADMIN",
                nix::unistd::geteuid()
            ),
            "run guardian as root (sudo guardian ...) or under the systemd unit",
        )
    }
}

fn cgroups() -> Vec<Check> {
    match Hierarchy::detect() {
        Ok(h) => {
            let memory = format!("{}, memory controller at {}", h.mode, h.memory.display());
            let budgets = match h.mode {
                Mode::V2 => Check::ok("budgets", "memory.high available (cgroup v2)"),
                Mode::Hybrid | Mode::V1 => Check::problem(
                    "budgets",
                    Status::Warn,
                    "memory.high needs the memory controller on cgroup v2; guardian observes only here",
                    "boot with systemd.unified_cgroup_hierarchy=1 to let guardian enforce budgets",
                ),
            };
            let peaks = match h.peak_source() {
                PeakSource::HighWaterMark(file) => Check::ok(
                    "peaks",
                    format!("exact: the kernel's high-water mark ({file})"),
                ),
                PeakSource::Sampled => Check::problem(
                    "peaks",
                    Status::Warn,
                    "no memory.peak (kernel before 5.19): peaks are the highest sample of memory.current, every sample_interval (1 s by default); a shorter spike can be missed",
                    "use kernel 5.19+ for exact peaks, or lower sample_interval (e.g. \"250ms\") at some CPU cost",
                ),
            };
            vec![Check::ok("cgroups", memory), budgets, peaks]
        }
        Err(e) => vec![Check::problem(
            "cgroups",
            Status::Fail,
            e.to_string(),
            "mount cgroup2 at /sys/fs/cgroup (or a v1 memory hierarchy)",
        )],
    }
}

/// Arms a real trigger on the host's pressure file to learn the window granularity we get.
fn psi() -> Check {
    let file = Path::new(crate::sources::host::PRESSURE_FILE);
    if !file.exists() {
        return Check::problem(
            "psi",
            Status::Warn,
            "no /proc/pressure/memory",
            "boot with psi=1 (CONFIG_PSI)",
        );
    }
    match PsiTrigger::arm(
        file,
        PsiKind::Some,
        Duration::from_millis(100),
        Duration::from_millis(500),
    ) {
        Ok(t) if t.trigger().ends_with(" 500000") => {
            Check::ok("psi", "triggers with 500 ms windows")
        }
        Ok(t) => Check::ok(
            "psi",
            format!(
                "triggers accepted as `{}`: windows must be multiples of 2 s (no CAP_SYS_RESOURCE)",
                t.trigger()
            ),
        ),
        Err(e) => Check::problem(
            "psi",
            Status::Warn,
            e.to_string(),
            "run as root on a kernel with PSI triggers (5.2+)",
        ),
    }
}

fn btf() -> Check {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        Check::ok("btf", "/sys/kernel/btf/vmlinux")
    } else {
        Check::problem(
            "btf",
            Status::Warn,
            "no kernel BTF; tracepoints still work",
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        )
    }
}

/// Loads and attaches the real programs, then drops them.
fn tracefs_and_bpf() -> Vec<Check> {
    match Probes::load(ProbeOptions {
        stall_threshold: Duration::from_millis(1),
    }) {
        Ok(p) => {
            let fs = p.tracefs();
            let detail = if fs.mounted_now {
                format!("{} (guardian mounted it)", fs.root.display())
            } else {
                fs.root.display().to_string()
            };
            vec![
                Check::ok("tracefs", detail),
                Check::ok(
                    "ebpf",
                    "loaded and attached oom:mark_victim, vmscan:mm_vmscan_memcg_reclaim_begin/end",
                ),
            ]
        }
        Err(ebpf::BpfError::Tracefs(e)) => vec![Check::problem(
            "tracefs",
            Status::Fail,
            e.to_string(),
            "mount -t tracefs nodev /sys/kernel/tracing",
        )],
        Err(e) => vec![Check::problem(
            "ebpf",
            Status::Fail,
            e.to_string(),
            "run as root on a kernel with CONFIG_BPF_SYSCALL and tracepoints; see docs/operating.md",
        )],
    }
}

async fn docker_engine() -> Check {
    let connected = match Hierarchy::detect() {
        Ok(h) => docker::DockerClient::connect(h)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match connected {
        Ok(client) => Check::ok(
            "docker",
            format!("Engine API {} at {}", client.api_version(), client.socket().display()),
        ),
        Err(e) => Check::problem(
            "docker",
            Status::Warn,
            e,
            "start dockerd or set DOCKER_HOST=unix:///path/to/docker.sock; without it events carry no container names",
        ),
    }
}
