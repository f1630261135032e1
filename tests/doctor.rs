//! `guardian doctor` and the one-line errors of bad input, on the real host.

mod support;

use std::{path::Path, process::Command};

use serde_json::Value;
use support::{guardian_bin, output, require_root, run_guardian};

const CGROUP_SUPER_MAGIC: i64 = 0x27e0eb;
const CGROUP2_SUPER_MAGIC: i64 = 0x63677270;

/// The filesystem type of a mount point, straight from statfs: the test's own oracle.
fn fs_magic(path: &str) -> Option<i64> {
    nix::sys::statfs::statfs(path)
        .ok()
        .map(|s| s.filesystem_type().0)
}

fn doctor_json(cmd: &mut Command) -> (bool, Value) {
    let (status, stdout, stderr) = output(cmd.args(["doctor", "--output", "json"]));
    let v: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("doctor JSON: {e}\n{stdout}\n{stderr}"));
    (status.success(), v)
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} row in {report}"))
}

#[test]
fn doctor_reports_the_cgroup_mode_statfs_sees_and_loads_bpf() {
    require_root();
    let (ok, report) = doctor_json(&mut Command::new(guardian_bin()));
    assert!(ok, "doctor failed on this host: {report}");
    assert_eq!(report["ok"], true);
    let cgroups = check(&report, "cgroups");
    assert_eq!(cgroups["status"], "OK");
    let detail = cgroups["detail"].as_str().unwrap();
    let hybrid = fs_magic("/sys/fs/cgroup/memory") == Some(CGROUP_SUPER_MAGIC)
        && fs_magic("/sys/fs/cgroup/unified") == Some(CGROUP2_SUPER_MAGIC);
    if hybrid {
        assert!(detail.starts_with("hybrid"), "{detail}");
        assert!(
            detail.ends_with("memory controller at /sys/fs/cgroup/memory"),
            "{detail}"
        );
        assert_eq!(check(&report, "budgets")["status"], "WARN");
    } else {
        assert_eq!(fs_magic("/sys/fs/cgroup"), Some(CGROUP2_SUPER_MAGIC));
        assert!(detail.starts_with("cgroup v2"), "{detail}");
    }
    assert_eq!(check(&report, "ebpf")["status"], "OK");
    assert_eq!(check(&report, "tracefs")["status"], "OK");
    assert_eq!(check(&report, "psi")["status"], "OK");
    let btf_present = Path::new("/sys/kernel/btf/vmlinux").exists();
    assert_eq!(
        check(&report, "btf")["status"],
        if btf_present { "OK" } else { "WARN" }
    );
}

#[test]
fn doctor_human_output_has_one_row_per_check() {
    require_root();
    let (status, stdout, _) = run_guardian(&["doctor"]);
    assert!(status.success());
    for name in [
        "kernel",
        "privileges",
        "cgroups",
        "psi",
        "btf",
        "tracefs",
        "ebpf",
        "docker",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(name)),
            "no {name} row in:\n{stdout}"
        );
    }
}

fn as_nobody() -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ])
    .arg(guardian_bin());
    cmd
}

#[test]
fn doctor_as_unprivileged_user_fails_with_a_fix() {
    require_root();
    let (ok, report) = doctor_json(&mut as_nobody());
    assert!(!ok, "doctor must exit non-zero without privileges");
    assert_eq!(report["ok"], false);
    let privileges = check(&report, "privileges");
    assert_eq!(privileges["status"], "FAIL");
    assert!(privileges["fix"]
        .as_str()
        .unwrap()
        .contains("run guardian as root"));
    assert!(check(&report, "ebpf")["detail"]
        .as_str()
        .unwrap()
        .contains("eBPF needs root"));
}

#[test]
fn events_as_unprivileged_user_warns_once_and_keeps_running() {
    require_root();
    let (status, stdout, stderr) =
        output(as_nobody().args(["events", "--duration", "1s", "--output", "json"]));
    assert!(
        status.success(),
        "events should degrade, not fail: {stderr}"
    );
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("eBPF")).collect();
    assert_eq!(warnings.len(), 1, "one line about eBPF, got: {stderr}");
    assert!(
        warnings[0].contains("eBPF needs root") && warnings[0].contains("run guardian as root")
    );
    let ready: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(ready["type"], "ready");
    assert_eq!(ready["ebpf"], false);
}

#[test]
fn events_without_tracefs_says_how_to_mount_it() {
    require_root();
    // A private mount namespace in which /sys/kernel is an empty read-only tmpfs: tracefs is
    // absent and cannot be mounted, as on a host whose /sys/kernel/tracing is missing.
    let script = format!(
        "mount -t tmpfs -o ro tmpfs /sys/kernel && exec {} events --duration 1s --output json",
        guardian_bin().display()
    );
    let (status, stdout, stderr) = output(Command::new("unshare").args([
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ]));
    assert!(
        status.success(),
        "events should degrade, not fail: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("tracefs")).collect();
    assert_eq!(lines.len(), 1, "one line about tracefs, got: {stderr}");
    assert!(
        lines[0].contains("mount -t tracefs nodev /sys/kernel/tracing"),
        "{}",
        lines[0]
    );
    let ready: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(ready["ebpf"], false);
}

#[test]
fn unknown_output_format_is_a_usage_error() {
    let (status, _, stderr) = run_guardian(&["events", "--output", "xml"]);
    assert_eq!(status.code(), Some(2));
    let first = stderr.lines().next().unwrap();
    assert!(
        first.contains("invalid value 'xml'") && first.contains("--output"),
        "{first}"
    );
    assert!(stderr.contains("possible values: human, json"), "{stderr}");
}

#[test]
fn watching_a_directory_that_is_not_a_cgroup_is_a_one_line_error() {
    require_root();
    let (status, _, stderr) = run_guardian(&["events", "--duration", "1s", "--watch", "/tmp"]);
    assert_eq!(status.code(), Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--watch /tmp: not a cgroup directory"),
        "{stderr}"
    );
}
