//! `/proc/<pid>/cgroup` of any process (a victim, a container's main process): the unified
//! and v1 memory paths it names, on every kind of hierarchy.
#![no_main]

use std::path::{Path, PathBuf};

use guardian::sources::cgroup::{Hierarchy, Mode, ProcCgroups};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let groups = ProcCgroups::parse(text);
    for mode in [Mode::V2, Mode::Hybrid, Mode::V1] {
        let hierarchy = Hierarchy {
            mode,
            unified: Some(PathBuf::from("/sys/fs/cgroup/unified")),
            memory: PathBuf::from("/sys/fs/cgroup/memory"),
        };
        if let Some(rel) = groups.memory(&hierarchy) {
            // A path from the file is joined under the memory root, never replaces it.
            let dir = hierarchy.memory_dir(rel);
            assert!(dir.starts_with(Path::new("/sys/fs/cgroup/memory")));
        }
    }
});
