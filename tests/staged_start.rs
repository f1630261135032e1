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

/// Five services that each spike by 120 MiB for 3 s while starting, settle at 8 MiB and are
/// healthy 6 s after they start; app1 waits for db healthy and cache started, app2 and app3 for
/// db started.
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
    // Page cache of containers removed earlier (other tests, other runs) stays charged to the
    // parent and would count in this peak: reclaim it first (best effort: v1 force_empty, v2
    // memory.reclaim; neither exists on every kernel).
    let dir = file.parent().unwrap();
    let _ = std::fs::write(dir.join("memory.force_empty"), "0");
    let _ = std::fs::write(dir.join("memory.reclaim"), "1G");
    std::fs::write(&file, "0").unwrap_or_else(|e| panic!("resetting {}: {e}", file.display()));
    f();
    std::fs::read_to_string(&file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Runs `guardian up --output json` once on `yaml` (then `down`): its status, JSON summary and
/// stderr.
fn up_once(yaml: &str, name: &str, extra: &[&str]) -> (std::process::ExitStatus, Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("compose.yml");
    std::fs::write(&file, yaml).unwrap();
    let project = unique(name);
    let mut args = vec![
        "up",
        "--output",
        "json",
        "-f",
        file.to_str().unwrap(),
        "-p",
        &project,
        "--state-dir",
        dir.path().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (status, stdout, stderr) = run_guardian(&args);
    down(&project, &file);
    let summary =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    (status, summary, stderr)
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

    // Plain compose: db, cache, app2 and app3 spike at once (app1 waits for db healthy).
    let plain = unique("plain");
    let plain_peak = host_peak_during(|| {
        let (status, _, stderr) = output(compose().args(["-p", &plain, "-f", f, "up", "-d"]));
        assert!(status.success(), "compose up: {stderr}");
        wait_settled(&plain);
    });
    down(&plain, &file);

    // guardian up, first with no history (dependency order, at most two starting at once),
    // then with the start-up peaks that run recorded and a budget of 60 % of the plain peak.
    let state = tempfile::tempdir().unwrap();
    let staged = unique("staged");
    let guardian_up = |extra: &[&str]| {
        let mut summary = Value::Null;
        let peak = host_peak_during(|| {
            let mut args = vec![
                "up",
                "--output",
                "json",
                "-f",
                f,
                "-p",
                &staged,
                "--state-dir",
                state.path().to_str().unwrap(),
            ];
            args.extend_from_slice(extra);
            let (status, stdout, stderr) = run_guardian(&args);
            assert!(status.success(), "guardian up failed: {stderr}\n{stdout}");
            summary = serde_json::from_str(&stdout).unwrap();
        });
        down(&staged, &file);
        (peak, summary)
    };
    let (staged_peak, summary) = guardian_up(&[]);

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
        (staged_peak as f64) <= 0.75 * plain_peak as f64,
        "guardian up peaked at {staged_peak}, plain compose at {plain_peak}"
    );
    assert_eq!(summary["all_ready"], true, "{summary}");
    let services = summary["services"].as_array().unwrap();
    assert_eq!(services.len(), 5);
    let get = |name: &str| services.iter().find(|s| s["service"] == name).unwrap();
    // Each waited for what compose waits for (db healthy, or just started) and for the
    // dependency's memory to be calm.
    let ms = |service: &str, key: &str| {
        get(service)[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{service} has no {key}: {summary}"))
    };
    for (service, dep, key) in [
        ("app1", "db", "ready_ms"),
        ("app1", "cache", "calm_ms"),
        ("app2", "db", "calm_ms"),
        ("app3", "db", "calm_ms"),
    ] {
        assert!(
            ms(service, "started_ms") >= ms(dep, key),
            "{service} started before {dep}'s {key}: {summary}"
        );
    }
    assert!(ms("db", "ready_ms") >= ms("db", "calm_ms"), "{summary}");
    // Each start-up peak was recorded: the spike, not the settled 8 MiB.
    for s in services {
        assert!(s["startup_peak"].as_u64().unwrap() > 100 * MIB, "{s}");
    }

    // With that history and a budget, admission goes by bytes: the peak stays within it.
    let budget = plain_peak * 6 / 10;
    let (budget_peak, summary) = guardian_up(&[
        "--available",
        &budget.to_string(),
        "--reserve",
        "0",
        "--max-parallel",
        "5",
    ]);
    println!(
        "with history and a budget of {} MiB: {} MiB",
        budget / MIB,
        budget_peak / MIB
    );
    assert_eq!(summary["all_ready"], true, "{summary}");
    assert!(
        budget_peak <= budget,
        "peaked at {budget_peak} with a budget of {budget}: {summary}"
    );

    // With that history, preflight knows every service and the plan fits 400 MiB but not 96 MiB.
    let state_arg = state.path().to_str().unwrap();
    // The same preflight for this project and for a renamed one: a CI job that names each
    // run's project anew still finds the peaks by service and image.
    let preflight_json = |project: &str| {
        let (status, stdout, stderr) = run_guardian(&[
            "preflight",
            "--output",
            "json",
            "-f",
            f,
            "-p",
            project,
            "--state-dir",
            state_arg,
            "--available",
            "400m",
            "--reserve",
            "0",
        ]);
        assert!(status.success(), "{stdout}{stderr}");
        serde_json::from_str::<Value>(&stdout).unwrap()
    };
    let report = preflight_json(&staged);
    assert!(report["unknown"].as_array().unwrap().is_empty(), "{report}");
    assert!(report["services"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["source"] == "recorded"));
    let elsewhere = preflight_json(&format!("{staged}-next"));
    assert_eq!(
        elsewhere["services"],
        report["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let mut s = s.clone();
                s["source"] = "recorded_elsewhere".into();
                s
            })
            .collect::<Value>(),
        "the same needs, marked as recorded for another project"
    );
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
fn preflight_without_history_treats_limits_as_ceilings_and_cannot_tell_yet() {
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
    // Limits say what a service may hold, not what it needs: no "does not fit" from them.
    assert_eq!(status.code(), Some(4), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["fits"], false);
    assert_eq!(report["verdict"], "cannot_tell");
    // 5 × the 256 MiB limit as a ceiling, against 512 MiB − 256 MiB of reserve.
    assert_eq!(report["bounded_ceiling"], 5 * 256 * MIB);
    assert_eq!(report["known_steady"], 0);
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
    let (status, _, stderr) =
        run_guardian(&["up", "-f", good.to_str().unwrap(), "--max-parallel", "0"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--max-parallel must be at least 1"),
        "{stderr}"
    );
    // No compose tool on PATH.
    let (status, _, stderr) = output(
        std::process::Command::new(support::guardian_bin())
            .args(["preflight", "-f", good.to_str().unwrap()])
            .env("PATH", "/nonexistent")
            .env_remove("GUARDIAN_COMPOSE"),
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

/// The migration runs flat for 3 s, longer than the 2 s settle window: it must still be waited
/// for until it exits, not taken as ready while it runs.
#[test]
fn a_one_shot_service_that_completes_lets_its_dependents_start() {
    require_docker();
    let (status, summary, stderr) = up_once(
        "version: \"2.4\"\n\
         services:\n\
         \x20 migrate:\n\
         \x20   image: guardian-test/memload\n\
         \x20   command: memload spike --delay-ms 0 --base 4m --spike 32m --spike-ms 300 --hold-ms 3000\n\
         \x20 app:\n\
         \x20   image: guardian-test/memload\n\
         \x20   command: memload spike --delay-ms 0 --base 4m --spike 8m --spike-ms 100 --hold-ms 600000\n\
         \x20   depends_on:\n\
         \x20     migrate:\n\
         \x20       condition: service_completed_successfully\n",
        "oneshot",
        &[],
    );
    assert!(status.success(), "{stderr}\n{summary}");
    let services = summary["services"].as_array().unwrap();
    let get = |name: &str| services.iter().find(|s| s["service"] == name).unwrap();
    assert_eq!(get("migrate")["state"], "completed", "{summary}");
    assert_eq!(get("app")["state"], "healthy", "{summary}");
    assert!(
        get("app")["started_ms"].as_u64().unwrap() >= get("migrate")["ready_ms"].as_u64().unwrap(),
        "{summary}"
    );
}

#[test]
fn services_too_big_for_the_budget_start_one_at_a_time_instead_of_never() {
    require_docker();
    let service = "    image: guardian-test/memload\n    command: memload spike --delay-ms 0 --base 4m --spike 8m --spike-ms 100 --hold-ms 600000\n    mem_limit: 256m\n";
    // Each is expected to need its 256 MiB limit; the budget is 64 MiB.
    let (status, summary, stderr) = up_once(
        &format!("version: \"2.4\"\nservices:\n  big1:\n{service}  big2:\n{service}"),
        "toobig",
        &["--available", "64m", "--reserve", "0"],
    );
    assert!(status.success(), "{stderr}\n{summary}");
    assert_eq!(summary["all_ready"], true, "{summary}");
    let services = summary["services"].as_array().unwrap();
    assert!(
        services.iter().all(|s| s["over_budget"] == true),
        "{summary}"
    );
    assert_eq!(
        stderr.matches("does not fit even alone").count(),
        2,
        "one warning per service: {stderr}"
    );
    // Alone: the second started only once the first was ready.
    let mut by_order: Vec<&Value> = services.iter().collect();
    by_order.sort_by_key(|s| s["order"].as_u64());
    assert!(
        by_order[1]["started_ms"].as_u64().unwrap() >= by_order[0]["ready_ms"].as_u64().unwrap(),
        "{summary}"
    );
}
