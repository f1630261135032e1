//! `guardian events` against the real kernel: OOM kills, reclaim stalls and PSI triggers in
//! cgroups this test creates below its own.

mod support;

use std::{process::Command, time::Duration};

use serde_json::Value;
use support::{memload_bin, require_root, Events, TestCgroup};

fn path_str(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn oom_kill_of_a_hog_names_its_pid_comm_and_cgroup_id() {
    require_root();
    let cg = TestCgroup::new("oom", "64M");
    let mut events = Events::start(&[
        "--watch",
        path_str(&cg.memory_dir),
        "--watch",
        path_str(&cg.unified_dir),
    ]);

    let mut hog = cg.spawn(Command::new(memload_bin()).args(["hog", "--step", "1m"]));
    let hog_pid = hog.id();
    let status = hog.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "the hog should be OOM-killed, got {status:?}"
    );

    let kill = events
        .wait_for(Duration::from_secs(10), |v| {
            v["type"] == "oom_kill" && v["victim"]["pid"] == hog_pid
        })
        .unwrap_or_else(|| panic!("no oom_kill event for pid {hog_pid}; saw {:?}", events.seen));
    assert_eq!(kill["victim"]["comm"], "memload");
    assert_eq!(
        kill["victim"]["cgroup"]["id"],
        cg.id(),
        "cgroup id must be the inode of the unified dir"
    );
    assert_eq!(kill["cgroup_source"], "kernel");
    // The kernel's own log line names the same victim.
    let kernel_log = support::output(&mut Command::new("dmesg")).1;
    let line = format!("Killed process {hog_pid} (memload)");
    assert!(kernel_log.contains(&line), "the kernel log has no {line:?}");
    let anon = kill["rss"]["anon_rss"].as_u64().unwrap();
    assert!(
        anon > 32 << 20 && anon <= 64 << 20,
        "anon rss {anon} should be near the 64M limit"
    );
    assert_eq!(kill["memory"]["limit"], 64u64 << 20, "{kill}");
    assert!(kill["memory"]["oom_kills"].as_u64() >= Some(1), "{kill}");
    if !cg.v2 {
        // The kernel's own v1 notification arrives too, for the same group.
        let memcg = events.wait_for(Duration::from_secs(5), |v| v["type"] == "memcg_oom");
        assert_eq!(
            memcg.expect("no memcg_oom event")["cgroup"],
            path_str(&cg.memory_dir)
        );
    }
    let (status, stderr, _) = events.stop();
    assert!(status.success(), "guardian events failed: {stderr}");
}

#[test]
fn reclaim_heavy_workload_produces_stall_data_for_its_cgroup() {
    require_root();
    let cg = TestCgroup::new("reclaim", "48M");
    let events = Events::start(&["--stall-threshold", "0s"]);
    let file = tempfile::NamedTempFile::new().unwrap();
    let status = cg.run(Command::new(memload_bin()).args([
        "pagecache",
        "--file",
        path_str(file.path()),
        "--size",
        "160m",
        "--rounds",
        "2",
    ]));
    assert!(status.success(), "workload failed: {status:?}");
    let (status, stderr, seen) = events.stop();
    assert!(status.success(), "guardian events failed: {stderr}");

    let id = cg.id();
    let stalls: Vec<&Value> = seen
        .iter()
        .filter(|v| v["type"] == "reclaim_stall" && v["cgroup"]["id"] == id)
        .collect();
    assert!(
        !stalls.is_empty(),
        "no reclaim_stall events for cgroup {id}"
    );
    assert!(stalls.iter().all(|s| s["comm"] == "memload"));
    let summary = seen
        .iter()
        .find(|v| v["type"] == "summary")
        .expect("no summary line");
    let ours = summary["stalls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["cgroup"]["id"] == id)
        .unwrap_or_else(|| panic!("summary has no stall totals for cgroup {id}: {summary}"));
    let count = ours["count"].as_u64().unwrap();
    assert!(
        count >= stalls.len() as u64,
        "every event is counted: {count} < {}",
        stalls.len()
    );
    assert!(ours["pages_reclaimed"].as_u64().unwrap() > 0);
    let in_histogram: u64 = ours["histogram_us"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b[1].as_u64().unwrap())
        .sum();
    assert_eq!(
        in_histogram, count,
        "the histogram accounts for every stall"
    );
}

#[test]
fn psi_trigger_on_a_test_cgroup_fires_under_pressure() {
    require_root();
    let cg = TestCgroup::new("psi", "48M");
    let pressure_file = cg.unified_dir.join("memory.pressure");
    let mut events = Events::start(&[
        "--watch",
        path_str(&cg.unified_dir),
        "--psi-stall",
        "10ms",
        "--psi-window",
        "2s",
    ]);
    let file = tempfile::NamedTempFile::new().unwrap();
    // Writing a file three times the limit makes the writer stall in reclaim (tens of ms per
    // run here); repeat until the trigger fires, for at most a minute.
    let is_ours =
        |v: &serde_json::Value| v["type"] == "pressure" && v["file"] == path_str(&pressure_file);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut fired = None;
    while fired.is_none() && std::time::Instant::now() < deadline {
        let status = cg.run(Command::new(memload_bin()).args([
            "pagecache",
            "--file",
            path_str(file.path()),
            "--size",
            "144m",
            "--rounds",
            "1",
        ]));
        assert!(status.success(), "workload failed: {status:?}");
        fired = events.wait_for(Duration::from_millis(500), is_ours);
    }
    let fired =
        fired.unwrap_or_else(|| panic!("the PSI trigger never fired; saw {:?}", events.seen));
    assert_eq!(fired["trigger"], "some 10000 2000000");
    let total = fired["stats"]["some"]["total_us"].as_u64().unwrap();
    assert!(
        total >= 10_000,
        "fired at {total} us of stall, below the 10 ms threshold"
    );
    events.stop();
}
