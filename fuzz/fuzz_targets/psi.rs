//! PSI files (`memory.pressure`, `/proc/pressure/memory`): a reading or `None`.
#![no_main]

use guardian::sources::cgroup::parse_pressure;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if parse_pressure(text).is_some() {
        assert!(text
            .lines()
            .any(|l| l.split_whitespace().next() == Some("some")));
    }
});
