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
    /// The highest high-water mark (v2 memory.peak, v1 max_usage_in_bytes): page cache included.
    pub peak: Bytes,
    /// The highest unreclaimable peak (anon, shmem, mapped file, kernel memory) among the runs
    /// that measured it.
    #[serde(default)]
    pub peak_unreclaimable: Option<Bytes>,
    /// Runs recorded before guardian measured the unreclaimable peak; with any, the service is
    /// sized from its high-water mark.
    #[serde(default)]
    pub runs_without_unreclaimable: u64,
    pub startup_peak: Bytes,
    pub typical_working_set: Bytes,
    /// The limit of the latest run.
    pub limit: Option<Bytes>,
    /// Some run was OOM-killed at its own limit: `peak` is censored by that limit.
    pub oom_killed: bool,
}

impl ServiceUsage {
    /// The peak a limit must hold and what it is: the unreclaimable peak when every run
    /// measured it, else the high-water mark.
    pub fn sizing_peak(&self) -> (Bytes, PeakKind) {
        match self.peak_unreclaimable {
            Some(p) if self.runs_without_unreclaimable == 0 => (p, PeakKind::Unreclaimable),
            _ => (self.peak, PeakKind::HighWater),
        }
    }
}

/// Which peak a recommendation was sized from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeakKind {
    /// What reclaim cannot free: the need.
    Unreclaimable,
    /// The kernel's high-water mark, page cache included: an upper bound of the need.
    #[default]
    HighWater,
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
    /// The peak the limit was sized from.
    #[serde(default)]
    pub sized_from: PeakKind,
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
