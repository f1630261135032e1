//! `guardian events`: a live stream of OOM kills, reclaim stalls and pressure notifications,
//! each named by cgroup id and path.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use guardian_common::StallEvent;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracing::{info, warn};

use super::{parse_duration, Output, UsageError};
use crate::{
    model::{
        CgroupId, CgroupRef, ContainerChange, ContainerRef, ContainerTable, Event, MemcgOom,
        OomTask, Pressure, ReclaimStall, StallSummary,
    },
    sources::{
        cgroup::{
            parse_kv, parse_pressure, CgroupError, CgroupIndex, FileWatch, Hierarchy, PsiKind,
            PsiTrigger, V1OomNotifier,
        },
        docker::{self, DockerUpdate},
        ebpf::{self, comm_string, KernelEvent, ProbeOptions, Probes},
        host, oom,
    },
};

/// Exited containers remembered for late events (bounded memory).
const KEEP_EXITED: usize = 1024;

/// Options of `guardian events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Stop after this long (e.g. 30s); without it, run until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// A cgroup directory to watch with the kernel's own notifications: a v1 memory cgroup gets
    /// an OOM eventfd, a v2/unified cgroup a PSI trigger (and memory.events on v2). Repeatable.
    #[arg(long = "watch", value_name = "CGROUP_DIR")]
    watch: Vec<PathBuf>,
    /// Report reclaim stalls at least this long as events; shorter ones are only counted.
    #[arg(long, value_parser = parse_duration, default_value = "1ms")]
    stall_threshold: Duration,
    /// PSI triggers fire when tasks stall this long within --psi-window.
    #[arg(long, value_parser = parse_duration, default_value = "150ms")]
    psi_stall: Duration,
    /// PSI trigger window; rounded up to 2 s where the kernel requires it.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    psi_window: Duration,
}

/// What the notification tasks send to the one task that owns the state.
#[derive(Debug)]
enum Notice {
    Psi { file: PathBuf, trigger: String },
    V1Oom { dir: PathBuf },
    MemoryEvents { dir: PathBuf, oom_kills: u64 },
    Gone { what: String },
}

pub async fn run(args: EventsArgs, output: Output) -> anyhow::Result<ExitCode> {
    let hierarchy = Hierarchy::detect()?;
    let mut index = CgroupIndex::new(hierarchy.clone());
    let (tx, mut rx) = mpsc::channel::<Notice>(256);
    let mut watching = Vec::new();

    // Bad --watch arguments are the user's to fix: fail before anything starts.
    for dir in &args.watch {
        watching.extend(watch_cgroup(&hierarchy, dir, &args, &tx)?);
    }

    let mut probes = match Probes::load(ProbeOptions {
        stall_threshold: args.stall_threshold,
    }) {
        Ok(p) => {
            if p.tracefs().mounted_now {
                info!(path = %p.tracefs().root.display(), "mounted tracefs");
            }
            watching.push("ebpf oom:mark_victim".to_string());
            watching.push("ebpf vmscan:mm_vmscan_memcg_reclaim_begin/end".to_string());
            Some(p)
        }
        Err(e) => {
            warn!("eBPF disabled, using cgroup notifications only: {e}");
            None
        }
    };

    match PsiTrigger::arm(
        Path::new(host::PRESSURE_FILE),
        PsiKind::Some,
        args.psi_stall,
        args.psi_window,
    ) {
        Ok(trigger) => {
            watching.push(format!(
                "psi {} on {}",
                trigger.trigger(),
                host::PRESSURE_FILE
            ));
            spawn_psi(trigger, tx.clone());
        }
        Err(e) => warn!("host pressure notifications disabled: {e}"),
    }
    drop(tx);

    let mut identity = Identity::new(index.hierarchy().clone());
    let (docker_tx, mut docker_rx) = mpsc::channel::<DockerUpdate>(256);
    tokio::spawn(docker::watch(index.hierarchy().clone(), docker_tx));
    // Name the containers that already run before the first event can need them.
    if let Ok(Some(update)) = tokio::time::timeout(Duration::from_secs(3), docker_rx.recv()).await {
        identity.apply(update, &mut index);
    }

    let mut printer = Printer { output };
    printer.ready(probes.is_some(), identity.api_version.as_deref(), &watching);

    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    // Listeners made once, before the loop: a signal that lands while an event is being
    // printed must not be lost.
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            _ = sleep_until(deadline) => break,
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            result = ebpf::next_batch_if_loaded(probes.as_mut(), &mut batch) => {
                result.context("reading the eBPF ring buffers")?;
                for record in batch.drain(..) {
                    let event = match record {
                        KernelEvent::Oom(e) => {
                            let mut kill = oom::enrich(&e, &mut index);
                            kill.container = kill.victim.cgroup.as_ref().and_then(|c| identity.container(c));
                            Event::OomKill(Box::new(kill))
                        }
                        KernelEvent::Stall(e) => {
                            let mut stall = reclaim_stall(&e, &mut index);
                            stall.container = identity.container(&stall.cgroup);
                            Event::ReclaimStall(stall)
                        }
                    };
                    printer.event(&event);
                }
            }
            Some(notice) = rx.recv() => {
                if let Some(event) = notice_event(notice, &identity) {
                    printer.event(&event);
                }
            }
            Some(update) = docker_rx.recv() => {
                if let Some(change) = identity.apply(update, &mut index) {
                    printer.event(&Event::Container(change));
                }
            }
        }
    }

    if let Some(p) = &probes {
        let stalls = p
            .stall_totals()
            .into_iter()
            .map(|(id, t)| {
                let cgroup = index.resolve(id);
                StallSummary {
                    container: identity.container(&cgroup),
                    cgroup,
                    count: t.count,
                    total_us: t.total_ns / 1000,
                    max_us: t.max_ns / 1000,
                    pages_reclaimed: t.nr_reclaimed,
                    histogram_us: t
                        .hist
                        .iter()
                        .enumerate()
                        .filter(|(_, n)| **n > 0)
                        .map(|(i, n)| (2u64 << i, *n))
                        .collect(),
                }
            })
            .collect();
        let (dropped_oom, dropped_stall) = p.dropped();
        printer.event(&Event::Summary {
            stalls,
            dropped_oom,
            dropped_stall,
        });
    }
    Ok(ExitCode::SUCCESS)
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Arms the notifications that fit `dir`'s hierarchy and returns what it armed.
fn watch_cgroup(
    hierarchy: &Hierarchy,
    dir: &Path,
    args: &EventsArgs,
    tx: &mpsc::Sender<Notice>,
) -> anyhow::Result<Vec<String>> {
    let fix = || {
        format!(
            "--watch {}: not a cgroup directory; give one under {}{}",
            dir.display(),
            hierarchy.memory.display(),
            hierarchy
                .unified
                .as_ref()
                .filter(|u| **u != hierarchy.memory)
                .map(|u| format!(" or {}", u.display()))
                .unwrap_or_default()
        )
    };
    let dir = dir
        .canonicalize()
        .map_err(|e| UsageError(format!("{}: {e}", fix())))?;
    let in_memory = dir.starts_with(&hierarchy.memory);
    let in_unified = hierarchy
        .unified
        .as_ref()
        .is_some_and(|u| dir.starts_with(u));
    let mut armed = Vec::new();
    if in_memory && !hierarchy.memory_is_v2() {
        let notifier = V1OomNotifier::arm(&dir)?;
        armed.push(format!("v1 oom eventfd on {}", dir.display()));
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                let notice = match notifier.next().await {
                    Ok(_) => Notice::V1Oom {
                        dir: notifier.dir().to_path_buf(),
                    },
                    Err(e) => Notice::Gone {
                        what: e.to_string(),
                    },
                };
                let stop = matches!(notice, Notice::Gone { .. });
                if tx.send(notice).await.is_err() || stop {
                    return;
                }
            }
        });
    }
    if in_unified {
        let trigger = PsiTrigger::arm(
            &dir.join("memory.pressure"),
            PsiKind::Some,
            args.psi_stall,
            args.psi_window,
        )?;
        armed.push(format!(
            "psi {} on {}",
            trigger.trigger(),
            trigger.file().display()
        ));
        spawn_psi(trigger, tx.clone());
        if hierarchy.memory_is_v2() {
            let watch = FileWatch::new(&dir.join("memory.events"))?;
            armed.push(format!("inotify on {}", watch.path().display()));
            spawn_memory_events(watch, dir.clone(), tx.clone());
        }
    }
    if armed.is_empty() {
        return Err(UsageError(fix()).into());
    }
    Ok(armed)
}

fn spawn_psi(trigger: PsiTrigger, tx: mpsc::Sender<Notice>) {
    tokio::spawn(async move {
        loop {
            let notice = match trigger.fired().await {
                Ok(()) => Notice::Psi {
                    file: trigger.file().to_path_buf(),
                    trigger: trigger.trigger().to_string(),
                },
                Err(e) => Notice::Gone {
                    what: e.to_string(),
                },
            };
            let stop = matches!(notice, Notice::Gone { .. });
            if tx.send(notice).await.is_err() || stop {
                return;
            }
        }
    });
}

/// v2: memory.events changes on every high/max/oom event; report when oom_kill moves.
fn spawn_memory_events(watch: FileWatch, dir: PathBuf, tx: mpsc::Sender<Notice>) {
    tokio::spawn(async move {
        let read_kills = |dir: &Path| -> Result<u64, CgroupError> {
            let path = dir.join("memory.events");
            let text = std::fs::read_to_string(&path).map_err(|e| CgroupError::read(&path, e))?;
            Ok(parse_kv(&text).get("oom_kill").copied().unwrap_or(0))
        };
        let mut last = read_kills(&dir).unwrap_or(0);
        loop {
            let notice = match watch.changed().await.and_then(|()| read_kills(&dir)) {
                Ok(kills) if kills > last => {
                    last = kills;
                    Notice::MemoryEvents {
                        dir: dir.clone(),
                        oom_kills: kills,
                    }
                }
                Ok(_) => continue,
                Err(e) => Notice::Gone {
                    what: e.to_string(),
                },
            };
            let stop = matches!(notice, Notice::Gone { .. });
            if tx.send(notice).await.is_err() || stop {
                return;
            }
        }
    });
}

fn now_rfc3339(t: SystemTime) -> String {
    crate::model::time::rfc3339_millis(crate::model::unix_ms(t))
}

/// Container identity from Docker, owned by the event loop.
struct Identity {
    hierarchy: Hierarchy,
    table: ContainerTable,
    /// The engine's API version while connected.
    api_version: Option<String>,
    /// Whether the loss of Docker was already reported (it is said once, not per retry).
    loss_reported: bool,
}

impl Identity {
    fn new(hierarchy: Hierarchy) -> Self {
        Self {
            hierarchy,
            table: ContainerTable::new(KEEP_EXITED),
            api_version: None,
            loss_reported: false,
        }
    }

    /// The container a cgroup belongs to.
    fn container(&self, cgroup: &CgroupRef) -> Option<ContainerRef> {
        self.table.by_cgroup(cgroup).map(|c| c.to_ref())
    }

    /// The container whose memory or unified directory is `dir`.
    fn container_at(&self, dir: &Path) -> Option<ContainerRef> {
        self.table
            .iter()
            .find(|c| {
                c.cgroup.as_ref().is_some_and(|cg| {
                    cg.path
                        .as_deref()
                        .and_then(|p| self.hierarchy.unified_dir(p))
                        .as_deref()
                        == Some(dir)
                        || cg
                            .memory_path
                            .as_deref()
                            .map(|p| self.hierarchy.memory_dir(p))
                            .as_deref()
                            == Some(dir)
                })
            })
            .map(|c| c.to_ref())
    }

    /// Applies an update; returns the change to print, if any.
    fn apply(&mut self, update: DockerUpdate, index: &mut CgroupIndex) -> Option<ContainerChange> {
        match update {
            DockerUpdate::Connected {
                api_version,
                containers,
            } => {
                if self.loss_reported {
                    info!(api_version = %api_version, "Docker is reachable again");
                } else {
                    info!(api_version = %api_version, containers = containers.len(), "Docker connected");
                }
                self.loss_reported = false;
                self.api_version = Some(api_version);
                for c in containers {
                    self.table.upsert(c);
                }
                None
            }
            DockerUpdate::Lost(reason) => {
                if !self.loss_reported {
                    warn!("Docker unavailable, events carry no container names until it is back: {reason}");
                    self.loss_reported = true;
                }
                self.api_version = None;
                None
            }
            DockerUpdate::Event(e) => {
                let container = match e.container {
                    Some(c) => {
                        self.table.upsert(c);
                        self.table.get(&e.id)?.clone()
                    }
                    // destroy: the engine has forgotten it; we keep it for late events.
                    None => self.table.get(&e.id)?.clone(),
                };
                // Cache the pairing of the container's two trees while it still has members.
                if let Some(cg) = &container.cgroup {
                    index.resolve(cg.id);
                }
                let docker_time =
                    std::time::UNIX_EPOCH + Duration::from_nanos(e.time_nano.max(0) as u64);
                Some(ContainerChange {
                    time: now_rfc3339(SystemTime::now()),
                    docker_time: now_rfc3339(docker_time),
                    action: e.action,
                    container: container.to_ref(),
                    cgroup: container.cgroup.clone(),
                    exit_code: container.exit_code,
                    oom_killed: container.oom_killed,
                })
            }
        }
    }
}

fn notice_event(notice: Notice, identity: &Identity) -> Option<Event> {
    match notice {
        Notice::Psi { file, trigger } => {
            let stats = std::fs::read_to_string(&file)
                .ok()
                .as_deref()
                .and_then(parse_pressure);
            let container = file.parent().and_then(|dir| identity.container_at(dir));
            Some(Event::Pressure(Pressure {
                time: now_rfc3339(SystemTime::now()),
                file,
                trigger,
                stats,
                container,
            }))
        }
        Notice::V1Oom { dir } => {
            let oom_kills = std::fs::read_to_string(dir.join("memory.oom_control"))
                .ok()
                .and_then(|t| parse_kv(&t).get("oom_kill").copied());
            Some(Event::MemcgOom(MemcgOom {
                time: now_rfc3339(SystemTime::now()),
                container: identity.container_at(&dir),
                cgroup: dir,
                oom_kills,
            }))
        }
        Notice::MemoryEvents { dir, oom_kills } => Some(Event::MemcgOom(MemcgOom {
            time: now_rfc3339(SystemTime::now()),
            container: identity.container_at(&dir),
            cgroup: dir,
            oom_kills: Some(oom_kills),
        })),
        Notice::Gone { what } => {
            info!("stopped watching: {what}");
            None
        }
    }
}

fn reclaim_stall(e: &StallEvent, index: &mut CgroupIndex) -> ReclaimStall {
    ReclaimStall {
        time: now_rfc3339(ebpf::wall_time(e.ts_ns)),
        ktime_ns: e.ts_ns,
        cgroup: index.resolve(CgroupId(e.cgroup_id)),
        container: None,
        pid: e.pid,
        tgid: e.tgid,
        comm: comm_string(&e.comm),
        duration_us: e.duration_ns / 1000,
        pages_reclaimed: e.nr_reclaimed,
    }
}

/// Prints events as lines for people or JSON lines for machines.
struct Printer {
    output: Output,
}

impl Printer {
    fn ready(&mut self, ebpf: bool, docker_api: Option<&str>, watching: &[String]) {
        match self.output {
            Output::Json => println!(
                "{}",
                serde_json::json!({"type": "ready", "ebpf": ebpf, "docker_api": docker_api, "watching": watching})
            ),
            Output::Human => {
                for w in watching {
                    println!("watching {w}");
                }
                if let Some(api) = docker_api {
                    println!("watching docker containers (API {api})");
                }
            }
        }
    }

    fn event(&mut self, event: &Event) {
        match self.output {
            Output::Json => match serde_json::to_string(event) {
                Ok(line) => println!("{line}"),
                Err(e) => warn!("cannot encode event as JSON: {e}"),
            },
            Output::Human => println!("{}", human(event)),
        }
    }
}

fn cgroup_name(c: &CgroupRef) -> String {
    match &c.path {
        Some(p) => format!("{} (cgroup {})", p.display(), c.id),
        None => format!("cgroup {} (gone)", c.id),
    }
}

fn in_container(c: &Option<ContainerRef>) -> String {
    match c {
        Some(c) => match (&c.project, &c.service) {
            (Some(p), Some(s)) => format!(" [{p}/{s} {}]", c.name),
            _ => format!(" [{}]", c.name),
        },
        None => String::new(),
    }
}

fn task_name(t: &OomTask) -> String {
    format!("{}[{}]", t.comm.as_deref().unwrap_or("?"), t.pid)
}

fn human(event: &Event) -> String {
    match event {
        Event::OomKill(k) => {
            let mut line = format!(
                "{} OOM-KILL {}{} in {}",
                k.time,
                task_name(&k.victim),
                in_container(&k.container),
                k.victim
                    .cgroup
                    .as_ref()
                    .map(cgroup_name)
                    .unwrap_or_default()
            );
            if let Some(rss) = &k.rss {
                line += &format!(
                    " anon {} file {} shmem {}",
                    rss.anon_rss, rss.file_rss, rss.shmem_rss
                );
            }
            if let Some(m) = &k.memory {
                let limit = m
                    .limit
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "unlimited".into());
                line += &format!(" usage {}/{limit}", m.usage);
            }
            line += &format!(" triggered by {}", task_name(&k.trigger));
            line
        }
        Event::ReclaimStall(s) => format!(
            "{} RECLAIM-STALL {}[{}]{} in {} {}us reclaimed {} pages",
            s.time,
            s.comm,
            s.pid,
            in_container(&s.container),
            cgroup_name(&s.cgroup),
            s.duration_us,
            s.pages_reclaimed
        ),
        Event::Pressure(p) => format!(
            "{} PRESSURE {} ({}) some avg10 {:.2}%",
            p.time,
            p.file.display(),
            p.trigger,
            p.stats.map(|s| s.some.avg10).unwrap_or(0.0)
        ),
        Event::MemcgOom(o) => format!(
            "{} MEMCG-OOM {}{} oom_kill {}",
            o.time,
            o.cgroup.display(),
            in_container(&o.container),
            o.oom_kills
                .map(|n| n.to_string())
                .unwrap_or_else(|| "?".into())
        ),
        Event::Container(c) => format!(
            "{} CONTAINER {}{} {}",
            c.time,
            c.action.to_uppercase(),
            in_container(&Some(c.container.clone())),
            c.cgroup.as_ref().map(cgroup_name).unwrap_or_default()
        ),
        Event::Summary {
            stalls,
            dropped_oom,
            dropped_stall,
        } => {
            let mut out = format!(
                "summary: {} cgroups stalled in reclaim; events dropped: oom {dropped_oom}, stall {dropped_stall}",
                stalls.len()
            );
            for s in stalls {
                out += &format!(
                    "\n  {}{} stalls {} total {}us max {}us reclaimed {} pages",
                    cgroup_name(&s.cgroup),
                    in_container(&s.container),
                    s.count,
                    s.total_us,
                    s.max_us,
                    s.pages_reclaimed
                );
            }
            out
        }
    }
}
