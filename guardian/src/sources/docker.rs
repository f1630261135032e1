//! The Docker Engine (bollard): which containers exist, what they are called, and which cgroup
//! each one runs in; then the engine's event stream, reconnecting when the engine goes away.

use std::{collections::HashMap, os::unix::fs::MetadataExt, path::PathBuf, time::Duration};

use bollard::{
    query_parameters::{EventsOptions, ListContainersOptions},
    Docker, API_DEFAULT_VERSION,
};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::cgroup::{pid_cgroups, Hierarchy};
use crate::model::{Bytes, CgroupId, CgroupRef, ComposeService, Container, TmpfsMount};

/// Errors reaching the Docker Engine API.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("DOCKER_HOST={0} is not a unix:// socket; guardian talks to the local engine only")]
    NotUnix(String),
    #[error("cannot reach the Docker Engine at {socket}: {reason}; start dockerd or set DOCKER_HOST=unix:///path/to/docker.sock")]
    Unreachable { socket: PathBuf, reason: String },
    #[error("the Docker Engine at {socket} failed: {reason}")]
    Api { socket: PathBuf, reason: String },
}

/// The container actions guardian follows (`kill`: a signal sent through Docker, which tells a
/// `docker stop` from a userspace OOM killer).
const ACTIONS: [&str; 8] = [
    "create", "start", "kill", "die", "oom", "destroy", "pause", "unpause",
];

/// The engine's API socket: `DOCKER_HOST` if set, else the rootful default, else the rootless
/// socket of the current user.
pub fn socket_path() -> Result<PathBuf, DockerError> {
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        return host
            .strip_prefix("unix://")
            .map(PathBuf::from)
            .ok_or(DockerError::NotUnix(host));
    }
    let rootful = PathBuf::from("/var/run/docker.sock");
    if rootful.exists() {
        return Ok(rootful);
    }
    let uid = nix::unistd::getuid();
    let rootless = PathBuf::from(format!("/run/user/{uid}/docker.sock"));
    Ok(if rootless.exists() { rootless } else { rootful })
}

/// A connection to the engine, at the API version both sides speak.
#[derive(Clone)]
pub struct DockerClient {
    docker: Docker,
    socket: PathBuf,
    hierarchy: Hierarchy,
}

/// One container event from the engine, with the container as inspected right after it.
#[derive(Clone, Debug)]
pub struct ContainerEvent {
    pub action: String,
    /// The engine's event time, nanoseconds since the epoch.
    pub time_nano: i64,
    pub id: String,
    /// `None` when the container was already gone (after `destroy`).
    pub container: Option<Container>,
}

/// What the identity task tells the task that owns the container table.
#[derive(Clone, Debug)]
pub enum DockerUpdate {
    /// Connected (again): the API version, and every container that exists now.
    Connected {
        api_version: String,
        containers: Vec<Container>,
    },
    Event(Box<ContainerEvent>),
    /// The engine is unreachable; retrying with back-off.
    Lost(String),
}

impl DockerClient {
    /// Connects and negotiates the API version (Debian's engine speaks 1.41).
    pub async fn connect(hierarchy: Hierarchy) -> Result<Self, DockerError> {
        let socket = socket_path()?;
        let unreachable = |reason: String| DockerError::Unreachable {
            socket: socket.clone(),
            reason,
        };
        let path = socket
            .to_str()
            .ok_or_else(|| unreachable("socket path is not UTF-8".into()))?;
        let docker = Docker::connect_with_unix(path, 30, API_DEFAULT_VERSION)
            .map_err(|e| unreachable(e.to_string()))?
            .negotiate_version()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Self {
            docker,
            socket,
            hierarchy,
        })
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// The negotiated API version, e.g. `1.41`.
    pub fn api_version(&self) -> String {
        self.docker.client_version().to_string()
    }

    fn api_error(&self, e: bollard::errors::Error) -> DockerError {
        DockerError::Api {
            socket: self.socket.clone(),
            reason: e.to_string(),
        }
    }

    /// Every container (running only unless `all`), inspected and mapped to its cgroup.
    pub async fn containers(&self, all: bool) -> Result<Vec<Container>, DockerError> {
        self.list(all, None).await
    }

    /// The containers of one compose project (all states), inspected and mapped.
    pub async fn compose_containers(&self, project: &str) -> Result<Vec<Container>, DockerError> {
        let label = format!("com.docker.compose.project={project}");
        self.list(
            true,
            Some(HashMap::from([("label".to_string(), vec![label])])),
        )
        .await
    }

    async fn list(
        &self,
        all: bool,
        filters: Option<HashMap<String, Vec<String>>>,
    ) -> Result<Vec<Container>, DockerError> {
        let summaries = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all,
                filters,
                ..Default::default()
            }))
            .await
            .map_err(|e| self.api_error(e))?;
        let mut out = Vec::new();
        for id in summaries.into_iter().filter_map(|s| s.id) {
            // A container removed between list and inspect is simply skipped.
            if let Some(c) = self.inspect(&id).await? {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// One container; `None` when it no longer exists.
    pub async fn inspect(&self, id: &str) -> Result<Option<Container>, DockerError> {
        let info = match self.docker.inspect_container(id, None).await {
            Ok(info) => info,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(None),
            Err(e) => return Err(self.api_error(e)),
        };
        let pid = (info.state.as_ref())
            .and_then(|s| s.pid)
            .filter(|p| *p > 0)
            .map(|p| p as u32);
        let cgroup = pid.and_then(|pid| self.cgroup_of(pid));
        Ok(Some(container_from_inspect(info, id, cgroup)))
    }

    /// The cgroup of a container's main process, named in every hierarchy. Asking the kernel
    /// (`/proc/<pid>/cgroup`) covers every layout: cgroupfs and systemd drivers, rootless,
    /// nested, and `--cgroup-parent`.
    fn cgroup_of(&self, pid: u32) -> Option<CgroupRef> {
        let groups = pid_cgroups(pid).ok()?;
        let unified = groups.unified.clone()?;
        let dir = self.hierarchy.unified_dir(&unified)?;
        let id = CgroupId(std::fs::metadata(dir).ok()?.ino());
        let memory_path = groups.memory(&self.hierarchy).map(|p| p.to_path_buf());
        Some(CgroupRef {
            id,
            path: Some(unified),
            memory_path,
        })
    }

    /// Streams container events until the engine goes away.
    async fn follow(&self, tx: &mpsc::Sender<DockerUpdate>) -> Result<(), DockerError> {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            (
                "event".to_string(),
                ACTIONS.iter().map(|a| a.to_string()).collect(),
            ),
        ]);
        let mut stream = self.docker.events(Some(EventsOptions {
            filters: Some(filters),
            ..Default::default()
        }));
        while let Some(message) = stream.next().await {
            let message = message.map_err(|e| self.api_error(e))?;
            let (Some(action), Some(id)) = (message.action, message.actor.and_then(|a| a.id))
            else {
                continue;
            };
            let container = if action == "destroy" {
                None
            } else {
                self.inspect(&id).await?
            };
            let event = ContainerEvent {
                action,
                time_nano: message.time_nano.unwrap_or_default(),
                id,
                container,
            };
            if tx.send(DockerUpdate::Event(Box::new(event))).await.is_err() {
                return Ok(());
            }
        }
        Err(DockerError::Unreachable {
            socket: self.socket.clone(),
            reason: "the event stream ended".into(),
        })
    }
}

/// A container from Docker's inspect answer (`GET /containers/{id}/json`): `id` when the answer
/// lacks one, `cgroup` as resolved from its main process while it runs. Times of `0001-...`
/// (never started or finished) are `None`; a memory limit of 0 (unlimited) is `None`.
pub fn container_from_inspect(
    info: bollard::models::ContainerInspectResponse,
    id: &str,
    cgroup: Option<CgroupRef>,
) -> Container {
    let labels = info
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    let state = info.state.unwrap_or_default();
    let host = info.host_config.unwrap_or_default();
    let tmpfs = tmpfs_mounts(&host);
    let positive = |v: Option<i64>| v.filter(|v| *v > 0).map(|v| Bytes(v as u64));
    let pid = state.pid.filter(|p| *p > 0).map(|p| p as u32);
    Container {
        id: info.id.unwrap_or_else(|| id.to_string()),
        name: info
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        image: info
            .config
            .and_then(|c| c.image)
            .or(info.image)
            .unwrap_or_default(),
        compose: ComposeService::from_labels(&labels),
        memory_limit: positive(host.memory),
        memory_reservation: positive(host.memory_reservation),
        pid,
        state: state.status.map(|s| s.to_string()).unwrap_or_default(),
        started_at: state.started_at.filter(|t| !t.starts_with("0001")),
        finished_at: state.finished_at.filter(|t| !t.starts_with("0001")),
        exit_code: state.exit_code,
        oom_killed: state.oom_killed.unwrap_or(false),
        health: state
            .health
            .and_then(|h| h.status)
            .map(|s| s.to_string())
            .filter(|s| !s.is_empty() && s != "none"),
        cgroup,
        labels: labels
            .iter()
            .filter(|(k, _)| k.starts_with("guardian."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        tmpfs,
    }
}

/// Keeps container identity flowing to `tx` for as long as the receiver lives: connect,
/// inventory, follow events; on failure report it and retry with back-off (1 s doubling to 30 s).
pub async fn watch(hierarchy: Hierarchy, tx: mpsc::Sender<DockerUpdate>) {
    const FIRST_RETRY: Duration = Duration::from_secs(1);
    let mut backoff = FIRST_RETRY;
    loop {
        let mut connected = false;
        let result: Result<(), DockerError> = async {
            let client = DockerClient::connect(hierarchy.clone()).await?;
            let containers = client.containers(true).await?;
            connected = true;
            let update = DockerUpdate::Connected {
                api_version: client.api_version(),
                containers,
            };
            if tx.send(update).await.is_err() {
                return Ok(());
            }
            client.follow(&tx).await
        }
        .await;
        let Err(e) = result else { return };
        if tx.send(DockerUpdate::Lost(e.to_string())).await.is_err() {
            return;
        }
        // A session that got as far as the inventory starts the back-off afresh.
        if connected {
            backoff = FIRST_RETRY;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// The id of the Docker container guardian itself runs in, when it runs in one (the container
/// image, `docker run … guardian`): from `/proc/self/cgroup` (`…/docker-<id>.scope` or
/// `…/docker/<id>` with `--cgroupns host`) or, when a private cgroup namespace hides the path,
/// from `/proc/self/mountinfo` (Docker bind-mounts `/var/lib/docker/containers/<id>/hostname`
/// and friends into every container). `None` on the host.
pub fn own_container_id() -> Option<String> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    container_id_in(&read("/proc/self/cgroup"), &read("/proc/self/mountinfo"))
}

/// The 64-hex container id named by a process's cgroup lines, else by its mounts.
pub fn container_id_in(proc_cgroup: &str, mountinfo: &str) -> Option<String> {
    let hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let from_cgroup = proc_cgroup.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        path.split('/').rev().find_map(|part| {
            let id = part
                .strip_prefix("docker-")
                .and_then(|p| p.strip_suffix(".scope"))
                .unwrap_or(part);
            hex64(id).then(|| id.to_string())
        })
    });
    from_cgroup.or_else(|| {
        mountinfo.lines().find_map(|line| {
            let root = line.split_whitespace().nth(3)?;
            let rest = root.split("/containers/").nth(1)?;
            let id = rest.split('/').next()?;
            hex64(id).then(|| id.to_string())
        })
    })
}

#[cfg(test)]
mod own_container_tests {
    use super::container_id_in;

    const ID: &str = "3f4c2b0a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";

    #[test]
    fn the_systemd_driver_scope_names_the_container() {
        let cg = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(container_id_in(&cg, "").as_deref(), Some(ID));
    }

    #[test]
    fn the_cgroupfs_driver_path_names_the_container_on_hybrid_hosts() {
        let cg = format!("12:memory:/docker/{ID}\n0::/docker/{ID}\n");
        assert_eq!(container_id_in(&cg, "").as_deref(), Some(ID));
    }

    #[test]
    fn a_private_cgroup_namespace_falls_back_to_the_hostname_mount() {
        let mi = format!(
            "612 600 254:1 /var/lib/docker/containers/{ID}/hostname /etc/hostname rw,relatime - ext4 /dev/vda1 rw\n"
        );
        assert_eq!(container_id_in("0::/\n", &mi).as_deref(), Some(ID));
    }

    #[test]
    fn a_process_on_the_host_is_in_no_container() {
        let cg = "0::/user.slice/user-0.slice/session-1.scope\n";
        let mi = "22 1 254:1 / / rw,relatime - ext4 /dev/vda1 rw\n";
        assert_eq!(container_id_in(cg, mi), None);
    }
}

/// The tmpfs mounts Docker gives a container: `HostConfig.Tmpfs` (`--tmpfs`, compose `tmpfs:`,
/// size from its `size=` option), `HostConfig.Mounts` of type tmpfs (`--mount type=tmpfs`,
/// `TmpfsOptions.SizeBytes`) and /dev/shm of `HostConfig.ShmSize` when the container has its
/// own IPC namespace (`IpcMode` private or shareable, Docker's default).
fn tmpfs_mounts(host: &bollard::models::HostConfig) -> Vec<TmpfsMount> {
    let mut out: Vec<TmpfsMount> = host
        .tmpfs
        .iter()
        .flatten()
        .map(|(path, options)| TmpfsMount {
            path: path.clone(),
            size: options
                .split(',')
                .find_map(|o| o.strip_prefix("size="))
                .and_then(|s| s.parse().ok()),
            source: "HostConfig.Tmpfs".into(),
        })
        .collect();
    out.extend(
        host.mounts
            .iter()
            .flatten()
            .filter(|m| m.typ == Some(bollard::models::MountType::TMPFS))
            .filter_map(|m| {
                Some(TmpfsMount {
                    path: m.target.clone()?,
                    size: m
                        .tmpfs_options
                        .as_ref()
                        .and_then(|o| o.size_bytes)
                        .filter(|b| *b > 0)
                        .map(|b| Bytes(b as u64)),
                    source: "Mounts".into(),
                })
            }),
    );
    let own_ipc = matches!(
        host.ipc_mode.as_deref(),
        None | Some("") | Some("private") | Some("shareable")
    );
    if own_ipc && !out.iter().any(|m| m.path == "/dev/shm") {
        out.push(TmpfsMount {
            path: "/dev/shm".into(),
            size: host.shm_size.filter(|b| *b > 0).map(|b| Bytes(b as u64)),
            source: "HostConfig.ShmSize".into(),
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oom_killed_container_reads_from_a_captured_inspect() {
        // `docker inspect` of a container whose main process the OOM killer took (test dockerd).
        let json = include_str!("../../tests/fixtures/oom/inspect-main-killed.json");
        let mut info: Vec<bollard::models::ContainerInspectResponse> =
            serde_json::from_str(json).unwrap();
        let c = container_from_inspect(info.remove(0), "", None);
        assert_eq!(c.name, "oom-main");
        assert_eq!(c.image, "guardian-test/memload");
        assert_eq!(c.memory_limit, Some(Bytes(32 << 20)));
        assert_eq!((c.state.as_str(), c.pid), ("exited", None));
        assert_eq!((c.exit_code, c.oom_killed), (Some(137), true));
        assert_eq!(
            c.started_at.as_deref(),
            Some("2026-11-30T20:13:07.630326674Z")
        );
        assert_eq!(
            c.finished_at.as_deref(),
            Some("2026-11-30T20:13:07.688861173Z")
        );
    }

    #[test]
    fn tmpfs_mounts_come_from_tmpfs_mounts_and_shm_size() {
        let host: bollard::models::HostConfig = serde_json::from_str(
            r#"{"Tmpfs":{"/run":"rw,noexec,size=65536k"},"ShmSize":268435456,"IpcMode":"private",
                "Mounts":[{"Type":"tmpfs","Target":"/cache","TmpfsOptions":{"SizeBytes":1048576}},
                          {"Type":"bind","Source":"/x","Target":"/y"}]}"#,
        )
        .unwrap();
        let m = tmpfs_mounts(&host);
        let got: Vec<(&str, Option<u64>)> = m
            .iter()
            .map(|m| (m.path.as_str(), m.size.map(|b| b.0)))
            .collect();
        assert_eq!(
            got,
            [
                ("/cache", Some(1 << 20)),
                ("/dev/shm", Some(256 << 20)),
                ("/run", Some(64 << 20))
            ]
        );
        let host_ipc: bollard::models::HostConfig =
            serde_json::from_str(r#"{"ShmSize":67108864,"IpcMode":"host"}"#).unwrap();
        assert!(tmpfs_mounts(&host_ipc).is_empty());
    }
}
