//! Profiles: what the runs of a service used, the limit recommended from it, and the profile
//! file (`profiles/<project>.toml`, documented in docs/profiles.md) that carries them to budgets,
//! `guardian ps` and the stack planner. Plain data; `sources::profiles` reads the files.

use serde::{Deserialize, Serialize};

use super::Bytes;

/// What the runs of one compose service (or one plain container name) used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceUsage {
    pub project: Option<String>,
    /// Compose service, or the container name outside compose.
    pub service: String,
    pub runs: u64,
    pub peak: Bytes,
    pub startup_peak: Bytes,
    pub typical_working_set: Bytes,
    /// The limit of the latest run.
    pub limit: Option<Bytes>,
    /// Some run was OOM-killed at its own limit: `peak` is censored by that limit.
    pub oom_killed: bool,
}

/// A recommended limit with the reason a person can check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    #[serde(flatten)]
    pub usage: ServiceUsage,
    /// The limit to set: `services.<svc>.deploy.resources.limits.memory`.
    pub recommended_limit: Bytes,
    /// The reservation: the typical working set, rounded up.
    pub recommended_reservation: Bytes,
    pub reason: String,
}

/// The profile file schema version.
pub const PROFILE_SCHEMA: u32 = 1;

/// A profile file (`profiles/<project>.toml`); documented in docs/profiles.md.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    pub schema: u32,
    /// RFC 3339.
    pub generated_at: String,
    /// The margin over the peak, e.g. 0.2 for 20%.
    pub margin: f64,
    #[serde(rename = "service", default)]
    pub services: Vec<Recommendation>,
}

impl ProfileFile {
    /// The TOML text.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string_pretty(self).expect("profiles always serialize");
        format!(
            "# guardian profile: memory limits from observed peaks (see docs/profiles.md)\n{body}"
        )
    }
}
