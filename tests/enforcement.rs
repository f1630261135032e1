//! Enforcement against a real dockerd on this (hybrid) kernel: budgets from labels, config rules
//! and profiles; the ladder's freeze (step 3) on a real container through the unified tree; and
//! every change put back at exit, after SIGKILL by `guardian restore`. memory.high itself needs
//! cgroup v2's memory controller: that part runs in the VM (`cargo xtask vm-test`).

mod support;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde_json::Value;
use support::{container_cgroup, docker, require_docker, run_guardian, take_turn, unique, Daemon};

const IMAGE: &str = "guardian-test/memload";
const MIB: u64 = 1 << 20;

fn idle_container(name: &str, labels: &[&str]) -> String {
    let mut args = vec!["run", "-d", "--name", name];
    for l in labels {
        args.extend(["--label", l]);
    }
    args.extend([IMAGE, "sleep", "300"]);
    docker(&args)
}

/// A config whose critical reserve is larger than any host, so the ladder sees critical
/// pressure at once; `extra` adds `[enforce]` lines. Returns the config path.
fn critical_config(dir: &Path, extra: &str) -> PathBuf {
    let config = dir.join("guardian.toml");
    std::fs::write(
        &config,
        format!("[enforce]\nreserve = \"1t\"\ncritical_reserve = \"1t\"\nprofiles = []\n{extra}"),
    )
    .unwrap();
    config
}

fn freeze_state(unified_dir: &Path) -> String {
    std::fs::read_to_string(unified_dir.join("cgroup.freeze"))
        .unwrap()
        .trim()
        .to_string()
}

fn wait_freeze(unified_dir: &Path, want: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if freeze_state(unified_dir) == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn budgets_come_from_labels_rules_and_profiles_and_ps_says_which() {
    require_docker();
    let _turn = take_turn();
    let by_label = unique("label");
    let by_rule = unique("rule");
    let by_profile = unique("profile");
    let observed = unique("observed");
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    std::fs::create_dir(&profiles).unwrap();
    std::fs::write(
        profiles.join("ci.toml"),
        format!(
            "schema = 1\ngenerated_at = \"2026-11-25T00:00:00Z\"\nmargin = 0.2\n\n[[service]]\nservice = \"{by_profile}\"\nruns = 1\npeak = 1000\nstartup_peak = 1000\ntypical_working_set = 1000\noom_killed = false\nrecommended_limit = {}\nrecommended_reservation = 8388608\nreason = \"test\"\n",
            80 * MIB
        ),
    )
    .unwrap();
    let config = dir.path().join("guardian.toml");
    std::fs::write(
        &config,
        format!(
            "[enforce]\nprofiles = [\"{}\"]\n\n[[budget]]\nname = \"{by_rule}\"\nmemory = \"96m\"\npriority = 3\n\n[[budget]]\nname = \"{by_label}\"\nmemory = \"1g\"\n",
            profiles.display()
        ),
    )
    .unwrap();
    idle_container(&by_label, &["guardian.budget=64m", "guardian.priority=5"]);
    idle_container(&by_rule, &[]);
    idle_container(&by_profile, &[]);
    idle_container(&observed, &["guardian.avoid=true"]);
    let (status, stdout, stderr) = run_guardian(&[
        "ps",
        "--config",
        config.to_str().unwrap(),
        "--output",
        "json",
    ]);
    let (_, human, _) = run_guardian(&["ps", "--config", config.to_str().unwrap()]);
    for n in [&by_label, &by_rule, &by_profile, &observed] {
        docker(&["rm", "-f", n]);
    }
    assert!(status.success(), "guardian ps failed: {stderr}");
    let rows: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} not in {stdout}"))
            .clone()
    };
    let label = row(&by_label);
    assert_eq!(
        label["budget"]["bytes"],
        64 * MIB,
        "the label beats the rule"
    );
    assert_eq!(label["budget"]["source"]["kind"], "label");
    assert_eq!(label["priority"], 5);
    let rule = row(&by_rule);
    assert_eq!(rule["budget"]["bytes"], 96 * MIB);
    assert_eq!(rule["budget"]["source"]["kind"], "rule");
    assert_eq!(rule["budget"]["source"]["from"], format!("name={by_rule}"));
    assert_eq!(rule["priority"], 3);
    let profile = row(&by_profile);
    assert_eq!(profile["budget"]["bytes"], 80 * MIB);
    assert_eq!(profile["budget"]["source"]["kind"], "profile");
    let avoided = row(&observed);
    assert_eq!(avoided["budget"], Value::Null);
    assert_eq!(avoided["avoid"], true);
    let line = human
        .lines()
        .find(|l| l.starts_with(by_rule.as_str()))
        .unwrap_or_else(|| panic!("{by_rule} not in {human}"));
    assert!(line.ends_with(&format!("rule name={by_rule}")), "{line}");
}

#[test]
fn critical_pressure_freezes_the_budgeted_container_and_every_freeze_is_put_back() {
    require_docker();
    let _turn = take_turn();
    let name = unique("freeze");
    let id = idle_container(&name, &["guardian.budget=64m"]);
    let (_, unified_dir) = container_cgroup(&id);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = critical_config(
        dir.path(),
        "step_interval = \"200ms\"\nrelax_after = \"1h\"\n",
    );
    let args = ["--config", config.to_str().unwrap(), "--no-metrics"];

    // A clean stop thaws it.
    let daemon = Daemon::start(&state, &args);
    let frozen = wait_freeze(&unified_dir, "1", Duration::from_secs(20));
    let status = daemon.status();
    let (exit, log) = daemon.stop(Signal::SIGTERM);
    let thawed_at_exit = freeze_state(&unified_dir);

    // SIGKILL leaves it frozen; `guardian restore` thaws it from the journal.
    let daemon = Daemon::start(&state, &args);
    let frozen_again = wait_freeze(&unified_dir, "1", Duration::from_secs(20));
    daemon.stop(Signal::SIGKILL);
    let left_frozen = freeze_state(&unified_dir);
    let (restore, restored, restore_err) = run_guardian(&[
        "restore",
        "--state-dir",
        state.to_str().unwrap(),
        "--output",
        "json",
    ]);
    let after_restore = freeze_state(&unified_dir);
    docker(&["rm", "-f", &name]);

    assert!(frozen, "the daemon did not freeze {name}; its log:\n{log}");
    assert!(exit.success(), "{log}");
    if !log.contains("budgets need cgroup v2") {
        // A pure v2 host can write memory.high: no warning then.
        assert!(
            Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
            "{log}"
        );
    }
    let holding = status["holding"].as_array().unwrap();
    assert!(
        holding.iter().any(|h| h["file"]
            .as_str()
            .unwrap()
            .ends_with(&format!("{id}/cgroup.freeze"))
            && h["original"] == "0"),
        "{status}"
    );
    let freeze = status["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "freeze")
        .unwrap_or_else(|| panic!("no freeze recorded: {status}"));
    assert_eq!(freeze["step"], 3);
    assert_eq!(freeze["name"], name.as_str());
    assert!(
        freeze["reason"].as_str().unwrap().contains("critical"),
        "{freeze}"
    );
    assert_eq!(
        (freeze["before"].as_str(), freeze["after"].as_str()),
        (Some("0"), Some("1"))
    );
    assert_eq!(
        thawed_at_exit, "0",
        "SIGTERM must thaw what the daemon froze"
    );

    assert!(frozen_again);
    assert_eq!(left_frozen, "1", "SIGKILL leaves the freeze in place");
    assert!(restore.success(), "guardian restore failed: {restore_err}");
    assert_eq!(after_restore, "0", "guardian restore thaws it");
    let restored: Value = serde_json::from_str(&restored).unwrap();
    assert_eq!(restored["restored"][0]["action"], "thaw");
    assert_eq!(restored["left"].as_array().unwrap().len(), 0);
}

/// `cgroup.events`' `frozen` line: the kernel's own word that every task is frozen.
fn kernel_frozen(unified_dir: &Path) -> bool {
    std::fs::read_to_string(unified_dir.join("cgroup.events"))
        .unwrap()
        .lines()
        .any(|l| l == "frozen 1")
}

/// A hook that appends its kind and incident id to `log` and keeps its stdin per incident.
fn recording_hook(dir: &Path) -> (String, PathBuf) {
    let log = dir.join("hook.log");
    let hook = format!(
        "echo \"$GUARDIAN_KIND $GUARDIAN_INCIDENT_ID $GUARDIAN_CONTAINER\" >> {log}; cat > {dir}/hook-$GUARDIAN_INCIDENT_ID-$$.json",
        log = log.display(),
        dir = dir.display()
    );
    (hook, log)
}

fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn a_long_freeze_by_guardian_is_reported_while_it_lasts_with_its_rule_and_fails_report_ci() {
    require_docker();
    let _turn = take_turn();
    let name = unique("frozenincident");
    let id = idle_container(&name, &["guardian.budget=64m"]);
    let (_, unified_dir) = container_cgroup(&id);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (hook, hook_log) = recording_hook(dir.path());
    let config = critical_config(
        dir.path(),
        &format!(
            "step_interval = \"200ms\"\nrelax_after = \"1h\"\n\n[incidents]\nfreeze_report_after = \"1s\"\nhook = '{hook}'\n"
        ),
    );
    let state_arg = state.to_str().unwrap().to_string();
    let daemon = Daemon::start(
        &state,
        &["--config", config.to_str().unwrap(), "--no-metrics"],
    );
    let frozen = wait_freeze(&unified_dir, "1", Duration::from_secs(20));
    // Written while it lasts: the report appears while the kernel still has it frozen.
    let reports = state.join("reports");
    let report = wait_for(Duration::from_secs(20), || {
        std::fs::read_dir(&reports)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with("-frozen.json"))
    });
    let frozen_while_reported = kernel_frozen(&unified_dir);
    let docker_paused_state = docker(&["inspect", "-f", "{{.State.Status}}", &id]);
    let while_frozen: Option<Value> = report
        .as_ref()
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap());
    let (list_exit, list, list_err) = run_guardian(&["report", "list", "--state-dir", &state_arg]);
    let (ci_exit, ci, _) =
        run_guardian(&["report", "ci", "--state-dir", &state_arg, "--since", "10m"]);
    let hook_ran = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&hook_log)
            .ok()
            .filter(|l| l.contains("frozen"))
    });
    let (exit, log) = daemon.stop(Signal::SIGTERM);
    let thawed_at_exit = freeze_state(&unified_dir);
    let (_, after_json, _) = run_guardian(&[
        "report",
        "list",
        "--state-dir",
        &state_arg,
        "--output",
        "json",
    ]);
    docker(&["rm", "-f", &name]);

    assert!(frozen, "the daemon did not freeze {name}; its log:\n{log}");
    assert!(exit.success(), "{log}");
    let report = report.unwrap_or_else(|| panic!("no frozen report was written; log:\n{log}"));
    assert!(
        frozen_while_reported,
        "the report must be written while the kernel has it frozen (cgroup.events)"
    );
    assert_eq!(
        docker_paused_state, "running",
        "Docker does not know of a cgroup freeze"
    );
    let i = while_frozen.unwrap();
    assert_eq!(i["cause"], "frozen_by_guardian", "{i}");
    assert_eq!(i["name"], name.as_str());
    assert_eq!(i["ended"], Value::Null, "still frozen: {i}");
    assert!(i["duration_ms"].as_i64().unwrap() >= 1000, "{i}");
    assert_eq!(i["decision"]["step"], 3);
    assert!(
        i["decision"]["rule"]
            .as_str()
            .unwrap()
            .contains("host critical"),
        "{i}"
    );
    assert_eq!(i["decision"]["critical_reserve"], 1u64 << 40);
    assert!(i["decision"]["host_available"].as_u64().unwrap() > 0);
    assert_eq!(i["budget"], 64 * MIB);
    let next = i["next_step"].as_str().unwrap();
    assert!(
        next.contains("critical_reserve") && next.contains("guardian.priority"),
        "{next}"
    );
    let md = std::fs::read_to_string(report.with_extension("md")).unwrap();
    assert!(
        md.starts_with(&format!("# Frozen by guardian: {name}")),
        "{md}"
    );
    assert!(md.contains("| Rule (ladder step) | host critical"), "{md}");

    assert!(list_exit.success(), "{list_err}");
    let row = list
        .lines()
        .find(|l| l.contains(name.as_str()))
        .unwrap_or_else(|| panic!("{name} not in report list:\n{list}"));
    assert!(row.contains("frozen"), "{row}");
    assert_eq!(
        ci_exit.code(),
        Some(1),
        "report ci fails the run for a freeze: {ci}"
    );
    assert!(
        ci.contains(&format!("::error title=Frozen by guardian%3A {name}::")),
        "{ci}"
    );

    let hook_log = hook_ran.unwrap_or_else(|| panic!("the hook did not run; log:\n{log}"));
    let line = hook_log.lines().next().unwrap();
    assert!(
        line.starts_with("frozen ") && line.ends_with(&format!(" {name}")),
        "{line}"
    );
    let stdin: Vec<Value> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("hook-"))
        .map(|e| serde_json::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap())
        .collect();
    assert!(
        stdin
            .iter()
            .any(|v| v["cause"] == "frozen_by_guardian" && v["name"] == name.as_str()),
        "the hook gets the incident as JSON on stdin: {stdin:?}"
    );

    // Closed at the thaw (the daemon's exit thaws it).
    assert_eq!(thawed_at_exit, "0");
    let after: Vec<Value> = serde_json::from_str(&after_json).unwrap();
    let closed = after
        .iter()
        .find(|v| v["cause"] == "frozen_by_guardian" && v["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{after_json}"));
    assert_eq!(closed["id"], i["id"], "the same incident, updated");
    assert!(closed["ended"].is_string(), "{closed}");
    assert!(
        closed["notes"].as_array().unwrap().iter().any(|n| n
            .as_str()
            .unwrap()
            .starts_with("thawed when guardian stopped")),
        "{closed}"
    );
}

#[test]
fn dry_run_records_what_it_would_do_and_writes_nothing() {
    require_docker();
    let _turn = take_turn();
    let name = unique("dryrun");
    let id = idle_container(&name, &["guardian.budget=64m"]);
    let (_, unified_dir) = container_cgroup(&id);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = critical_config(dir.path(), "");
    let daemon = Daemon::start(
        &state,
        &[
            "--config",
            config.to_str().unwrap(),
            "--no-metrics",
            "--dry-run",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = daemon.status();
    while Instant::now() < deadline && status["actions"].as_array().is_none_or(|a| a.is_empty()) {
        std::thread::sleep(Duration::from_millis(100));
        status = daemon.status();
    }
    let frozen = freeze_state(&unified_dir);
    let (exit, log) = daemon.stop(Signal::SIGTERM);
    docker(&["rm", "-f", &name]);
    assert!(exit.success(), "{log}");
    let actions = status["actions"].as_array().unwrap();
    let freeze = actions
        .iter()
        .find(|a| a["action"] == "freeze" && a["name"] == name.as_str())
        .unwrap_or_else(|| panic!("no dry-run freeze recorded: {status}\n{log}"));
    assert_eq!(freeze["dry_run"], true);
    assert_eq!(frozen, "0", "a dry run never writes");
    assert!(
        status["holding"].as_array().unwrap().is_empty(),
        "nothing journaled: {status}"
    );
}

#[test]
fn with_allow_kill_a_frozen_container_is_killed_when_critical_pressure_lasts() {
    require_docker();
    let _turn = take_turn();
    let name = unique("kill");
    let id = idle_container(&name, &["guardian.budget=64m"]);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = critical_config(
        dir.path(),
        "step_interval = \"200ms\"\nkill_after = \"1s\"\nrelax_after = \"1h\"\n",
    );
    let port = 20000 + (std::process::id() % 20000) as u16 + 1;
    let listen = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(
        &state,
        &[
            "--config",
            config.to_str().unwrap(),
            "--metrics-listen",
            &listen,
            "--allow-kill",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut state_now = String::new();
    while Instant::now() < deadline {
        state_now = docker(&["inspect", "-f", "{{.State.Status}}", &id]);
        if state_now == "exited" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = daemon.status();
    // The metrics snapshot is rendered every sampling round (100 ms here).
    std::thread::sleep(Duration::from_millis(300));
    let metrics = support::scrape_metrics(&listen);
    let (exit, log) = daemon.stop(Signal::SIGTERM);
    let exit_code = docker(&["inspect", "-f", "{{.State.ExitCode}}", &id]);
    let state_arg = state.to_str().unwrap();
    let (_, incidents, _) = run_guardian(&[
        "report",
        "list",
        "--state-dir",
        state_arg,
        "--output",
        "json",
    ]);
    let (ci_exit, ci, _) =
        run_guardian(&["report", "ci", "--state-dir", state_arg, "--since", "10m"]);
    docker(&["rm", "-f", &name]);
    assert!(exit.success(), "{log}");
    assert_eq!(
        state_now, "exited",
        "the container was not killed; log:\n{log}"
    );
    assert!(
        metrics.contains("guardian_actions_total{action=\"kill\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("guardian_host_memory_level 2"),
        "{metrics}"
    );
    let actions = status["actions"].as_array().unwrap();
    let kill = actions
        .iter()
        .find(|a| a["action"] == "kill" && a["name"] == name.as_str())
        .unwrap_or_else(|| panic!("no kill recorded: {status}"));
    assert_eq!(kill["step"], 4);
    assert!(
        kill["reason"].as_str().unwrap().contains("--allow-kill"),
        "{kill}"
    );
    let freeze_at = actions
        .iter()
        .find(|a| a["action"] == "freeze" && a["name"] == name.as_str())
        .map(|a| a["at_ms"].as_i64().unwrap())
        .expect("frozen before it was killed");
    assert!(freeze_at <= kill["at_ms"].as_i64().unwrap());
    assert_eq!(exit_code, "137", "Docker saw it die of SIGKILL");
    let incidents: Vec<Value> = serde_json::from_str(&incidents).unwrap();
    let killed = incidents
        .iter()
        .find(|i| i["cause"] == "killed_by_guardian" && i["name"] == name.as_str())
        .unwrap_or_else(|| panic!("no killed-by-guardian incident: {incidents:?}"));
    assert_eq!(killed["decision"]["step"], 4);
    assert!(
        killed["decision"]["rule"]
            .as_str()
            .unwrap()
            .contains("--allow-kill"),
        "{killed}"
    );
    assert!(
        !incidents.iter().any(|i| i["cause"] == "kernel_oom"),
        "guardian's kill is not a kernel OOM kill: {incidents:?}"
    );
    assert_eq!(ci_exit.code(), Some(1), "{ci}");
    assert!(
        ci.contains(&format!("::error title=Killed by guardian%3A {name}::")),
        "{ci}"
    );
}

#[test]
fn restore_refuses_while_the_daemon_runs() {
    let dir = tempfile::tempdir().unwrap();
    let state: PathBuf = dir.path().to_path_buf();
    guardian::store::Store::open(&state).unwrap();
    // What a running daemon holds: the state directory's lock, with its pid in it.
    let _daemon = guardian::store::lock::StateLock::acquire(&state).unwrap();
    let (status, _, stderr) = run_guardian(&["restore", "--state-dir", state.to_str().unwrap()]);
    assert_eq!(status.code(), Some(2));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is running"), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", std::process::id())),
        "{stderr}"
    );
}

/// Labels are set by whoever starts a container: a budget label of 0, above the host or
/// garbage is ignored and said (the rule or nothing applies, the container stays watched), and
/// `trusted_labels = []` makes guardian read none of them.
#[test]
fn hostile_budget_labels_are_ignored_and_said_and_labels_can_be_untrusted() {
    require_docker();
    let _turn = take_turn();
    let zero = unique("zero");
    let huge = unique("huge");
    let garbage = unique("garbage");
    let fine = unique("fine");
    let dir = tempfile::tempdir().unwrap();
    let rules = format!(
        "[[budget]]\nname = \"{zero}\"\nmemory = \"96m\"\n\n[[budget]]\nname = \"{fine}\"\nmemory = \"1g\"\npriority = 2\n"
    );
    let trusting = dir.path().join("trusting.toml");
    std::fs::write(&trusting, format!("[enforce]\nprofiles = []\n\n{rules}")).unwrap();
    let untrusting = dir.path().join("untrusting.toml");
    std::fs::write(
        &untrusting,
        format!("[enforce]\nprofiles = []\ntrusted_labels = []\n\n{rules}"),
    )
    .unwrap();
    idle_container(&zero, &["guardian.budget=0"]);
    idle_container(&huge, &["guardian.budget=100t"]);
    idle_container(
        &garbage,
        &["guardian.budget=lots", "guardian.priority=high"],
    );
    idle_container(
        &fine,
        &[
            "guardian.budget=64m",
            "guardian.priority=9",
            "guardian.avoid=true",
        ],
    );
    let ps = |config: &Path| {
        let (status, stdout, stderr) = run_guardian(&[
            "ps",
            "--config",
            config.to_str().unwrap(),
            "--output",
            "json",
        ]);
        assert!(status.success(), "guardian ps failed: {stderr}");
        serde_json::from_str::<Vec<Value>>(&stdout).unwrap()
    };
    let trusted = ps(&trusting);
    let untrusted = ps(&untrusting);
    let (_, human, _) = run_guardian(&["ps", "--config", trusting.to_str().unwrap()]);
    for n in [&zero, &huge, &garbage, &fine] {
        docker(&["rm", "-f", n]);
    }
    let row = |rows: &[Value], name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} not in {rows:?}"))
            .clone()
    };
    let z = row(&trusted, &zero);
    assert_eq!(z["budget"]["bytes"], 96 * MIB, "the rule applies: {z}");
    assert!(
        z["ignored_labels"][0]
            .as_str()
            .unwrap()
            .contains("below the floor"),
        "{z}"
    );
    let h = row(&trusted, &huge);
    assert!(h["budget"].is_null(), "{h}");
    assert!(
        h["ignored_labels"][0]
            .as_str()
            .unwrap()
            .contains("more than the host"),
        "{h}"
    );
    let g = row(&trusted, &garbage);
    assert!(g["budget"].is_null(), "{g}");
    assert_eq!(g["priority"], 0);
    assert_eq!(g["ignored_labels"].as_array().unwrap().len(), 2, "{g}");
    let f = row(&trusted, &fine);
    assert_eq!(
        (
            f["budget"]["bytes"].clone(),
            f["priority"].clone(),
            f["avoid"].clone()
        ),
        (Value::from(64 * MIB), Value::from(9), Value::from(true))
    );
    assert!(human.contains("is not a size"), "{human}");
    // Untrusted: the rules only, nothing said about labels.
    let f = row(&untrusted, &fine);
    assert_eq!(
        (
            f["budget"]["bytes"].clone(),
            f["priority"].clone(),
            f["avoid"].clone()
        ),
        (Value::from(1u64 << 30), Value::from(2), Value::from(false))
    );
    let z = row(&untrusted, &zero);
    assert_eq!(z["budget"]["bytes"], 96 * MIB);
    assert!(z["ignored_labels"].as_array().unwrap().is_empty(), "{z}");
}
