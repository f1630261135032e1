//! Records of the kernel log (`/dev/kmsg`), whose text includes task names any process
//! chooses (`prctl(PR_SET_NAME)`): kill lines and OOM summaries are recognised or ignored.
#![no_main]

use guardian::sources::kmsg::{parse_kill_line, parse_summary_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The reader decodes each record lossily, as here.
    let record = String::from_utf8_lossy(data);
    if let Some(kill) = parse_kill_line(&record) {
        assert!(kill.text.contains("Killed process"));
    }
    if let Some(kill) = parse_summary_line(&record) {
        assert!(kill.line.text.contains("oom-kill:"));
    }
});
