//! `guardian up`: start a compose stack in waves that fit in memory. This command only wires:
//! it reads Docker and the services' memory cgroups every 200 ms, hands them to
//! [`policy::staging::Stager`](crate::policy::staging::Stager) (which decides which service
//! may start, is calm, ready or failed, and why), starts each admitted wave with one call of
//! the user's compose tool, draws the live table and records the start-up peaks it saw.

use std::{
    collections::HashMap,
    io::IsTerminal,
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, info, warn};

use super::{
    parse_duration,
    stack::{Stack, StackArgs},
    Output, UsageError,
};
use crate::{
    model::{rfc3339_ms, Bytes, Container, RunRecord},
    policy::staging::{
        levels, Act, Decision, Observation, Replica, ServiceRun, ServiceState, Stager, UpParams,
    },
    sources::{
        cgroup::{read_high_water, read_usage, Hierarchy},
        docker::DockerClient,
    },
    store::Store,
};

/// Options of `guardian up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    stack: StackArgs,
    /// At most this many services starting at once (the only limit for services with no
    /// recorded history or limit).
    #[arg(long, default_value_t = 2)]
    max_parallel: usize,
    /// A service has settled when its memory moved less than --settle-delta over this long.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    settle: Duration,
    /// See --settle.
    #[arg(long, default_value = "4m")]
    settle_delta: Bytes,
    /// Give up on a service that is not ready after this long.
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    timeout: Duration,
    /// When the Docker engine stops answering (a restart), wait this long for it before
    /// giving up with an error.
    #[arg(long, value_parser = parse_duration, default_value = "1m")]
    engine_wait: Duration,
}

#[derive(Debug, Serialize)]
struct Summary<'a> {
    project: String,
    services: &'a [ServiceRun],
    all_ready: bool,
    interrupted: bool,
    elapsed_ms: u64,
}

pub async fn run(args: UpArgs, output: Output) -> anyhow::Result<ExitCode> {
    if args.max_parallel == 0 {
        return Err(UsageError("--max-parallel must be at least 1".into()).into());
    }
    let state_dir = args.stack.state.state_dir()?;
    let stack = Stack::load(&args.stack.compose, &args.stack.services)?;
    stack.check_wanted(&args.stack.services)?;
    let stager = stager(&args, &stack, &state_dir)?;
    let hierarchy = Hierarchy::detect()?;
    let client = DockerClient::connect(hierarchy.clone()).await?;
    let mut up = Up {
        stack: &stack,
        state_dir: &state_dir,
        client,
        hierarchy,
        stager,
        containers: HashMap::new(),
        t0: Instant::now(),
    };
    let mut display = Display::new(output, up.t0);
    let end = up.drive(&mut display).await?;
    let summary = Summary {
        project: stack.project.clone(),
        all_ready: up.stager.all_ready(),
        interrupted: end == End::Interrupted,
        elapsed_ms: up.ms(),
        services: up.stager.services(),
    };
    display.finish(&summary)?;
    if let End::GaveUp(why) = end {
        let ready = summary.services.iter().filter(|r| r.state.is_ready());
        anyhow::bail!(
            "{why}; {} of {} services ready (their start-up peaks are recorded): run guardian up again once the engine answers",
            ready.count(),
            summary.services.len()
        );
    }
    Ok(if summary.all_ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// How the rounds ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Every service is ready, completed or failed.
    Done,
    /// Ctrl-C: no further services started; what runs stays as compose left it.
    Interrupted,
    /// The policy gave up (the Docker engine did not come back), and why.
    GaveUp(String),
}

/// One `guardian up` run: what it reads from and the stepper that decides.
struct Up<'a> {
    stack: &'a Stack,
    state_dir: &'a Path,
    client: DockerClient,
    hierarchy: Hierarchy,
    stager: Stager,
    /// The first container of each service seen (for recording its start-up peak).
    containers: HashMap<String, Container>,
    t0: Instant,
}

impl Up<'_> {
    fn ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    /// Rounds every 200 ms until done, interrupted or given up: read, decide, start, record
    /// the start-up peak of each service as it becomes ready (so nothing after can lose it),
    /// draw.
    async fn drive(&mut self, display: &mut Display) -> anyhow::Result<End> {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut engine_error: Option<String> = None;
        loop {
            tokio::select! {
                _ = interrupt.recv() => return Ok(End::Interrupted),
                _ = tick.tick() => {}
            }
            let step = match self.observe().await {
                Ok(seen) => {
                    if engine_error.take().is_some() {
                        info!("the Docker engine answers again");
                    }
                    let available = crate::sources::host::mem_available()?;
                    self.stager.decide(self.ms(), &seen, available)
                }
                Err(e) => {
                    let why = e.to_string();
                    if engine_error.replace(why.clone()).is_none() {
                        warn!(error = %why, "the Docker engine does not answer; waiting for it");
                    }
                    self.stager.engine_lost(self.ms(), &why)
                }
            };
            log_decisions(&step.decisions);
            self.record_ready(&step.decisions);
            let wave = step.starts();
            if !wave.is_empty() {
                start_services(self.stack, &wave).await?;
                self.stager.started(&wave, self.ms());
            }
            display.show(self.stager.services());
            if let Some(why) = step.give_up {
                return Ok(End::GaveUp(why));
            }
            if step.done {
                return Ok(End::Done);
            }
        }
    }

    /// Reads what Docker and the memory cgroups say of every service in flight; keeps the
    /// first container of each. An engine that does not answer within 10 s is an error.
    async fn observe(&mut self) -> anyhow::Result<HashMap<String, Observation>> {
        let watching: Vec<&str> = self.stager.watching().collect();
        if watching.is_empty() {
            return Ok(HashMap::new());
        }
        let listed = self.client.compose_containers(&self.stack.project);
        let all = tokio::time::timeout(Duration::from_secs(10), listed)
            .await
            .context("the Docker engine did not answer within 10s")??;
        let mut seen = HashMap::new();
        for service in watching {
            let mine: Vec<&Container> = all
                .iter()
                .filter(|c| {
                    c.compose
                        .as_ref()
                        .is_some_and(|s| s.service == service && !s.oneoff)
                })
                .collect();
            if let Some(first) = mine.first() {
                self.containers
                    .insert(service.to_string(), (*first).clone());
            }
            seen.insert(service.to_string(), observation(&self.hierarchy, &mine));
        }
        Ok(seen)
    }

    /// Writes the start-up peak of each service that just became ready to the store.
    fn record_ready(&self, decisions: &[Decision]) {
        let ready: Vec<&ServiceRun> = decisions
            .iter()
            .filter(|d| matches!(d.act, Act::Ready { .. }))
            .filter_map(|d| {
                self.stager
                    .services()
                    .iter()
                    .find(|r| r.service == d.service)
            })
            .collect();
        if !ready.is_empty() {
            record_startup_peaks(
                self.state_dir,
                &self.stack.project,
                &ready,
                &self.containers,
            );
        }
    }
}

/// The stepper for this stack: its services in dependency order with their needs (recorded
/// start-up peaks, else limits) and compose's `depends_on`.
fn stager(args: &UpArgs, stack: &Stack, state_dir: &Path) -> anyhow::Result<Stager> {
    let order: Vec<String> = levels(&stack.depends_on(), &args.stack.services)
        .map_err(|e| UsageError(e.to_string()))?
        .into_iter()
        .flatten()
        .collect();
    let plan = stack.plan(state_dir, args.stack.profile_file.as_deref())?;
    for l in &plan.left_out {
        info!(service = %l.service, reason = %l.reason, "left out, as compose would");
    }
    let needs = plan.needs();
    let services = order
        .into_iter()
        .map(|s| {
            let need = needs.get(&s).copied().unwrap_or_default();
            let replicas = stack.model.services[&s].replicas;
            (s, need, replicas)
        })
        .collect();
    let depends_on = stack
        .model
        .services
        .iter()
        .map(|(name, svc)| (name.clone(), svc.depends_on.clone()))
        .collect();
    let params = UpParams {
        max_parallel: args.max_parallel,
        settle: args.settle,
        settle_delta: args.settle_delta,
        timeout: args.timeout,
        engine_wait: args.engine_wait,
        available: args.stack.available,
        reserve: args.stack.reserve,
    };
    Ok(Stager::new(params, services, depends_on))
}

/// One line per decision: what started, failed, calmed down or became ready, and why.
fn log_decisions(decisions: &[Decision]) {
    for d in decisions {
        match d.act {
            Act::Start {
                alone_over_budget: true,
            } => {
                warn!(service = %d.service, reason = %d.reason, "does not fit even alone; starting it alone")
            }
            Act::Fail => info!(service = %d.service, reason = %d.reason, "failed"),
            _ => debug!(service = %d.service, act = ?d.act, reason = %d.reason, "decided"),
        }
    }
}

/// Starts a wave with one call of the user's compose tool.
async fn start_services(stack: &Stack, services: &[String]) -> anyhow::Result<()> {
    // The user's own compose options and nothing else, so compose names the project and
    // starts every replica as it would on its own.
    let mut args = vec!["up", "-d", "--no-deps"];
    args.extend(services.iter().map(String::as_str));
    let mut cmd = stack.tool.command(&stack.compose, &args);
    let names = services.join(", ");
    let t = Instant::now();
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .with_context(|| format!("starting {names} with the compose tool"))?;
    debug!(services = %names, took_ms = t.elapsed().as_millis() as u64, "compose up -d --no-deps");
    if !out.status.success() {
        anyhow::bail!(
            "compose could not start {names}: {}",
            crate::sources::compose::tool_error(&String::from_utf8_lossy(&out.stderr))
        );
    }
    Ok(())
}

/// One service's replicas as the policy sees them, with their memory summed.
fn observation(hierarchy: &Hierarchy, mine: &[&Container]) -> Observation {
    let replicas = mine
        .iter()
        .map(|c| match c.state.as_str() {
            "running" => Replica::Running {
                healthy: c.health.as_deref().is_none_or(|h| h == "healthy"),
            },
            "exited" | "dead" => Replica::Exited {
                code: c.exit_code,
                oom_killed: c.oom_killed,
            },
            _ => Replica::Other,
        })
        .collect();
    let memories: Vec<&Path> = mine
        .iter()
        .filter_map(|c| c.cgroup.as_ref().and_then(|cg| cg.memory_path.as_deref()))
        .collect();
    let usages: Option<Vec<Bytes>> = memories
        .iter()
        .map(|m| read_usage(hierarchy, m).ok())
        .collect();
    let marks: Vec<Option<Bytes>> = memories
        .iter()
        .map(|m| read_high_water(hierarchy, m).ok())
        .collect();
    let sum = |v: Vec<Bytes>| Bytes(v.iter().map(|b| b.0).sum());
    Observation {
        replicas,
        usage: usages.filter(|u| !u.is_empty()).map(sum),
        high_water: marks
            .iter()
            .copied()
            .collect::<Option<Vec<Bytes>>>()
            .map(sum),
        highest_mark: marks.iter().flatten().copied().max(),
    }
}

/// Writes each ready service's start-up peak to the store, so the next `up` stages better.
fn record_startup_peaks(
    state_dir: &Path,
    project: &str,
    runs: &[&ServiceRun],
    containers: &HashMap<String, Container>,
) {
    let records: Vec<RunRecord> = runs
        .iter()
        .filter_map(|r| {
            let c = containers.get(&r.service)?;
            let peak = r.startup_peak?;
            let started_at_ms = c
                .started_at
                .as_deref()
                .and_then(rfc3339_ms)
                .unwrap_or_else(crate::model::now_ms);
            Some(RunRecord {
                container_id: c.id.clone(),
                started_at_ms,
                name: c.name.clone(),
                image: c.image.clone(),
                project: Some(project.to_string()),
                service: Some(r.service.clone()),
                memory_limit: c.memory_limit,
                memory_reservation: c.memory_reservation,
                peak,
                startup_peak: peak,
                // The settled usage stands in for the steady need until the daemon records more.
                working_set_sum: r.usage.map_or(0, |u| u.0),
                working_set_samples: u64::from(r.usage.is_some()),
                ..Default::default()
            })
        })
        .collect();
    if records.is_empty() {
        return;
    }
    if let Err(e) = Store::open(state_dir).and_then(|mut s| s.flush(&records, &[])) {
        warn!("start-up peaks not recorded: {e}");
    }
}

/// Live progress: a table redrawn in place on a terminal, one line per change otherwise.
struct Display {
    output: Output,
    t0: Instant,
    tty: bool,
    drawn: usize,
    last: HashMap<String, (ServiceState, bool)>,
}

impl Display {
    fn new(output: Output, t0: Instant) -> Self {
        Self {
            output,
            t0,
            tty: output == Output::Human && std::io::stdout().is_terminal(),
            drawn: 0,
            last: HashMap::new(),
        }
    }

    fn label(r: &ServiceRun) -> String {
        match &r.state {
            ServiceState::Waiting => "waiting".into(),
            ServiceState::Starting if r.calm => "starting, past its start-up peak".into(),
            ServiceState::Starting => "starting".into(),
            ServiceState::Settling if r.awaited_to_complete => "running until it completes".into(),
            ServiceState::Settling => "settling".into(),
            ServiceState::Healthy => "ready".into(),
            ServiceState::Completed => "completed".into(),
            ServiceState::Failed(why) => format!("FAILED: {why}"),
        }
    }

    fn show(&mut self, runs: &[ServiceRun]) {
        let show = |b: Option<Bytes>| b.map(|b| b.to_string()).unwrap_or_else(|| "-".into());
        if self.tty {
            if self.drawn > 0 {
                print!("\x1b[{}A", self.drawn);
            }
            for r in runs {
                println!(
                    "\x1b[2K{:<20} {:<28} now {:>9}  peak {:>9}",
                    r.service,
                    Self::label(r),
                    show(r.usage),
                    show(r.peak)
                );
            }
            self.drawn = runs.len();
            return;
        }
        for r in runs {
            let now = (r.state.clone(), r.calm);
            if self.last.get(&r.service) != Some(&now) {
                self.last.insert(r.service.clone(), now);
                if self.output == Output::Human && r.state != ServiceState::Waiting {
                    let memory = match r.usage {
                        Some(now) => format!(" (memory {now}, peak {})", show(r.peak)),
                        None => String::new(),
                    };
                    println!(
                        "[{:>5.1}s] {}: {}{memory}",
                        self.t0.elapsed().as_secs_f64(),
                        r.service,
                        Self::label(r),
                    );
                }
            }
        }
    }

    fn finish(&mut self, summary: &Summary) -> anyhow::Result<()> {
        match self.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(summary)?),
            Output::Human => println!(
                "{}: {} of {} services ready in {:.1}s{}",
                summary.project,
                summary
                    .services
                    .iter()
                    .filter(|r| matches!(r.state, ServiceState::Healthy | ServiceState::Completed))
                    .count(),
                summary.services.len(),
                summary.elapsed_ms as f64 / 1000.0,
                if summary.interrupted {
                    " (interrupted: no further services started)"
                } else {
                    ""
                }
            ),
        }
        Ok(())
    }
}
