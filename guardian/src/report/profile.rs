//! Writing recommendations as files: a compose override for `-f`, and a profile (TOML) that
//! later features read as budgets and that fleets merge.

use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};

use crate::{
    model::{Bytes, ProfileBudget},
    policy::profile::{override_entry, BaseMemory, Recommendation},
};

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

/// Errors reading a profile file.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a guardian profile ({message})")]
    Invalid { path: String, message: String },
    #[error("profile {0}")]
    Untrusted(String),
    #[error("{path}: profile schema {found} is newer than this guardian's ({PROFILE_SCHEMA}); upgrade guardian")]
    TooNew { path: String, found: u32 },
}

impl ProfileFile {
    /// Reads and checks a profile file.
    pub fn read(path: &Path) -> Result<Self, ProfileError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: p.clone(),
            source,
        })?;
        Self::parse(&p, &text)
    }

    /// Parses and checks the text of a profile file; `path` names it in errors.
    pub fn parse(path: &str, text: &str) -> Result<Self, ProfileError> {
        let file: ProfileFile = toml::from_str(text).map_err(|e| ProfileError::Invalid {
            path: path.to_string(),
            message: e.message().replace('\n', " "),
        })?;
        if file.schema > PROFILE_SCHEMA {
            return Err(ProfileError::TooNew {
                path: path.to_string(),
                found: file.schema,
            });
        }
        if !(file.margin.is_finite() && file.margin >= 0.0) {
            return Err(ProfileError::Invalid {
                path: path.to_string(),
                message: format!("margin = {} must be a share of 0 or more", file.margin),
            });
        }
        Ok(file)
    }

    /// The TOML text.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string_pretty(self).expect("profiles always serialize");
        format!(
            "# guardian profile: memory limits from observed peaks (see docs/profiles.md)\n{body}"
        )
    }
}

/// Budgets from profile files, or every `*.toml` in directories: each service's recommended
/// limit. Missing paths are skipped; unreadable files come back as errors beside what was read.
pub fn budgets_from(paths: &[std::path::PathBuf]) -> (Vec<ProfileBudget>, Vec<ProfileError>) {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            if let Ok(dir) = std::fs::read_dir(path) {
                let mut found: Vec<_> = dir
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                    .collect();
                found.sort();
                files.extend(found);
            }
        } else if path.exists() {
            files.push(path.clone());
        }
    }
    let mut budgets = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        // Run as root, a profile's limits become budgets that squeeze containers.
        if let Err(why) = crate::sources::host::check_trusted(&file) {
            errors.push(ProfileError::Untrusted(why));
            continue;
        }
        match ProfileFile::read(&file) {
            Ok(p) => budgets.extend(p.services.into_iter().map(|r| ProfileBudget {
                project: r.usage.project,
                service: r.usage.service,
                limit: r.recommended_limit,
                file: file.display().to_string(),
            })),
            Err(e) => errors.push(e),
        }
    }
    (budgets, errors)
}

/// A size as compose reads it: whole MiB (`104m`), or GiB when exact (`2g`).
pub fn compose_size(b: Bytes) -> String {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    if b.0 >= GIB && b.0.is_multiple_of(GIB) {
        format!("{}g", b.0 / GIB)
    } else {
        format!("{}m", b.0.div_ceil(MIB))
    }
}

/// The override file for `docker compose -f <your files> -f <this> up`: each service with the
/// memory keys its own file uses ([`override_entry`]); `base` has what the stack sets, when
/// guardian could read the stack (else `deploy.resources`).
pub fn compose_override(
    recs: &[Recommendation],
    margin: f64,
    base: &BTreeMap<String, BaseMemory>,
) -> String {
    let mut out = format!(
        "# Generated by `guardian profile`: limits = observed peak x {m:.2}, rounded up (after an OOM kill at\n# least max(limit x {m:.2}, limit + 100 MiB)); reservations = typical working set. Use with:\n#   docker compose -f docker-compose.yml -f docker-compose.guardian.yml up\nservices:\n",
        m = 1.0 + margin
    );
    for r in recs {
        let e = override_entry(r, &base.get(&r.usage.service).copied().unwrap_or_default());
        out += &format!("  {}:\n", r.usage.service);
        if e.mem_limit {
            out += &format!(
                "    mem_limit: {}\n    mem_reservation: {}\n",
                compose_size(e.limit),
                compose_size(e.reservation)
            );
        }
        if let Some(swap) = e.memswap {
            out += &format!("    memswap_limit: {}\n", compose_size(swap));
        }
        if e.deploy {
            out += &format!(
                "    deploy:\n      resources:\n        limits:\n          memory: {}\n        reservations:\n          memory: {}\n",
                compose_size(e.limit),
                compose_size(e.reservation)
            );
        }
    }
    out
}

/// Writes `text` to `path` atomically: a temporary file in the same directory, then rename.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    std::fs::write(&tmp, text)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::LimitKey,
        policy::profile::{recommend, ServiceUsage},
    };

    fn rec() -> Recommendation {
        recommend(
            &ServiceUsage {
                project: Some("ci".into()),
                service: "db".into(),
                runs: 2,
                peak: Bytes(80 << 20),
                startup_peak: Bytes(90 << 20),
                typical_working_set: Bytes(40 << 20),
                limit: Some(Bytes(2 << 30)),
                oom_killed: false,
            },
            0.2,
        )
    }

    #[test]
    fn a_profile_whose_margin_is_not_a_finite_share_is_refused() {
        let text = |margin: &str| {
            format!("schema = 1\ngenerated_at = \"2026-11-30T00:00:00Z\"\nmargin = {margin}\n")
        };
        assert!(ProfileFile::parse("p.toml", &text("0.2")).is_ok());
        for bad in ["inf", "nan", "-0.5"] {
            let e = ProfileFile::parse("p.toml", &text(bad)).unwrap_err();
            assert!(e.to_string().contains("margin"), "{bad}: {e}");
        }
    }

    #[test]
    fn profile_files_round_trip() {
        let file = ProfileFile {
            schema: PROFILE_SCHEMA,
            generated_at: "2026-11-22T00:00:00Z".into(),
            margin: 0.2,
            services: vec![rec()],
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ci.toml");
        write_atomic(&path, &file.to_toml()).unwrap();
        assert_eq!(ProfileFile::read(&path).unwrap(), file);
    }

    #[test]
    fn the_override_sets_limits_and_reservations_per_service() {
        let text = compose_override(&[rec()], 0.2, &BTreeMap::new());
        let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let res = &yaml["services"]["db"]["deploy"]["resources"];
        assert_eq!(res["limits"]["memory"], "96m");
        assert_eq!(res["reservations"]["memory"], "40m");
        assert_eq!(compose_size(Bytes(2 << 30)), "2g");
        // A service limited with mem_limit keeps mem_limit, and its swap moves along.
        let base = BaseMemory {
            key: LimitKey::MemLimit,
            limit: Some(Bytes(2 << 30)),
            memswap: Some(2 << 30),
        };
        let text = compose_override(&[rec()], 0.2, &[("db".to_string(), base)].into());
        let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let db = &yaml["services"]["db"];
        assert_eq!(db["mem_limit"], "96m");
        assert_eq!(db["memswap_limit"], "96m");
        assert!(db.get("deploy").is_none(), "{text}");
    }

    #[test]
    fn garbage_is_not_a_profile() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.toml");
        std::fs::write(&path, "hello = 1\n").unwrap();
        let e = ProfileFile::read(&path).unwrap_err();
        assert!(e.to_string().contains("not a guardian profile"), "{e}");
    }
}
