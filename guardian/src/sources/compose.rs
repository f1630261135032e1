//! The user's compose tool (`docker compose`, else Debian's `docker-compose`): the resolved
//! model of a stack from `config`, never a hand-written parser of the compose spec.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use crate::model::Bytes;

/// Errors running the compose tool or reading what it printed.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("no compose tool found: install the docker compose plugin or docker-compose")]
    Missing,
    #[error("{file}: {message}")]
    Invalid { file: PathBuf, message: String },
}

/// The compose command to run.
#[derive(Clone, Debug)]
pub struct ComposeTool {
    program: &'static str,
    prefix: &'static [&'static str],
}

/// One service of the resolved model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ComposeServiceModel {
    /// `deploy.resources.limits.memory`, else `mem_limit`.
    pub memory_limit: Option<Bytes>,
    /// `deploy.resources.reservations.memory`, else `mem_reservation`.
    pub memory_reservation: Option<Bytes>,
    /// Services this one waits for (`depends_on`, list or map form).
    pub depends_on: Vec<Dependency>,
    /// `image`, as written (absent for a service that is only built).
    pub image: Option<String>,
}

/// One `depends_on` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dependency {
    pub service: String,
    pub condition: Condition,
}

/// What a dependent waits for, as compose defines `depends_on.<service>.condition`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Condition {
    /// `service_started` (and the list form): the container runs.
    #[default]
    Started,
    /// `service_healthy`: its healthcheck passes.
    Healthy,
    /// `service_completed_successfully`: it exited with code 0.
    CompletedSuccessfully,
}

/// The resolved stack.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ComposeModel {
    /// The project name, when the tool reports it (compose v2 does).
    pub name: Option<String>,
    pub services: BTreeMap<String, ComposeServiceModel>,
}

impl ComposeTool {
    /// `docker compose` if the plugin answers, else `docker-compose` if installed.
    pub fn detect() -> Result<Self, ComposeError> {
        let works = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if works("docker", &["compose", "version"]) {
            Ok(Self {
                program: "docker",
                prefix: &["compose"],
            })
        } else if works("docker-compose", &["version"]) {
            Ok(Self {
                program: "docker-compose",
                prefix: &[],
            })
        } else {
            Err(ComposeError::Missing)
        }
    }

    /// A command for this tool with `args`.
    pub fn command(&self, files: &[PathBuf], args: &[&str]) -> Command {
        let mut cmd = Command::new(self.program);
        cmd.args(self.prefix);
        for f in files {
            cmd.arg("-f").arg(f);
        }
        cmd.args(args);
        cmd
    }

    /// `config`: the stack as the tool resolves it.
    pub fn config(&self, files: &[PathBuf]) -> Result<ComposeModel, ComposeError> {
        let file = files
            .first()
            .cloned()
            .unwrap_or_else(|| PathBuf::from("docker-compose.yml"));
        let out = self
            .command(files, &["config"])
            .output()
            .map_err(|e| ComposeError::Invalid {
                file: file.clone(),
                message: e.to_string(),
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let message = stderr
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("compose config failed")
                .trim()
                .to_string();
            return Err(ComposeError::Invalid { file, message });
        }
        parse_config(&file, &String::from_utf8_lossy(&out.stdout))
    }
}

/// Reads the YAML that `compose config` prints.
pub fn parse_config(file: &Path, yaml: &str) -> Result<ComposeModel, ComposeError> {
    let invalid = |message: String| ComposeError::Invalid {
        file: file.to_path_buf(),
        message,
    };
    let doc: serde_yaml::Value = serde_yaml::from_str(yaml).map_err(|e| invalid(e.to_string()))?;
    let size = |v: Option<&serde_yaml::Value>| -> Result<Option<Bytes>, ComposeError> {
        match v {
            None | Some(serde_yaml::Value::Null) => Ok(None),
            Some(serde_yaml::Value::Number(n)) => Ok(n.as_u64().map(Bytes)),
            Some(serde_yaml::Value::String(s)) => s.parse::<Bytes>().map(Some).map_err(invalid),
            Some(other) => Err(invalid(format!("unexpected memory value {other:?}"))),
        }
    };
    let mut model = ComposeModel {
        name: doc.get("name").and_then(|n| n.as_str()).map(str::to_string),
        ..Default::default()
    };
    let services = doc
        .get("services")
        .and_then(|s| s.as_mapping())
        .ok_or_else(|| invalid("no services".into()))?;
    for (name, svc) in services {
        let name = name
            .as_str()
            .ok_or_else(|| invalid("a service name is not a string".into()))?;
        let resources = svc.get("deploy").and_then(|d| d.get("resources"));
        let limit = size(
            resources
                .and_then(|r| r.get("limits"))
                .and_then(|l| l.get("memory")),
        )?
        .or(size(svc.get("mem_limit"))?);
        let reservation = size(
            resources
                .and_then(|r| r.get("reservations"))
                .and_then(|l| l.get("memory")),
        )?
        .or(size(svc.get("mem_reservation"))?);
        let depends_on = match svc.get("depends_on") {
            Some(serde_yaml::Value::Sequence(list)) => list
                .iter()
                .filter_map(|v| v.as_str())
                .map(|service| Dependency {
                    service: service.to_string(),
                    condition: Condition::Started,
                })
                .collect(),
            Some(serde_yaml::Value::Mapping(map)) => map
                .iter()
                .filter_map(|(k, v)| Some((k.as_str()?, v)))
                .map(|(service, v)| {
                    let condition = match v.get("condition").and_then(|c| c.as_str()) {
                        None | Some("service_started") => Ok(Condition::Started),
                        Some("service_healthy") => Ok(Condition::Healthy),
                        Some("service_completed_successfully") => {
                            Ok(Condition::CompletedSuccessfully)
                        }
                        Some(other) => Err(invalid(format!(
                            "service {name:?}: unknown depends_on condition {other:?}"
                        ))),
                    }?;
                    Ok(Dependency {
                        service: service.to_string(),
                        condition,
                    })
                })
                .collect::<Result<_, ComposeError>>()?,
            _ => Vec::new(),
        };
        model.services.insert(
            name.to_string(),
            ComposeServiceModel {
                memory_limit: limit,
                memory_reservation: reservation,
                depends_on,
                image: svc
                    .get("image")
                    .and_then(|i| i.as_str())
                    .map(str::to_string),
            },
        );
    }
    Ok(model)
}

/// The project name compose derives from a file's directory when none is given.
pub fn default_project_name(file: &Path) -> String {
    let dir = file
        .canonicalize()
        .ok()
        .and_then(|p| {
            p.parent()
                .and_then(|d| d.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    dir.to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_come_from_deploy_or_mem_limit() {
        let yaml = "services:\n  db:\n    image: x\n    deploy:\n      resources:\n        limits:\n          memory: 64M\n        reservations:\n          memory: 32M\n  web:\n    image: y\n    mem_limit: 1073741824\n  cache:\n    image: z\n";
        let m = parse_config(Path::new("c.yml"), yaml).unwrap();
        assert_eq!(m.services["db"].memory_limit, Some(Bytes(64 << 20)));
        assert_eq!(m.services["db"].memory_reservation, Some(Bytes(32 << 20)));
        assert_eq!(m.services["web"].memory_limit, Some(Bytes(1 << 30)));
        assert_eq!(
            m.services["cache"],
            ComposeServiceModel {
                image: Some("z".into()),
                ..Default::default()
            }
        );
    }

    #[test]
    fn depends_on_in_both_forms_with_conditions() {
        // As docker-compose 1.29.2 prints `config` (the map form), and the list form.
        let yaml = include_str!("fixtures/compose-config-1.29.2.yml");
        let m = parse_config(Path::new("c.yml"), yaml).unwrap();
        let names = |m: &ComposeModel, s: &str| -> Vec<(String, Condition)> {
            m.services[s]
                .depends_on
                .iter()
                .map(|d| (d.service.clone(), d.condition))
                .collect()
        };
        assert_eq!(names(&m, "app"), [("db".into(), Condition::Healthy)]);
        assert_eq!(names(&m, "web"), [("app".into(), Condition::Started)]);
        assert_eq!(m.services["db"].memory_limit, Some(Bytes(256 << 20)));
        let list = parse_config(
            Path::new("c.yml"),
            "services:\n  a:\n    depends_on: [b, c]\n",
        )
        .unwrap();
        assert_eq!(
            names(&list, "a"),
            [
                ("b".into(), Condition::Started),
                ("c".into(), Condition::Started)
            ]
        );
        let unknown = parse_config(
            Path::new("c.yml"),
            "services:\n  a:\n    depends_on:\n      b:\n        condition: service_ready\n  b: {}\n",
        );
        assert!(unknown
            .unwrap_err()
            .to_string()
            .contains("unknown depends_on condition \"service_ready\""));
    }

    #[test]
    fn yaml_without_services_is_an_error() {
        assert!(parse_config(Path::new("c.yml"), "version: '3'\n").is_err());
    }
}
