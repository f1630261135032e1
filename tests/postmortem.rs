//! OOM post-mortems against the real kernel and a real dockerd: a compose service killed at its
//! limit gets a report naming it, matching the kernel's own log line, with the climb before the
//! kill; a kill guardian did not watch still gets one; the SVG and HTML open in real renderers;
//! and a crash never leaves a half-written report.

mod support;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use guardian::{
    model::{Bytes, Incident, Point, Victim},
    store::Store,
};
use nix::sys::signal::Signal;
use serde_json::Value;
use support::{compose, docker, output, require_docker, run_guardian, unique, Daemon};

const MIB: u64 = 1 << 20;

fn incidents(state: &Path) -> Vec<Value> {
    let (status, stdout, stderr) = run_guardian(&[
        "report",
        "list",
        "--state-dir",
        state.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert!(status.success(), "guardian report list: {stderr}");
    serde_json::from_str(&stdout).unwrap()
}

fn wait_incident(state: &Path, pred: impl Fn(&Value) -> bool) -> Option<Value> {
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        if let Some(i) = incidents(state).into_iter().find(&pred) {
            return Some(i);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    None
}

/// The kernel's own "Killed process N (comm)" lines, from its log.
fn kernel_kill_lines() -> Vec<String> {
    let out = Command::new("dmesg").output().expect("running dmesg");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("Killed process"))
        .map(str::to_string)
        .collect()
}

fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&png[16..20]), be(&png[20..24]))
}

#[test]
fn a_compose_service_killed_at_its_limit_gets_a_report_naming_it() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let hook_copy = dir.path().join("hook-got.md");
    let hook_env = dir.path().join("hook-env");
    let hook_stdin = dir.path().join("hook-stdin.json");
    let config = dir.path().join("guardian.toml");
    std::fs::write(
        &config,
        format!(
            "[incidents]\nhook = 'env > {}; cat > {}; cp \"$1\" {}'\n[enforce]\nprofiles = []\n",
            hook_env.display(),
            hook_stdin.display(),
            hook_copy.display()
        ),
    )
    .unwrap();
    let project = unique("pm");
    let file = dir.path().join("compose.yml");
    std::fs::write(
        &file,
        "version: \"2.4\"\nservices:\n  worker:\n    image: guardian-test/memload\n    command: memload staircase --step 4m --every-ms 200 --max 160m --hold-ms 60000\n    mem_limit: 64m\n",
    )
    .unwrap();
    let daemon = Daemon::start(
        &state,
        &["--config", config.to_str().unwrap(), "--no-metrics"],
    );
    let f = file.to_str().unwrap();
    let (status, _, stderr) = output(compose().args(["-p", &project, "-f", f, "up", "-d"]));
    assert!(status.success(), "compose up: {stderr}");
    let incident = wait_incident(&state, |i| i["container"]["project"] == project.as_str());
    let kernel_lines = kernel_kill_lines();
    let (_, md, _) = run_guardian(&[
        "report",
        "show",
        "--state-dir",
        state.to_str().unwrap(),
        incident.as_ref().map_or("-", |i| i["id"].as_str().unwrap()),
    ]);
    let (junit_status, junit, _) = run_guardian(&[
        "report",
        "ci",
        "--state-dir",
        state.to_str().unwrap(),
        "--format",
        "junit",
        "--project",
        &project,
    ]);
    let (_, github, _) = run_guardian(&[
        "report",
        "ci",
        "--state-dir",
        state.to_str().unwrap(),
        "--project",
        &project,
    ]);
    let (_, log) = daemon.stop(Signal::SIGTERM);
    let _ = output(compose().args(["-p", &project, "-f", f, "down", "-t", "1"]));

    let i = incident.unwrap_or_else(|| panic!("no report for {project}; daemon log:\n{log}"));
    assert_eq!(i["name"], format!("{project}/worker"));
    assert_eq!(i["container"]["service"], "worker");
    assert_eq!(i["kind"], "cgroup", "{i}");
    assert_eq!(i["limit"], 64 * MIB);
    // The victim is the one the kernel's log names.
    let pid = i["victim"]["pid"].as_u64().expect("the victim's pid");
    let comm = i["victim"]["comm"].as_str().unwrap();
    assert_eq!(comm, "memload");
    let wanted = format!("Killed process {pid} ({comm})");
    assert!(
        kernel_lines.iter().any(|l| l.contains(&wanted)),
        "the kernel log has no {wanted:?}: {kernel_lines:?}"
    );
    assert!(i["kernel_line"].as_str().unwrap().contains(&wanted));
    // The climb before the kill.
    let timeline: Vec<(i64, u64)> = i["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["t_ms"].as_i64().unwrap(), p["bytes"].as_u64().unwrap()))
        .collect();
    let before: Vec<&(i64, u64)> = timeline.iter().filter(|(t, _)| *t < 0).collect();
    assert!(before.len() >= 5, "{timeline:?}");
    assert!(
        before.last().unwrap().1 > before.first().unwrap().1 + 16 * MIB,
        "no climb in {timeline:?}"
    );
    assert!(i["suggested_limit"].as_u64().unwrap() >= 64 * MIB * 12 / 10);
    let next = i["next_step"].as_str().unwrap();
    assert!(
        next.contains("hit its own memory limit of 64.0MiB"),
        "{next}"
    );
    let sources: Vec<&str> = i["sources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        sources.contains(&"ebpf") && sources.contains(&"kernel log"),
        "{sources:?}"
    );

    // The files, the hook, `report show` and `report ci`.
    let id = i["id"].as_str().unwrap();
    let reports = state.join("reports");
    let md_file = std::fs::read_to_string(reports.join(format!("{id}.md"))).unwrap();
    assert_eq!(md, md_file);
    assert!(
        md.starts_with(&format!("# OOM kill: {project}/worker (cgroup OOM")),
        "{md}"
    );
    assert_eq!(
        std::fs::read_to_string(&hook_copy).unwrap(),
        md_file,
        "the hook got the report"
    );
    // The hook's environment and stdin carry the incident.
    let env_text = std::fs::read_to_string(&hook_env).unwrap();
    let env: std::collections::HashMap<&str, &str> =
        env_text.lines().filter_map(|l| l.split_once('=')).collect();
    let report_path = reports.join(format!("{id}.md"));
    for (key, want) in [
        ("GUARDIAN_INCIDENT_ID", id.to_string()),
        ("GUARDIAN_KIND", "oom".to_string()),
        ("GUARDIAN_OOM_KIND", "cgroup".to_string()),
        (
            "GUARDIAN_CONTAINER",
            i["container"]["name"].as_str().unwrap().to_string(),
        ),
        ("GUARDIAN_PROJECT", project.clone()),
        ("GUARDIAN_SERVICE", "worker".to_string()),
        ("GUARDIAN_VICTIM_PID", pid.to_string()),
        ("GUARDIAN_VICTIM_COMM", "memload".to_string()),
        ("GUARDIAN_REPORT", report_path.display().to_string()),
    ] {
        assert_eq!(
            env.get(key).copied(),
            Some(want.as_str()),
            "{key} in\n{env_text}"
        );
    }
    let stdin: Value =
        serde_json::from_str(&std::fs::read_to_string(&hook_stdin).unwrap()).unwrap();
    for key in ["id", "name", "kind", "victim", "container", "limit"] {
        assert_eq!(
            stdin[key], i[key],
            "the hook's stdin is the incident's JSON: {key}"
        );
    }
    assert_eq!(junit_status.code(), Some(1), "a run with kills fails");
    assert!(junit.contains("<failure message=\"OOM kill of"), "{junit}");
    assert!(
        github.starts_with(&format!("::error title=OOM kill%3A {project}/worker::")),
        "{github}"
    );

    // The SVG renders to a PNG with a real renderer, the HTML opens in headless Chromium.
    let html_path = reports.join(format!("{id}.html"));
    let html = std::fs::read_to_string(&html_path).unwrap();
    let svg = &html[html.find("<svg").unwrap()..html.find("</svg>").unwrap() + 6];
    let svg_path = dir.path().join("timeline.svg");
    let png_path = dir.path().join("timeline.png");
    std::fs::write(&svg_path, svg).unwrap();
    let (status, _, stderr) = output(
        Command::new("rsvg-convert")
            .arg("-o")
            .arg(&png_path)
            .arg(&svg_path),
    );
    assert!(status.success(), "rsvg-convert: {stderr}");
    let png = std::fs::read(&png_path).unwrap();
    assert_eq!(png_size(&png), (720, 260));
    assert!(png.len() > 2000, "a near-empty PNG: {} bytes", png.len());
    let (status, dom, stderr) = output(Command::new("chromium").args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--dump-dom",
        &format!("file://{}", html_path.display()),
    ]));
    assert!(status.success(), "chromium: {stderr}");
    assert!(dom.contains("<svg") && dom.contains("polyline"), "{dom}");
    assert!(dom.contains(&format!("OOM kill: {project}/worker")));
}

#[test]
fn a_kill_guardian_did_not_watch_still_gets_a_report() {
    require_docker();
    let name = unique("unwatched");
    // Killed before the daemon starts.
    let _ = output(Command::new("docker").args([
        "run",
        "--name",
        &name,
        "--memory",
        "32m",
        "guardian-test/memload",
        "memload",
        "hog",
        "--step",
        "1m",
    ]));
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let daemon = Daemon::start(&state, &["--no-metrics"]);
    let incident = wait_incident(&state, |i| i["name"] == name.as_str());
    let (_, log) = daemon.stop(Signal::SIGTERM);
    docker(&["rm", "-f", &name]);
    let i = incident.unwrap_or_else(|| panic!("no report for {name}; daemon log:\n{log}"));
    assert_eq!(i["limit"], 32 * MIB);
    assert_eq!(i["exit_code"], 137);
    // The kernel's log buffer names the killed task's cgroup; Docker's OOMKilled flag is the
    // other witness, but it misses kills now and then when several happen at once.
    let sources: Vec<&str> = i["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(sources.contains(&"kernel log"), "{i}");
    assert!(
        sources
            .iter()
            .all(|s| ["docker state", "kernel log"].contains(s)),
        "{i}"
    );
    assert_eq!(i["kind"], "cgroup", "{i}");
    let line = i["kernel_line"].as_str().unwrap();
    assert!(
        line.contains(&format!("Killed process {}", i["victim"]["pid"])),
        "{i}"
    );
    assert!(
        i["notes"][0].as_str().unwrap().contains("not watching"),
        "{i}"
    );
    assert!(i["next_step"].as_str().unwrap().contains(name.as_str()));
}

#[test]
fn after_a_crash_reports_are_complete_or_absent_never_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let reports = state.join("reports");
    std::fs::create_dir_all(&reports).unwrap();
    // What a SIGKILL between the store's commit and the files leaves: the incident in the store,
    // a partial temporary file, no report files.
    let store = Store::open(&state).unwrap();
    let incident = Incident {
        id: "20261125T000000Z-ci-db-42".into(),
        time: "2026-11-25T00:00:00Z".into(),
        // Yesterday: within the incidents' retention (90 days), which the daemon prunes at start.
        at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
            - 86_400_000,
        name: "ci/db".into(),
        cgroup: Some("/docker/abc".into()),
        victim: Victim {
            pid: Some(42),
            comm: Some("postgres".into()),
            ..Default::default()
        },
        limit: Some(Bytes(64 * MIB)),
        peak: Some(Bytes(64 * MIB)),
        exit_code: Some(137),
        timeline: vec![Point {
            t_ms: -1000,
            bytes: Bytes(60 * MIB),
        }],
        suggested_limit: Some(Bytes(80 * MIB)),
        suggestion: "test".into(),
        next_step: "Raise it.".into(),
        sources: vec!["ebpf".into()],
        ..Default::default()
    };
    store.put_incident(&incident).unwrap();
    drop(store);
    std::fs::write(
        reports.join(format!("{}.html.tmp", incident.id)),
        "<!doctype html><html><bo",
    )
    .unwrap();

    let daemon = Daemon::start(&state, &["--no-metrics"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let html = reports.join(format!("{}.html", incident.id));
    while !html.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, log) = daemon.stop(Signal::SIGTERM);
    let names: Vec<String> = std::fs::read_dir(&reports)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.ends_with(".tmp")),
        "{names:?}\n{log}"
    );
    for ext in ["md", "json", "html"] {
        assert!(
            names.contains(&format!("{}.{ext}", incident.id)),
            "{names:?}\n{log}"
        );
    }
    assert!(std::fs::read_to_string(&html)
        .unwrap()
        .trim_end()
        .ends_with("</html>"));
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(reports.join(format!("{}.json", incident.id))).unwrap(),
    )
    .unwrap();
    assert_eq!(json["victim"]["comm"], "postgres");
}

/// A daemon with the default one-second sampling, so only fast sampling can catch a short life.
fn daemon_with_default_sampling(state: &Path, config: &Path) -> Daemon {
    let child = Command::new(support::guardian_bin())
        .args(["daemon", "--state-dir", state.to_str().unwrap()])
        .args(["--config", config.to_str().unwrap(), "--no-metrics"])
        .args(["--flush-interval", "300ms"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting guardian daemon");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !state.join("guardian.pid").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        state.join("guardian.pid").exists(),
        "the daemon did not start"
    );
    // Docker connected and the inventory read: the first container event is seen.
    std::thread::sleep(Duration::from_millis(1500));
    Daemon {
        child,
        state_dir: state.to_path_buf(),
    }
}

fn empty_config(dir: &Path) -> std::path::PathBuf {
    let config = dir.join("guardian.toml");
    std::fs::write(&config, "[enforce]\nprofiles = []\n").unwrap();
    config
}

/// Docker's own State of a container, as `docker inspect` prints it.
fn docker_state(name: &str) -> Value {
    serde_json::from_str(&docker(&["inspect", "-f", "{{json .State}}", name])).unwrap()
}

/// The v1 memory cgroup directory of a running container (the host's memory controller is on
/// v1), or its unified directory on a pure v2 host.
fn memory_cgroup_dir(name: &str) -> std::path::PathBuf {
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", name]);
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v1 = own.lines().find_map(|l| {
        let mut p = l.splitn(3, ':');
        let (_, c, path) = (p.next()?, p.next()?, p.next()?);
        c.split(',')
            .any(|c| c == "memory")
            .then(|| format!("/sys/fs/cgroup/memory{path}"))
    });
    match v1 {
        Some(dir) => dir.into(),
        None => support::container_cgroup(name).1,
    }
}

fn stat_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} "))?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in memory.stat:\n{text}"))
}

fn points_before_kill(i: &Value) -> Vec<(i64, u64)> {
    i["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["t_ms"].as_i64().unwrap(), p["bytes"].as_u64().unwrap()))
        .filter(|(t, _)| *t < 0)
        .collect()
}

#[test]
fn a_container_killed_within_a_second_still_shows_its_climb() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = empty_config(dir.path());
    let name = unique("fastclimb");
    let daemon = daemon_with_default_sampling(&state, &config);
    // 48 MiB limit, 8 MiB more every 40 ms towards 256 MiB: killed ~0.3 s after the start, well
    // inside one normal sampling interval (1 s).
    let (status, _, stderr) = output(Command::new("docker").args([
        "run",
        "--name",
        &name,
        "--memory",
        "48m",
        "--memory-swap",
        "48m",
        "guardian-test/memload",
        "memload",
        "staircase",
        "--step",
        "8m",
        "--every-ms",
        "40",
        "--max",
        "256m",
    ]));
    let incident = wait_incident(&state, |i| i["name"] == name.as_str());
    let (_, log) = daemon.stop(Signal::SIGTERM);
    let docker_state = docker_state(&name);
    docker(&["rm", "-f", &name]);
    assert_eq!(status.code(), Some(137), "memload was not killed: {stderr}");
    assert_eq!(docker_state["ExitCode"], 137);
    let lived_ms = support_lifetime_ms(&docker_state);
    assert!(lived_ms < 1000, "the container lived {lived_ms} ms");
    let i = incident.unwrap_or_else(|| panic!("no report for {name}; daemon log:\n{log}"));
    let before = points_before_kill(&i);
    assert!(
        before.len() >= 4,
        "too few points before the kill: {before:?}"
    );
    let rises = before.windows(2).filter(|w| w[1].1 > w[0].1).count();
    assert!(rises >= 3, "no climb in {before:?}");
    assert!(
        before.last().unwrap().1 >= before.first().unwrap().1 + 16 * MIB,
        "no climb in {before:?}"
    );
    // The kernel's high-water mark closes the climb at the kill, at the 48 MiB limit.
    let last = i["timeline"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["t_ms"], 0, "{i}");
    assert!(last["bytes"].as_u64().unwrap() + MIB >= 48 * MIB, "{i}");
    // Still climbing when killed: the suggestion is a floor with the +100 MiB minimum.
    assert!(i["climb_per_s"].as_u64().unwrap() >= MIB, "{i}");
    assert_eq!(i["suggested_limit"], 152 * MIB, "{i}");
    assert!(
        i["next_step"].as_str().unwrap().contains("still growing"),
        "{i}"
    );
}

/// How long a finished container ran, from Docker's State.StartedAt and FinishedAt.
fn support_lifetime_ms(state: &Value) -> i64 {
    let ms = |k: &str| {
        humantime::parse_rfc3339(state[k].as_str().unwrap())
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    ms("FinishedAt") - ms("StartedAt")
}

#[test]
fn tmpfs_that_filled_the_limit_is_named_with_the_containers_mounts() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let name = unique("shmfill");
    let daemon = Daemon::start(&state, &["--no-metrics"]);
    std::thread::sleep(Duration::from_millis(1000));
    // dd writes 100 MB into a 256 MiB /dev/shm of a 64 MiB container: the kernel kills dd, the
    // files stay charged, and the shell goes on so the test can read the cgroup afterwards.
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--memory",
        "64m",
        "--memory-swap",
        "64m",
        "--shm-size",
        "256m",
        "guardian-test/memload",
        "sh",
        "-c",
        "dd if=/dev/zero of=/dev/shm/fill bs=1M count=100; sleep 60",
    ]);
    let incident = wait_incident(&state, |i| i["name"] == name.as_str());
    let stat = std::fs::read_to_string(memory_cgroup_dir(&name).join("memory.stat")).unwrap();
    let oom_control = std::fs::read_to_string(memory_cgroup_dir(&name).join("memory.oom_control"))
        .unwrap_or_default();
    let md = incident.as_ref().map(|i| {
        run_guardian(&[
            "report",
            "show",
            "--state-dir",
            state.to_str().unwrap(),
            i["id"].as_str().unwrap(),
        ])
        .1
    });
    let (_, log) = daemon.stop(Signal::SIGTERM);
    docker(&["rm", "-f", &name]);
    let i = incident.unwrap_or_else(|| panic!("no report for {name}; daemon log:\n{log}"));
    let md = md.unwrap();
    assert_eq!(i["victim"]["comm"], "dd", "{i}");
    // The kernel's own breakdown, read just after: the shmem is still charged.
    let v1 = stat.contains("total_shmem");
    let key = if v1 { "total_shmem" } else { "shmem" };
    let shmem_now = stat_field(&stat, key);
    assert!(shmem_now >= 60 * MIB, "memory.stat now:\n{stat}");
    if v1 {
        assert!(oom_control.contains("oom_kill 1"), "{oom_control}");
    }
    let shmem_at_kill = i["memory_stat"][key].as_u64().unwrap();
    assert!(
        shmem_at_kill.abs_diff(shmem_now) <= 2 * MIB,
        "at the kill {shmem_at_kill}, now {shmem_now}"
    );
    assert_eq!(i["filled_by"]["part"], "shmem", "{i}");
    assert!(i["filled_by"]["bytes"].as_u64().unwrap() >= 60 * MIB, "{i}");
    assert!(
        i["tmpfs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["path"] == "/dev/shm" && m["size"] == 256 * MIB),
        "{i}"
    );
    assert!(
        md.contains("| What filled it | tmpfs and shared memory (shmem)"),
        "{md}"
    );
    assert!(md.contains("killing processes does not free"), "{md}");
    assert!(
        md.contains("/dev/shm (256.0MiB, HostConfig.ShmSize)"),
        "{md}"
    );
    assert_eq!(i["container_survived"], true, "{i}");
}

#[test]
fn a_child_killed_in_a_container_that_goes_on_gets_one_report_and_fails_ci() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let name = unique("childoom");
    let daemon = Daemon::start(&state, &["--no-metrics"]);
    std::thread::sleep(Duration::from_millis(1000));
    let (status, _, stderr) = output(Command::new("docker").args([
        "run",
        "--name",
        &name,
        "--memory",
        "32m",
        "--memory-swap",
        "32m",
        "guardian-test/memload",
        "sh",
        "-c",
        "memload hog --step 1m; sleep 4; exit 0",
    ]));
    assert!(status.success(), "the container did not exit 0: {stderr}");
    let docker_state = docker_state(&name);
    // The exit code reaches the incident from Docker's `die` event.
    let incident = wait_incident(&state, |i| {
        i["name"] == name.as_str() && i["exit_code"] == 0
    });
    let all = incidents(&state);
    let (ci_status, ci, _) =
        run_guardian(&["report", "ci", "--state-dir", state.to_str().unwrap()]);
    let md = incident.as_ref().map(|i| {
        run_guardian(&[
            "report",
            "show",
            "--state-dir",
            state.to_str().unwrap(),
            i["id"].as_str().unwrap(),
        ])
        .1
    });
    let (_, log) = daemon.stop(Signal::SIGTERM);
    docker(&["rm", "-f", &name]);
    assert_eq!(docker_state["ExitCode"], 0);
    let i = incident.unwrap_or_else(|| panic!("no report for {name}: {all:?}; daemon log:\n{log}"));
    assert_eq!(
        all.iter().filter(|i| i["name"] == name.as_str()).count(),
        1,
        "{all:?}"
    );
    assert_eq!(i["victim"]["comm"], "memload", "{i}");
    assert_eq!(i["container_survived"], true, "{i}");
    assert_eq!(i["kind"], "cgroup", "{i}");
    let md = md.unwrap();
    assert!(
        md.contains("| Container | survived: a child process was killed"),
        "{md}"
    );
    assert!(md.contains("exited later with code 0"), "{md}");
    assert!(!md.contains("died"), "{md}");
    assert_eq!(
        ci_status.code(),
        Some(1),
        "a worker died: the run fails\n{ci}"
    );
    assert!(ci.contains(name.as_str()), "{ci}");
}

#[test]
fn a_container_sigkilled_by_docker_stop_is_not_an_oom_kill() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let project = unique("stopkill");
    let file = dir.path().join("compose.yml");
    // sleep as PID 1 has no SIGTERM handler, so the kernel ignores SIGTERM for it: `docker
    // stop -t 1` ends in SIGKILL, exit code 137, with no OOM anywhere.
    std::fs::write(
        &file,
        "version: \"2.4\"\nservices:\n  app:\n    image: guardian-test/memload\n    command: sleep 600\n    mem_limit: 64m\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let daemon = Daemon::start(&state, &["--no-metrics"]);
    std::thread::sleep(Duration::from_millis(1000));
    let (status, _, stderr) = output(compose().args(["-p", &project, "-f", f, "up", "-d"]));
    assert!(status.success(), "compose up: {stderr}");
    let (_, id, _) = output(compose().args(["-p", &project, "-f", f, "ps", "-q", "app"]));
    let id = id.trim().to_string();
    std::thread::sleep(Duration::from_millis(1000));
    let cgroup = memory_cgroup_dir(&id);
    let oom_control = std::fs::read_to_string(cgroup.join("memory.oom_control")).ok();
    let events = std::fs::read_to_string(cgroup.join("memory.events")).ok();
    docker(&["stop", "-t", "1", &id]);
    let docker_state = docker_state(&id);
    // Longer than an incident's gathering time (2 s).
    std::thread::sleep(Duration::from_secs(4));
    let mine = |all: Vec<Value>| -> Vec<Value> {
        all.into_iter()
            .filter(|i| i["container"]["project"] == project.as_str())
            .collect()
    };
    let live = mine(incidents(&state));
    let (_, log) = daemon.stop(Signal::SIGTERM);
    // A restart reads Docker's inventory, where the dead container is: still no incident.
    let daemon = Daemon::start(&state, &["--no-metrics"]);
    std::thread::sleep(Duration::from_secs(4));
    let after_restart = mine(incidents(&state));
    let (ci_status, ci, _) = run_guardian(&[
        "report",
        "ci",
        "--state-dir",
        state.to_str().unwrap(),
        "--project",
        &project,
    ]);
    let (_, log2) = daemon.stop(Signal::SIGTERM);
    let _ = output(compose().args(["-p", &project, "-f", f, "down", "-t", "1"]));
    assert_eq!(docker_state["ExitCode"], 137, "{docker_state}");
    assert_eq!(docker_state["OOMKilled"], false, "{docker_state}");
    // The cgroup's own OOM-kill counter, read just before the stop: no OOM kill.
    let kills = oom_control
        .as_deref()
        .or(events.as_deref())
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("oom_kill ")))
        .map(|n| n.trim().parse::<u64>().unwrap());
    assert_eq!(kills, Some(0), "{oom_control:?} {events:?}");
    assert!(live.is_empty(), "{live:?}\n{log}");
    assert!(after_restart.is_empty(), "{after_restart:?}\n{log2}");
    assert_eq!(ci_status.code(), Some(0), "{ci}");
}
