//! Containers as people name them, and the table that maps cgroups back to them.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::{Bytes, CgroupId, CgroupRef};

/// The compose labels of a container (`com.docker.compose.*`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ComposeService {
    pub project: String,
    pub service: String,
    pub number: Option<u32>,
    /// `docker compose run` containers.
    pub oneoff: bool,
}

impl ComposeService {
    /// Reads the compose labels; `None` when the container was not made by compose.
    pub fn from_labels(labels: &HashMap<String, String>) -> Option<Self> {
        Some(Self {
            project: labels.get("com.docker.compose.project")?.clone(),
            service: labels.get("com.docker.compose.service")?.clone(),
            number: labels
                .get("com.docker.compose.container-number")
                .and_then(|n| n.parse().ok()),
            oneoff: labels
                .get("com.docker.compose.oneoff")
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
        })
    }
}

/// One container as the Docker Engine describes it, with its cgroup once mapped.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Container {
    /// Full 64-hex id.
    pub id: String,
    /// Name without the leading slash.
    pub name: String,
    pub image: String,
    pub compose: Option<ComposeService>,
    /// `HostConfig.Memory`; `None` when unlimited.
    pub memory_limit: Option<Bytes>,
    /// `HostConfig.MemoryReservation`; `None` when unset.
    pub memory_reservation: Option<Bytes>,
    /// Main process on the host, while running.
    pub pid: Option<u32>,
    /// `running`, `exited`, `paused`, ...
    pub state: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i64>,
    /// `State.OOMKilled`.
    pub oom_killed: bool,
    /// `State.Health.Status` when it has a healthcheck: starting, healthy, unhealthy.
    pub health: Option<String>,
    /// Its memory cgroup, resolved from its main process while it ran.
    pub cgroup: Option<CgroupRef>,
    /// Its `guardian.*` labels (budget, priority, avoid); other labels are not kept.
    pub labels: BTreeMap<String, String>,
    /// Its tmpfs mounts, /dev/shm included: their files are charged to its memory cgroup.
    pub tmpfs: Vec<TmpfsMount>,
}

/// A tmpfs mounted in a container, from Docker's inspect: `HostConfig.Tmpfs` (compose
/// `tmpfs:`), `HostConfig.ShmSize` for /dev/shm (compose `shm_size`), `Mounts` of type tmpfs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsMount {
    /// Where it is mounted inside the container, e.g. `/dev/shm`.
    pub path: String,
    /// Its size limit in bytes (`size=` option, ShmSize, TmpfsOptions.SizeBytes); `None` when
    /// unset (the kernel's default: half the host's RAM).
    pub size: Option<Bytes>,
    /// The Docker setting it comes from: `HostConfig.Tmpfs`, `HostConfig.ShmSize`, `Mounts`.
    pub source: String,
}

/// A container's `State.Status` as Docker reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
    /// Empty or a word this guardian does not know.
    Unknown,
}

impl ContainerState {
    /// From Docker's word (`running`, `exited`, ...).
    pub fn from_docker(state: &str) -> Self {
        match state {
            "created" => Self::Created,
            "running" => Self::Running,
            "paused" => Self::Paused,
            "restarting" => Self::Restarting,
            "removing" => Self::Removing,
            "exited" => Self::Exited,
            "dead" => Self::Dead,
            _ => Self::Unknown,
        }
    }

    /// Its processes exist (running or paused): a kill in it left the container alive.
    pub fn is_alive(self) -> bool {
        matches!(self, Self::Running | Self::Paused)
    }

    /// It stopped for good (exited or dead): its `FinishedAt` and exit code are final.
    pub fn has_stopped(self) -> bool {
        matches!(self, Self::Exited | Self::Dead)
    }
}

impl Container {
    /// Its `state` as a [`ContainerState`].
    pub fn run_state(&self) -> ContainerState {
        ContainerState::from_docker(&self.state)
    }

    /// How a person names it: `project/service` (with `#n` past the first replica), else the
    /// container name.
    pub fn display_name(&self) -> String {
        match &self.compose {
            Some(c) => match c.number {
                Some(n) if n > 1 => format!("{}/{}#{n}", c.project, c.service),
                _ => format!("{}/{}", c.project, c.service),
            },
            None => self.name.clone(),
        }
    }

    /// The short identity events carry.
    pub fn to_ref(&self) -> ContainerRef {
        ContainerRef {
            id: self.id.chars().take(12).collect(),
            name: self.name.clone(),
            image: self.image.clone(),
            project: self.compose.as_ref().map(|c| c.project.clone()),
            service: self.compose.as_ref().map(|c| c.service.clone()),
        }
    }
}

/// The identity an event carries about its container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ContainerRef {
    /// Short (12-hex) id.
    pub id: String,
    pub name: String,
    pub image: String,
    pub project: Option<String>,
    pub service: Option<String>,
}

/// Every container guardian knows, live or recently gone, found by id or by cgroup.
///
/// Containers that exited stay (their cgroup directories vanish at exit, but late events and
/// post-mortems still need their names), up to `keep_exited` of them, oldest dropped first.
#[derive(Debug)]
pub struct ContainerTable {
    containers: HashMap<String, Container>,
    by_cgroup: HashMap<CgroupId, String>,
    exited: VecDeque<String>,
    keep_exited: usize,
}

impl ContainerTable {
    /// An empty table that remembers at most `keep_exited` exited containers.
    pub fn new(keep_exited: usize) -> Self {
        Self {
            containers: HashMap::new(),
            by_cgroup: HashMap::new(),
            exited: VecDeque::new(),
            keep_exited,
        }
    }

    /// Adds or refreshes a container. A refresh without a cgroup keeps the one already known.
    pub fn upsert(&mut self, mut container: Container) {
        if let Some(old) = self.containers.get(&container.id) {
            if container.cgroup.is_none() {
                container.cgroup = old.cgroup.clone();
            }
        }
        if let Some(cg) = &container.cgroup {
            self.by_cgroup.insert(cg.id, container.id.clone());
        }
        let running = container.run_state().is_alive();
        let id = container.id.clone();
        self.containers.insert(id.clone(), container);
        if running {
            self.exited.retain(|e| *e != id);
        } else if !self.exited.contains(&id) {
            self.exited.push_back(id);
            self.evict();
        }
    }

    /// The container `id` (full or a unique prefix).
    pub fn get(&self, id: &str) -> Option<&Container> {
        self.containers.get(id).or_else(|| {
            let mut matches = self.containers.values().filter(|c| c.id.starts_with(id));
            let first = matches.next()?;
            matches.next().is_none().then_some(first)
        })
    }

    /// The container whose cgroup is `id`, or whose cgroup contains the group at `path`
    /// (a process in a child cgroup of the container).
    pub fn by_cgroup(&self, cgroup: &CgroupRef) -> Option<&Container> {
        if let Some(c) = self
            .by_cgroup
            .get(&cgroup.id)
            .and_then(|id| self.containers.get(id))
        {
            return Some(c);
        }
        let path = cgroup.path.as_ref()?;
        self.containers
            .values()
            .filter_map(|c| {
                let own = c.cgroup.as_ref()?.path.as_ref()?;
                path.starts_with(own)
                    .then_some((own.components().count(), c))
            })
            .max_by_key(|(depth, _)| *depth)
            .map(|(_, c)| c)
    }

    /// All containers, live and remembered.
    pub fn iter(&self) -> impl Iterator<Item = &Container> {
        self.containers.values()
    }

    fn evict(&mut self) {
        while self.exited.len() > self.keep_exited {
            if let Some(id) = self.exited.pop_front() {
                if let Some(c) = self.containers.remove(&id) {
                    if let Some(cg) = c.cgroup {
                        if self.by_cgroup.get(&cg.id) == Some(&id) {
                            self.by_cgroup.remove(&cg.id);
                        }
                    }
                }
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn container(id: &str, state: &str, cgroup: Option<(u64, &str)>) -> Container {
        Container {
            id: id.to_string(),
            name: format!("name-{id}"),
            image: "guardian-test/memload".into(),
            compose: None,
            memory_limit: None,
            memory_reservation: None,
            pid: None,
            state: state.into(),
            started_at: None,
            finished_at: None,
            exit_code: None,
            oom_killed: false,
            health: None,
            cgroup: cgroup.map(|(id, path)| CgroupRef {
                id: CgroupId(id),
                path: Some(PathBuf::from(path)),
                memory_path: None,
            }),
            labels: BTreeMap::new(),
            tmpfs: Vec::new(),
        }
    }

    #[test]
    fn compose_labels_name_project_and_service() {
        let labels: HashMap<String, String> = [
            ("com.docker.compose.project", "ci"),
            ("com.docker.compose.service", "db"),
            ("com.docker.compose.container-number", "2"),
            ("com.docker.compose.oneoff", "False"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let compose = ComposeService::from_labels(&labels).unwrap();
        assert_eq!(compose.project, "ci");
        assert_eq!(compose.number, Some(2));
        assert!(!compose.oneoff);
        let mut c = container("a", "running", None);
        c.compose = Some(compose);
        assert_eq!(c.display_name(), "ci/db#2");
    }

    #[test]
    fn exited_containers_keep_their_cgroup_and_are_bounded() {
        let mut table = ContainerTable::new(2);
        table.upsert(container("a", "running", Some((10, "/docker/a"))));
        // The exit refresh has no cgroup (the directory is gone): the known one stays.
        table.upsert(container("a", "exited", None));
        let probe = CgroupRef {
            id: CgroupId(10),
            path: None,
            memory_path: None,
        };
        assert_eq!(table.by_cgroup(&probe).unwrap().id, "a");
        table.upsert(container("b", "exited", Some((11, "/docker/b"))));
        table.upsert(container("c", "exited", Some((12, "/docker/c"))));
        assert!(
            table.get("a").is_none(),
            "the oldest exited container is dropped"
        );
        assert!(table.by_cgroup(&probe).is_none());
        assert_eq!(table.iter().count(), 2);
    }

    #[test]
    fn child_cgroups_belong_to_their_container() {
        let mut table = ContainerTable::new(8);
        table.upsert(container("a", "running", Some((10, "/docker/a"))));
        let child = CgroupRef {
            id: CgroupId(99),
            path: Some(PathBuf::from("/docker/a/sub")),
            memory_path: None,
        };
        assert_eq!(table.by_cgroup(&child).unwrap().id, "a");
        assert!(table.get("a").is_some() && table.get("zz").is_none());
    }
}

/// Which key a service sets its memory limit with; an override must use the same one, as
/// Compose v2 refuses a service where `mem_limit` and `deploy.resources.limits.memory` disagree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKey {
    /// No limit: an override uses `deploy.resources.limits.memory`.
    #[default]
    None,
    MemLimit,
    Deploy,
    /// Both, equal.
    Both,
}
