//! Tracepoint `format` files (`/sys/kernel/tracing/events/*/*/format`): their offsets go into
//! the eBPF programs, so a layout is only ever made of offsets the file gave.
#![no_main]

use std::path::Path;

use guardian::sources::tracefs::TraceFormat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let format = TraceFormat::parse(Path::new("format"), text);
    if let Ok(layout) = format.oom_layout() {
        assert!(format
            .fields
            .iter()
            .any(|f| f.name == "pid" && f.offset == layout.pid));
    }
    let _ = format.nr_reclaimed_offset();
});
