//! `guardian up` and `guardian preflight` on a real compose stack whose services spike while
//! they start. The host's peak is the kernel's high-water mark of the cgroup every test
//! container lives under (the test engine's --cgroup-parent).

mod support;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use support::{compose, output, require_docker, run_guardian, unique};

const MIB: u64 = 1 << 20;

/// Five services that each spike by 96 MiB for 1.5 s while starting, then settle at 16 MiB;
/// app1-3 depend on db (app1 also on cache), db has a healthcheck.
const STACK: &str = include_str!("stacks/spiky-5.yml");

/// The high-water file of the cgroup all test containers live under.
fn containers_parent_peak_file() -> PathBuf {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    match own
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
    {
        Some(mem) => PathBuf::from(format!(
            "/sys/fs/cgroup/memory{}/guardian-test-docker/memory.max_usage_in_bytes",
            mem.trim_end_matches('/')
        )),
        None => {
            let uni = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
            PathBuf::from(format!(
                "/sys/fs/cgroup{}/guardian-test-docker/memory.peak",
                uni.trim_end_matches('/')
            ))
        }
    }
}

/// Resets the parent's high-water mark (v1 takes a write of 0; v2 memory.peak takes any write
/// since 6.12), runs `f`, and returns the peak during it.
fn host_peak_during(f: impl FnOnce()) -> u64 {
    let file = containers_parent_peak_file();
    std::fs::write(&file, "0").unwrap_or_else(|e| panic!("resetting {}: {e}", file.display()));
    f();
    std::fs::read_to_string(&file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn down(project: &str, file: &Path) {
    let _ = output(
        compose()
            .args(["-p", project, "-f"])
            .arg(file)
            .args(["down", "-t", "1"]),
    );
}

/// Waits until every container of `project` is running (and healthy where it has a check) and
/// its spike is over.
fn wait_settled(project: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, ps, _) = output(std::process::Command::new("docker").args([
            "ps",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
            "--format",
            "{{.Status}}",
        ]));
        let lines: Vec<&str> = ps.lines().collect();
        if lines.len() == 5
            && lines
                .iter()
                .all(|s| s.starts_with("Up") && !s.contains("starting"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the plain stack never came up: {ps}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
}

#[test]
fn staged_start_lowers_the_host_peak_and_respects_depends_on() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docker-compose.yml");
    std::fs::write(&file, STACK).unwrap();
    let f = file.to_str().unwrap();

    // Plain compose: every service spikes at once.
    let plain = unique("plain");
    let plain_peak = host_peak_during(|| {
        let (status, _, stderr) = output(compose().args(["-p", &plain, "-f", f, "up", "-d"]));
        assert!(status.success(), "compose up: {stderr}");
        wait_settled(&plain);
    });
    down(&plain, &file);

    // guardian up with no history: dependency order, at most two starting at once.
    let state = tempfile::tempdir().unwrap();
    let staged = unique("staged");
    let mut summary = Value::Null;
    let staged_peak = host_peak_during(|| {
        let (status, stdout, stderr) = run_guardian(&[
            "up",
            "--output",
            "json",
            "-f",
            f,
            "-p",
            &staged,
            "--state-dir",
            state.path().to_str().unwrap(),
        ]);
        assert!(status.success(), "guardian up failed: {stderr}\n{stdout}");
        summary = serde_json::from_str(&stdout).unwrap();
    });
    down(&staged, &file);

    println!(
        "host peak: plain compose up {} MiB, guardian up {} MiB",
        plain_peak / MIB,
        staged_peak / MIB
    );
    assert!(
        plain_peak > 4 * 100 * MIB,
        "the plain start spiked together: {plain_peak}"
    );
    assert!(
        (staged_peak as f64) <= 0.6 * plain_peak as f64,
        "guardian up peaked at {staged_peak}, plain compose at {plain_peak}"
    );
    assert_eq!(summary["all_ready"], true, "{summary}");
    let services = summary["services"].as_array().unwrap();
    assert_eq!(services.len(), 5);
    let get = |name: &str| services.iter().find(|s| s["service"] == name).unwrap();
    for (service, deps) in [
        ("app1", &["db", "cache"][..]),
        ("app2", &["db"][..]),
        ("app3", &["db"][..]),
    ] {
        for dep in deps {
            assert!(
                get(service)["started_ms"].as_u64() >= get(dep)["ready_ms"].as_u64(),
                "{service} started before {dep} was ready: {summary}"
            );
        }
    }
    // Each start-up peak was recorded: the spike, not the settled 16 MiB.
    for s in services {
        assert!(s["startup_peak"].as_u64().unwrap() > 100 * MIB, "{s}");
    }

    // With that history, preflight knows every service and the plan fits 400 MiB but not 96 MiB.
    let state_arg = state.path().to_str().unwrap();
    let (status, stdout, stderr) = run_guardian(&[
        "preflight",
        "--output",
        "json",
        "-f",
        f,
        "-p",
        &staged,
        "--state-dir",
        state_arg,
        "--available",
        "400m",
        "--reserve",
        "0",
    ]);
    assert!(status.success(), "{stdout}{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert!(report["unknown"].as_array().unwrap().is_empty(), "{report}");
    assert!(report["services"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["source"] == "recorded"));
    let (status, stdout, _) = run_guardian(&[
        "preflight",
        "-f",
        f,
        "-p",
        &staged,
        "--state-dir",
        state_arg,
        "--available",
        "96m",
        "--reserve",
        "0",
    ]);
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert!(
        stdout.lines().last().unwrap().starts_with("DOES NOT FIT"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("db") && l.contains("recorded")),
        "{stdout}"
    );
}

#[test]
fn preflight_without_history_uses_limits_and_fails_a_small_host() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docker-compose.yml");
    std::fs::write(&file, STACK).unwrap();
    let empty = tempfile::tempdir().unwrap();
    let (status, stdout, stderr) = run_guardian(&[
        "preflight",
        "--output",
        "json",
        "-f",
        file.to_str().unwrap(),
        "--state-dir",
        empty.path().to_str().unwrap(),
        "--available",
        "512m",
    ]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["fits"], false);
    // 5 × the 256 MiB limit, planned against 512 MiB − 256 MiB of reserve.
    assert_eq!(report["steady_total"], 5 * 256 * MIB);
    assert_eq!(report["budget"], 256 * MIB);
    assert!(report["services"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["source"] == "limit"));
}

#[test]
fn bad_stacks_get_one_line_errors() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("docker-compose.yml");
    std::fs::write(&bad, "services:\n  web:\n    image: [unclosed\n").unwrap();
    let b = bad.to_str().unwrap();
    for cmd in ["up", "preflight"] {
        let (status, _, stderr) = run_guardian(&[cmd, "-f", b]);
        assert_eq!(status.code(), Some(2), "{cmd}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{cmd}: {stderr}");
        assert!(stderr.contains(b), "{cmd}: {stderr}");
    }
    let good = dir.path().join("ok.yml");
    std::fs::write(&good, STACK).unwrap();
    let (status, _, stderr) = run_guardian(&["up", "-f", good.to_str().unwrap(), "nosuchservice"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("unknown service \"nosuchservice\""),
        "{stderr}"
    );
    // No compose tool on PATH.
    let (status, _, stderr) = output(
        std::process::Command::new(support::guardian_bin())
            .args(["preflight", "-f", good.to_str().unwrap()])
            .env("PATH", "/nonexistent"),
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no compose tool found"), "{stderr}");
}

#[test]
fn ctrl_c_stops_starting_services_and_leaves_the_started_ones_running() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("compose.yml");
    std::fs::write(&file, STACK).unwrap();
    let project = unique("ctrlc");
    let state = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(support::guardian_bin())
        .args(["up", "--output", "json", "-f"])
        .arg(&file)
        .args(["-p", &project, "--state-dir"])
        .arg(state.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the first wave (db, cache) exists: app1-3 wait for db to be ready.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let running = || {
        support::docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
        ])
        .lines()
        .count()
    };
    while running() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let left_running = running();
    down(&project, &file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(summary["interrupted"], true);
    assert_eq!(out.status.code(), Some(1), "not all services are ready");
    let services = summary["services"].as_array().unwrap();
    let waiting: Vec<&str> = services
        .iter()
        .filter(|s| s["state"] == "waiting")
        .map(|s| s["service"].as_str().unwrap())
        .collect();
    assert!(waiting.contains(&"app1"), "{summary}");
    let started = services.iter().filter(|s| s["order"].is_u64()).count();
    assert!(started >= 1, "{summary}");
    assert_eq!(
        left_running, started,
        "what was started is left running, nothing else"
    );
}
