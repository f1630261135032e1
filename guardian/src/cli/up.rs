//! `guardian up`: start a compose stack in waves that fit in memory. Each service is started
//! with the user's compose tool once its dependencies meet their compose condition (started,
//! healthy, or completed successfully) *and* their memory is calm, and its expected start-up
//! peak fits the headroom. Memory is calm once the service is healthy (or running, with no
//! healthcheck) and has settled (moved less than --settle-delta for --settle), or, with a
//! recorded start-up peak, as soon as it is past that peak (usage well below the high-water
//! mark): then it holds no headroom for growth and the next wave need not wait for it to be
//! healthy. Services admitted together start in one compose call.

use std::{
    collections::{HashMap, VecDeque},
    io::IsTerminal,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use super::{
    parse_duration,
    stack::{Stack, StackArgs},
    Output, UsageError,
};
use crate::{
    model::{rfc3339_ms, Bytes, Container, RunRecord},
    policy::staging::{admit, levels, Need},
    sources::{
        cgroup::{read_high_water, read_usage, Hierarchy},
        compose::{Condition, Dependency},
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
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
enum State {
    #[default]
    Waiting,
    /// Started, not healthy yet (or not running yet).
    Starting,
    /// Healthy (or running, with no healthcheck), memory not calm yet.
    Settling,
    /// Healthy and calm: ready.
    Healthy,
    /// Exited with code 0, as one-shot services (migrations, seeds) do.
    Completed,
    Failed(String),
}

#[derive(Debug, Default, Serialize)]
struct ServiceRun {
    service: String,
    #[serde(flatten)]
    state: State,
    need: Need,
    /// Containers compose starts for it.
    replicas: u32,
    /// Order in which guardian started it (1-based).
    order: Option<usize>,
    /// Milliseconds from the start of `guardian up`.
    started_ms: Option<u64>,
    /// When its memory became calm (settled, or past its recorded start-up peak).
    calm_ms: Option<u64>,
    /// When it became ready (healthy and calm) or completed.
    ready_ms: Option<u64>,
    /// The kernel's high-water mark of its memory when it became ready.
    startup_peak: Option<Bytes>,
    usage: Option<Bytes>,
    /// The high-water mark so far.
    peak: Option<Bytes>,
    /// Healthy and settled, or past its recorded start-up spike: it holds no headroom for
    /// growth any more.
    calm: bool,
    /// It did not fit the headroom even alone and started alone.
    over_budget: bool,
    /// A dependent waits for it to complete (`service_completed_successfully`): it is not
    /// ready until it exits 0.
    #[serde(skip)]
    awaited_to_complete: bool,
    #[serde(skip)]
    container: Option<Container>,
    #[serde(skip)]
    samples: VecDeque<(Instant, u64)>,
    #[serde(skip)]
    started_at: Option<Instant>,
    #[serde(skip)]
    running_since: Option<Instant>,
}

#[derive(Debug, Serialize)]
struct Summary {
    project: String,
    services: Vec<ServiceRun>,
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
    let order: Vec<String> = levels(&stack.depends_on(), &args.stack.services)
        .map_err(|e| UsageError(e.to_string()))?
        .into_iter()
        .flatten()
        .collect();
    let plan = stack.plan(&state_dir, args.stack.profile_file.as_deref())?;
    for l in &plan.left_out {
        info!(service = %l.service, reason = %l.reason, "left out, as compose would");
    }
    let needs = plan.needs();
    let hierarchy = Hierarchy::detect()?;
    let client = DockerClient::connect(hierarchy.clone()).await?;
    let depends_on: HashMap<&str, &[Dependency]> = stack
        .model
        .services
        .iter()
        .map(|(name, svc)| (name.as_str(), svc.depends_on.as_slice()))
        .collect();
    let mut runs: Vec<ServiceRun> = order
        .iter()
        .map(|s| ServiceRun {
            service: s.clone(),
            need: needs.get(s).copied().unwrap_or_default(),
            replicas: stack.model.services[s].replicas,
            awaited_to_complete: depends_on.values().any(|deps| {
                deps.iter()
                    .any(|d| &d.service == s && d.condition == Condition::CompletedSuccessfully)
            }),
            ..Default::default()
        })
        .collect();
    let t0 = Instant::now();
    let mut display = Display::new(output, t0);
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut started = 0usize;
    let mut interrupted = false;
    let mut tick = tokio::time::interval(Duration::from_millis(200));

    loop {
        tokio::select! {
            _ = interrupt.recv() => {
                // Stop starting new services; what runs stays as compose left it.
                interrupted = true;
                break;
            }
            _ = tick.tick() => {}
        }
        observe(&client, &hierarchy, &stack.project, &mut runs, &args, t0).await?;

        let failed = |d: &Dependency, runs: &[ServiceRun]| {
            runs.iter().any(|r| {
                r.service == d.service
                    && (matches!(r.state, State::Failed(_))
                        || (d.condition == Condition::Healthy && r.state == State::Completed))
            })
        };
        // A service whose dependency failed will never start.
        for i in 0..runs.len() {
            if runs[i].state == State::Waiting {
                if let Some(dep) = depends_on[runs[i].service.as_str()]
                    .iter()
                    .find(|d| failed(d, &runs))
                {
                    runs[i].state = State::Failed(format!("dependency {} failed", dep.service));
                }
            }
        }
        let candidates: Vec<String> = runs
            .iter()
            .filter(|r| r.state == State::Waiting)
            .filter(|r| {
                depends_on[r.service.as_str()]
                    .iter()
                    .all(|d| satisfied(d, &runs))
            })
            .map(|r| r.service.clone())
            .collect();
        let in_flight = runs.iter().filter(|r| growing(r)).count();
        let headroom = headroom(&runs, args.stack.available, args.stack.reserve)?;
        let wave = admit(&candidates, &needs, in_flight, headroom, args.max_parallel);
        let wave_started = wave.len();
        if !wave.is_empty() {
            let names: Vec<&str> = wave.iter().map(|a| a.service.as_str()).collect();
            start_services(&stack, &names).await?;
        }
        for a in wave {
            let run = runs
                .iter_mut()
                .find(|r| r.service == a.service)
                .expect("candidates come from runs");
            if a.alone_over_budget {
                warn!(service = %a.service, need = %run.need.startup.unwrap_or_default(), headroom = %headroom, "does not fit even alone; starting it alone");
            }
            started += 1;
            run.state = State::Starting;
            run.order = Some(started);
            run.over_budget = a.alone_over_budget;
            run.started_at = Some(Instant::now());
            run.started_ms = Some(t0.elapsed().as_millis() as u64);
        }
        if wave_started == 0
            && !runs
                .iter()
                .any(|r| matches!(r.state, State::Starting | State::Settling))
        {
            // Nothing runs toward readiness and nothing could be admitted: what still waits
            // depends on something that will never be as compose asks.
            for i in 0..runs.len() {
                if runs[i].state == State::Waiting {
                    let why = depends_on[runs[i].service.as_str()]
                        .iter()
                        .find(|d| !satisfied(d, &runs))
                        .map_or("it can never start".to_string(), |d| {
                            format!(
                                "dependency {} will not become {}",
                                d.service,
                                match d.condition {
                                    Condition::Started => "started",
                                    Condition::Healthy => "healthy",
                                    Condition::CompletedSuccessfully => "completed successfully",
                                }
                            )
                        });
                    runs[i].state = State::Failed(why);
                }
            }
        }
        display.show(&runs);
        let done = runs.iter().all(|r| {
            matches!(
                r.state,
                State::Healthy | State::Completed | State::Failed(_)
            )
        });
        if done {
            break;
        }
    }

    record_startup_peaks(&state_dir, &stack.project, &runs);
    let all_ready = runs
        .iter()
        .all(|r| matches!(r.state, State::Healthy | State::Completed));
    let summary = Summary {
        project: stack.project.clone(),
        all_ready,
        interrupted,
        elapsed_ms: t0.elapsed().as_millis() as u64,
        services: runs,
    };
    display.finish(&summary)?;
    Ok(if all_ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What may still be used: the budget (the given --available, or the live MemAvailable which
/// already excludes what runs) less the reserve and what in-flight services are still expected
/// to grow by.
fn headroom(
    runs: &[ServiceRun],
    available: Option<Bytes>,
    reserve: Bytes,
) -> anyhow::Result<Bytes> {
    let used_by_stack: u64 = runs.iter().filter_map(|r| r.usage).map(|b| b.0).sum();
    let base = match available {
        Some(a) => a.0.saturating_sub(used_by_stack),
        None => crate::sources::host::mem_available()?.0,
    };
    let growth: u64 = runs
        .iter()
        .filter(|r| growing(r))
        .map(|r| {
            r.need
                .startup
                .map_or(0, |n| n.0.saturating_sub(r.usage.map_or(0, |u| u.0)))
        })
        .sum();
    Ok(Bytes(base.saturating_sub(reserve.0).saturating_sub(growth)))
}

/// A started service that may still grow toward its start-up peak.
fn growing(r: &ServiceRun) -> bool {
    matches!(r.state, State::Starting | State::Settling) && !r.calm
}

/// Whether `dep` meets its compose condition and its memory is calm.
fn satisfied(dep: &Dependency, runs: &[ServiceRun]) -> bool {
    runs.iter()
        .find(|r| r.service == dep.service)
        .is_some_and(|r| match dep.condition {
            Condition::Started => {
                r.state == State::Completed
                    || (r.calm
                        && matches!(r.state, State::Starting | State::Settling | State::Healthy))
            }
            Condition::Healthy => r.state == State::Healthy,
            Condition::CompletedSuccessfully => r.state == State::Completed,
        })
}

/// Starts a wave with one call of the user's compose tool.
async fn start_services(stack: &Stack, services: &[&str]) -> anyhow::Result<()> {
    // The user's own compose options and nothing else, so compose names the project and
    // starts every replica as it would on its own.
    let mut args = vec!["up", "-d", "--no-deps"];
    args.extend_from_slice(services);
    let mut cmd = stack.tool.command(&stack.compose, &args);
    let names = services.join(", ");
    let t = Instant::now();
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .with_context(|| format!("starting {names} with the compose tool"))?;
    tracing::debug!(services = %names, took_ms = t.elapsed().as_millis() as u64, "compose up -d --no-deps");
    if !out.status.success() {
        anyhow::bail!(
            "compose could not start {names}: {}",
            crate::sources::compose::tool_error(&String::from_utf8_lossy(&out.stderr))
        );
    }
    Ok(())
}

/// Refreshes the state of every started service from Docker and its cgroup.
async fn observe(
    client: &DockerClient,
    hierarchy: &Hierarchy,
    project: &str,
    runs: &mut [ServiceRun],
    args: &UpArgs,
    t0: Instant,
) -> anyhow::Result<()> {
    if !runs
        .iter()
        .any(|r| matches!(r.state, State::Starting | State::Settling))
    {
        return Ok(());
    }
    let containers = client.compose_containers(project).await?;
    for run in runs
        .iter_mut()
        .filter(|r| matches!(r.state, State::Starting | State::Settling))
    {
        // Before anything else: a container that never appears, never runs or restarts in a
        // loop must not hold the stack forever.
        if run.started_at.is_some_and(|t| t.elapsed() > args.timeout) {
            run.state = State::Failed(format!("not ready after {:?}", args.timeout));
            continue;
        }
        // Every replica compose starts for the service; it is ready when all of them are.
        let mine: Vec<&Container> = containers
            .iter()
            .filter(|c| {
                c.compose
                    .as_ref()
                    .is_some_and(|s| s.service == run.service && !s.oneoff)
            })
            .collect();
        if mine.len() < run.replicas.max(1) as usize {
            continue;
        }
        run.container = mine.first().map(|c| (*c).clone());
        let exited = |c: &&&Container| c.state == "exited" || c.state == "dead";
        if let Some(c) = mine
            .iter()
            .filter(exited)
            .find(|c| c.exit_code != Some(0) || c.oom_killed)
        {
            let why = if c.oom_killed { " (OOM-killed)" } else { "" };
            run.state = State::Failed(format!(
                "exited with code {}{why}",
                c.exit_code.unwrap_or(-1)
            ));
            continue;
        }
        if mine.iter().all(|c| exited(&c)) {
            run.state = State::Completed;
            run.ready_ms = Some(t0.elapsed().as_millis() as u64);
            // Exited: it holds no memory any more.
            run.usage = None;
            continue;
        }
        if mine.iter().any(|c| c.state != "running") {
            continue;
        }
        let memories: Vec<std::path::PathBuf> = mine
            .iter()
            .filter_map(|c| c.cgroup.as_ref().and_then(|cg| cg.memory_path.clone()))
            .collect();
        let now = Instant::now();
        let running_since = *run.running_since.get_or_insert(now);
        let mut past = false;
        let usages: Option<Vec<Bytes>> = memories
            .iter()
            .map(|m| read_usage(hierarchy, m).ok())
            .collect();
        let highs: Option<Vec<Bytes>> = memories
            .iter()
            .map(|m| read_high_water(hierarchy, m).ok())
            .collect();
        if let Some(usages) = usages.filter(|u| !u.is_empty()) {
            let usage = Bytes(usages.iter().map(|b| b.0).sum());
            if let Some(highs) = &highs {
                let high = Bytes(highs.iter().map(|b| b.0).sum());
                // Only a recorded start-up peak says how high the spike goes; a limit
                // is a ceiling it may never reach.
                let expected = run.need.startup.filter(|_| run.need.is_recorded());
                past = past_peak(usage, high, expected);
                run.peak = Some(high);
            }
            run.usage = Some(usage);
            run.samples.push_back((now, usage.0));
            while run
                .samples
                .front()
                .is_some_and(|(t, _)| now - *t > args.settle)
            {
                run.samples.pop_front();
            }
        }
        let (lo, hi) = run
            .samples
            .iter()
            .fold((u64::MAX, 0), |(lo, hi), (_, v)| (lo.min(*v), hi.max(*v)));
        let settled =
            now - running_since >= args.settle && hi.saturating_sub(lo) <= args.settle_delta.0;
        let healthy = mine
            .iter()
            .all(|c| c.health.as_deref().is_none_or(|h| h == "healthy"));
        // Flat memory alone is not calm: a long spike is flat too, until it ends.
        if !run.calm && (past || (healthy && settled)) {
            run.calm = true;
            run.calm_ms = Some(t0.elapsed().as_millis() as u64);
        }
        if !healthy {
            run.state = State::Starting;
        } else {
            run.state = State::Settling;
            if run.calm && !run.awaited_to_complete {
                run.state = State::Healthy;
                run.ready_ms = Some(t0.elapsed().as_millis() as u64);
                // Recorded per container: the highest replica's.
                run.startup_peak = memories
                    .iter()
                    .filter_map(|m| read_high_water(hierarchy, m).ok())
                    .max();
            }
        }
    }
    Ok(())
}

/// Past the start-up spike: the high-water mark reached at least 90 % of the recorded start-up
/// peak and usage has fallen to 80 % of it or less. Without a recorded peak nothing says which
/// rise was the spike (container set-up alone leaves a mark), so such a service holds its
/// headroom until it has settled.
fn past_peak(usage: Bytes, high_water: Bytes, recorded: Option<Bytes>) -> bool {
    recorded.is_some_and(|e| high_water.0 >= e.0 / 10 * 9) && usage.0 <= high_water.0 / 5 * 4
}

/// Writes each ready service's start-up peak to the store, so the next `up` stages better.
fn record_startup_peaks(state_dir: &std::path::Path, project: &str, runs: &[ServiceRun]) {
    let records: Vec<RunRecord> = runs
        .iter()
        .filter_map(|r| {
            let c = r.container.as_ref()?;
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
    last: HashMap<String, (State, bool)>,
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
            State::Waiting => "waiting".into(),
            State::Starting if r.calm => "starting, past its start-up peak".into(),
            State::Starting => "starting".into(),
            State::Settling if r.awaited_to_complete => "running until it completes".into(),
            State::Settling => "settling".into(),
            State::Healthy => "ready".into(),
            State::Completed => "completed".into(),
            State::Failed(why) => format!("FAILED: {why}"),
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
                if self.output == Output::Human && r.state != State::Waiting {
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
                    .filter(|r| matches!(r.state, State::Healthy | State::Completed))
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

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn run(service: &str, state: State, calm: bool) -> ServiceRun {
        ServiceRun {
            service: service.into(),
            state,
            calm,
            ..Default::default()
        }
    }

    fn dep(service: &str, condition: Condition) -> Dependency {
        Dependency {
            service: service.into(),
            condition,
        }
    }

    #[test]
    fn a_dependency_counts_once_its_compose_condition_holds_and_its_memory_is_calm() {
        let runs = [
            run("spiking", State::Starting, false),
            run("past-peak", State::Starting, true),
            run("healthy-settling", State::Settling, false),
            run("ready", State::Healthy, true),
            run("migrated", State::Completed, false),
            run("waiting", State::Waiting, false),
        ];
        let met = |service: &str, condition| satisfied(&dep(service, condition), &runs);
        // Started: running is not enough while it is still in its spike.
        assert!(!met("spiking", Condition::Started));
        assert!(met("past-peak", Condition::Started));
        assert!(!met("healthy-settling", Condition::Started));
        assert!(met("ready", Condition::Started));
        assert!(met("migrated", Condition::Started));
        assert!(!met("waiting", Condition::Started));
        // Healthy: only ready (healthy and calm).
        assert!(!met("past-peak", Condition::Healthy));
        assert!(!met("healthy-settling", Condition::Healthy));
        assert!(met("ready", Condition::Healthy));
        // Completed successfully: only a service that exited 0.
        assert!(!met("ready", Condition::CompletedSuccessfully));
        assert!(met("migrated", Condition::CompletedSuccessfully));
        assert!(!met("unknown", Condition::Started));
    }

    #[test]
    fn past_the_peak_only_against_a_recorded_peak_reached_and_left() {
        let recorded = Some(Bytes(128 * MIB));
        // Reached 90 % of the recorded peak and fell to 80 % of the mark or less.
        assert!(past_peak(Bytes(8 * MIB), Bytes(120 * MIB), recorded));
        // Still on the spike (flat at the top is not past it).
        assert!(!past_peak(Bytes(119 * MIB), Bytes(120 * MIB), recorded));
        // The spike has not come yet: the mark is far below the recorded peak.
        assert!(!past_peak(Bytes(8 * MIB), Bytes(20 * MIB), recorded));
        // No history: nothing says which rise was the spike.
        assert!(!past_peak(Bytes(8 * MIB), Bytes(120 * MIB), None));
    }
}
