//! The daemon's config file (`/etc/guardian/guardian.toml`, `--config`): any text either
//! parses to a config whose rules can be described and guarded, or is refused with a line
//! inside the file.
#![no_main]

use std::path::Path;

use guardian::{
    config::{Config, ConfigError},
    model::cgroup_guard,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The config is read with read_to_string: text that is not UTF-8 never reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(Path::new("guardian.toml"), text) {
        Ok(config) => {
            for rule in &config.budget {
                let _ = rule.describe();
                let _ = cgroup_guard(rule);
            }
        }
        Err(ConfigError::Invalid { line, .. }) => {
            assert!(
                line <= text.lines().count() + 1,
                "line {line} is past the end"
            )
        }
        Err(e) => panic!("parsing text reads no file, yet: {e}"),
    }
});
