//! Health levels on a real dockerd: `guardian ps` judges each container's working set against
//! its lowest ceiling (limit, memory.high, budget) with the configured thresholds, `--watch`
//! refreshes, and `status` gives the host's level from /proc/meminfo.

mod support;

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{docker, guardian_bin, require_docker, run_guardian, unique, Daemon};

const IMAGE: &str = "guardian-test/memload";
const MIB: u64 = 1 << 20;

/// Starts a container that holds `mib` MiB with `extra` docker-run arguments, and waits until
/// `guardian ps` sees at least that working set.
fn holding(name: &str, mib: u64, extra: &[&str]) {
    let max = format!("{mib}m");
    let mut args = vec!["run", "-d", "--name", name];
    args.extend(extra);
    args.extend([
        IMAGE,
        "memload",
        "hog",
        "--step",
        "4m",
        "--max",
        &max,
        "--hold-ms",
        "120000",
    ]);
    docker(&args);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if row(name)
            .and_then(|r| r["working_set"].as_u64())
            .is_some_and(|w| w >= mib * MIB)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("{name} never held {mib} MiB");
}

fn ps(extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["ps", "--output", "json"];
    args.extend(extra);
    let (status, stdout, stderr) = run_guardian(&args);
    assert!(status.success(), "guardian ps: {stderr}");
    serde_json::from_str(&stdout).unwrap()
}

fn row(name: &str) -> Option<Value> {
    ps(&[]).into_iter().find(|r| r["name"] == name)
}

#[test]
fn ps_gives_each_container_the_level_of_its_lowest_ceiling() {
    require_docker();
    let (limited, budgeted, free) = (
        unique("lvl-limit"),
        unique("lvl-budget"),
        unique("lvl-free"),
    );
    // 40 of 64 MiB limit: 62 % → warning. 40 MiB against a 44 MiB budget under a 1 GiB limit:
    // 91 % → emergency (the budget is the lower ceiling). No ceiling at all: no level.
    holding(&limited, 40, &["--memory", "64m"]);
    holding(
        &budgeted,
        40,
        &["--memory", "1g", "--label", "guardian.budget=44m"],
    );
    holding(&free, 8, &[]);
    let rows = ps(&[]);
    let dir = tempfile::tempdir().unwrap();
    let strict = dir.path().join("guardian.toml");
    std::fs::write(
        &strict,
        "[health]\nwarning = 0.3\ncritical = 0.6\nemergency = 0.99\n",
    )
    .unwrap();
    let strict_rows = ps(&["--config", strict.to_str().unwrap()]);
    let (_, human, _) = run_guardian(&["ps"]);
    for n in [&limited, &budgeted, &free] {
        docker(&["rm", "-f", n]);
    }
    let find = |rows: &[Value], n: &str| rows.iter().find(|r| r["name"] == n).cloned().unwrap();

    let l = find(&rows, &limited);
    let share = l["health"]["share"].as_f64().unwrap();
    let expected = l["working_set"].as_u64().unwrap() as f64 / (64 * MIB) as f64;
    assert!((share - expected).abs() < 1e-6, "{l}");
    assert_eq!(l["health"]["level"], "warning", "{l}");
    assert_eq!(l["health"]["against"], "limit");

    let b = find(&rows, &budgeted);
    assert_eq!(b["health"]["against"], "budget", "{b}");
    assert_eq!(b["health"]["ceiling"], 44 * MIB);
    assert_eq!(b["health"]["level"], "emergency", "{b}");

    assert!(find(&rows, &free)["health"].is_null());

    // The same 62 % is critical with warning 0.3 / critical 0.6.
    assert_eq!(find(&strict_rows, &limited)["health"]["level"], "critical");
    let line = human
        .lines()
        .find(|l| l.starts_with(limited.as_str()))
        .unwrap();
    assert!(
        line.contains("warning 6") && line.contains("% of limit"),
        "{line}"
    );
    assert!(human.starts_with("host: "), "{human}");
}

#[test]
fn ps_watch_refreshes_until_its_reader_goes_away() {
    require_docker();
    let mut child = Command::new(guardian_bin())
        .args(["ps", "--watch", "300ms", "--output", "json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let t0 = Instant::now();
    for _ in 0..3 {
        let line = lines.next().unwrap().unwrap();
        assert!(serde_json::from_str::<Vec<Value>>(&line).is_ok(), "{line}");
    }
    // Three refreshes take at least two intervals.
    assert!(
        t0.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t0.elapsed()
    );
    drop(lines); // the reader goes away: the watch ends by itself, like `docker stats | head`
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "ps --watch kept running without a reader"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn status_gives_the_hosts_level_from_meminfo() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--no-metrics", "--no-enforce"]);
    let v = daemon.status();
    daemon.stop(nix::sys::signal::Signal::SIGTERM);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib = |key: &str| -> f64 {
        let v = meminfo.lines().find_map(|l| l.strip_prefix(key)).unwrap();
        v.trim().trim_end_matches("kB").trim().parse().unwrap()
    };
    let used = 1.0 - kib("MemAvailable:") / kib("MemTotal:");
    let share = v["host_health"]["share"].as_f64().unwrap();
    // Read a moment apart on a host where other tests run: within 5 points.
    assert!(
        (share - used).abs() < 0.05,
        "status {share} vs meminfo {used}"
    );
    assert_eq!(v["host_health"]["against"], "host");
    assert_eq!(
        v["host_health"]["ceiling"].as_f64().unwrap(),
        kib("MemTotal:") * 1024.0
    );
}

#[test]
fn status_names_a_leak_and_a_stack_left_running() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("guardian.toml");
    std::fs::write(
        &config,
        "timeline_interval = \"1s\"\n[metrics]\nenabled = false\n",
    )
    .unwrap();
    let daemon = Daemon::start(
        dir.path(),
        &["--config", config.to_str().unwrap(), "--no-enforce"],
    );
    let project = unique("leftover");
    let (leak, steady) = (format!("{project}-leak-1"), format!("{project}-steady-1"));
    let labels = |service: &str| {
        vec![
            format!("com.docker.compose.project={project}"),
            format!("com.docker.compose.service={service}"),
        ]
    };
    // The leak: 4 MiB more every 500 ms up to 160 MiB (480 MiB/min). The steady one holds 24 MiB.
    let mut args = vec![
        "run".to_string(),
        "-d".into(),
        "--name".into(),
        leak.clone(),
    ];
    for l in labels("leak") {
        args.extend(["--label".to_string(), l]);
    }
    args.extend(
        [
            IMAGE,
            "memload",
            "staircase",
            "--step",
            "4m",
            "--every-ms",
            "500",
            "--max",
            "160m",
            "--hold-ms",
            "120000",
        ]
        .map(String::from),
    );
    docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut args = vec![
        "run".to_string(),
        "-d".into(),
        "--name".into(),
        steady.clone(),
    ];
    for l in labels("steady") {
        args.extend(["--label".to_string(), l]);
    }
    args.extend(
        [
            IMAGE,
            "memload",
            "hog",
            "--step",
            "24m",
            "--max",
            "24m",
            "--hold-ms",
            "120000",
        ]
        .map(String::from),
    );
    docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
    std::thread::sleep(Duration::from_secs(25));
    let (status, stdout, stderr) = run_guardian(&[
        "status",
        "--output",
        "json",
        "--state-dir",
        dir.path().to_str().unwrap(),
        "--growth-over",
        "15s",
        "--leftover-after",
        "5s",
    ]);
    let (_, human, _) = run_guardian(&[
        "status",
        "--state-dir",
        dir.path().to_str().unwrap(),
        "--growth-over",
        "15s",
        "--leftover-after",
        "5s",
    ]);
    daemon.stop(nix::sys::signal::Signal::SIGTERM);
    docker(&["rm", "-f", &leak, &steady]);
    assert!(status.success(), "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();

    let growing = v["growing"].as_array().unwrap();
    assert_eq!(growing.len(), 1, "only the leak grows: {growing:?}");
    assert_eq!(growing[0]["name"], format!("{project}/leak"));
    let per_minute = growing[0]["growth"]["per_minute"].as_u64().unwrap() as f64 / MIB as f64;
    // 8 MiB/s while it climbs (it reaches 160 MiB after 20 s, then holds): the fitted slope over
    // the stored timeline lies between a third and the whole of 480 MiB/min.
    assert!(
        (160.0..=500.0).contains(&per_minute),
        "{per_minute} MiB/min"
    );
    assert!(
        human.contains(&format!("{project}/leak: growing ")),
        "{human}"
    );

    let leftovers = v["leftovers"].as_array().unwrap();
    let ours = leftovers
        .iter()
        .find(|l| l["project"] == project.as_str())
        .expect("our stack");
    assert_eq!(ours["containers"].as_array().unwrap().len(), 2);
    let holds = ours["holds"].as_u64().unwrap();
    assert!(
        ((160 + 24) * MIB..=(160 + 24 + 16) * MIB).contains(&holds),
        "{holds}"
    );
    assert!(
        human.contains(&format!("left over: project {project}")),
        "{human}"
    );
}

#[test]
fn the_daemon_exports_levels_and_logs_each_change_once() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("guardian.toml");
    std::fs::write(&config, "timeline_interval = \"1s\"\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(
        dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--no-enforce",
            "--metrics-listen",
            &listen,
        ],
    );
    let name = unique("lvl-daemon");
    holding(&name, 40, &["--memory", "64m"]);
    let id = docker(&["inspect", "-f", "{{.Id}}", &name]);
    let needle = format!("id=\"{}\"", &id[..12]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let level = loop {
        let text = support::scrape_metrics(&listen);
        let line = text
            .lines()
            .find(|l| l.starts_with("guardian_container_health_level{") && l.contains(&needle))
            .map(str::to_string);
        // The first full reading may come before the hog holds its 40 MiB: wait for warning.
        if let (Some(line), true) = (line, text.contains("\nguardian_host_health_level ")) {
            if line.ends_with(" 1") || Instant::now() >= deadline {
                break line;
            }
        }
        assert!(Instant::now() < deadline, "no level for {name}:\n{text}");
        std::thread::sleep(Duration::from_millis(300));
    };
    // Two more seconds at the same level: the change is logged once, not every round.
    std::thread::sleep(Duration::from_secs(2));
    docker(&["rm", "-f", &name]);
    let (_, log) = daemon.stop(nix::sys::signal::Signal::SIGTERM);
    assert!(
        level.ends_with(" 1"),
        "40 of 64 MiB is warning (1): {level}"
    );
    // Its changes (a first "safe" is possible before the hog grew): warning is said once.
    let to_warning: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("health level changed") && l.contains(name.as_str()))
        .filter(|l| l.contains("warning"))
        .collect();
    assert_eq!(to_warning.len(), 1, "{log}");
}
