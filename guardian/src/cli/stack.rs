//! A compose stack as `guardian up` and `guardian preflight` see it: the model the user's compose
//! tool resolves, the project name, and what each service is expected to need.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use super::UsageError;
use crate::{
    model::{Bytes, RunRecord, ServiceUsage},
    policy::{
        profile::summarize,
        stack::{plan_service, select, LeftOut, Recorded, ServiceFacts, ServicePlan},
        staging::{Need, NeedSource},
    },
    sources::{
        compose::{ComposeArgs, ComposeModel, ComposeServiceModel, ComposeTool},
        profiles,
    },
    store::{RunFilter, Store},
};

/// The options `guardian up` and `guardian preflight` share. `-f`, `-p`, `--profile` and
/// `--env-file` mean what they mean to compose and are passed to it as given.
#[derive(Debug, clap::Args)]
pub struct StackArgs {
    #[command(flatten)]
    pub compose: ComposeFlags,
    /// Read needs from this guardian profile file (see `guardian profile`) instead of the store.
    #[arg(long)]
    pub profile_file: Option<PathBuf>,
    #[command(flatten)]
    pub state: super::StateArgs,
    /// Memory to plan with instead of the host's MemAvailable, e.g. 512m.
    #[arg(long)]
    pub available: Option<Bytes>,
    /// Memory to leave free for everything else.
    #[arg(long, default_value = "256m")]
    pub reserve: Bytes,
    /// Only these services and what they depend on.
    pub services: Vec<String>,
}

/// compose's own global options, passed through unchanged; without them the compose tool finds
/// the stack itself (compose.yaml, docker-compose.yml and its override, COMPOSE_FILE, `.env`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ComposeFlags {
    /// Compose files, in order (default: the ones compose finds here).
    #[arg(short = 'f', long = "file")]
    pub files: Vec<PathBuf>,
    /// Compose project name (default: as compose derives it).
    #[arg(short = 'p', long = "project-name", visible_alias = "project")]
    pub project: Option<String>,
    /// Compose profiles to activate (repeatable), as `docker compose --profile`.
    #[arg(long = "profile")]
    pub profiles: Vec<String>,
    /// Compose env file, as `docker compose --env-file`.
    #[arg(long = "env-file")]
    pub env_files: Vec<PathBuf>,
}

impl ComposeFlags {
    /// The same options for the compose tool.
    pub fn to_args(&self) -> ComposeArgs {
        ComposeArgs {
            files: self.files.clone(),
            project: self.project.clone(),
            profiles: self.profiles.clone(),
            env_files: self.env_files.clone(),
        }
    }
}

/// The resolved stack.
pub struct Stack {
    pub tool: ComposeTool,
    pub compose: ComposeArgs,
    pub project: String,
    /// The services compose would start (inactive profiles already out).
    pub model: ComposeModel,
    /// Services compose would not start for their profiles.
    pub inactive: BTreeMap<String, ComposeServiceModel>,
}

/// What preflight and up plan with: the services compose would start, and those it would not.
pub struct Plan {
    pub services: BTreeMap<String, ServicePlan>,
    pub left_out: Vec<LeftOut>,
}

impl Plan {
    /// Each planned service's need.
    pub fn needs(&self) -> HashMap<String, Need> {
        self.services
            .iter()
            .map(|(s, p)| (s.clone(), p.need))
            .collect()
    }
}

impl Stack {
    /// Resolves the stack with the compose tool, as compose would from here. A service named
    /// in `wanted` is started by compose even when its profile is not active, so it is planned.
    pub fn load(flags: &ComposeFlags, wanted: &[String]) -> anyhow::Result<Self> {
        let compose = flags.to_args();
        let tool = ComposeTool::detect().map_err(|e| UsageError(e.to_string()))?;
        let mut resolved = tool
            .resolve(&compose)
            .map_err(|e| UsageError(e.to_string()))?;
        for s in wanted {
            if let Some(svc) = resolved.inactive.remove(s) {
                resolved.model.services.insert(s.clone(), svc);
            }
        }
        Ok(Self {
            tool,
            compose,
            project: resolved.project,
            model: resolved.model,
            inactive: resolved.inactive,
        })
    }

    /// What compose would start and what each service holds, from recorded peaks (a profile
    /// file, else the store), reservations and limits.
    pub fn plan(&self, state_dir: &Path, profile_file: Option<&Path>) -> anyhow::Result<Plan> {
        let host_total = crate::sources::host::mem_total()?;
        let replicas = self
            .model
            .services
            .iter()
            .map(|(s, svc)| (s.clone(), svc.replicas))
            .collect();
        let inactive = self
            .inactive
            .iter()
            .map(|(s, svc)| (s.clone(), svc.profiles.clone()))
            .collect();
        let (planned, left_out) = select(&replicas, &inactive);
        let recorded = self.recorded(state_dir, profile_file)?;
        let services = planned
            .into_iter()
            .map(|name| {
                let svc = &self.model.services[&name];
                let facts = ServiceFacts {
                    limit: svc.memory_limit,
                    reservation: svc.memory_reservation,
                    replicas: svc.replicas,
                    tmpfs: svc.tmpfs,
                };
                let plan = plan_service(&facts, recorded.get(&name).copied(), host_total);
                (name, plan)
            })
            .collect();
        Ok(Plan { services, left_out })
    }

    /// Refuses, with why, a named service compose would start no container of.
    pub fn check_wanted(&self, wanted: &[String]) -> Result<(), UsageError> {
        for s in wanted {
            if self
                .model
                .services
                .get(s)
                .is_some_and(|svc| svc.replicas == 0)
            {
                return Err(UsageError(format!(
                    "service {s:?} has replicas: 0, so compose starts none of it"
                )));
            }
        }
        Ok(())
    }

    /// Each service's dependencies.
    pub fn depends_on(&self) -> BTreeMap<String, Vec<String>> {
        self.model
            .services
            .iter()
            .filter(|(_, svc)| svc.replicas > 0)
            .map(|(name, svc)| {
                // A dependency compose would not start (replicas 0) is nothing to wait for.
                let deps = svc
                    .depends_on
                    .iter()
                    .filter(|d| {
                        self.model
                            .services
                            .get(&d.service)
                            .is_some_and(|s| s.replicas > 0)
                    })
                    .map(|d| d.service.clone())
                    .collect();
                (name.clone(), deps)
            })
            .collect()
    }

    /// Recorded start-up and steady peaks per service (a profile file, else the store). A
    /// service with nothing recorded under this project's name takes what was recorded for it
    /// under another.
    fn recorded(
        &self,
        state_dir: &Path,
        profile: Option<&Path>,
    ) -> anyhow::Result<HashMap<String, Recorded>> {
        let mut recorded: HashMap<String, (Bytes, Bytes, NeedSource)> = HashMap::new();
        let mut elsewhere: Vec<ServiceUsage> = Vec::new();
        if let Some(path) = profile {
            let file = profiles::read(path).map_err(|e| UsageError(e.to_string()))?;
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
        Ok(recorded
            .into_iter()
            .map(|(name, (startup, steady, source))| {
                let r = Recorded {
                    startup,
                    steady,
                    elsewhere: source == NeedSource::RecordedElsewhere,
                };
                (name, r)
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
