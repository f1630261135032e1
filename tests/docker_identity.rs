//! Container identity over a real Docker engine (the test bed from `cargo xtask test`):
//! kernel events named by container and compose service, `guardian ps` against the kernel's
//! files, and Docker going away and coming back.

mod support;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use serde_json::Value;
use support::{
    compose, container_cgroup, docker, output, require_docker, run_guardian, unique, Events,
};

const IMAGE: &str = "guardian-test/memload";

fn rfc3339(v: &Value) -> SystemTime {
    humantime::parse_rfc3339(v.as_str().unwrap()).unwrap()
}

#[test]
fn oom_in_a_compose_service_is_named_by_project_and_service() {
    require_docker();
    let project = unique("oom");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docker-compose.yml");
    std::fs::write(
        &file,
        format!(
            "version: \"3.8\"\nservices:\n  hog:\n    image: {IMAGE}\n    command: memload hog --step 1m\n    deploy:\n      resources:\n        limits:\n          memory: 64m\n"
        ),
    )
    .unwrap();
    let mut events = Events::start(&[]);
    let file_arg = file.to_str().unwrap();
    let (status, _, stderr) = output(compose().args(["-p", &project, "-f", file_arg, "up", "-d"]));
    assert!(status.success(), "compose up failed: {stderr}");

    let kill = events.wait_for(Duration::from_secs(30), |v| {
        v["type"] == "oom_kill" && v["container"]["project"] == project.as_str()
    });
    let names = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--format",
        "{{.Names}}",
    ]);
    let _ = output(compose().args(["-p", &project, "-f", file_arg, "down", "-t", "1"]));
    let kill = kill.unwrap_or_else(|| {
        panic!(
            "no oom_kill named by project {project}; saw {:?}",
            events.seen
        )
    });

    assert_eq!(kill["container"]["service"], "hog");
    assert_eq!(
        kill["container"]["name"],
        names.as_str(),
        "the container's own name"
    );
    assert_eq!(
        kill["memory"]["limit"],
        64u64 << 20,
        "the compose limit is on the cgroup"
    );
    let pid = kill["victim"]["pid"].as_u64().unwrap();
    let line = format!("Killed process {pid} (memload)");
    assert_eq!(kill["victim"]["comm"], "memload");
    assert!(
        output(&mut Command::new("dmesg")).1.contains(&line),
        "the kernel log has no {line:?}"
    );
    // Docker's own view of the same death arrives as a container event.
    let oom = events.wait_for(Duration::from_secs(10), |v| {
        v["type"] == "container"
            && v["action"] == "oom"
            && v["container"]["project"] == project.as_str()
    });
    assert!(oom.is_some(), "no Docker oom event for the service");
    events.stop();
}

#[test]
fn a_container_started_after_guardian_is_mapped_within_a_second() {
    require_docker();
    let name = unique("late");
    let mut events = Events::start(&[]);
    let id = docker(&["run", "-d", "--name", &name, IMAGE, "sleep", "30"]);
    let start = events
        .wait_for(Duration::from_secs(10), |v| {
            v["type"] == "container"
                && v["action"] == "start"
                && v["container"]["name"] == name.as_str()
        })
        .unwrap_or_else(|| panic!("no start event for {name}"));
    let (cgroup_id, _) = container_cgroup(&id);
    docker(&["rm", "-f", &name]);
    events.stop();

    assert_eq!(
        start["cgroup"]["id"], cgroup_id,
        "mapped to the container's own cgroup"
    );
    let lag = rfc3339(&start["time"])
        .duration_since(rfc3339(&start["docker_time"]))
        .unwrap_or_default();
    assert!(
        lag < Duration::from_secs(1),
        "mapped {lag:?} after Docker's start event"
    );
}

#[test]
fn ps_numbers_match_the_kernel_cgroup_files() {
    require_docker();
    let name = unique("ps");
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
        "32m",
        "--hold-ms",
        "60000",
    ]);
    let (_, unified_dir) = container_cgroup(&id);
    // Its memory cgroup: the same path in the v1 memory tree on hybrid hosts.
    let rel = unified_dir.strip_prefix("/sys/fs/cgroup/unified").ok();
    let (usage_file, limit_file) = match rel {
        Some(rel) => (
            Path::new("/sys/fs/cgroup/memory")
                .join(rel)
                .join("memory.usage_in_bytes"),
            Path::new("/sys/fs/cgroup/memory")
                .join(rel)
                .join("memory.limit_in_bytes"),
        ),
        None => (
            unified_dir.join("memory.current"),
            unified_dir.join("memory.max"),
        ),
    };
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    // Wait until the hog holds its 32 MiB and the usage stands still.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = 0;
    while Instant::now() < deadline {
        let now = read(&usage_file);
        if now >= 32 << 20 && now == last {
            break;
        }
        last = now;
        std::thread::sleep(Duration::from_millis(300));
    }
    let (status, stdout, stderr) = run_guardian(&["ps", "--output", "json"]);
    let kernel_usage = read(&usage_file);
    let kernel_limit = read(&limit_file);
    docker(&["rm", "-f", &name]);
    assert!(status.success(), "guardian ps failed: {stderr}");

    let rows: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    let row = rows
        .iter()
        .find(|r| r["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{name} not in {stdout}"));
    let usage = row["usage"].as_u64().unwrap();
    assert!(
        usage.abs_diff(kernel_usage) <= 4096,
        "ps usage {usage} vs kernel {kernel_usage}"
    );
    assert_eq!(row["limit"].as_u64().unwrap(), kernel_limit);
    assert_eq!(kernel_limit, 128 << 20);
    assert!(row["working_set"].as_u64().unwrap() <= usage);
    assert!(row["peak"].as_u64().unwrap() >= usage);
    assert_eq!(row["state"], "running");
    assert_eq!(row["oom_kills"], 0);
    // Sorted by usage, largest first.
    let usages: Vec<u64> = rows.iter().filter_map(|r| r["usage"].as_u64()).collect();
    assert!(usages.windows(2).all(|w| w[0] >= w[1]), "{usages:?}");
}

#[test]
fn an_exited_container_is_still_named_after_its_cgroup_is_gone() {
    require_docker();
    let name = unique("gone");
    let events = Events::start(&["--stall-threshold", "0s"]);
    let id = docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--memory",
        "48m",
        IMAGE,
        "memload",
        "pagecache",
        "--file",
        "/tmp/f",
        "--size",
        "128m",
        "--rounds",
        "2",
    ]);
    let status = docker(&["wait", &id]);
    assert_eq!(status, "0", "the workload failed");
    docker(&["rm", &name]);
    let gone = Instant::now() + Duration::from_secs(5);
    let dirs_left = || {
        [
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup",
        ]
        .iter()
        .any(|root| walk_has(Path::new(root), &id, 6))
    };
    while dirs_left() && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !dirs_left(),
        "the container's cgroup directories should be gone"
    );

    // The summary comes after the cgroup vanished, and still names the container.
    let (_, stderr, seen) = events.stop();
    let summary = seen
        .iter()
        .find(|v| v["type"] == "summary")
        .unwrap_or_else(|| panic!("no summary: {stderr}"));
    let ours = summary["stalls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["container"]["name"] == name.as_str())
        .unwrap_or_else(|| panic!("the summary does not name {name}: {summary}"));
    assert!(ours["count"].as_u64().unwrap() > 0);
    assert_eq!(ours["container"]["image"], IMAGE);
}

/// Whether a directory named `name` exists within `depth` levels below `dir`.
fn walk_has(dir: &Path, name: &str, depth: usize) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        e.file_type().is_ok_and(|t| t.is_dir())
            && (e.file_name() == name || (depth > 0 && walk_has(&e.path(), name, depth - 1)))
    })
}

#[test]
fn docker_going_away_is_reported_once_and_guardian_recovers() {
    require_docker();
    // A private engine of this test's own, so stopping it disturbs no other test.
    let dir = tempfile::Builder::new()
        .prefix("guardian-test-dockerd")
        .tempdir()
        .unwrap();
    let dir_path = dir.path().to_str().unwrap().to_string();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/testbed/dockerd");
    let start = || {
        let (status, stdout, stderr) = output(Command::new(&script).args(["start", &dir_path]));
        assert!(status.success(), "private dockerd: {stderr}");
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("DOCKER_HOST="))
            .unwrap()
            .to_string()
    };
    let host = start();
    let (status, _, stderr) = output(
        Command::new(&script)
            .arg("images")
            .arg(support::static_memload())
            .env("DOCKER_HOST", &host),
    );
    assert!(status.success(), "importing the test image: {stderr}");
    let mut guardian = Command::new(support::guardian_bin());
    guardian.env("DOCKER_HOST", &host);
    let mut events = Events::start_with(guardian, &[]);
    assert!(
        events.seen[0]["docker_api"].is_string(),
        "connected at start: {:?}",
        events.seen[0]
    );

    // The engine goes away as on `systemctl restart docker`: SIGTERM, then back on the same
    // socket and data a few seconds later (several of guardian's retries fail meanwhile).
    let pid: i32 = std::fs::read_to_string(dir.path().join("docker.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let gone = Instant::now() + Duration::from_secs(15);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(start(), host);

    let name = unique("back");
    let docker_private =
        |args: &[&str]| output(Command::new("docker").env("DOCKER_HOST", &host).args(args));
    // guardian reconnects on its own back-off; start a container once it has.
    let reconnected = events.wait_for_log(Duration::from_secs(40), "Docker is reachable again");
    let (status, _, stderr) = docker_private(&["run", "-d", "--name", &name, IMAGE, "sleep", "5"]);
    assert!(
        status.success(),
        "docker run on the restarted engine: {stderr}"
    );
    let seen_back = events.wait_for(Duration::from_secs(10), |v| {
        v["type"] == "container"
            && v["action"] == "start"
            && v["container"]["name"] == name.as_str()
    });
    let _ = docker_private(&["rm", "-f", &name]);
    let (status, stderr, _) = events.stop();
    let (stop_status, _, stop_err) = output(Command::new(&script).args(["stop", &dir_path]));
    assert!(
        stop_status.success(),
        "stopping the private dockerd: {stop_err}"
    );
    assert!(status.success(), "guardian exited badly: {stderr}");
    let lost: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("Docker unavailable"))
        .collect();
    assert_eq!(lost.len(), 1, "the loss is reported once: {stderr}");
    assert!(reconnected, "guardian never said Docker was back: {stderr}");
    assert!(
        seen_back.is_some(),
        "guardian did not follow the engine after it came back: {stderr}"
    );
}
