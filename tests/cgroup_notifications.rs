//! The cgroup layer against the real kernel: readings, the id index, and notifications, in
//! cgroups this test creates below its own.

mod support;

use std::{path::Path, process::Command, time::Duration};

use guardian::{
    actions::{ActionError, Executor, Target},
    model::{Bytes, CgroupId},
    policy::enforce::Act,
    sources::cgroup::{read_memory, CgroupIndex, FileWatch, Hierarchy, ProcCgroups, V1OomNotifier},
    store::Store,
};
use support::{memload_bin, require_root, TestCgroup};

fn relative(root: &Path, dir: &Path) -> std::path::PathBuf {
    Path::new("/").join(dir.strip_prefix(root).unwrap())
}

#[test]
fn memory_reading_matches_the_kernel_files() {
    require_root();
    let hierarchy = Hierarchy::detect().unwrap();
    let cg = TestCgroup::new("reading", "96M");
    let mut hog = cg.spawn(Command::new(memload_bin()).args([
        "hog",
        "--step",
        "1m",
        "--max",
        "24m",
        "--hold-ms",
        "4000",
    ]));
    std::thread::sleep(Duration::from_millis(1500));

    let mem_rel = relative(&hierarchy.memory, &cg.memory_dir);
    let uni_rel = relative(hierarchy.unified.as_ref().unwrap(), &cg.unified_dir);
    let reading = read_memory(&hierarchy, &mem_rel, Some(&uni_rel)).unwrap();
    let (usage_file, peak_file, limit_file) = if cg.v2 {
        ("memory.current", "memory.peak", "memory.max")
    } else {
        (
            "memory.usage_in_bytes",
            "memory.max_usage_in_bytes",
            "memory.limit_in_bytes",
        )
    };
    let kernel_usage: u64 = cg.memory_file(usage_file).trim().parse().unwrap();
    let kernel_peak: u64 = cg.memory_file(peak_file).trim().parse().unwrap();
    let kernel_limit: u64 = cg.memory_file(limit_file).trim().parse().unwrap();
    hog.kill().unwrap();
    hog.wait().unwrap();

    // The hog holds still, so the two reads must agree to within a few pages.
    assert!(
        reading.usage.0.abs_diff(kernel_usage) <= 16 * 4096,
        "{reading:?} vs {kernel_usage}"
    );
    assert!(reading.usage.0 >= 24 << 20);
    assert_eq!(reading.limit.unwrap().0, kernel_limit);
    assert_eq!(reading.limit.unwrap().0, 96 << 20);
    assert!(reading.peak.unwrap().0 >= reading.usage.0 && reading.peak.unwrap().0 <= kernel_peak);
    assert!(reading.anon.0 >= 24 << 20);
    assert!(reading.working_set <= reading.usage);
    assert_eq!(reading.oom_kills, 0);
    assert!(
        reading.pressure.is_some(),
        "the unified tree has memory.pressure"
    );
}

#[test]
fn cgroup_index_names_an_id_in_both_trees() {
    require_root();
    let hierarchy = Hierarchy::detect().unwrap();
    let cg = TestCgroup::new("index", "64M");
    let mut sleeper = cg.spawn(Command::new("sleep").arg("30"));
    let mut index = CgroupIndex::new(hierarchy.clone());
    let uni_rel = relative(hierarchy.unified.as_ref().unwrap(), &cg.unified_dir);
    let id = index.id_of(&uni_rel).unwrap();
    assert_eq!(id, CgroupId(cg.id()));
    let named = index.resolve(id);
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    assert_eq!(named.path.as_deref(), Some(uni_rel.as_path()));
    let memory_rel = relative(&hierarchy.memory, &cg.memory_dir);
    assert_eq!(named.memory_path.as_deref(), Some(memory_rel.as_path()));
    // Empty now: a fresh index still pairs the two trees.
    let mut fresh = CgroupIndex::new(hierarchy.clone());
    assert_eq!(fresh.resolve(id).memory_path, Some(memory_rel));
    // What /proc says of our own process agrees with the index for our own group.
    let own = ProcCgroups::parse(&std::fs::read_to_string("/proc/self/cgroup").unwrap());
    let own_id = index.id_of(own.unified.as_ref().unwrap()).unwrap();
    assert_eq!(index.path_of(own_id), own.unified);
}

#[tokio::test]
async fn file_watch_wakes_when_the_kernel_changes_a_cgroup_file() {
    require_root();
    let cg = TestCgroup::new("inotify", "64M");
    // cgroup.events flips `populated` when the first process joins: the kernel notifies it
    // exactly as it notifies memory.events on v2.
    let watch = FileWatch::new(&cg.unified_dir.join("cgroup.events")).unwrap();
    let mut sleeper = cg.spawn(Command::new("sleep").arg("30"));
    let woke = tokio::time::timeout(Duration::from_secs(5), watch.changed()).await;
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    woke.expect("no inotify wake-up within 5 s").unwrap();
    let events = std::fs::read_to_string(cg.unified_dir.join("cgroup.events")).unwrap();
    assert!(events.contains("populated"), "{events}");
}

#[tokio::test]
async fn v1_oom_eventfd_fires_when_the_group_hits_oom() {
    require_root();
    let cg = TestCgroup::new("eventfd", "32M");
    if cg.v2 {
        panic!("this host has no v1 memory controller; the v1 eventfd is tested on hybrid hosts");
    }
    let notifier = V1OomNotifier::arm(&cg.memory_dir).unwrap();
    let status = cg.run(Command::new(memload_bin()).args(["hog", "--step", "1m"]));
    assert!(!status.success());
    let count = tokio::time::timeout(Duration::from_secs(5), notifier.next())
        .await
        .expect("no OOM notification within 5 s")
        .unwrap();
    assert!(count >= 1);
    let oom_control = cg.memory_file("memory.oom_control");
    assert!(oom_control.contains("oom_kill 1"), "{oom_control}");
}

#[test]
fn a_journaled_freeze_stops_the_group_and_restoring_the_journal_thaws_it() {
    require_root();
    let hierarchy = Hierarchy::detect().unwrap();
    let cg = TestCgroup::new("freeze", "64M");
    let mut sleeper = cg.spawn(Command::new("sleep").arg("30"));
    let rel = relative(hierarchy.unified.as_ref().unwrap(), &cg.unified_dir);
    let memory_rel = relative(&hierarchy.memory, &cg.memory_dir);
    let state = tempfile::tempdir().unwrap();
    let store = Store::open(state.path()).unwrap();
    let executor = Executor::new(hierarchy.clone(), false);
    let target = Target {
        subject: "cgroup:test",
        memory_rel: &memory_rel,
        unified_rel: Some(&rel),
    };
    let written = executor.apply(&store, &target, Act::Freeze).unwrap();
    assert_eq!(
        (written.before.as_str(), written.after.as_str()),
        ("0", "1")
    );
    let frozen = |want: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            let events = std::fs::read_to_string(cg.unified_dir.join("cgroup.events")).unwrap();
            if events.lines().any(|l| l == format!("frozen {want}")) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    };
    assert!(frozen("1"), "the kernel reports the group frozen");
    // The journal holds the original before the write, as a crashed daemon would leave it.
    drop(store);
    let store = Store::open(state.path()).unwrap();
    let journal = store.journal().unwrap();
    assert_eq!(journal.len(), 1);
    assert_eq!(journal[0].original, "0");
    assert!(journal[0].file.ends_with("cgroup.freeze"));
    let restored = executor.restore_all(&store, "startup").unwrap();
    assert_eq!(restored.len(), 1);
    assert_eq!(restored[0].action, "thaw");
    assert!(frozen("0"), "the kernel reports the group thawed");
    assert!(store.journal().unwrap().is_empty());
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
}

#[test]
fn memory_high_is_refused_where_the_memory_controller_is_not_on_v2() {
    require_root();
    let hierarchy = Hierarchy::detect().unwrap();
    let cg = TestCgroup::new("high", "64M");
    let rel = relative(&hierarchy.memory, &cg.memory_dir);
    let state = tempfile::tempdir().unwrap();
    let store = Store::open(state.path()).unwrap();
    let executor = Executor::new(hierarchy.clone(), false);
    let target = Target {
        subject: "cgroup:test",
        memory_rel: &rel,
        unified_rel: None,
    };
    let result = executor.apply(&store, &target, Act::SetHigh(Bytes(32 << 20)));
    if hierarchy.memory_is_v2() {
        assert_eq!(result.unwrap().before, "max", "a new group starts at max");
        assert_eq!(
            std::fs::read_to_string(cg.memory_dir.join("memory.high"))
                .unwrap()
                .trim(),
            (32u64 << 20).to_string()
        );
    } else {
        let err = result.unwrap_err();
        assert!(matches!(err, ActionError::NoMemoryHigh(_)));
        assert!(err.to_string().contains("only observes here"), "{err}");
        assert!(
            !cg.memory_dir.join("memory.high").exists(),
            "nothing was written"
        );
        assert!(store.journal().unwrap().is_empty(), "nothing was journaled");
    }
}
