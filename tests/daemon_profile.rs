//! The daemon, its store and `guardian profile` over a real Docker engine and compose.

mod support;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde_json::Value;
use support::{compose, docker, output, require_docker, run_guardian, unique, Daemon};

const IMAGE: &str = "guardian-test/memload";
const MIB: u64 = 1 << 20;

/// The v1/v2 high-water file of a running container, read by the test itself.
fn kernel_peak(container: &str) -> u64 {
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", container]);
    let groups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let file = match groups
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
    {
        Some(mem) => PathBuf::from(format!(
            "/sys/fs/cgroup/memory{mem}/memory.max_usage_in_bytes"
        )),
        None => {
            let rel = groups.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
            PathBuf::from(format!("/sys/fs/cgroup{rel}/memory.peak"))
        }
    };
    std::fs::read_to_string(file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn write_compose(dir: &Path, service: &str, command: &str, limit: &str) -> PathBuf {
    let file = dir.join("docker-compose.yml");
    std::fs::write(
        &file,
        format!(
            "version: \"3.8\"\nservices:\n  {service}:\n    image: {IMAGE}\n    command: {command}\n    deploy:\n      resources:\n        limits:\n          memory: {limit}\n"
        ),
    )
    .unwrap();
    file
}

fn compose_run(project: &str, files: &[&Path]) -> String {
    let mut cmd = compose();
    cmd.args(["-p", project]);
    for f in files {
        cmd.arg("-f").arg(f);
    }
    let (status, _, stderr) = output(cmd.args(["up", "-d"]));
    assert!(status.success(), "compose up failed: {stderr}");
    docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
    ])
}

fn compose_down(project: &str, file: &Path) {
    let _ = output(
        compose()
            .args(["-p", project, "-f"])
            .arg(file)
            .args(["down", "-t", "1"]),
    );
}

#[test]
fn profile_of_a_spiky_service_is_its_true_peak_plus_20_percent_and_the_override_prevents_oom() {
    require_docker();
    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(state.path(), &["--no-metrics"]);
    let project = unique("spike");
    let dir = tempfile::tempdir().unwrap();
    // 16 MiB resident, a 64 MiB spike lasting 50 ms, then 3 s at rest: a 1 s poller sees 16 MiB.
    let file = write_compose(
        dir.path(),
        "spiky",
        "memload spike --base 16m --spike 64m --spike-ms 50 --hold-ms 3000",
        "256m",
    );
    let id = compose_run(&project, &[&file]);
    std::thread::sleep(Duration::from_millis(1500));
    let true_peak = kernel_peak(&id);
    assert_eq!(docker(&["wait", &id]), "0");
    std::thread::sleep(Duration::from_millis(800)); // one flush
    compose_down(&project, &file);

    let state_arg = state.path().to_str().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let override_file = out_dir.path().join("docker-compose.guardian.yml");
    let profile_file = out_dir.path().join("profile.toml");
    let (status, stdout, stderr) = run_guardian(&[
        "profile",
        "--output",
        "json",
        "--state-dir",
        state_arg,
        "--project",
        &project,
        "--compose-out",
        override_file.to_str().unwrap(),
        "--profile-out",
        profile_file.to_str().unwrap(),
    ]);
    assert!(status.success(), "profile failed: {stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let rec = &report["recommendations"][0];
    assert_eq!(rec["service"], "spiky");
    let recorded = rec["peak"].as_u64().unwrap();
    // The 50 ms spike is recorded at its true height: the kernel's own high-water mark.
    assert!(
        recorded.abs_diff(true_peak) <= 4096,
        "recorded {recorded} vs kernel {true_peak}"
    );
    assert!(true_peak > 64 * MIB, "the spike happened: {true_peak}");
    let limit = rec["recommended_limit"].as_u64().unwrap();
    let lower = (true_peak as f64 * 1.2) as u64;
    assert!(
        limit >= lower && limit <= lower + 8 * MIB,
        "limit {limit} outside [{lower}, {lower} + 8 MiB]"
    );
    assert!(std::fs::read_to_string(&profile_file)
        .unwrap()
        .contains("recommended_limit"));

    // The override applied with compose: the same service runs under the recommended limit
    // and is not OOM-killed.
    let rerun = unique("spike");
    let id = compose_run(&rerun, &[&file, &override_file]);
    assert_eq!(
        docker(&["inspect", "-f", "{{.HostConfig.Memory}}", &id]),
        limit.to_string()
    );
    assert_eq!(docker(&["wait", &id]), "0");
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.OOMKilled}}", &id]),
        "false"
    );
    compose_down(&rerun, &file);

    // The CI gate: a limit below the observed peak fails, with the service named.
    let tight = tempfile::tempdir().unwrap();
    let tight_file = write_compose(tight.path(), "spiky", "memload spike", "64m");
    let (status, stdout, stderr) = run_guardian(&[
        "profile",
        "--check",
        "--state-dir",
        state_arg,
        "--project",
        &project,
        "-f",
        tight_file.to_str().unwrap(),
    ]);
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("spiky") && l.ends_with("TOO LOW")),
        "{stdout}"
    );
    let (status, stdout, _) = run_guardian(&[
        "profile",
        "--check",
        "--state-dir",
        state_arg,
        "--project",
        &project,
        "-f",
        file.to_str().unwrap(),
    ]);
    assert!(status.success(), "256m is above the peak: {stdout}");
    assert!(stdout.contains("oversized"), "{stdout}");
    let (status, _) = daemon.stop(Signal::SIGTERM);
    assert!(status.success());
}

#[test]
fn a_service_oom_killed_at_its_limit_gets_at_least_its_limit_plus_100_mib_and_is_flagged() {
    require_docker();
    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(state.path(), &["--no-metrics"]);
    let project = unique("oomaware");
    let dir = tempfile::tempdir().unwrap();
    let file = write_compose(dir.path(), "leaky", "memload hog --step 1m", "64m");
    let id = compose_run(&project, &[&file]);
    assert_eq!(docker(&["wait", &id]), "137");
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.OOMKilled}}", &id]),
        "true"
    );
    std::thread::sleep(Duration::from_millis(800));
    compose_down(&project, &file);
    drop(daemon);

    let out = tempfile::tempdir().unwrap();
    let profile = |name: &str| out.path().join(name);
    let state_arg = state.path().to_str().unwrap();
    let (status, stdout, stderr) = run_guardian(&[
        "profile",
        "--output",
        "json",
        "--state-dir",
        state_arg,
        "--project",
        &project,
        "--compose-out",
        profile("o.yml").to_str().unwrap(),
        "--profile-out",
        profile("a.toml").to_str().unwrap(),
    ]);
    assert!(status.success(), "{stderr}");
    let rec = &serde_json::from_str::<Value>(&stdout).unwrap()["recommendations"][0];
    assert_eq!(rec["oom_killed"], true, "{rec}");
    // The observed peak is censored at 64 MiB: the limit is at least max(64 MiB x 1.2,
    // 64 MiB + 100 MiB) = 164 MiB, rounded up to 168 MiB.
    assert_eq!(
        rec["recommended_limit"].as_u64().unwrap(),
        168 * MIB,
        "{rec}"
    );
    assert!(
        rec["reason"].as_str().unwrap().contains("OOM-killed"),
        "{rec}"
    );

    // A second runner's profile with a higher peak: merging keeps the higher one and the OOM.
    let a = std::fs::read_to_string(profile("a.toml")).unwrap();
    let b = a
        .replace(
            &format!("peak = {}", rec["peak"]),
            &format!("peak = {}", 200 * MIB),
        )
        .replace(
            &format!("peak_unreclaimable = {}", rec["peak_unreclaimable"]),
            &format!("peak_unreclaimable = {}", 200 * MIB),
        );
    assert_ne!(a, b, "the peak line was found");
    std::fs::write(profile("b.toml"), b).unwrap();
    let (status, stdout, stderr) = run_guardian(&[
        "profile",
        "merge",
        profile("a.toml").to_str().unwrap(),
        profile("b.toml").to_str().unwrap(),
        "-o",
        profile("fleet.toml").to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert!(status.success(), "{stderr}");
    let merged: Value = serde_json::from_str(&stdout).unwrap();
    let svc = &merged["service"][0];
    assert_eq!(svc["peak"], 200 * MIB);
    assert_eq!(svc["runs"], 2);
    assert_eq!(svc["oom_killed"], true);
    assert_eq!(svc["recommended_limit"], 240 * MIB);
    assert!(profile("fleet.toml").exists());
}

#[test]
fn sigkill_during_recording_loses_nothing_that_was_flushed() {
    require_docker();
    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(state.path(), &["--no-metrics"]);
    let name = unique("kill");
    let id = docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--memory",
        "128m",
        IMAGE,
        "memload",
        "hog",
        "--step",
        "1m",
        "--max",
        "40m",
        "--hold-ms",
        "30000",
    ]);
    let running = |status: &Value| -> Option<u64> {
        status["running"]
            .as_array()?
            .iter()
            .find(|r| r["name"] == name.as_str())?["peak"]
            .as_u64()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut flushed = None;
    while Instant::now() < deadline {
        flushed = running(&daemon.status()).filter(|p| *p >= 40 * MIB);
        if flushed.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let flushed = flushed.expect("the run never reached the store");
    let (status, _) = daemon.stop(Signal::SIGKILL);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );

    // Restart on the same store: it opens, and the run is there, once, with its peak.
    let daemon = Daemon::start(state.path(), &["--no-metrics"]);
    let after = daemon.status();
    assert!(running(&after).unwrap() >= flushed, "{after}");
    std::thread::sleep(Duration::from_millis(800));
    let later = daemon.status();
    let ours = later["running"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["name"] == name.as_str())
        .count();
    assert_eq!(
        ours, 1,
        "the restarted daemon continues the same run: {later}"
    );

    // SIGTERM: a clean exit with a final flush; the pid file goes away.
    let (status, log) = daemon.stop(Signal::SIGTERM);
    docker(&["rm", "-f", &id]);
    assert!(status.success(), "{log}");
    assert!(log.contains("guardian daemon stopped"), "{log}");
    assert!(!state.path().join("guardian.pid").exists());
}

#[test]
fn metrics_endpoint_serves_per_container_series() {
    require_docker();
    let state = tempfile::tempdir().unwrap();
    let port = 20000 + (std::process::id() % 20000) as u16;
    let listen = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(state.path(), &["--metrics-listen", &listen]);
    let name = unique("metrics");
    let id = docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--memory",
        "96m",
        IMAGE,
        "memload",
        "hog",
        "--step",
        "1m",
        "--max",
        "24m",
        "--hold-ms",
        "20000",
    ]);
    let scrape = || support::scrape_metrics(&listen);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut body = String::new();
    let series = format!("guardian_container_memory_working_set_bytes{{container=\"{name}\"");
    while Instant::now() < deadline && !body.contains(&series) {
        std::thread::sleep(Duration::from_millis(200));
        body = scrape();
    }
    docker(&["rm", "-f", &id]);
    drop(daemon);
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(
        body.contains(&series),
        "no working-set series for {name}:\n{body}"
    );
    let limit_line = body
        .lines()
        .find(|l| l.starts_with("guardian_container_memory_limit_bytes") && l.contains(&name))
        .unwrap();
    assert!(
        limit_line.ends_with(&(96 * MIB).to_string()),
        "{limit_line}"
    );
    assert!(body.contains("# TYPE guardian_oom_kills_total counter"));
}

#[test]
fn bad_input_gets_one_line_errors_and_exit_code_2() {
    require_docker();
    let empty = tempfile::tempdir().unwrap();
    let state_arg = empty.path().to_str().unwrap();
    let (status, _, stderr) = run_guardian(&["profile", "--state-dir", state_arg]);
    assert_eq!(status.code(), Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("start `guardian daemon` first"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("docker-compose.yml");
    std::fs::write(&bad, "services:\n  web:\n    image: [unclosed\n").unwrap();
    // A store with one run, so the error is about the compose file.
    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(state.path(), &["--no-metrics"]);
    let name = unique("bad");
    let id = docker(&["run", "-d", "--name", &name, IMAGE, "sleep", "2"]);
    std::thread::sleep(Duration::from_millis(800));
    drop(daemon);
    docker(&["rm", "-f", &id]);
    let s = state.path().to_str().unwrap();
    let (status, _, stderr) = run_guardian(&[
        "profile",
        "--check",
        "--state-dir",
        s,
        "-f",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(bad.to_str().unwrap()), "{stderr}");

    let (status, _, stderr) = run_guardian(&["profile", "--state-dir", s, "--service", "nope"]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("unknown service \"nope\""), "{stderr}");

    let config = dir.path().join("guardian.toml");
    std::fs::write(&config, "flush_interval = \"often\"\n").unwrap();
    let (status, _, stderr) = run_guardian(&[
        "daemon",
        "--config",
        config.to_str().unwrap(),
        "--state-dir",
        s,
    ]);
    assert_eq!(status.code(), Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("line 1") && stderr.contains("examples: 500ms"),
        "{stderr}"
    );
}

#[test]
fn status_restore_and_a_second_daemon_find_the_state_dir_through_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("guardian.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\nflush_interval = \"300ms\"\n[metrics]\nenabled = false\n",
            state.display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    // No --state-dir anywhere: the daemon and every command read it from the config file.
    let mut daemon = std::process::Command::new(support::guardian_bin())
        .args(["daemon", "--config", config, "--no-enforce"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !state.join("guardian.pid").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = daemon.id();

    let (status, stdout, stderr) = output(
        std::process::Command::new(support::guardian_bin())
            .args(["status", "--output", "json"])
            .env("GUARDIAN_CONFIG", config)
            .env_remove("GUARDIAN_STATE_DIR"),
    );
    assert!(status.success(), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["daemon_pid"], pid, "{report}");
    assert_eq!(
        report["store"],
        state.join("guardian.db").to_str().unwrap(),
        "{report}"
    );

    // The state directory is locked: a second daemon stops at once, naming the first.
    let started = Instant::now();
    let (status, _, stderr) = run_guardian(&["daemon", "--config", config, "--no-enforce"]);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("pid {pid}")), "{stderr}");

    let (status, _, stderr) = run_guardian(&["restore", "--config", config]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("pid {pid}")), "{stderr}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(daemon.wait().unwrap().success());
    // The daemon gone, the lock is free: restore runs even though pid files still name a live
    // process (as when a stale pid is reused).
    std::fs::write(state.join("guardian.pid"), "1\n").unwrap();
    std::fs::write(state.join("guardian.lock"), "1\n").unwrap();
    let (status, stdout, stderr) = run_guardian(&["restore", "--config", config]);
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("restored 0 value(s)"), "{stdout}");
}

#[test]
fn the_daemon_speaks_sd_notify_and_reloads_its_config_on_sighup() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let config = dir.path().join("guardian.toml");
    let state = dir.path().join("state");
    let config_text = |budget: &str| {
        format!(
            "state_dir = \"{}\"\n[metrics]\nenabled = false\n[[budget]]\nname = \"nobody-{}\"\nmemory = \"{budget}\"\n",
            state.display(),
            std::process::id()
        )
    };
    std::fs::write(&config, config_text("64m")).unwrap();
    // As systemd starts a Type=notify unit with WatchdogSec=2s: WATCHDOG_PID names the daemon
    // (the shell's pid, which exec hands to guardian).
    let mut daemon = std::process::Command::new("sh")
        .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""])
        .arg(support::guardian_bin())
        .args(["daemon", "--config", config.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "2000000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    let wait_for = |what: &str, seen: &mut String| {
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(20);
        while !seen.contains(what) {
            assert!(
                Instant::now() < deadline,
                "no {what} within 20 s; got {seen}"
            );
            let n = socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no {what} from the daemon ({e}); got {seen}"));
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            seen.push('\n');
        }
    };
    wait_for("READY=1", &mut seen);
    assert!(seen.contains("STATUS=recording"), "{seen}");
    // Fed about every second for a 2 s watchdog: two within 3 s of being ready.
    seen.clear();
    wait_for("WATCHDOG=1", &mut seen);
    seen.clear();
    wait_for("WATCHDOG=1", &mut seen);

    let pid = nix::unistd::Pid::from_raw(daemon.id() as i32);
    std::fs::write(&config, config_text("128m")).unwrap();
    nix::sys::signal::kill(pid, Signal::SIGHUP).unwrap();
    seen.clear();
    wait_for("STATUS=reloaded", &mut seen);
    // A config that no longer parses is refused; the daemon keeps running.
    std::fs::write(&config, "sample_interval = \"soon\"\n").unwrap();
    nix::sys::signal::kill(pid, Signal::SIGHUP).unwrap();
    seen.clear();
    wait_for("STATUS=reload failed", &mut seen);
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the daemon died on a bad reload"
    );

    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    seen.clear();
    wait_for("STOPPING=1", &mut seen);
    let out = daemon.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(log.contains("keeping the running configuration"), "{log}");
    // Each value put back is logged as `restored file=…`: a reload puts back none.
    assert!(
        !log.contains("restored file="),
        "a reload restores nothing: {log}"
    );
}

/// Run as root, guardian refuses files others could change: a config or the hook's program
/// writable by group/others stops the daemon with the fix (exit 2); such a profile file is
/// skipped with the reason, and its budgets are not used.
#[test]
fn files_others_can_write_are_refused_as_sshd_refuses_them() {
    use std::os::unix::fs::PermissionsExt;
    support::require_root();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let chmod = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let config = dir.path().join("guardian.toml");
    std::fs::write(&config, "[enforce]\nprofiles = []\n").unwrap();
    chmod(&config, 0o666);
    let (status, _, stderr) = run_guardian(&[
        "daemon",
        "--config",
        config.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("writable by non-root users")
            && stderr.contains(&format!("chmod go-w {}", config.display())),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");

    let hook = dir.path().join("hook.sh");
    std::fs::write(&hook, "#!/bin/sh\ntrue\n").unwrap();
    chmod(&hook, 0o777);
    std::fs::write(
        &config,
        format!("[incidents]\nhook = '{} \"$1\"'\n", hook.display()),
    )
    .unwrap();
    chmod(&config, 0o644);
    let (status, _, stderr) = run_guardian(&[
        "daemon",
        "--config",
        config.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("incident hook") && stderr.contains("hook.sh is writable"),
        "{stderr}"
    );

    let profiles = dir.path().join("profiles");
    std::fs::create_dir(&profiles).unwrap();
    let profile = profiles.join("ci.toml");
    std::fs::write(
        &profile,
        "schema = 1\ngenerated_at = \"2026-11-30T00:00:00Z\"\nmargin = 0.2\n\n[[service]]\nservice = \"web\"\nruns = 1\npeak = 1000\nstartup_peak = 1000\ntypical_working_set = 1000\noom_killed = false\nrecommended_limit = 83886080\nrecommended_reservation = 8388608\nreason = \"test\"\n",
    )
    .unwrap();
    chmod(&profile, 0o666);
    std::fs::write(
        &config,
        format!("[enforce]\nprofiles = [\"{}\"]\n", profiles.display()),
    )
    .unwrap();
    // A state directory left world-readable is made private.
    std::fs::create_dir(&state).unwrap();
    chmod(&state, 0o755);
    let daemon = Daemon::start(&state, &["--config", config.to_str().unwrap()]);
    std::thread::sleep(Duration::from_secs(1));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("guardian.db")), 0o600);
    let (_, log) = daemon.stop(Signal::SIGTERM);
    assert!(
        log.contains("profile skipped") && log.contains("ci.toml is writable by non-root users"),
        "{log}"
    );
}

/// A store file that is not guardian's (garbage here) holds the journal of original values:
/// `restore` refuses and names every cgroup that may still be changed (a frozen test cgroup),
/// and the daemon moves the file aside (kept, never deleted), says the same, and runs on a new
/// store.
#[test]
fn a_corrupt_store_is_moved_aside_and_what_may_be_changed_is_named() {
    support::require_root();
    let cg = support::TestCgroup::new("corrupt-store", "64m");
    std::fs::write(cg.unified_dir.join("cgroup.freeze"), "1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let garbage: Vec<u8> = (0..16384u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(state.join("guardian.db"), &garbage).unwrap();

    let (status, _, stderr) = run_guardian(&["restore", "--state-dir", state.to_str().unwrap()]);
    let frozen = cg.unified_dir.display().to_string();
    let thaw = || std::fs::write(cg.unified_dir.join("cgroup.freeze"), "0").unwrap();
    if status.code() != Some(2) || !stderr.contains(&format!("{frozen} is frozen")) {
        thaw();
        panic!("restore: {status:?} {stderr}");
    }
    assert!(
        stderr.contains("journal of original values cannot be read"),
        "{stderr}"
    );

    let daemon = Daemon::start(&state, &["--no-enforce"]);
    let status_json = daemon.status();
    let (_, log) = daemon.stop(Signal::SIGTERM);
    thaw();
    assert!(log.contains("the store was unreadable"), "{log}");
    assert!(log.contains(&format!("{frozen} is frozen")), "{log}");
    assert!(
        status_json.is_object(),
        "the new store answers: {status_json}"
    );
    let aside: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("guardian.db.unreadable-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "moved aside once");
    assert_eq!(
        std::fs::read(aside[0].path()).unwrap(),
        garbage,
        "kept as it was"
    );
}

/// The state directory on a small tmpfs that fills up: the daemon says so once (not at every
/// flush), keeps running, and writes again — what it held included — once space returns; the
/// store stays sound.
#[test]
fn a_full_disk_is_said_once_and_writing_resumes_when_space_returns() {
    support::require_root();
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let (status, _, stderr) = output(
        std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m", "guardian-test-full"])
            .arg(&state),
    );
    assert!(status.success(), "mount: {stderr}");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(state.clone());
    let name = unique("full-disk");
    let daemon = Daemon::start(&state, &["--no-enforce"]);
    std::thread::sleep(Duration::from_secs(1));
    // Fill what is left; dd stops at ENOSPC.
    let filler = state.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    docker(&["run", "-d", "--name", &name, IMAGE, "sleep", "300"]);
    // Many flushes (every 300 ms) fail while it is full.
    std::thread::sleep(Duration::from_secs(4));
    std::fs::remove_file(&filler).unwrap();
    let db = state.join("guardian.db");
    let runs_of = |name: &str| -> i64 {
        rusqlite::Connection::open(&db)
            .and_then(|c| {
                c.query_row("SELECT count(*) FROM runs WHERE name = ?1", [name], |r| {
                    r.get(0)
                })
            })
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = false;
    while Instant::now() < deadline && !seen {
        std::thread::sleep(Duration::from_millis(500));
        seen = runs_of(&name) > 0;
    }
    let (_, log) = daemon.stop(Signal::SIGTERM);
    docker(&["rm", "-f", &name]);
    assert_eq!(
        log.matches("the store cannot take writes").count(),
        1,
        "said once: {log}"
    );
    assert!(log.contains("the store takes writes again"), "{log}");
    assert!(
        seen,
        "the container's run reached the store after space returned: {log}"
    );
    let integrity: String = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
}
