//! `key value` files of a memory cgroup: memory.stat, memory.events, memory.oom_control
//! (v1 and v2), as the readings and post-mortems parse them.
#![no_main]

use guardian::sources::cgroup::{parse_kv, stat_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let kv = parse_kv(text);
    for (name, bytes) in stat_bytes(text) {
        assert_eq!(kv.get(name.as_str()).copied(), Some(bytes.0));
    }
});
