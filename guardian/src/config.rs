//! The daemon's configuration: TOML with defaults for every field, so no file is needed.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer};

use crate::{
    model::{BudgetRule, Bytes, LabelPolicy, SizeText, TrustedLabel},
    policy::health::Thresholds,
};

/// Where guardian looks when neither `--config` nor `GUARDIAN_CONFIG` is given; a missing file
/// means the defaults.
pub const DEFAULT_PATH: &str = "/etc/guardian/guardian.toml";

/// The state directory when neither a flag, `GUARDIAN_STATE_DIR` nor the config names one.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/guardian";

/// Errors reading the configuration, in one line each.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {0}")]
    Untrusted(String),
    #[error("config {path}, line {line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// A duration written as "5s", "500ms", "7d".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(Dur)
            .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e} (examples: 500ms, 5s, 7d)")))
    }
}

/// The Prometheus endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
}

/// The default metrics port: outside 9100–9999, the range the Prometheus wiki's "Default port
/// allocations" hands to exporters (fully allocated since 2023, so any port in it is some
/// exporter's), and not a default of OpenTelemetry's exporter (9464), its collector (4317, 4318,
/// 8888, 8889) or the usual agents (statsd 8125, Loki 3100, promtail 9080, Alloy 12345).
pub const DEFAULT_METRICS_PORT: u16 = 7919;
const _: () = assert!(DEFAULT_METRICS_PORT < 9100 || DEFAULT_METRICS_PORT > 9999);

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_METRICS_PORT)),
        }
    }
}

/// Everything the daemon can be told; the same names as its flags.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the store and the pid file live.
    pub state_dir: PathBuf,
    /// How often each container's cgroup is read.
    pub sample_interval: Dur,
    /// How often a container that is new or near its limit, budget or memory.high is read
    /// (policy/sampling.rs decides which); "0s" turns fast sampling off.
    pub fast_sample_interval: Dur,
    /// How often recorded data is committed to the store (what a crash can lose at most).
    pub flush_interval: Dur,
    /// Spacing of the stored timeline points.
    pub timeline_interval: Dur,
    /// How long timeline points are kept (run summaries are kept for good).
    pub timeline_retention: Dur,
    /// The start-up peak is the highest usage within this long after start.
    pub startup_window: Dur,
    pub metrics: MetricsConfig,
    /// How budgets are enforced (docs/operating.md, "Budgets").
    pub enforce: EnforceConfig,
    /// `[[budget]]` rules, first match wins (after a container's own `guardian.budget` label).
    pub budget: Vec<BudgetRule>,
    /// OOM post-mortems.
    pub incidents: IncidentsConfig,
    /// Where the health levels (safe, warning, critical, emergency) start, as shares of a
    /// container's ceiling or of the host's MemTotal (`[health] warning = 0.5` …).
    pub health: Thresholds,
}

/// OOM post-mortem reports.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IncidentsConfig {
    /// Where report files go (default `<state_dir>/reports`).
    pub dir: Option<PathBuf>,
    /// A shell command run for every incident with the Markdown report's path as `$1` (and in
    /// `GUARDIAN_REPORT`), the incident in `GUARDIAN_*` variables and its JSON on stdin
    /// (docs/operating.md, "The incident hook"), e.g. a chat webhook.
    pub hook: Option<String>,
    /// Arguments of the victim's command line holding one of these words lose their value.
    pub redact: Vec<String>,
    /// Incidents older than this are deleted with their report files (checked hourly).
    pub retention: Dur,
    /// At most this many incidents are kept; the oldest go first.
    pub max_count: usize,
    /// A freeze by guardian's ladder that lasts this long is reported while it lasts; a shorter
    /// one when it is thawed.
    pub freeze_report_after: Dur,
    /// A container whose working set stays at this share (0–1) of its limit or budget for
    /// `warn_after` gets a warning; re-armed once it falls 0.05 below.
    pub warn_share: f64,
    pub warn_after: Dur,
    /// A group at its memory.high whose tasks are all stalled on memory (PSI `full`) this share
    /// (0–1) of the time for `throttled_after` gets a throttled incident.
    pub throttled_full: f64,
    pub throttled_after: Dur,
}

impl Default for IncidentsConfig {
    fn default() -> Self {
        Self {
            dir: None,
            hook: None,
            redact: [
                "password", "passwd", "secret", "token", "apikey", "api_key", "api-key",
            ]
            .map(String::from)
            .to_vec(),
            retention: Dur(Duration::from_secs(90 * 24 * 3600)),
            max_count: 10_000,
            freeze_report_after: Dur(Duration::from_secs(30)),
            warn_share: 0.9,
            warn_after: Dur(Duration::from_secs(5)),
            throttled_full: 0.2,
            throttled_after: Dur(Duration::from_secs(10)),
        }
    }
}

/// The enforcement ladder's knobs.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnforceConfig {
    /// Off: observe only, never write a cgroup file.
    pub enabled: bool,
    /// Log and record what would be done, write nothing.
    pub dry_run: bool,
    /// Step 4: kill (cgroup.kill) a frozen container when critical pressure lasts `kill_after`.
    pub allow_kill: bool,
    /// How often budgeted groups' usage is read (crossing a budget raises no kernel event).
    pub interval: Dur,
    /// Host pressure when MemAvailable falls below this.
    pub reserve: SizeText,
    /// Critical when MemAvailable falls below this.
    pub critical_reserve: SizeText,
    /// Host pressure when the host's PSI `some` avg10 reaches this percentage.
    pub psi_some: f64,
    /// Critical when the host's PSI `full` avg10 reaches this percentage.
    pub psi_full: f64,
    /// The host PSI trigger: pressure when tasks stall this long within `psi_window`.
    pub psi_stall: Dur,
    pub psi_window: Dur,
    /// A guarded group's task stalled in memcg reclaim this long (eBPF) wakes the ladder.
    pub stall_wake: Dur,
    /// Each step under pressure lowers memory.high by this fraction of its distance to the floor.
    pub step: f64,
    /// At least this much per step.
    pub min_step: SizeText,
    /// memory.high never goes below this, nor below what the group cannot give back without
    /// swap (all but its page cache) plus 10%.
    pub floor: SizeText,
    /// At most one step per group this often.
    pub step_interval: Dur,
    /// Pressure must have passed for this long before limits relax and groups thaw.
    pub relax_after: Dur,
    /// A squeezed group is released when its usage stays below this fraction of its budget.
    pub release_below: f64,
    pub kill_after: Dur,
    /// Profile files (or directories of them) whose recommended limits are budgets.
    pub profiles: Vec<PathBuf>,
    /// Container labels guardian believes: `guardian.budget`, `guardian.priority`,
    /// `guardian.avoid`. Whoever can start a container sets its labels; on a runner that runs
    /// untrusted jobs, `[]` makes budgets, priorities and exemptions come from this file's
    /// rules and the profiles only.
    pub trusted_labels: Vec<TrustedLabel>,
}

impl EnforceConfig {
    /// How container labels are believed: `trusted_labels`, a label budget within `floor` and
    /// the host's MemTotal (/proc/meminfo; unbounded above when it cannot be read).
    pub fn label_policy(&self) -> LabelPolicy {
        LabelPolicy {
            trusted: self.trusted_labels.clone(),
            floor: self.floor.0,
            host_total: crate::sources::host::mem_total().ok(),
        }
    }
}

impl Default for EnforceConfig {
    fn default() -> Self {
        const MIB: u64 = 1 << 20;
        Self {
            enabled: true,
            dry_run: false,
            allow_kill: false,
            interval: Dur(Duration::from_millis(250)),
            reserve: SizeText(Bytes(512 * MIB)),
            critical_reserve: SizeText(Bytes(128 * MIB)),
            psi_some: 20.0,
            psi_full: 30.0,
            psi_stall: Dur(Duration::from_millis(150)),
            psi_window: Dur(Duration::from_secs(2)),
            stall_wake: Dur(Duration::from_millis(10)),
            step: 0.25,
            min_step: SizeText(Bytes(8 * MIB)),
            floor: SizeText(Bytes(32 * MIB)),
            step_interval: Dur(Duration::from_secs(1)),
            relax_after: Dur(Duration::from_secs(10)),
            release_below: 0.9,
            kill_after: Dur(Duration::from_secs(30)),
            profiles: vec![PathBuf::from("/etc/guardian/profiles")],
            trusted_labels: vec![
                TrustedLabel::Budget,
                TrustedLabel::Priority,
                TrustedLabel::Avoid,
            ],
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            sample_interval: Dur(Duration::from_secs(1)),
            fast_sample_interval: Dur(Duration::from_millis(20)),
            flush_interval: Dur(Duration::from_secs(5)),
            timeline_interval: Dur(Duration::from_secs(10)),
            timeline_retention: Dur(Duration::from_secs(7 * 24 * 3600)),
            startup_window: Dur(Duration::from_secs(30)),
            metrics: MetricsConfig::default(),
            enforce: EnforceConfig::default(),
            budget: Vec::new(),
            incidents: IncidentsConfig::default(),
            health: Thresholds::default(),
        }
    }
}

impl Config {
    /// Reads `path`, or [`DEFAULT_PATH`] if it exists, else the defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::default())
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        // Run as root, guardian executes the hook and sets budgets this file names.
        crate::sources::host::check_trusted(&path).map_err(ConfigError::Untrusted)?;
        Self::parse(&path, &text)
    }

    /// The configuration every command uses: the file at `path` (or [`DEFAULT_PATH`]), with its
    /// `state_dir` overridden by `state_dir` when given. The one resolution of where the store
    /// lives: `--state-dir`, then `GUARDIAN_STATE_DIR` (both arrive here as `state_dir`), then
    /// the file's `state_dir`, then [`DEFAULT_STATE_DIR`].
    pub fn resolve(path: Option<&Path>, state_dir: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = Self::load(path)?;
        if let Some(dir) = state_dir {
            config.state_dir = dir.to_path_buf();
        }
        Ok(config)
    }

    /// Parses TOML text; errors name the line.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: e
                .span()
                .map_or(0, |s| text[..s.start].matches('\n').count() + 1),
            message: e.message().replace('\n', " "),
        })?;
        config
            .check_ranges()
            .map_err(|message| ConfigError::Invalid {
                path: path.to_path_buf(),
                line: {
                    // The line that sets the key the message starts with (`step`, not
                    // `step_interval`).
                    let key = message.split(' ').next().unwrap_or("");
                    text.lines()
                        .position(|l| {
                            l.trim_start()
                                .strip_prefix(key)
                                .is_some_and(|rest| rest.trim_start().starts_with('='))
                        })
                        .map_or(0, |i| i + 1)
                },
                message,
            })?;
        Ok(config)
    }

    /// Values that parse but cannot be meant: shares outside 0–1, a retention that would delete
    /// every incident at once. Each error starts with the key's name.
    fn check_ranges(&self) -> Result<(), String> {
        let i = &self.incidents;
        for (key, share) in [
            ("warn_share", i.warn_share),
            ("throttled_full", i.throttled_full),
            ("release_below", self.enforce.release_below),
            ("step", self.enforce.step),
        ] {
            if !(share > 0.0 && share <= 1.0) {
                return Err(format!(
                    "{key} = {share} must be a share above 0 and at most 1"
                ));
            }
        }
        if let Some(message) = self.health.invalid() {
            return Err(message);
        }
        if i.max_count == 0 {
            return Err("max_count = 0 would delete every incident: keep at least 1".into());
        }
        if i.retention.0.is_zero() {
            return Err(
                "retention = \"0s\" would delete every incident: give a duration such as \"90d\""
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults() {
        assert_eq!(
            Config::parse(Path::new("g.toml"), "").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn fields_parse_with_units() {
        let c = Config::parse(
            Path::new("g.toml"),
            "state_dir = \"/tmp/g\"\nflush_interval = \"500ms\"\n[metrics]\nenabled = false\nlisten = \"0.0.0.0:9999\"\n",
        )
        .unwrap();
        assert_eq!(c.flush_interval, Dur(Duration::from_millis(500)));
        assert!(!c.metrics.enabled);
        assert_eq!(c.metrics.listen.port(), 9999);
        assert!(Config::default().metrics.listen.ip().is_loopback());
    }

    #[test]
    fn budget_rules_and_enforcement_knobs_parse() {
        let c = Config::parse(
            Path::new("g.toml"),
            "[enforce]\ndry_run = true\nreserve = \"1g\"\n\n[[budget]]\nservice = \"db\"\nmemory = \"512m\"\n\n[[budget]]\ncgroup = \"/ci.slice\"\nmemory = \"2g\"\npriority = -1\n",
        )
        .unwrap();
        assert!(c.enforce.dry_run);
        assert_eq!(c.enforce.reserve, SizeText(Bytes(1 << 30)));
        assert_eq!(c.budget.len(), 2);
        assert_eq!(c.budget[0].memory, Some(SizeText(Bytes(512 << 20))));
        assert_eq!(c.budget[1].priority, Some(-1));
        let e =
            Config::parse(Path::new("g.toml"), "[[budget]]\nmemory = \"5 apples\"\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("config g.toml, line 2: invalid size"),
            "{e}"
        );
    }

    #[test]
    fn the_state_dir_comes_from_the_flag_then_the_config_file_then_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("guardian.toml");
        std::fs::write(&file, "state_dir = \"/srv/guardian\"\n").unwrap();
        let from_file = Config::resolve(Some(&file), None).unwrap();
        assert_eq!(from_file.state_dir, Path::new("/srv/guardian"));
        let flag = Config::resolve(Some(&file), Some(Path::new("/tmp/g"))).unwrap();
        assert_eq!(flag.state_dir, Path::new("/tmp/g"));
        std::fs::write(&file, "").unwrap();
        let default = Config::resolve(Some(&file), None).unwrap();
        assert_eq!(default.state_dir, Path::new(DEFAULT_STATE_DIR));
    }

    #[test]
    fn shares_outside_zero_to_one_and_a_retention_that_deletes_everything_are_refused() {
        for (text, key, at) in [
            ("[incidents]\nwarn_share = 1.5\n", "warn_share", 2),
            ("[incidents]\nthrottled_full = 0\n", "throttled_full", 2),
            ("[incidents]\nmax_count = 0\n", "max_count", 2),
            ("[incidents]\nretention = \"0s\"\n", "retention", 2),
            (
                "[enforce]\nstep_interval = \"1s\"\nstep = -0.1\n",
                "step",
                3,
            ),
        ] {
            let e = Config::parse(Path::new("g.toml"), text).unwrap_err();
            let ConfigError::Invalid { line, message, .. } = &e else {
                panic!("{e}")
            };
            assert!(message.starts_with(key), "{e}");
            assert_eq!(*line, at, "{e}");
        }
        assert!(Config::parse(Path::new("g.toml"), "[incidents]\nwarn_share = 1.0\n").is_ok());
    }

    #[test]
    fn a_config_named_but_missing_is_an_error() {
        let e = Config::resolve(Some(Path::new("/nonexistent/guardian.toml")), None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("config /nonexistent/guardian.toml: "),
            "{e}"
        );
    }

    /// The file the package installs as /etc/guardian/guardian.toml.
    const PACKAGED: &str = include_str!("../packaging/guardian.toml");

    #[test]
    fn the_packaged_config_changes_nothing_and_uncommented_shows_the_defaults() {
        assert_eq!(
            Config::parse(Path::new("guardian.toml"), PACKAGED).unwrap(),
            Config::default()
        );
        // Uncomment the settings (not the examples: hook, budget rules, incidents.dir).
        let examples = [
            "#hook",
            "#[[budget]]",
            "#project",
            "#service",
            "#memory",
            "#priority",
            "#dir",
        ];
        let uncommented: String = PACKAGED
            .lines()
            .filter(|l| !examples.iter().any(|e| l.starts_with(e)))
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if !rest.starts_with(' ') && !rest.is_empty() => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            Config::parse(Path::new("guardian.toml"), &uncommented).unwrap(),
            Config::default(),
            "{uncommented}"
        );
    }

    #[test]
    fn unknown_fields_and_bad_durations_are_one_line_errors_with_the_line() {
        let e = Config::parse(Path::new("g.toml"), "\n\nflush_intervall = \"5s\"\n").unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("config g.toml, line 3: unknown field `flush_intervall`"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 1);
        let e = Config::parse(Path::new("g.toml"), "sample_interval = \"soon\"\n").unwrap_err();
        assert!(e.to_string().contains("examples: 500ms"), "{e}");
    }

    #[test]
    fn health_levels_are_configured_as_ascending_shares() {
        let c = Config::parse(
            Path::new("g.toml"),
            "[health]\nwarning = 0.6\ncritical = 0.8\nemergency = 0.95\n",
        )
        .unwrap();
        assert_eq!(c.health.level(0.7), crate::policy::health::Level::Warning);
        let e = Config::parse(
            Path::new("g.toml"),
            "[health]\ncritical = 0.95\nemergency = 0.9\n",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "config g.toml, line 2: critical = 0.95 must be below emergency = 0.9: the levels ascend warning < critical < emergency"
        );
    }
}
