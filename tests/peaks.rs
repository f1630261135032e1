//! What a recommendation sizes, end to end on the real kernel and a real dockerd: the page
//! cache a service fills is in its high-water mark but not in the peak a limit must hold, and a
//! 50 ms spike of anonymous memory is in both at its true height.

mod support;

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use nix::sys::signal::Signal;
use serde_json::Value;
use support::{docker, guardian_bin, require_docker, run_guardian, unique, Daemon};

const IMAGE: &str = "guardian-test/memload";
const MIB: u64 = 1 << 20;

/// The daemon sampling once a second, so a 50 ms spike falls between two rounds: what it
/// records of the spike comes from the kernel's high-water mark, not from a lucky sample.
fn daemon_sampling_every_second(state_dir: &std::path::Path) -> Daemon {
    let child = Command::new(guardian_bin())
        .args(["daemon", "--state-dir", state_dir.to_str().unwrap()])
        .args(["--sample-interval", "1s", "--flush-interval", "300ms"])
        .args(["--no-metrics", "--no-enforce"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting guardian daemon");
    let pid = state_dir.join("guardian.pid");
    for _ in 0..400 {
        if pid.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(pid.exists(), "the daemon did not start");
    // Docker connected and the inventory read before the containers start.
    std::thread::sleep(Duration::from_millis(500));
    Daemon {
        child,
        state_dir: state_dir.to_path_buf(),
    }
}

/// The memory cgroup directory of a running container (v1 memory tree or v2).
fn memory_dir(container: &str) -> (PathBuf, bool) {
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", container]);
    let groups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    match groups
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
    {
        Some(mem) => (PathBuf::from(format!("/sys/fs/cgroup/memory{mem}")), false),
        None => {
            let rel = groups.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
            (PathBuf::from(format!("/sys/fs/cgroup{rel}")), true)
        }
    }
}

fn read_u64(path: PathBuf) -> u64 {
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

/// The kernel's high-water mark of a running container, read by the test itself.
fn kernel_peak(container: &str) -> u64 {
    let (dir, v2) = memory_dir(container);
    read_u64(dir.join(if v2 {
        "memory.peak"
    } else {
        "memory.max_usage_in_bytes"
    }))
}

#[test]
fn page_cache_is_not_sized_and_a_50ms_anon_spike_is_recorded_at_its_height() {
    require_docker();
    let state = tempfile::tempdir().unwrap();
    let daemon = daemon_sampling_every_second(state.path());
    let writer = unique("pagecache");
    let spiky = unique("spike");

    // Writes a 200 MiB file inside the container and reads it back twice, with two 1 MiB
    // buffers of anonymous memory; then stays up so the test reads its high-water mark.
    let writer_id = docker(&[
        "run",
        "-d",
        "--name",
        &writer,
        "--memory",
        "512m",
        IMAGE,
        "sh",
        "-c",
        "memload pagecache --file /data.bin --size 200m --rounds 2 && touch /done && sleep 600",
    ]);
    // 4 MiB resident, then after 4 s (no longer young: sampled once a second, far from its
    // limit) 150 MiB more for 50 ms, then 3 s at rest.
    let spiky_id = docker(&[
        "run",
        "-d",
        "--name",
        &spiky,
        "--memory",
        "512m",
        IMAGE,
        "memload",
        "spike",
        "--base",
        "4m",
        "--spike",
        "150m",
        "--spike-ms",
        "50",
        "--delay-ms",
        "4000",
        "--hold-ms",
        "3000",
    ]);
    let mut written = false;
    for _ in 0..600 {
        if output_ok(&["exec", &writer_id, "test", "-e", "/done"]) {
            written = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        written,
        "the writer did not finish writing and reading back"
    );
    let writer_high_water = kernel_peak(&writer_id);
    assert_eq!(docker(&["wait", &spiky_id]), "0");
    let spike_log = docker_logs(&spiky_id);
    let spike_ms: f64 = spike_log
        .split("bytes for ")
        .nth(1)
        .and_then(|rest| rest.trim().strip_suffix("ms"))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("memload did not say how long the spike lasted: {spike_log}"));
    assert!(spike_ms < 200.0, "the spike lasted {spike_ms} ms");

    // While the writer still runs, status shows both of its peaks.
    std::thread::sleep(Duration::from_millis(1500)); // a sampling round and a flush
    let status = daemon.status();
    let running = status["running"].as_array().unwrap();
    let writer_run = running
        .iter()
        .find(|r| r["name"] == writer.as_str())
        .unwrap_or_else(|| panic!("{writer} not in status: {status}"));
    assert!(
        writer_run["peak"].as_u64().unwrap() >= 200 * MIB,
        "{writer_run}"
    );
    assert!(
        writer_run["peak_unreclaimable"].as_u64().unwrap() < 16 * MIB,
        "{writer_run}"
    );
    docker(&["rm", "-f", &writer_id, &spiky_id]);
    std::thread::sleep(Duration::from_millis(800)); // the runs end, one flush

    let out = tempfile::tempdir().unwrap();
    let profile = |output: &str| {
        let (status, stdout, stderr) = run_guardian(&[
            "profile",
            "--output",
            output,
            "--state-dir",
            state.path().to_str().unwrap(),
            "--service",
            &writer,
            "--service",
            &spiky,
            "--compose-out",
            out.path().join("override.yml").to_str().unwrap(),
            "--profile-out",
            out.path().join("profile.toml").to_str().unwrap(),
        ]);
        assert!(status.success(), "profile failed: {stderr}");
        stdout
    };
    let report: Value = serde_json::from_str(&profile("json")).unwrap();
    let rec = |name: &str| {
        report["recommendations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["service"] == name)
            .unwrap_or_else(|| panic!("no recommendation for {name}: {report}"))
            .clone()
    };

    // The writer: a high-water mark of the whole file (page cache), a small unreclaimable
    // peak — its 2 MiB of buffers, the mapped binary and its kernel memory (inodes, page
    // tables: 6 MiB measured on this host) — and a limit sized from that.
    let w = rec(&writer);
    let peak = w["peak"].as_u64().unwrap();
    let unreclaimable = w["peak_unreclaimable"].as_u64().unwrap();
    assert!(peak >= 200 * MIB, "high-water mark {peak}");
    assert!(
        peak.abs_diff(writer_high_water) <= MIB,
        "recorded {peak} vs kernel {writer_high_water}"
    );
    assert!(
        (2 * MIB..16 * MIB).contains(&unreclaimable),
        "unreclaimable peak {unreclaimable} of a writer with 2 MiB of buffers"
    );
    assert_eq!(w["sized_from"], "unreclaimable", "{w}");
    let limit = w["recommended_limit"].as_u64().unwrap();
    let lower = (unreclaimable as f64 * 1.2) as u64;
    assert!(
        limit >= lower && limit <= lower + 8 * MIB && limit <= 24 * MIB,
        "limit {limit} for an unreclaimable peak of {unreclaimable}"
    );

    // The spike: 4 MiB + 150 MiB for 50 ms between two once-a-second rounds, recorded at its
    // height in both peaks (no page cache to take away).
    let s = rec(&spiky);
    let peak = s["peak"].as_u64().unwrap();
    let unreclaimable = s["peak_unreclaimable"].as_u64().unwrap();
    assert!(peak >= 154 * MIB, "high-water mark {peak}");
    assert!(
        unreclaimable >= 154 * MIB && unreclaimable as f64 >= peak as f64 * 0.97,
        "unreclaimable peak {unreclaimable} vs high-water mark {peak} of a 154 MiB spike"
    );
    assert!(unreclaimable <= peak, "{unreclaimable} > {peak}");

    // The table shows both peaks and says which one sized the limit.
    let table = profile("human");
    eprintln!("{table}");
    assert!(table.contains("UNRECL"), "{table}");
    let writer_line = table
        .lines()
        .find(|l| l.starts_with(writer.as_str()))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(writer_line.contains("unreclaimable peak"), "{writer_line}");

    let (status, _) = daemon.stop(Signal::SIGTERM);
    assert!(status.success());
}

fn output_ok(args: &[&str]) -> bool {
    Command::new("docker")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn docker_logs(id: &str) -> String {
    let out = Command::new("docker").args(["logs", id]).output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
}
