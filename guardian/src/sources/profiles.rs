//! Profile files on disk (`profiles/<project>.toml`, the `[enforce] profiles` paths): read,
//! checked, and turned into budgets. The format is `model::ProfileFile`.

use std::path::Path;

use crate::model::{ProfileBudget, ProfileFile, PROFILE_SCHEMA};

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

/// Reads and checks a profile file: TOML of [`ProfileFile`] with a schema this guardian knows.
pub fn read(path: &Path) -> Result<ProfileFile, ProfileError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
        path: p.clone(),
        source,
    })?;
    parse(&p, &text)
}

/// Parses and checks the text of a profile file (a schema this guardian knows, a finite margin
/// of 0 or more); `path` names it in errors.
pub fn parse(path: &str, text: &str) -> Result<ProfileFile, ProfileError> {
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
        if let Err(why) = super::host::check_trusted(&file) {
            errors.push(ProfileError::Untrusted(why));
            continue;
        }
        match read(&file) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_whose_margin_is_not_a_finite_share_is_refused() {
        let text = |margin: &str| {
            format!("schema = 1\ngenerated_at = \"2026-11-30T00:00:00Z\"\nmargin = {margin}\n")
        };
        assert!(parse("p.toml", &text("0.2")).is_ok());
        for bad in ["inf", "nan", "-0.5"] {
            let e = parse("p.toml", &text(bad)).unwrap_err();
            assert!(e.to_string().contains("margin"), "{bad}: {e}");
        }
    }
    use crate::{
        model::Bytes,
        policy::profile::{recommend, ServiceUsage},
        report::write_atomic,
    };

    #[test]
    fn profile_files_round_trip() {
        let rec = recommend(
            &ServiceUsage {
                project: Some("ci".into()),
                service: "db".into(),
                runs: 2,
                peak: Bytes(80 << 20),
                peak_unreclaimable: Some(Bytes(60 << 20)),
                runs_without_unreclaimable: 0,
                startup_peak: Bytes(90 << 20),
                typical_working_set: Bytes(40 << 20),
                limit: Some(Bytes(2 << 30)),
                oom_killed: false,
            },
            0.2,
        );
        let file = ProfileFile {
            schema: PROFILE_SCHEMA,
            generated_at: "2026-11-22T00:00:00Z".into(),
            margin: 0.2,
            services: vec![rec],
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ci.toml");
        write_atomic(&path, file.to_toml().as_bytes()).unwrap();
        assert_eq!(read(&path).unwrap(), file);
    }

    #[test]
    fn garbage_is_not_a_profile() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.toml");
        std::fs::write(&path, "hello = 1\n").unwrap();
        let e = read(&path).unwrap_err();
        assert!(e.to_string().contains("not a guardian profile"), "{e}");
    }
}
