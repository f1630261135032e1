//! Incidents that are not kernel OOM kills, against the real kernel and a real dockerd: a
//! container held near its limit gets one warning (event, metric, hook) per episode; a SIGKILL
//! near the limit is "killed by a signal", never a kernel OOM kill, and a `docker stop` timeout
//! with room to spare is no incident. guardian's
//! own freezes and kills are in tests/enforcement.rs; throttling at memory.high needs cgroup v2's
//! memory controller and runs in the runner VM (tests/runner-vm/run).

mod support;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde_json::Value;
use support::{docker, require_docker, run_guardian, scrape_metrics, take_turn, unique, Daemon};

const IMAGE: &str = "guardian-test/memload";
const MIB: u64 = 1 << 20;

/// The memory cgroup directory of a running container (v1 memory controller on a hybrid host,
/// else the unified tree), from its main process.
fn memory_dir(id: &str) -> PathBuf {
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", id]);
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v1 = own.lines().find_map(|l| {
        let (_, rest) = l.split_once(':')?;
        let (controllers, path) = rest.split_once(':')?;
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then(|| PathBuf::from(format!("/sys/fs/cgroup/memory{path}")))
    });
    v1.unwrap_or_else(|| support::container_cgroup(id).1)
}

/// (usage, limit, oom kills) as the kernel counts them, v1 or v2.
fn kernel_memory(dir: &Path) -> (u64, u64, u64) {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let num = |t: Option<String>| t.and_then(|t| t.trim().parse::<u64>().ok());
    let kills = |t: Option<String>| {
        t.and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        })
    };
    match num(read("memory.usage_in_bytes")) {
        Some(usage) => (
            usage,
            num(read("memory.limit_in_bytes")).unwrap(),
            kills(read("memory.oom_control")).unwrap_or(0),
        ),
        None => (
            num(read("memory.current")).unwrap(),
            num(read("memory.max")).unwrap(),
            kills(read("memory.events")).unwrap(),
        ),
    }
}

#[test]
fn a_container_held_near_its_limit_is_warned_once_with_a_metric_and_the_hook() {
    require_docker();
    let _turn = take_turn();
    let name = unique("warn");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let hook_log = dir.path().join("hook.log");
    let config = dir.path().join("guardian.toml");
    std::fs::write(
        &config,
        format!(
            "[enforce]\nprofiles = []\n\n[incidents]\nwarn_share = 0.9\nwarn_after = \"5s\"\nhook = 'echo \"$GUARDIAN_KIND $GUARDIAN_CONTAINER\" >> {}'\n",
            hook_log.display()
        ),
    )
    .unwrap();
    let port = 20000 + (std::process::id() % 20000) as u16 + 2;
    let listen = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(
        &state,
        &[
            "--config",
            config.to_str().unwrap(),
            "--metrics-listen",
            &listen,
        ],
    );
    // 95 MiB of anonymous memory in a 100 MiB limit, held for 20 s.
    let id = docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--memory",
        "100m",
        "--memory-swap",
        "100m",
        IMAGE,
        "memload",
        "hog",
        "--step",
        "1m",
        "--max",
        "95m",
        "--hold-ms",
        "20000",
    ]);
    let mem = memory_dir(&id);
    // Held at ~95 % by the kernel's own count before the clock starts.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut reading = kernel_memory(&mem);
    while Instant::now() < deadline && reading.0 < reading.1 * 9 / 10 {
        std::thread::sleep(Duration::from_millis(100));
        reading = kernel_memory(&mem);
    }
    let reached = Instant::now();
    // 10 s at the share: the warning after 5 s, and nothing more for the rest.
    let mut lowest_share = 1.0f64;
    while reached.elapsed() < Duration::from_secs(10) {
        let (usage, limit, _) = kernel_memory(&mem);
        lowest_share = lowest_share.min(usage as f64 / limit as f64);
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, _, oom_kills) = kernel_memory(&mem);
    let metrics = scrape_metrics(&listen);
    let (_, list, _) = run_guardian(&[
        "report",
        "list",
        "--state-dir",
        state.to_str().unwrap(),
        "--output",
        "json",
    ]);
    let (ci_exit, ci, _) = run_guardian(&[
        "report",
        "ci",
        "--state-dir",
        state.to_str().unwrap(),
        "--since",
        "10m",
    ]);
    let (exit, log) = daemon.stop(Signal::SIGTERM);
    docker(&["rm", "-f", &name]);

    assert!(exit.success(), "{log}");
    assert!(
        reading.0 >= reading.1 * 9 / 10,
        "memload never reached 90 % of its limit: {reading:?}"
    );
    assert_eq!(reading.1, 100 * MIB, "Docker's limit as the kernel has it");
    assert!(lowest_share >= 0.9, "it stayed above 90 %: {lowest_share}");
    assert_eq!(
        oom_kills, 0,
        "nothing was OOM-killed: a warning comes before"
    );
    let all: Vec<Value> = serde_json::from_str(&list).unwrap();
    let warnings: Vec<&Value> = all
        .iter()
        .filter(|i| i["cause"] == "warning" && i["name"] == name.as_str())
        .collect();
    assert_eq!(warnings.len(), 1, "one warning per episode: {all:?}\n{log}");
    let w = warnings[0];
    assert_eq!(w["limit"], 100 * MIB);
    let ws = w["working_set"].as_u64().unwrap();
    assert!((90 * MIB..=100 * MIB).contains(&ws), "{w}");
    assert!(w["duration_ms"].as_i64().unwrap() >= 5000, "{w}");
    assert!(
        w["next_step"]
            .as_str()
            .unwrap()
            .contains("of its limit 100.0MiB"),
        "{w}"
    );
    let hooks = std::fs::read_to_string(&hook_log).unwrap_or_default();
    assert_eq!(
        hooks
            .lines()
            .filter(|l| *l == format!("warning {name}"))
            .count(),
        1,
        "the hook ran once: {hooks:?}"
    );
    assert!(
        metrics.contains(&format!(
            "guardian_memory_warnings_total{{container=\"{name}\",service=\"\"}} 1\n"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("guardian_containers_in_warning 1\n"),
        "{metrics}"
    );
    assert_eq!(
        ci_exit.code(),
        Some(0),
        "a warning does not fail the run: {ci}"
    );
    assert!(
        ci.contains(&format!("::warning title=Memory warning%3A {name}::")),
        "{ci}"
    );
}

#[test]
fn a_sigkill_near_the_limit_is_killed_by_a_signal_not_an_oom_kill_and_a_stop_timeout_is_nothing() {
    require_docker();
    let _turn = take_turn();
    let near = unique("sigkill");
    let idle = unique("stoptimeout");
    // Held at its limit as a budgeted container is at its budget, then `docker stop`ped.
    let stopped = unique("stopnear");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("guardian.toml");
    std::fs::write(&config, "[enforce]\nprofiles = []\n").unwrap();
    let daemon = Daemon::start(
        &state,
        &["--config", config.to_str().unwrap(), "--no-metrics"],
    );
    let held_near_limit = |name: &str| {
        docker(&[
            "run",
            "-d",
            "--name",
            name,
            "--memory",
            "100m",
            "--memory-swap",
            "100m",
            IMAGE,
            "memload",
            "hog",
            "--step",
            "1m",
            "--max",
            "95m",
            "--hold-ms",
            "60000",
        ])
    };
    let near_id = held_near_limit(&near);
    let stopped_id = held_near_limit(&stopped);
    // PID 1 without a SIGTERM handler: `docker stop -t 1` ends it with SIGKILL (exit 137).
    docker(&["run", "-d", "--name", &idle, IMAGE, "sleep", "300"]);
    let mem = memory_dir(&near_id);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut reading = kernel_memory(&mem);
    while Instant::now() < deadline && reading.0 < reading.1 * 9 / 10 {
        std::thread::sleep(Duration::from_millis(100));
        reading = kernel_memory(&mem);
    }
    let stopped_mem = memory_dir(&stopped_id);
    let mut stopped_reading = kernel_memory(&stopped_mem);
    while Instant::now() < deadline && stopped_reading.0 < stopped_reading.1 * 9 / 10 {
        std::thread::sleep(Duration::from_millis(100));
        stopped_reading = kernel_memory(&stopped_mem);
    }
    // A few sampling rounds at the limit, then the kill: SIGKILL from the host, as earlyoom or
    // any userspace killer sends it (not through Docker).
    std::thread::sleep(Duration::from_secs(1));
    let (_, _, oom_kills_before) = kernel_memory(&mem);
    let pid: i32 = docker(&["inspect", "-f", "{{.State.Pid}}", &near])
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    docker(&["stop", "-t", "1", &idle]);
    docker(&["stop", "-t", "1", &stopped]);
    let state_of = |n: &str| {
        docker(&[
            "inspect",
            "-f",
            "{{.State.ExitCode}} {{.State.OOMKilled}}",
            n,
        ])
    };
    let (near_state, idle_state, stopped_state) =
        (state_of(&near), state_of(&idle), state_of(&stopped));
    // Judged 3 s after the death.
    let list = |state: &Path| {
        let (_, out, _) = run_guardian(&[
            "report",
            "list",
            "--state-dir",
            state.to_str().unwrap(),
            "--output",
            "json",
        ]);
        serde_json::from_str::<Vec<Value>>(&out).unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut all = list(&state);
    while Instant::now() < deadline && !all.iter().any(|i| i["name"] == near.as_str()) {
        std::thread::sleep(Duration::from_millis(300));
        all = list(&state);
    }
    // Past the idle one's judging time too.
    std::thread::sleep(Duration::from_secs(4));
    all = list(&state);
    let (ci_exit, ci, _) = run_guardian(&[
        "report",
        "ci",
        "--state-dir",
        state.to_str().unwrap(),
        "--since",
        "10m",
    ]);
    let (exit, log) = daemon.stop(Signal::SIGTERM);
    docker(&["rm", "-f", &near, &idle, &stopped]);

    assert!(exit.success(), "{log}");
    assert!(
        reading.0 >= reading.1 * 9 / 10,
        "never near its limit: {reading:?}"
    );
    assert_eq!(oom_kills_before, 0, "the kernel's OOM killer did not act");
    assert_eq!(near_state, "137 false", "Docker: SIGKILL, not OOMKilled");
    assert_eq!(idle_state, "137 false", "docker stop ran out its timeout");
    let mine: Vec<&Value> = all.iter().filter(|i| i["name"] == near.as_str()).collect();
    assert_eq!(mine.len(), 1, "{all:?}\n{log}");
    assert_eq!(
        mine[0]["cause"],
        serde_json::json!({"killed_by_signal": {"killer": null}}),
        "{}",
        mine[0]
    );
    assert!(
        mine[0]["next_step"]
            .as_str()
            .unwrap()
            .contains("not by the kernel's OOM killer"),
        "{}",
        mine[0]
    );
    assert!(
        !all.iter().any(|i| i["name"] == idle.as_str()),
        "a docker stop timeout with room to spare is no incident: {all:?}"
    );
    assert!(
        stopped_reading.0 >= stopped_reading.1 * 9 / 10,
        "the stopped one was never near its limit: {stopped_reading:?}"
    );
    assert_eq!(
        stopped_state, "137 false",
        "docker stop ran out its timeout"
    );
    assert!(
        !all.iter().any(|i| i["name"] == stopped.as_str()),
        "a docker stop of a container held near its limit is no incident: {all:?}"
    );
    assert_eq!(ci_exit.code(), Some(1), "{ci}");
    assert!(
        ci.contains(&format!(
            "::error title=Killed by a signal%2C not the kernel's OOM killer%3A {near}::"
        )),
        "{ci}"
    );
}
