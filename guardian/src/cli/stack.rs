//! A compose stack as `guardian up` and `guardian preflight` see it: the model the user's compose
//! tool resolves, the project name, and what each service is expected to need.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use super::UsageError;
use crate::{
    model::{Bytes, RunRecord},
    policy::{
        profile::{summarize, ServiceUsage},
        staging::{Need, NeedSource},
    },
    report::profile::ProfileFile,
    sources::compose::{default_project_name, ComposeModel, ComposeTool},
    store::{RunFilter, Store},
};

/// The options `guardian up` and `guardian preflight` share.
#[derive(Debug, clap::Args)]
pub struct StackArgs {
    /// Compose files (default docker-compose.yml).
    #[arg(short = 'f', long = "file")]
    pub files: Vec<PathBuf>,
    /// Compose project name (default: as compose derives it).
    #[arg(short = 'p', long)]
    pub project: Option<String>,
    /// Read needs from this profile file instead of the store.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// The daemon's state directory (recorded peaks).
    #[arg(long, default_value = "/var/lib/guardian")]
    pub state_dir: PathBuf,
    /// Memory to plan with instead of the host's MemAvailable, e.g. 512m.
    #[arg(long)]
    pub available: Option<Bytes>,
    /// Memory to leave free for everything else.
    #[arg(long, default_value = "256m")]
    pub reserve: Bytes,
    /// Only these services and what they depend on.
    pub services: Vec<String>,
}

/// The resolved stack.
pub struct Stack {
    pub tool: ComposeTool,
    pub files: Vec<PathBuf>,
    pub project: String,
    pub model: ComposeModel,
}

impl Stack {
    /// Resolves `files` (default docker-compose.yml) with the compose tool.
    pub fn load(files: &[PathBuf], project: Option<&str>) -> anyhow::Result<Self> {
        let files = if files.is_empty() {
            vec![PathBuf::from("docker-compose.yml")]
        } else {
            files.to_vec()
        };
        let tool = ComposeTool::detect().map_err(|e| UsageError(e.to_string()))?;
        let model = tool.config(&files).map_err(|e| UsageError(e.to_string()))?;
        let project = project
            .map(str::to_string)
            .or(model.name.clone())
            .unwrap_or_else(|| default_project_name(&files[0]));
        Ok(Self {
            tool,
            files,
            project,
            model,
        })
    }

    /// Each service's dependencies.
    pub fn depends_on(&self) -> BTreeMap<String, Vec<String>> {
        self.model
            .services
            .iter()
            .map(|(name, svc)| {
                let deps = svc.depends_on.iter().map(|d| d.service.clone()).collect();
                (name.clone(), deps)
            })
            .collect()
    }

    /// What each service is expected to need: recorded start-up and steady peaks (a profile
    /// file, else the store), else its compose limit, else its reservation, else unknown. A
    /// service with nothing recorded under this project's name takes what was recorded for it
    /// under another ([`NeedSource::RecordedElsewhere`]).
    pub fn needs(
        &self,
        state_dir: &Path,
        profile: Option<&Path>,
    ) -> anyhow::Result<HashMap<String, Need>> {
        let mut recorded: HashMap<String, (Bytes, Bytes, NeedSource)> = HashMap::new();
        let mut elsewhere: Vec<ServiceUsage> = Vec::new();
        if let Some(path) = profile {
            let file = ProfileFile::read(path).map_err(|e| UsageError(e.to_string()))?;
            for r in file.services {
                if r.usage.project.as_deref().is_none_or(|p| p == self.project) {
                    recorded.insert(r.usage.service.clone(), of(&r.usage, NeedSource::Recorded));
                } else {
                    elsewhere.push(r.usage);
                }
            }
        } else if let Ok(store) = Store::open_existing(state_dir) {
            let runs = store.runs(&RunFilter {
                project: Some(self.project.clone()),
                ..Default::default()
            })?;
            for u in summarize(&runs) {
                recorded.insert(u.service.clone(), of(&u, NeedSource::Recorded));
            }
            let missing: Vec<(&String, &String)> = self
                .model
                .services
                .iter()
                .filter(|(name, _)| !recorded.contains_key(*name))
                .filter_map(|(name, svc)| Some((name, svc.image.as_ref()?)))
                .collect();
            if !missing.is_empty() {
                let month_ago = crate::model::now_ms() - 30 * 24 * 3600 * 1000;
                let mut same: Vec<RunRecord> = store
                    .runs(&RunFilter {
                        since_ms: Some(month_ago),
                        ..Default::default()
                    })?
                    .into_iter()
                    .filter(|r| {
                        missing.iter().any(|(name, image)| {
                            r.service.as_ref() == Some(*name) && &r.image == *image
                        })
                    })
                    .collect();
                // One summary per service, whatever project each run had.
                for r in &mut same {
                    r.project = None;
                }
                elsewhere = summarize(&same);
            }
        }
        for u in elsewhere {
            recorded
                .entry(u.service.clone())
                .or_insert_with(|| of(&u, NeedSource::RecordedElsewhere));
        }
        Ok(self
            .model
            .services
            .iter()
            .map(|(name, svc)| {
                let need = match recorded.get(name) {
                    Some((startup, steady, source)) if startup.0 > 0 || steady.0 > 0 => Need {
                        startup: Some(if startup.0 > 0 { *startup } else { *steady }),
                        steady: Some(*steady),
                        source: *source,
                    },
                    _ => match (svc.memory_limit, svc.memory_reservation) {
                        (Some(limit), _) => Need {
                            startup: Some(limit),
                            steady: Some(limit),
                            source: NeedSource::Limit,
                        },
                        (None, Some(res)) => Need {
                            startup: Some(res),
                            steady: Some(res),
                            source: NeedSource::Reservation,
                        },
                        (None, None) => Need::default(),
                    },
                };
                (name.clone(), need)
            })
            .collect())
    }
}

/// A service's recorded start-up peak and steady need.
fn of(u: &ServiceUsage, source: NeedSource) -> (Bytes, Bytes, NeedSource) {
    (
        u.startup_peak,
        steady(u.typical_working_set, u.peak),
        source,
    )
}

/// What a service holds once settled: its typical working set where recorded, else its peak.
fn steady(typical_working_set: Bytes, peak: Bytes) -> Bytes {
    if typical_working_set.0 > 0 {
        typical_working_set
    } else {
        peak
    }
}
