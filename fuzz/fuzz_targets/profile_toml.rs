//! Profile files (`profiles/<project>.toml`), which come from other runners and become budgets:
//! what parses must survive what `guardian profile merge` does with it (merge, recommend,
//! write back as TOML) and read back the same.
#![no_main]

use guardian::{
    model::{ProfileFile, PROFILE_SCHEMA},
    policy::profile::merge,
    sources::profiles::parse,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(profile) = parse("fuzz.toml", text) else {
        return;
    };
    assert!(profile.schema <= PROFILE_SCHEMA);
    // Two runners' copies of the same file, as a fleet merges them.
    let both = [profile.services.clone(), profile.services.clone()];
    let merged = ProfileFile {
        services: merge(&both, profile.margin),
        ..profile.clone()
    };
    for written in [profile, merged] {
        let text = written.to_toml();
        let again = parse("written.toml", &text)
            .unwrap_or_else(|e| panic!("guardian cannot read what it wrote: {e}\n{text}"));
        assert_eq!(again.services.len(), written.services.len());
    }
});
