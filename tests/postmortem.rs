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
    let config = dir.path().join("guardian.toml");
    std::fs::write(
        &config,
        format!(
            "[incidents]\nhook = 'cp \"$1\" {}'\n[enforce]\nprofiles = []\n",
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
        at_ms: 1_764_028_800_000,
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
