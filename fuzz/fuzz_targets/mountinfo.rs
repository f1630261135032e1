//! `/proc/self/mountinfo`, whose mount points anyone who can mount (a container runtime, a
//! user namespace) chooses: the cgroup hierarchy is found or refused.
#![no_main]

use guardian::sources::cgroup::Hierarchy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for has_memory in [true, false] {
        let _ = Hierarchy::from_mountinfo(text, |_| has_memory);
    }
});
