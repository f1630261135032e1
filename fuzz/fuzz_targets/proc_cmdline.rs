//! `/proc/<pid>/cmdline` of an OOM victim, which the process may have rewritten to any bytes:
//! redacted, joined and cut to a bounded length, a secret's value never shown.
#![no_main]

use guardian::sources::oom::cmdline_text;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let redact = vec!["password".to_string(), "token".to_string()];
    if let Some(text) = cmdline_text(data, &redact) {
        // 256 characters and the ellipsis.
        assert!(
            text.chars().count() <= 257,
            "{} characters",
            text.chars().count()
        );
    }
});
