//! What the compose tool prints for `config` (JSON from Compose v2, YAML from 1.x): the user's
//! stack, resolved. Anything either becomes a model or an error naming the file.
#![no_main]

use std::path::Path;

use guardian::sources::compose::parse_config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The tool's stdout is read as UTF-8 text.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(model) = parse_config(Path::new("compose.yaml"), text) {
        for service in model.services.values() {
            if let Some(limit) = service.memory_limit {
                assert!(limit.0 > 0, "a limit of 0 means no limit");
            }
        }
    }
});
