//! `guardian daemon`: records what every container and compose service uses, into the store,
//! enforces budgets (enforcement.rs), and serves Prometheus metrics. One task owns the state
//! and applies events in order.

mod enforcement;
mod episodes;
mod health;
mod incidents;
mod systemd;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
    time::MissedTickBehavior,
};
use tracing::{debug, error, info, warn};

use self::{
    enforcement::{Enforcement, Wake},
    episodes::{Episodes, Seen},
    incidents::Incidents,
    systemd::Systemd,
};
use super::{parse_duration, Output, StateArgs, UsageError};
use crate::{
    config::{Config, Dur},
    metrics::{self, ContainerLabels, ServiceSeries, StallSeries},
    model::{now_ms, CgroupId, Container, ContainerTable, Recorder},
    policy::sampling::{self, SampleInputs},
    sources::{
        cgroup::{read_memory, CgroupIndex, Hierarchy, PeakSource, UsageCounters},
        docker::{self, DockerUpdate},
        ebpf::{self, KernelEvent, ProbeOptions, Probes},
        kmsg, oom,
    },
    store::{lock::StateLock, RunFilter, Store},
};

/// Options of `guardian daemon`; each overrides the config file.
#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    state: StateArgs,
    /// How often each container's cgroup is read (default 1s).
    #[arg(long, value_parser = parse_duration)]
    sample_interval: Option<Duration>,
    /// How often records are committed to the store (default 5s).
    #[arg(long, value_parser = parse_duration)]
    flush_interval: Option<Duration>,
    /// Prometheus endpoint address (default 127.0.0.1:7919).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Do not serve Prometheus metrics.
    #[arg(long)]
    no_metrics: bool,
    /// Log and record what the enforcement ladder would do, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Allow the last step of the ladder: kill a frozen container when critical pressure lasts.
    #[arg(long)]
    allow_kill: bool,
    /// Observe only: never write a cgroup file.
    #[arg(long)]
    no_enforce: bool,
}

/// The pid file of a daemon using `state_dir`.
pub fn pid_file(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("guardian.pid")
}

/// The configuration file with this command line's overrides; read at start and on SIGHUP.
/// Creates the state directory 0700, or takes group and other access away from an existing one
/// (a directory made by hand or by an older unit with mode 0755).
fn private_state_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| {
            format!(
                "creating the state directory {}; pass --state-dir or run as root",
                dir.display()
            )
        })?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700))
            .with_context(|| format!("making {} private (chmod go-rwx)", dir.display()))?;
        info!(state_dir = %dir.display(), was = format!("{mode:04o}"), "state directory made private (0700): it holds command lines");
    }
    Ok(())
}

fn load_config(args: &DaemonArgs) -> Result<Config, UsageError> {
    let mut config = args.state.config()?;
    if let Some(d) = args.sample_interval {
        config.sample_interval = Dur(d);
    }
    if let Some(d) = args.flush_interval {
        config.flush_interval = Dur(d);
    }
    if let Some(addr) = args.metrics_listen {
        config.metrics.listen = addr;
    }
    if args.no_metrics {
        config.metrics.enabled = false;
    }
    // The hook runs as root on every incident: its program must be root's alone.
    if let Some(program) = config
        .incidents
        .hook
        .as_deref()
        .and_then(crate::policy::trust::hook_program)
    {
        // A program missing now could be put there later by whoever can: refuse, as for one
        // others can write.
        if !program.exists() {
            return Err(UsageError(format!(
                "incident hook {}: no such program; install it (owned by root) or fix [incidents] hook",
                program.display()
            )));
        }
        crate::sources::host::check_trusted(&program)
            .map_err(|why| UsageError(format!("incident hook {why}")))?;
    }
    config.enforce.dry_run |= args.dry_run;
    config.enforce.allow_kill |= args.allow_kill;
    if args.no_enforce {
        config.enforce.enabled = false;
    }
    Ok(config)
}

pub async fn run(args: DaemonArgs, _output: Output) -> anyhow::Result<ExitCode> {
    let config = load_config(&args)?;
    // Caught from the start: a stop while the probes load still ends in a clean shutdown (the
    // loop sees it at once) instead of the default action killing us mid-start.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;

    // The store, reports and journal hold command lines and what guardian changed: root's
    // alone. Everything the daemon creates is 0600/0700, and so is its state directory.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    private_state_dir(&config.state_dir)?;
    // Held until we exit: a second daemon on this store fails here, naming us — before it
    // could move a store aside under the running one.
    let _lock = StateLock::acquire(&config.state_dir)?;
    let (mut store, set_aside) = Store::open_or_set_aside(&config.state_dir)?;
    // For people and scripts; whether a daemon is alive is the lock's to say, not this file's.
    let pid_path = pid_file(&config.state_dir);
    std::fs::write(&pid_path, format!("{}\n", std::process::id()))
        .with_context(|| format!("writing {}", pid_path.display()))?;

    let hierarchy = Hierarchy::detect()?;
    if let Some(aside) = set_aside {
        warn!(from = %aside.from.display(), to = %aside.to.display(), "the store was unreadable ({}): moved aside, a new one started; the values it journaled cannot be restored automatically", aside.why);
        for line in crate::actions::possibly_changed(&hierarchy) {
            warn!("may still be changed by an earlier guardian: {line}");
        }
    }
    let mut index = CgroupIndex::new(hierarchy.clone());
    let mut table = ContainerTable::new(1024);
    let mut recorder = Recorder::new(
        config.timeline_interval.0.as_millis() as i64,
        config.startup_window.0.as_millis() as i64,
    );

    let mut probes = match Probes::load(ProbeOptions {
        // Reclaim stalls this long wake the enforcement ladder; without it none are streamed.
        stall_threshold: if config.enforce.enabled {
            config.enforce.stall_wake.0
        } else {
            Duration::from_secs(3600)
        },
    }) {
        Ok(p) => Some(p),
        Err(e) => {
            warn!("eBPF disabled, recording from cgroup files only: {e}");
            None
        }
    };
    let mut oom_kills_total = 0u64;

    let (wake_tx, mut wake_rx) = mpsc::channel::<Wake>(64);
    let mut enforcement = if config.enforce.enabled {
        Some(Enforcement::start(
            &config.enforce,
            config.budget.clone(),
            hierarchy.clone(),
            &store,
            wake_tx,
        )?)
    } else {
        info!("enforcement off: observing only");
        None
    };
    let mut incidents = Incidents::start(&config.incidents, &config.state_dir, &store);
    let mut episodes = Episodes::start(&config.incidents, &config.state_dir);
    let (kmsg_tx, mut kmsg_rx) = mpsc::channel::<crate::model::KillLine>(64);
    kmsg::watch(kmsg_tx);
    let mut enforce_tick = tokio::time::interval(config.enforce.interval.0);
    enforce_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);

    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(String::new()));
    if config.metrics.enabled {
        match metrics::serve(config.metrics.listen, snapshot_rx).await {
            Ok(()) => info!(addr = %config.metrics.listen, "serving Prometheus metrics"),
            Err(e) => metrics::warn_unavailable(config.metrics.listen, &e),
        }
    }

    let (docker_tx, mut docker_rx) = mpsc::channel::<DockerUpdate>(256);
    tokio::spawn(docker::watch(hierarchy.clone(), docker_tx));
    let mut docker_lost = false;

    let mut sample_tick = tokio::time::interval(config.sample_interval.0);
    sample_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut store_health = StoreHealth::default();
    // Containers read every fast_sample_interval: new, or near a ceiling (policy/sampling.rs).
    let fast_on = !config.fast_sample_interval.0.is_zero();
    let mut fast_tick = tokio::time::interval(if fast_on {
        config.fast_sample_interval.0
    } else {
        Duration::from_secs(3600)
    });
    fast_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut fast: HashSet<String> = HashSet::new();
    let mut flush_tick = tokio::time::interval(config.flush_interval.0);
    flush_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut prune_tick = tokio::time::interval(Duration::from_secs(3600));
    let systemd = Systemd::new();
    let mut watchdog_tick = tokio::time::interval(
        systemd
            .watchdog_interval()
            .unwrap_or(Duration::from_secs(3600)),
    );
    let mut batch = Vec::new();
    let mut counters = HashMap::new();
    // The per-service series, from the store's runs: read at start and after each flush that
    // wrote runs, not every sampling round.
    let mut services = service_series(&store);
    let mut services_at = Instant::now();
    info!(
        state_dir = %config.state_dir.display(),
        sample_interval = ?config.sample_interval.0,
        flush_interval = ?config.flush_interval.0,
        "guardian daemon started"
    );
    if hierarchy.peak_source() == PeakSource::Sampled {
        warn!(
            sample_interval = ?config.sample_interval.0,
            "no memory.peak on this kernel (before 5.19): peaks are the highest sample of memory.current, and a spike shorter than sample_interval can be missed"
        );
    }
    // The store is open and the probes attached (or their absence logged): ready.
    systemd.ready(&format!(
        "recording; eBPF {}, enforcement {}",
        if probes.is_some() {
            "on"
        } else {
            "off (cgroup files only)"
        },
        if enforcement.is_some() { "on" } else { "off" },
    ));

    let mut health_watch = health::HealthWatch::new(config.health);
    // Rendering every series each round is work only a scrape can use.
    let metrics_on = config.metrics.enabled;
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = sample_tick.tick() => {
                sample(&hierarchy, &mut recorder, &mut counters);
                if fast_on {
                    choose_fast(&recorder, enforcement.as_ref(), &mut fast);
                }
                incidents.sample_host(now_ms());
                incidents.flush_due(&store, &table, false);
                let budget_of = |id: &str| enforcement.as_ref().and_then(|e| e.budget_of(id));
                let seen = Seen { incidents: &incidents, table: &table, recorder: &recorder };
                episodes.sample(&hierarchy, &seen, &budget_of, &store);
                episodes.tick(&store);
                let health = health_watch
                    .observe(recorder.live().map(|l| (l, budget_of(&l.record.container_id))));
                if !metrics_on {
                    continue;
                }
                // One eBPF map lookup per container and CPU: only for a scrape.
                let stalls = stall_series(probes.as_ref(), &mut index, &table);
                let text = metrics::render(&metrics::Snapshot {
                    health,
                    runs: recorder.live().map(|l| (l, budget_of(&l.record.container_id))).collect(),
                    stalls: &stalls,
                    services: &services,
                    oom_kills_total,
                    enforcement: enforcement.as_ref().map(Enforcement::metrics),
                    warnings: episodes.metrics(),
                });
                snapshot_tx.send_replace(Arc::new(text));
            }
            _ = fast_tick.tick(), if fast_on && !fast.is_empty() => {
                sample_usage(&hierarchy, &mut recorder, &mut counters, &fast);
                choose_fast(&recorder, enforcement.as_ref(), &mut fast);
            }
            _ = flush_tick.tick() => {
                let flushed = flush(&mut store, &mut recorder, &mut store_health);
                // A run that ended or a new service changes the series; running runs only
                // raise peaks, which can wait for the next minute.
                if flushed.changes(&services)
                    || (flushed != Flushed::NoRuns && services_at.elapsed() >= SERVICE_SERIES_EVERY)
                {
                    services = service_series(&store);
                    services_at = Instant::now();
                }
                systemd.status(&format!("recording {} container(s)", recorder.live().count()));
            }
            // Fed from this loop, so a loop stuck in a blocking read starves it.
            _ = watchdog_tick.tick(), if systemd.watchdog_interval().is_some() => systemd.alive(),
            _ = hangup.recv() => match reload(&args, &config, enforcement.as_mut(), &table, &store) {
                Ok(()) => systemd.status("reloaded the configuration"),
                Err(e) => systemd.status(&format!("reload failed, running configuration kept: {e}")),
            },
            _ = enforce_tick.tick(), if enforcement.is_some() => {
                if let Some(e) = enforcement.as_mut() {
                    e.evaluate(Wake::now("poll"), &store);
                }
            }
            Some(wake) = wake_rx.recv() => {
                if let Some(e) = enforcement.as_mut() {
                    e.evaluate(wake, &store);
                }
            }
            _ = prune_tick.tick() => {
                let retention = config.timeline_retention.0.as_millis();
                let before = now_ms().saturating_sub(i64::try_from(retention).unwrap_or(i64::MAX));
                if let Err(e) = store.prune_samples(before) {
                    error!("pruning old timeline points: {e}");
                }
                incidents.prune(&store, config.incidents.retention.0, config.incidents.max_count);
            }
            result = ebpf::next_batch_if_loaded(probes.as_mut(), &mut batch) => {
                result.context("reading the eBPF ring buffers")?;
                for record in batch.drain(..) {
                    match record {
                        KernelEvent::Oom(e) => {
                            oom_kills_total += 1;
                            let kill = oom::enrich(&e, &mut index);
                            let cgroup_id = kill.victim.cgroup.as_ref().map(|c| c.id);
                            let stalls = probes.as_ref().and_then(|p| {
                                p.stall_totals().into_iter().find(|(id, _)| Some(*id) == cgroup_id).map(|(_, t)| t)
                            });
                            let budget = kill.victim.cgroup.as_ref()
                                .and_then(|c| table.by_cgroup(c))
                                .and_then(|c| enforcement.as_ref()?.budget_of(&c.id));
                            incidents.on_oom(&kill, &table, &recorder, stalls, budget);
                        }
                        KernelEvent::Stall(e) => {
                            if let (Some(enf), Some(path)) = (enforcement.as_mut(), index.resolve(CgroupId(e.cgroup_id)).path) {
                                enf.on_reclaim_stall(&path, e.ts_ns, &store);
                            }
                        }
                    }
                }
            }
            Some(line) = kmsg_rx.recv() => incidents.on_kill_line(line),
            Some(update) = docker_rx.recv() => {
                match &update {
                    DockerUpdate::Event(e) => {
                        if let Some(c) = &e.container {
                            incidents.on_docker(&e.action, c, &recorder, &store);
                            if e.action == "kill" {
                                episodes.on_docker_kill(&c.id);
                            }
                            if e.action == "die" {
                                let seen = Seen { incidents: &incidents, table: &table, recorder: &recorder };
                                let budget = enforcement.as_ref().and_then(|e| e.budget_of(&c.id));
                                episodes.on_die(c, &seen, budget);
                            }
                            if matches!(e.action.as_str(), "die" | "destroy") {
                                episodes.on_gone(&c.id, &store);
                            }
                        }
                    }
                    DockerUpdate::Connected { containers, .. } => incidents.on_inventory(containers, &store),
                    DockerUpdate::Lost(_) => {}
                }
                apply(update, &mut table, &mut recorder, &hierarchy, &mut docker_lost);
                if fast_on {
                    choose_fast(&recorder, enforcement.as_ref(), &mut fast);
                }
                if let Some(e) = enforcement.as_mut() {
                    e.sync_containers(&table, &store);
                }
            }
        }
        // The ladder's freezes and kills of this round become incidents.
        if let Some(e) = enforcement.as_mut() {
            let events = e.take_events();
            if !events.is_empty() {
                let seen = Seen {
                    incidents: &incidents,
                    table: &table,
                    recorder: &recorder,
                };
                episodes.on_ladder(events, &seen, &store);
            }
        }
    }

    // Shutting down: put back every value guardian changed, then one last reading and flush,
    // so nothing recorded is lost.
    systemd.stopping();
    if let Some(e) = enforcement.as_mut() {
        e.shutdown(&store);
    }
    episodes.shutdown(&store);
    incidents.flush_due(&store, &table, true);
    sample(&hierarchy, &mut recorder, &mut counters);
    flush(&mut store, &mut recorder, &mut store_health);
    let _ = std::fs::remove_file(&pid_path);
    info!("guardian daemon stopped");
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP (`systemctl reload guardian`): re-reads the configuration and applies its budgets and
/// profiles; only groups whose budget changed are touched. What else changed takes a restart,
/// and a config that no longer parses keeps the running one.
fn reload(
    args: &DaemonArgs,
    running: &Config,
    enforcement: Option<&mut Enforcement>,
    table: &ContainerTable,
    store: &Store,
) -> Result<(), UsageError> {
    let new = load_config(args).inspect_err(|e| {
        error!("reload: keeping the running configuration: {e}");
    })?;
    let same_but_budgets = Config {
        budget: running.budget.clone(),
        enforce: crate::config::EnforceConfig {
            profiles: running.enforce.profiles.clone(),
            ..new.enforce.clone()
        },
        ..new.clone()
    };
    if &same_but_budgets != running {
        warn!("reload: only [[budget]] rules and enforce.profiles apply now; the other changes take a restart (systemctl restart guardian)");
    }
    match enforcement {
        Some(e) => {
            let changes = e.reload(&new.enforce, new.budget, table, store);
            info!(changed = changes.len(), "configuration reloaded");
        }
        None => info!("configuration reloaded; enforcement is off, budgets are not used"),
    }
    Ok(())
}

/// Reads every recorded container's cgroup once: the sampling round's counters (usage,
/// high-water mark, memory.stat for the unreclaimable part; files kept open), and the full
/// reading when a timeline point is due. That keeps 200 idle containers cheap while no peak is
/// ever missed.
fn sample(
    hierarchy: &Hierarchy,
    recorder: &mut Recorder,
    counters: &mut HashMap<String, UsageCounters>,
) {
    let now = now_ms();
    let interval = recorder.timeline_interval_ms();
    let targets: Vec<(String, bool)> = recorder
        .live()
        .filter(|l| l.cgroup.is_some())
        .map(|l| {
            let full = l.full_reading_due(now, interval);
            (l.record.container_id.clone(), full)
        })
        .collect();
    counters.retain(|id, _| targets.iter().any(|(t, ..)| t == id));
    for (id, full) in targets {
        read_counters(hierarchy, recorder, counters, &id, now);
        if full {
            let Some(cg) = recorder.get(&id).and_then(|l| l.cgroup.clone()) else {
                continue;
            };
            // A container that just exited has no cgroup left: its last reading stands.
            if let Some(memory) = cg.memory_path.as_deref() {
                if let Ok(reading) = read_memory(hierarchy, memory, cg.path.as_deref()) {
                    recorder.observe(&id, &reading, now);
                }
            }
        }
    }
}

/// One sampling round of a container through its open counters (opened on first use, dropped
/// when its group is gone).
fn read_counters(
    hierarchy: &Hierarchy,
    recorder: &mut Recorder,
    counters: &mut HashMap<String, UsageCounters>,
    id: &str,
    now: i64,
) {
    if !counters.contains_key(id) {
        let Some(memory) = recorder
            .get(id)
            .and_then(|l| l.cgroup.as_ref())
            .and_then(|c| c.memory_path.clone())
        else {
            return;
        };
        match UsageCounters::open(hierarchy, &memory) {
            Ok(c) => {
                counters.insert(id.to_string(), c);
            }
            Err(_) => return,
        }
    }
    let prev = recorder.get(id).and_then(|l| l.last_round().copied());
    match counters.get(id).map(|c| c.read(prev.as_ref())) {
        Some(Ok(round)) => recorder.observe_counters(id, round, now),
        _ => {
            counters.remove(id);
        }
    }
}

/// Whether the store takes writes: a full disk or a read-only state directory is said once
/// when it starts and once when it ends, not at every flush.
#[derive(Default)]
struct StoreHealth {
    failing_since: Option<i64>,
    dropped_samples: usize,
}

/// While the store cannot take writes, the last minute of samples waits in memory.
const KEEP_UNWRITTEN_MS: i64 = 60_000;

/// Decides which containers are sampled fast from their latest usage (policy/sampling.rs), and
/// logs each change with the reason.
fn choose_fast(recorder: &Recorder, enforcement: Option<&Enforcement>, fast: &mut HashSet<String>) {
    let now = now_ms();
    let mut next = HashSet::new();
    for l in recorder.live() {
        let id = &l.record.container_id;
        let inputs = SampleInputs {
            usage: l
                .recent
                .back()
                .map(|(_, u)| *u)
                .or(l.last.as_ref().map(|m| m.usage))
                .unwrap_or_default(),
            limit: l.record.memory_limit,
            budget: enforcement.and_then(|e| e.budget_of(id)),
            high: l.last.as_ref().and_then(|m| m.high),
            age_ms: now - l.record.started_at_ms,
            fast_now: fast.contains(id),
        };
        let rate = sampling::rate(&inputs);
        if rate.is_fast() != inputs.fast_now {
            debug!(container = %l.record.display_name(), usage = inputs.usage.0, rate = ?rate, "sampling rate changed");
        }
        if rate.is_fast() {
            next.insert(id.clone());
        }
    }
    *fast = next;
}

/// One sampling round of the fast-sampled containers.
fn sample_usage(
    hierarchy: &Hierarchy,
    recorder: &mut Recorder,
    counters: &mut HashMap<String, UsageCounters>,
    ids: &HashSet<String>,
) {
    let now = now_ms();
    for id in ids {
        read_counters(hierarchy, recorder, counters, id, now);
    }
}

/// The per-service series from every run the store keeps; none when the store cannot be read.
/// Runs older than this leave the per-service series (Prometheus keeps their history): the
/// series stay bounded on runners whose project names change every job, and so does the cost
/// of rebuilding them.
const SERVICE_SERIES_WINDOW_MS: i64 = 30 * 24 * 3600 * 1000;
/// The per-service series are rebuilt at most this often (a full read of the window's runs).
const SERVICE_SERIES_EVERY: Duration = Duration::from_secs(60);

fn service_series(store: &Store) -> Vec<ServiceSeries> {
    let filter = RunFilter {
        since_ms: Some(now_ms() - SERVICE_SERIES_WINDOW_MS),
        ..RunFilter::default()
    };
    match store.runs(&filter) {
        Ok(runs) => metrics::services(&runs),
        Err(e) => {
            warn!("reading the runs for the per-service metrics: {e}");
            Vec::new()
        }
    }
}

/// What a flush committed, for whoever derives series from the stored runs.
#[derive(Clone, PartialEq, Eq)]
enum Flushed {
    /// Nothing, or only timeline samples, or the write failed.
    NoRuns,
    /// Run rows: their (project, service) as the per-service series key them, and whether one
    /// of them just ended (its final peaks).
    Runs {
        services: Vec<(String, String)>,
        ended: bool,
    },
}

impl Flushed {
    /// Whether the per-service series must be rebuilt now rather than at the next minute: a
    /// run ended, or a run of a service the series do not have yet was written.
    fn changes(&self, series: &[ServiceSeries]) -> bool {
        match self {
            Flushed::NoRuns => false,
            Flushed::Runs { services, ended } => {
                *ended
                    || services
                        .iter()
                        .any(|(p, s)| !series.iter().any(|x| &x.project == p && &x.service == s))
            }
        }
    }
}

/// Commits what changed; on failure keeps it (bounded) for the next flush.
fn flush(store: &mut Store, recorder: &mut Recorder, health: &mut StoreHealth) -> Flushed {
    let pending = recorder.take_flush();
    if pending.runs.is_empty() && pending.samples.is_empty() {
        return Flushed::NoRuns;
    }
    let wrote_runs = if pending.runs.is_empty() {
        Flushed::NoRuns
    } else {
        Flushed::Runs {
            services: pending
                .runs
                .iter()
                .map(|r| {
                    let service = r.service.clone().unwrap_or_else(|| r.name.clone());
                    (r.project.clone().unwrap_or_default(), service)
                })
                .collect(),
            ended: pending.runs.iter().any(|r| r.ended_at_ms.is_some()),
        }
    };
    match store.flush(&pending.runs, &pending.samples) {
        Ok(()) => {
            if let Some(since) = health.failing_since.take() {
                info!(
                    unwritable_for_s = (now_ms() - since) / 1000,
                    dropped_samples = health.dropped_samples,
                    "the store takes writes again"
                );
                health.dropped_samples = 0;
            }
            wrote_runs
        }
        Err(e) => {
            if health.failing_since.is_none() {
                health.failing_since = Some(now_ms());
                error!("the store cannot take writes ({e}): recording goes on in memory (each run's latest record and the last minute of samples) and is written when it can; budgets already applied stay, new squeezes wait until the store can journal what they replace (free space in the state directory)");
            }
            health.dropped_samples += recorder.restore(pending, now_ms() - KEEP_UNWRITTEN_MS);
            Flushed::NoRuns
        }
    }
}

fn apply(
    update: DockerUpdate,
    table: &mut ContainerTable,
    recorder: &mut Recorder,
    hierarchy: &Hierarchy,
    docker_lost: &mut bool,
) {
    let now = now_ms();
    match update {
        DockerUpdate::Connected {
            api_version,
            containers,
        } => {
            info!(api_version = %api_version, containers = containers.len(), "Docker connected");
            *docker_lost = false;
            for c in containers {
                track(&c, recorder, hierarchy, now);
                table.upsert(c);
            }
        }
        DockerUpdate::Lost(reason) => {
            if !*docker_lost {
                warn!("Docker unavailable, recording only the containers already known: {reason}");
                *docker_lost = true;
            }
        }
        DockerUpdate::Event(e) => {
            let Some(c) = e.container else { return };
            match e.action.as_str() {
                "start" | "unpause" | "pause" => track(&c, recorder, hierarchy, now),
                "die" => recorder.finish(&c, now),
                _ => {}
            }
            table.upsert(c);
        }
    }
}

/// Starts recording a running container and takes a first reading at once: a short-lived
/// container may be gone before the next sampling round.
fn track(c: &Container, recorder: &mut Recorder, hierarchy: &Hierarchy, now: i64) {
    if c.state != "running" && c.state != "paused" {
        return;
    }
    recorder.start(c, now);
    if let Some(cg) = &c.cgroup {
        if let Some(memory) = cg.memory_path.as_deref() {
            if let Ok(reading) = read_memory(hierarchy, memory, cg.path.as_deref()) {
                recorder.observe(&c.id, &reading, now);
            }
        }
    }
}

/// Reclaim-stall histograms per container from the eBPF map.
fn stall_series(
    probes: Option<&Probes>,
    index: &mut CgroupIndex,
    table: &ContainerTable,
) -> Vec<StallSeries> {
    let Some(p) = probes else { return Vec::new() };
    let mut by_container: HashMap<String, StallSeries> = HashMap::new();
    for (id, t) in p.stall_totals() {
        let cgroup = index.resolve(id);
        let Some(c) = table.by_cgroup(&cgroup) else {
            continue;
        };
        let series = by_container
            .entry(c.id.clone())
            .or_insert_with(|| StallSeries {
                container: ContainerLabels {
                    name: c.name.clone(),
                    id: c.id.clone(),
                    image: c.image.clone(),
                    project: c.compose.as_ref().map(|s| s.project.clone()),
                    service: c.compose.as_ref().map(|s| s.service.clone()),
                },
                buckets_us: (0..t.hist.len()).map(|i| (2u64 << i, 0)).collect(),
                count: 0,
                sum_seconds: 0.0,
            });
        for (bucket, n) in series.buckets_us.iter_mut().zip(t.hist) {
            bucket.1 += n;
        }
        series.count += t.count;
        series.sum_seconds += t.total_ns as f64 / 1e9;
    }
    by_container.into_values().collect()
}
