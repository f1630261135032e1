//! Staggered start-up: which services may start now, given their dependencies, what they are
//! expected to need while starting, and the memory the host has left. Pure: the dependency
//! levels and waves of `guardian preflight`, and [`Stager`], the readiness state machine of
//! `guardian up`.
//!
//! A service may start once its dependencies meet their compose condition (started, healthy,
//! or completed successfully) *and* their memory is calm, and its expected start-up peak fits
//! the headroom. Memory is calm once the service is healthy (or running, with no healthcheck)
//! and has settled (moved less than `settle_delta` for `settle`), or, with a recorded start-up
//! peak, as soon as it is past that peak (usage well below the high-water mark): then it holds
//! no headroom for growth and the next wave need not wait for it to be healthy.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    time::Duration,
};

use serde::Serialize;

use crate::model::{Bytes, Condition, Dependency};

/// Why a stack cannot be ordered.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StagingError {
    #[error("service {service:?} depends on {missing:?}, which the compose file does not define")]
    UnknownDependency { service: String, missing: String },
    #[error("services {0:?} depend on each other in a cycle")]
    Cycle(Vec<String>),
    #[error("unknown service {0:?}; the compose file defines: {1}")]
    UnknownService(String, String),
}

/// What a service is expected to need, from recorded runs or its limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Need {
    /// Highest usage while starting (recorded start-up peak, else limit or reservation).
    pub startup: Option<Bytes>,
    /// Usage once settled (recorded peak, else the same fallback).
    pub steady: Option<Bytes>,
    pub source: NeedSource,
}

impl Need {
    /// A start-up peak guardian recorded (for this project or another): what memory admission
    /// needs. A limit or reservation is only a ceiling.
    pub fn is_recorded(&self) -> bool {
        matches!(
            self.source,
            NeedSource::Recorded | NeedSource::RecordedElsewhere
        ) && self.startup.is_some()
    }
}

/// Where a [`Need`] came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NeedSource {
    /// Start-up and steady peaks recorded by guardian.
    Recorded,
    /// Recorded for the same service under another project name: in the store, with the same
    /// image; in a profile file, any entry of that service when none has this project's name.
    /// CI jobs often name each run's project anew (`-p ci-$RUN_ID`).
    RecordedElsewhere,
    /// The compose limit.
    Limit,
    /// The compose reservation.
    Reservation,
    /// Nothing known.
    #[default]
    Unknown,
}

/// Dependency levels: level 0 has no dependencies, level n depends only on levels < n.
/// `wanted` limits the stack to those services and what they depend on (all when empty).
pub fn levels(
    depends_on: &BTreeMap<String, Vec<String>>,
    wanted: &[String],
) -> Result<Vec<Vec<String>>, StagingError> {
    let mut selected: BTreeSet<String> = BTreeSet::new();
    let mut stack: Vec<String> = if wanted.is_empty() {
        depends_on.keys().cloned().collect()
    } else {
        wanted.to_vec()
    };
    while let Some(s) = stack.pop() {
        let Some(deps) = depends_on.get(&s) else {
            return Err(StagingError::UnknownService(
                s,
                depends_on.keys().cloned().collect::<Vec<_>>().join(", "),
            ));
        };
        if selected.insert(s.clone()) {
            for d in deps {
                if !depends_on.contains_key(d) {
                    return Err(StagingError::UnknownDependency {
                        service: s.clone(),
                        missing: d.clone(),
                    });
                }
                stack.push(d.clone());
            }
        }
    }
    let mut placed: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<Vec<String>> = Vec::new();
    while placed.len() < selected.len() {
        let level: Vec<String> = selected
            .iter()
            .filter(|s| !placed.contains_key(*s))
            .filter(|s| depends_on[*s].iter().all(|d| placed.contains_key(d)))
            .cloned()
            .collect();
        if level.is_empty() {
            let stuck = selected
                .iter()
                .filter(|s| !placed.contains_key(*s))
                .cloned()
                .collect();
            return Err(StagingError::Cycle(stuck));
        }
        for s in &level {
            placed.insert(s.clone(), out.len());
        }
        out.push(level);
    }
    Ok(out)
}

/// A service that may start now, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    pub service: String,
    /// True when its start-up need exceeds the headroom but nothing else is starting: it
    /// starts alone rather than never.
    pub alone_over_budget: bool,
}

/// Picks the services to start now, in order.
///
/// `candidates` have all their dependencies ready; `in_flight` is how many started services are
/// not ready yet; `headroom` is what may still be used (available − reserve − what the
/// in-flight services are still expected to grow). Services with a recorded start-up peak are
/// admitted while they fit, however many are in flight; the others (a limit or nothing to go
/// by) while they fit and fewer than `max_parallel` are in flight. When
/// nothing is in flight, the first candidate always starts, so the stack never deadlocks.
pub fn admit(
    candidates: &[String],
    needs: &HashMap<String, Need>,
    in_flight: usize,
    mut headroom: Bytes,
    max_parallel: usize,
) -> Vec<Admission> {
    let mut out = Vec::new();
    for (flying, service) in (in_flight..).zip(candidates) {
        let recorded = needs.get(service).is_some_and(Need::is_recorded);
        // A recorded start-up peak is what memory admission needs; a limit is only a ceiling,
        // so without history --max-parallel bounds the wave too.
        if !recorded && flying >= max_parallel {
            break;
        }
        match needs.get(service).and_then(|n| n.startup) {
            Some(need) if need <= headroom => {
                headroom = Bytes(headroom.0 - need.0);
                out.push(Admission {
                    service: service.clone(),
                    alone_over_budget: false,
                });
            }
            Some(_) if flying == 0 => {
                out.push(Admission {
                    service: service.clone(),
                    alone_over_budget: true,
                });
                break;
            }
            Some(_) => break,
            None => out.push(Admission {
                service: service.clone(),
                alone_over_budget: false,
            }),
        }
    }
    out
}

/// One wave of [`plan_waves`]: the services that start together and what they need then.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Wave {
    pub services: Vec<String>,
    /// Start-up needs of this wave plus the steady needs of every earlier one.
    pub need: Bytes,
}

/// The waves `guardian up` would use with `available` bytes and no other load: dependency
/// levels split so that each wave's start-up needs, on top of the steady needs of what already
/// runs, fit (a service too big to fit runs alone).
pub fn plan_waves(
    levels: &[Vec<String>],
    needs: &HashMap<String, Need>,
    available: Bytes,
) -> Vec<Wave> {
    let startup_of = |s: &String| needs.get(s).and_then(|n| n.startup).map_or(0, |b| b.0);
    let steady_of = |s: &String| {
        needs
            .get(s)
            .and_then(|n| n.steady.or(n.startup))
            .map_or(0, |b| b.0)
    };
    let mut waves = Vec::new();
    let mut running = 0u64;
    for level in levels {
        let mut current: Vec<String> = Vec::new();
        let mut startup = 0u64;
        for s in level {
            if !current.is_empty() && running + startup + startup_of(s) > available.0 {
                let settled: u64 = current.iter().map(steady_of).sum();
                waves.push(Wave {
                    services: std::mem::take(&mut current),
                    need: Bytes(running + startup),
                });
                running += settled;
                startup = 0;
            }
            current.push(s.clone());
            startup += startup_of(s);
        }
        if !current.is_empty() {
            let settled: u64 = current.iter().map(steady_of).sum();
            waves.push(Wave {
                services: current,
                need: Bytes(running + startup),
            });
            running += settled;
        }
    }
    waves
}

/// The knobs of `guardian up`'s stepper, as the command line gives them.
#[derive(Clone, Debug, PartialEq)]
pub struct UpParams {
    /// At most this many services without a recorded start-up peak starting at once (≥ 1).
    pub max_parallel: usize,
    /// A service has settled when its memory moved less than `settle_delta` over this long.
    pub settle: Duration,
    pub settle_delta: Bytes,
    /// A started service that is not ready after this long has failed.
    pub timeout: Duration,
    /// The memory budget (`--available`); `None`: the host's MemAvailable of each round.
    pub available: Option<Bytes>,
    /// What stays free (`--reserve`).
    pub reserve: Bytes,
    /// How long to wait for the Docker engine to answer again (a restart) before giving up.
    pub engine_wait: Duration,
}

/// One container of a started service as Docker reports it (`State.Status`, `State.ExitCode`,
/// `State.OOMKilled`, `State.Health.Status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replica {
    /// `running`; healthy when it has no healthcheck or the healthcheck passes.
    Running { healthy: bool },
    /// `exited` or `dead`; `code` is `None` when Docker did not report one.
    Exited { code: Option<i64>, oom_killed: bool },
    /// `created`, `restarting`, `paused`, ...: not there yet.
    Other,
}

impl Replica {
    /// Why this replica failed the service, if it did.
    fn failure(&self) -> Option<String> {
        match *self {
            Replica::Exited { code, oom_killed } if code != Some(0) || oom_killed => {
                let why = if oom_killed { " (OOM-killed)" } else { "" };
                Some(format!("exited with code {}{why}", code.unwrap_or(-1)))
            }
            _ => None,
        }
    }
}

/// What Docker and the memory cgroups say about one started service in one round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    /// Its containers, one-off `compose run` containers left out.
    pub replicas: Vec<Replica>,
    /// Memory usage summed over its replicas' cgroups (`memory.current`, v1
    /// `memory.usage_in_bytes`); `None` when one could not be read or none has a cgroup yet.
    pub usage: Option<Bytes>,
    /// Their high-water marks summed (`memory.peak`, v1 `memory.max_usage_in_bytes`); `None`
    /// when one could not be read.
    pub high_water: Option<Bytes>,
    /// The highest single replica's high-water mark: what is recorded as its start-up peak.
    pub highest_mark: Option<Bytes>,
}

/// Where a service of `guardian up` stands.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum ServiceState {
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

impl ServiceState {
    /// Started and on its way to readiness.
    pub fn in_flight(&self) -> bool {
        matches!(self, ServiceState::Starting | ServiceState::Settling)
    }

    /// Nothing more will happen to it.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            ServiceState::Healthy | ServiceState::Completed | ServiceState::Failed(_)
        )
    }

    /// Ready or completed: as compose would leave it.
    pub fn is_ready(&self) -> bool {
        matches!(self, ServiceState::Healthy | ServiceState::Completed)
    }
}

/// One service of `guardian up` and what the stepper knows of it; the JSON summary prints it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ServiceRun {
    pub service: String,
    #[serde(flatten)]
    pub state: ServiceState,
    pub need: Need,
    /// Containers compose starts for it.
    pub replicas: u32,
    /// Order in which guardian started it (1-based).
    pub order: Option<usize>,
    /// Milliseconds from the start of `guardian up`, when compose had started it.
    pub started_ms: Option<u64>,
    /// When its memory became calm (settled, or past its recorded start-up peak).
    pub calm_ms: Option<u64>,
    /// When it became ready (healthy and calm) or completed.
    pub ready_ms: Option<u64>,
    /// The kernel's high-water mark of its memory when it became ready (highest replica).
    pub startup_peak: Option<Bytes>,
    pub usage: Option<Bytes>,
    /// The high-water mark so far.
    pub peak: Option<Bytes>,
    /// Healthy and settled, or past its recorded start-up spike: it holds no headroom for
    /// growth any more.
    pub calm: bool,
    /// It did not fit the headroom even alone and started alone.
    pub over_budget: bool,
    /// A dependent waits for it to complete (`service_completed_successfully`): it is not
    /// ready until it exits 0.
    #[serde(skip)]
    pub awaited_to_complete: bool,
    /// Usage samples (ms, bytes) of the last `settle`.
    #[serde(skip)]
    samples: VecDeque<(u64, u64)>,
    #[serde(skip)]
    running_since_ms: Option<u64>,
}

/// What the stepper decided about one service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "act")]
pub enum Act {
    /// Start it now; every service started in one round starts in one compose call.
    Start { alone_over_budget: bool },
    /// It stops holding headroom for growth.
    Calm,
    /// Healthy and calm; `startup_peak` is what to record.
    Ready { startup_peak: Option<Bytes> },
    /// Exited 0.
    Complete,
    /// It will not become ready.
    Fail,
}

/// One decision of [`Stager::decide`], with the reason in words and numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub service: String,
    pub act: Act,
    pub reason: String,
}

/// What one round decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    pub decisions: Vec<Decision>,
    /// Every service is ready, completed or failed: `guardian up` is over.
    pub done: bool,
    /// `guardian up` cannot go on (the Docker engine did not come back), and why; the services
    /// not done yet are failed with that reason.
    pub give_up: Option<String>,
}

impl Step {
    /// The services to start now, in order.
    pub fn starts(&self) -> Vec<String> {
        self.decisions
            .iter()
            .filter(|d| matches!(d.act, Act::Start { .. }))
            .map(|d| d.service.clone())
            .collect()
    }
}

/// `guardian up`'s readiness state machine: which service may start now (its dependencies meet
/// their compose condition and their memory is calm, its start-up need fits the headroom),
/// which are ready, which failed. Pure: the command reads Docker and the cgroups, calls
/// compose and draws; this decides.
#[derive(Debug)]
pub struct Stager {
    params: UpParams,
    depends_on: HashMap<String, Vec<Dependency>>,
    services: Vec<ServiceRun>,
    started: usize,
    /// Since when the Docker engine has not answered (ms), while it does not.
    engine_lost_ms: Option<u64>,
}

impl Stager {
    /// `services` in start order (dependency levels) with their need and replica count;
    /// `depends_on` of every service of the compose model (a service one of them waits to
    /// complete is not ready until it exits 0).
    pub fn new(
        params: UpParams,
        services: Vec<(String, Need, u32)>,
        depends_on: HashMap<String, Vec<Dependency>>,
    ) -> Self {
        let awaited = |s: &str| {
            depends_on
                .values()
                .flatten()
                .any(|d| d.service == s && d.condition == Condition::CompletedSuccessfully)
        };
        let services = services
            .into_iter()
            .map(|(service, need, replicas)| ServiceRun {
                awaited_to_complete: awaited(&service),
                service,
                need,
                replicas,
                ..Default::default()
            })
            .collect();
        Self {
            params,
            depends_on,
            services,
            started: 0,
            engine_lost_ms: None,
        }
    }

    /// Every service, in start order.
    pub fn services(&self) -> &[ServiceRun] {
        &self.services
    }

    /// The services to observe this round (started, not ready yet).
    pub fn watching(&self) -> impl Iterator<Item = &str> {
        self.services
            .iter()
            .filter(|r| r.state.in_flight())
            .map(|r| r.service.as_str())
    }

    /// Every service ready or completed.
    pub fn all_ready(&self) -> bool {
        self.services.iter().all(|r| r.state.is_ready())
    }

    /// One round at `now_ms` (milliseconds since `guardian up` began): applies what was
    /// observed of the services in flight (a missing entry is a service with no container
    /// yet), fails what can no longer start, admits what fits `mem_available` (the host's
    /// MemAvailable, used without `--available`). Admitted services are `Starting` from here
    /// on; report when compose has started them with [`Stager::started`].
    pub fn decide(
        &mut self,
        now_ms: u64,
        seen: &HashMap<String, Observation>,
        mem_available: Bytes,
    ) -> Step {
        self.engine_lost_ms = None;
        let mut out = Vec::new();
        let none = Observation::default();
        for run in self.services.iter_mut().filter(|r| r.state.in_flight()) {
            let obs = seen.get(&run.service).unwrap_or(&none);
            run.observe(now_ms, &self.params, obs, &mut out);
        }
        self.propagate_failures(&mut out);
        let admitted = self.admit(mem_available, &mut out);
        if admitted == 0 && !self.services.iter().any(|r| r.state.in_flight()) {
            self.fail_blocked(&mut out);
        }
        let done = self.services.iter().all(|r| r.state.is_final());
        Step {
            decisions: out,
            done,
            give_up: None,
        }
    }

    /// A round in which the Docker engine did not answer (`why`: its error): nothing can be
    /// observed or started. A restarting engine answers again within seconds, so wait for it
    /// up to `engine_wait`; then give up and fail what is not done, so `up` never hangs.
    /// Once it answers, [`Stager::decide`] goes on: containers a restart policy brought back
    /// are observed as before, those that died fail with their exit code.
    pub fn engine_lost(&mut self, now_ms: u64, why: &str) -> Step {
        let since = *self.engine_lost_ms.get_or_insert(now_ms);
        let wait = self.params.engine_wait;
        if now_ms.saturating_sub(since) <= wait.as_millis() as u64 {
            return Step::default();
        }
        let reason = format!("the Docker engine did not answer for {wait:?} ({why})");
        let mut out = Vec::new();
        for run in self.services.iter_mut().filter(|r| !r.state.is_final()) {
            run.fail(reason.clone(), &mut out);
        }
        Step {
            decisions: out,
            done: true,
            give_up: Some(reason),
        }
    }

    /// Compose has started `services` at `now_ms`: their --timeout runs from here.
    pub fn started(&mut self, services: &[String], now_ms: u64) {
        for run in self.services.iter_mut() {
            if services.contains(&run.service) {
                run.started_ms = Some(now_ms);
            }
        }
    }

    /// A waiting service whose dependency failed (or completed where it had to stay healthy)
    /// will never start.
    fn propagate_failures(&mut self, out: &mut Vec<Decision>) {
        for i in 0..self.services.len() {
            if self.services[i].state != ServiceState::Waiting {
                continue;
            }
            let failed = self.deps(i).iter().find(|d| {
                self.find(&d.service).is_some_and(|r| {
                    matches!(r.state, ServiceState::Failed(_))
                        || (d.condition == Condition::Healthy && r.state == ServiceState::Completed)
                })
            });
            if let Some(dep) = failed {
                let why = format!("dependency {} failed", dep.service);
                self.services[i].fail(why, out);
            }
        }
    }

    /// Admits the waiting services whose dependencies are satisfied and that fit; returns how
    /// many.
    fn admit(&mut self, mem_available: Bytes, out: &mut Vec<Decision>) -> usize {
        let candidates: Vec<String> = (0..self.services.len())
            .filter(|&i| self.services[i].state == ServiceState::Waiting)
            .filter(|&i| self.deps(i).iter().all(|d| satisfied(d, &self.services)))
            .map(|i| self.services[i].service.clone())
            .collect();
        let needs: HashMap<String, Need> = self
            .services
            .iter()
            .map(|r| (r.service.clone(), r.need))
            .collect();
        let in_flight = self.services.iter().filter(|r| r.growing()).count();
        let headroom = self.headroom(mem_available);
        let wave = admit(
            &candidates,
            &needs,
            in_flight,
            headroom,
            self.params.max_parallel,
        );
        for a in &wave {
            self.started += 1;
            let order = self.started;
            let run = self
                .services
                .iter_mut()
                .find(|r| r.service == a.service)
                .expect("candidates come from the services");
            run.state = ServiceState::Starting;
            run.order = Some(order);
            run.over_budget = a.alone_over_budget;
            out.push(Decision {
                service: a.service.clone(),
                act: Act::Start {
                    alone_over_budget: a.alone_over_budget,
                },
                reason: start_reason(run.need, headroom, a.alone_over_budget),
            });
        }
        wave.len()
    }

    /// Nothing runs toward readiness and nothing could be admitted: what still waits depends
    /// on something that will never be as compose asks.
    fn fail_blocked(&mut self, out: &mut Vec<Decision>) {
        for i in 0..self.services.len() {
            if self.services[i].state != ServiceState::Waiting {
                continue;
            }
            let why = self
                .deps(i)
                .iter()
                .find(|d| !satisfied(d, &self.services))
                .map_or("it can never start".to_string(), |d| {
                    format!(
                        "dependency {} will not become {}",
                        d.service,
                        condition_word(d.condition)
                    )
                });
            self.services[i].fail(why, out);
        }
    }

    /// What may still be used: the budget (`--available` less what the stack uses, or the
    /// live MemAvailable which already excludes it) less the reserve and what in-flight
    /// services are still expected to grow by.
    fn headroom(&self, mem_available: Bytes) -> Bytes {
        let used_by_stack: u64 = self
            .services
            .iter()
            .filter_map(|r| r.usage)
            .map(|b| b.0)
            .sum();
        let base = match self.params.available {
            Some(a) => a.0.saturating_sub(used_by_stack),
            None => mem_available.0,
        };
        let growth: u64 = self
            .services
            .iter()
            .filter(|r| r.growing())
            .map(|r| {
                r.need
                    .startup
                    .map_or(0, |n| n.0.saturating_sub(r.usage.map_or(0, |u| u.0)))
            })
            .sum();
        Bytes(
            base.saturating_sub(self.params.reserve.0)
                .saturating_sub(growth),
        )
    }

    fn deps(&self, i: usize) -> &[Dependency] {
        self.depends_on
            .get(&self.services[i].service)
            .map_or(&[], Vec::as_slice)
    }

    fn find(&self, service: &str) -> Option<&ServiceRun> {
        self.services.iter().find(|r| r.service == service)
    }
}

fn condition_word(c: Condition) -> &'static str {
    match c {
        Condition::Started => "started",
        Condition::Healthy => "healthy",
        Condition::CompletedSuccessfully => "completed successfully",
    }
}

fn start_reason(need: Need, headroom: Bytes, alone_over_budget: bool) -> String {
    match need.startup {
        Some(n) if alone_over_budget => {
            format!("start-up need {n} does not fit the headroom {headroom} even alone; starting it alone")
        }
        Some(n) => format!("start-up need {n} fits the headroom {headroom}"),
        None => "nothing known of its need: bounded by --max-parallel".into(),
    }
}

impl ServiceRun {
    /// A started service that may still grow toward its start-up peak.
    fn growing(&self) -> bool {
        self.state.in_flight() && !self.calm
    }

    fn fail(&mut self, why: String, out: &mut Vec<Decision>) {
        out.push(Decision {
            service: self.service.clone(),
            act: Act::Fail,
            reason: why.clone(),
        });
        self.state = ServiceState::Failed(why);
    }

    /// Applies one round's observation to a service in flight.
    fn observe(&mut self, now_ms: u64, p: &UpParams, seen: &Observation, out: &mut Vec<Decision>) {
        let Some(healthy) = self.containers_step(now_ms, p, seen, out) else {
            return;
        };
        let running_since = *self.running_since_ms.get_or_insert(now_ms);
        let past = self.track_memory(now_ms, p.settle, seen);
        let settled = self.settled(now_ms - running_since, p);
        // Flat memory alone is not calm: a long spike is flat too, until it ends.
        if !self.calm && (past || (healthy && settled)) {
            self.calm = true;
            self.calm_ms = Some(now_ms);
            let why = if past {
                "past its recorded start-up peak".to_string()
            } else {
                format!(
                    "healthy and moved at most {} over {:?}",
                    p.settle_delta, p.settle
                )
            };
            self.decided(Act::Calm, why, out);
        }
        self.state = if healthy {
            ServiceState::Settling
        } else {
            ServiceState::Starting
        };
        if healthy && self.calm && !self.awaited_to_complete {
            self.state = ServiceState::Healthy;
            self.ready_ms = Some(now_ms);
            self.startup_peak = seen.highest_mark;
            let act = Act::Ready {
                startup_peak: seen.highest_mark,
            };
            self.decided(act, "healthy and calm".into(), out);
        }
    }

    /// The containers' side of a round: timeout, exits, completion. `Some(healthy)` when
    /// every replica runs (and whether all pass their healthcheck): then memory decides.
    fn containers_step(
        &mut self,
        now_ms: u64,
        p: &UpParams,
        seen: &Observation,
        out: &mut Vec<Decision>,
    ) -> Option<bool> {
        // Before anything else: a container that never appears, never runs or restarts in a
        // loop must not hold the stack forever.
        if self
            .started_ms
            .is_some_and(|t| now_ms.saturating_sub(t) > p.timeout.as_millis() as u64)
        {
            self.fail(format!("not ready after {:?}", p.timeout), out);
            return None;
        }
        // Every replica compose starts; it is ready when all of them are.
        if seen.replicas.len() < self.replicas.max(1) as usize {
            return None;
        }
        if let Some(why) = seen.replicas.iter().find_map(Replica::failure) {
            self.fail(why, out);
            return None;
        }
        if seen
            .replicas
            .iter()
            .all(|r| matches!(r, Replica::Exited { .. }))
        {
            self.state = ServiceState::Completed;
            self.ready_ms = Some(now_ms);
            // Exited: it holds no memory any more.
            self.usage = None;
            self.decided(Act::Complete, "exited with code 0".into(), out);
            return None;
        }
        seen.replicas.iter().try_fold(true, |all, r| match r {
            Replica::Running { healthy } => Some(all && *healthy),
            _ => None,
        })
    }

    /// Running for at least `settle` and memory moved at most `settle_delta` over it (no
    /// reading at all counts as not moving).
    fn settled(&self, running_ms: u64, p: &UpParams) -> bool {
        let (lo, hi) = self
            .samples
            .iter()
            .fold((u64::MAX, 0), |(lo, hi), (_, v)| (lo.min(*v), hi.max(*v)));
        running_ms >= p.settle.as_millis() as u64 && hi.saturating_sub(lo) <= p.settle_delta.0
    }

    /// Takes this round's memory into the settle window; returns whether it is past its
    /// recorded start-up peak.
    fn track_memory(&mut self, now_ms: u64, settle: Duration, seen: &Observation) -> bool {
        let Some(usage) = seen.usage else {
            return false;
        };
        let mut past = false;
        if let Some(high) = seen.high_water {
            // Only a recorded start-up peak says how high the spike goes; a limit is a
            // ceiling it may never reach.
            let expected = self.need.startup.filter(|_| self.need.is_recorded());
            past = past_peak(usage, high, expected);
            self.peak = Some(high);
        }
        self.usage = Some(usage);
        self.samples.push_back((now_ms, usage.0));
        let window = settle.as_millis() as u64;
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now_ms - t > window)
        {
            self.samples.pop_front();
        }
        past
    }

    fn decided(&self, act: Act, reason: String, out: &mut Vec<Decision>) {
        out.push(Decision {
            service: self.service.clone(),
            act,
            reason,
        });
    }
}

/// Whether `dep` meets its compose condition and its memory is calm.
fn satisfied(dep: &Dependency, runs: &[ServiceRun]) -> bool {
    runs.iter()
        .find(|r| r.service == dep.service)
        .is_some_and(|r| match dep.condition {
            Condition::Started => {
                r.state == ServiceState::Completed
                    || (r.calm
                        && matches!(
                            r.state,
                            ServiceState::Starting | ServiceState::Settling | ServiceState::Healthy
                        ))
            }
            Condition::Healthy => r.state == ServiceState::Healthy,
            Condition::CompletedSuccessfully => r.state == ServiceState::Completed,
        })
}

/// Past the start-up spike: the high-water mark reached at least 90 % of the recorded start-up
/// peak and usage has fallen to 80 % of it or less. Without a recorded peak nothing says which
/// rise was the spike (container set-up alone leaves a mark), so such a service holds its
/// headroom until it has settled.
fn past_peak(usage: Bytes, high_water: Bytes, recorded: Option<Bytes>) -> bool {
    recorded.is_some_and(|e| high_water.0 >= e.0 / 10 * 9) && usage.0 <= high_water.0 / 5 * 4
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn deps(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(s, d)| (s.to_string(), d.iter().map(|x| x.to_string()).collect()))
            .collect()
    }

    fn need(startup: u64, steady: u64) -> Need {
        Need {
            startup: Some(Bytes(startup * MIB)),
            steady: Some(Bytes(steady * MIB)),
            source: NeedSource::Recorded,
        }
    }

    #[test]
    fn levels_follow_depends_on() {
        let d = deps(&[
            ("db", &[]),
            ("cache", &[]),
            ("app", &["db", "cache"]),
            ("web", &["app"]),
        ]);
        assert_eq!(
            levels(&d, &[]).unwrap(),
            vec![vec!["cache", "db"], vec!["app"], vec!["web"]]
        );
        // Asking for one service brings what it needs, not its dependents.
        assert_eq!(
            levels(&d, &["app".into()]).unwrap(),
            vec![vec!["cache", "db"], vec!["app"]]
        );
    }

    #[test]
    fn cycles_and_unknown_names_are_errors() {
        let d = deps(&[("a", &["b"]), ("b", &["a"])]);
        assert_eq!(
            levels(&d, &[]),
            Err(StagingError::Cycle(vec!["a".into(), "b".into()]))
        );
        let d = deps(&[("a", &["zz"])]);
        assert!(matches!(
            levels(&d, &[]),
            Err(StagingError::UnknownDependency { .. })
        ));
        assert!(matches!(
            levels(&deps(&[("a", &[])]), &["b".into()]),
            Err(StagingError::UnknownService(..))
        ));
    }

    #[test]
    fn admission_fits_known_needs_into_the_headroom() {
        let needs: HashMap<String, Need> = [
            ("a", need(100, 20)),
            ("b", need(100, 20)),
            ("c", need(100, 20)),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v))
        .collect();
        let all: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let admitted = admit(&all, &needs, 0, Bytes(250 * MIB), 8);
        assert_eq!(
            admitted
                .iter()
                .map(|a| a.service.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        // Nothing fits but nothing is starting either: the first starts alone, flagged.
        let admitted = admit(&all, &needs, 0, Bytes(50 * MIB), 8);
        assert_eq!(
            admitted,
            vec![Admission {
                service: "a".into(),
                alone_over_budget: true
            }]
        );
        // Something is starting: wait for it.
        assert!(admit(&all, &needs, 1, Bytes(50 * MIB), 8).is_empty());
        // Known needs are limited by memory, not by --max-parallel.
        assert_eq!(admit(&all, &needs, 3, Bytes(250 * MIB), 2).len(), 2);
    }

    #[test]
    fn without_history_at_most_max_parallel_start_at_once() {
        let all: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(admit(&all, &HashMap::new(), 0, Bytes(0), 2).len(), 2);
        assert_eq!(admit(&all, &HashMap::new(), 1, Bytes(0), 2).len(), 1);
    }

    #[test]
    fn waves_split_a_level_that_does_not_fit() {
        let d = deps(&[("db", &[]), ("a", &["db"]), ("b", &["db"]), ("c", &["db"])]);
        let needs: HashMap<String, Need> = [
            ("db", need(100, 50)),
            ("a", need(100, 20)),
            ("b", need(100, 20)),
            ("c", need(100, 20)),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v))
        .collect();
        let waves = plan_waves(&levels(&d, &[]).unwrap(), &needs, Bytes(300 * MIB));
        let names: Vec<Vec<&str>> = waves
            .iter()
            .map(|w| w.services.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(names, vec![vec!["db"], vec!["a", "b"], vec!["c"]]);
        assert_eq!(waves[1].need, Bytes(250 * MIB));
        assert!(waves.iter().all(|w| w.need.0 <= 300 * MIB));
    }

    // ---- guardian up's stepper ----

    const SECOND: u64 = 1000;

    fn params() -> UpParams {
        UpParams {
            max_parallel: 2,
            settle: Duration::from_secs(2),
            settle_delta: Bytes(4 * MIB),
            timeout: Duration::from_secs(60),
            available: None,
            reserve: Bytes(0),
            engine_wait: Duration::from_secs(30),
        }
    }

    fn no_history() -> Need {
        Need::default()
    }

    /// Services in start order with their need; dependencies as (service, [(on, condition)]).
    fn stager(
        p: UpParams,
        services: &[(&str, Need)],
        depends: &[(&str, &[(&str, Condition)])],
    ) -> Stager {
        let depends_on = services
            .iter()
            .map(|(s, _)| {
                let deps = depends
                    .iter()
                    .filter(|(d, _)| d == s)
                    .flat_map(|(_, on)| on.iter())
                    .map(|(on, condition)| Dependency {
                        service: on.to_string(),
                        condition: *condition,
                    })
                    .collect();
                (s.to_string(), deps)
            })
            .collect();
        let services = services
            .iter()
            .map(|(s, n)| (s.to_string(), *n, 1))
            .collect();
        Stager::new(p, services, depends_on)
    }

    fn running(healthy: bool, usage_mib: u64, high_mib: u64) -> Observation {
        Observation {
            replicas: vec![Replica::Running { healthy }],
            usage: Some(Bytes(usage_mib * MIB)),
            high_water: Some(Bytes(high_mib * MIB)),
            highest_mark: Some(Bytes(high_mib * MIB)),
        }
    }

    fn exited(code: i64, oom_killed: bool) -> Observation {
        Observation {
            replicas: vec![Replica::Exited {
                code: Some(code),
                oom_killed,
            }],
            ..Default::default()
        }
    }

    fn seen(pairs: &[(&str, Observation)]) -> HashMap<String, Observation> {
        pairs
            .iter()
            .map(|(s, o)| (s.to_string(), o.clone()))
            .collect()
    }

    const PLENTY: Bytes = Bytes(1 << 40);

    /// One round; what started is reported started at once.
    fn round(st: &mut Stager, now_ms: u64, obs: &[(&str, Observation)]) -> Step {
        let step = st.decide(now_ms, &seen(obs), PLENTY);
        st.started(&step.starts(), now_ms);
        step
    }

    fn state_of(st: &Stager, service: &str) -> ServiceState {
        st.services()
            .iter()
            .find(|r| r.service == service)
            .unwrap()
            .state
            .clone()
    }

    fn failure_of(step: &Step, service: &str) -> Option<String> {
        step.decisions
            .iter()
            .find(|d| d.service == service && d.act == Act::Fail)
            .map(|d| d.reason.clone())
    }

    fn run_in(service: &str, state: ServiceState, calm: bool) -> ServiceRun {
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
        use ServiceState::*;
        let runs = [
            run_in("spiking", Starting, false),
            run_in("past-peak", Starting, true),
            run_in("healthy-settling", Settling, false),
            run_in("ready", Healthy, true),
            run_in("migrated", Completed, false),
            run_in("waiting", Waiting, false),
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

    #[test]
    fn service_healthy_waits_for_the_healthcheck_and_then_for_calm_memory() {
        let mut st = stager(
            params(),
            &[("db", no_history()), ("app", no_history())],
            &[("app", &[("db", Condition::Healthy)])],
        );
        assert_eq!(round(&mut st, 0, &[]).starts(), ["db"]);
        // Running, healthcheck not passing yet: app waits.
        assert!(round(&mut st, 200, &[("db", running(false, 8, 8))])
            .starts()
            .is_empty());
        assert_eq!(state_of(&st, "db"), ServiceState::Starting);
        // Healthy but memory has not been flat for --settle yet.
        assert!(round(&mut st, 400, &[("db", running(true, 8, 8))])
            .starts()
            .is_empty());
        assert_eq!(state_of(&st, "db"), ServiceState::Settling);
        // Flat for 2 s: calm, ready, and app starts in the same round.
        let step = round(&mut st, 2400, &[("db", running(true, 9, 9))]);
        let acts: Vec<(&str, &Act)> = step
            .decisions
            .iter()
            .map(|d| (d.service.as_str(), &d.act))
            .collect();
        assert_eq!(
            acts,
            [
                ("db", &Act::Calm),
                (
                    "db",
                    &Act::Ready {
                        startup_peak: Some(Bytes(9 * MIB))
                    }
                ),
                (
                    "app",
                    &Act::Start {
                        alone_over_budget: false
                    }
                ),
            ]
        );
        let db = &st.services()[0];
        assert_eq!((db.calm_ms, db.ready_ms), (Some(2400), Some(2400)));
    }

    #[test]
    fn memory_still_moving_is_not_calm_even_when_healthy() {
        let mut st = stager(
            params(),
            &[("db", no_history()), ("app", no_history())],
            &[("app", &[("db", Condition::Started)])],
        );
        round(&mut st, 0, &[]);
        round(&mut st, 200, &[("db", running(true, 8, 8))]);
        // 100 MiB more within the window: a long spike is flat only once it ends.
        let step = round(&mut st, 2200, &[("db", running(true, 108, 108))]);
        assert!(step.starts().is_empty());
        assert!(!st.services()[0].calm);
        // Within 4 MiB over the last 2 s: calm now.
        let step = round(&mut st, 4100, &[("db", running(true, 110, 110))]);
        assert_eq!(step.starts(), ["app"]);
    }

    #[test]
    fn service_started_dependents_start_once_past_the_recorded_peak_before_healthy() {
        let mut st = stager(
            params(),
            &[("db", need(128, 8)), ("app", need(64, 8))],
            &[("app", &[("db", Condition::Started)])],
        );
        assert_eq!(round(&mut st, 0, &[]).starts(), ["db"]);
        // In its spike: not calm, app waits.
        assert!(round(&mut st, 200, &[("db", running(false, 120, 120))])
            .starts()
            .is_empty());
        // Fell from a mark near the recorded peak: calm though not healthy.
        let step = round(&mut st, 400, &[("db", running(false, 8, 120))]);
        let calm = step.decisions.iter().find(|d| d.act == Act::Calm).unwrap();
        assert_eq!(calm.reason, "past its recorded start-up peak");
        assert_eq!(step.starts(), ["app"]);
        assert_eq!(state_of(&st, "db"), ServiceState::Starting);
    }

    #[test]
    fn service_completed_successfully_waits_for_exit_0_not_for_healthy() {
        let mut st = stager(
            params(),
            &[("migrate", no_history()), ("app", no_history())],
            &[("app", &[("migrate", Condition::CompletedSuccessfully)])],
        );
        round(&mut st, 0, &[]);
        round(&mut st, 200, &[("migrate", running(true, 8, 8))]);
        // Healthy and flat, but a dependent waits for it to complete.
        let step = round(&mut st, 3000, &[("migrate", running(true, 8, 8))]);
        assert!(step.starts().is_empty());
        assert_eq!(state_of(&st, "migrate"), ServiceState::Settling);
        let step = round(&mut st, 3200, &[("migrate", exited(0, false))]);
        assert_eq!(step.decisions[0].act, Act::Complete);
        assert_eq!(step.starts(), ["app"]);
        assert_eq!(st.services()[0].usage, None, "exited: it holds no memory");
    }

    #[test]
    fn a_failed_service_fails_every_dependent_and_ends_the_run() {
        let mut st = stager(
            params(),
            &[
                ("migrate", no_history()),
                ("app", no_history()),
                ("web", no_history()),
            ],
            &[
                ("app", &[("migrate", Condition::CompletedSuccessfully)]),
                ("web", &[("app", Condition::Started)]),
            ],
        );
        round(&mut st, 0, &[]);
        let step = round(&mut st, 200, &[("migrate", exited(137, true))]);
        assert_eq!(
            failure_of(&step, "migrate").as_deref(),
            Some("exited with code 137 (OOM-killed)")
        );
        assert_eq!(
            failure_of(&step, "app").as_deref(),
            Some("dependency migrate failed")
        );
        assert_eq!(
            failure_of(&step, "web").as_deref(),
            Some("dependency app failed")
        );
        assert!(step.done);
        assert!(!st.all_ready());
    }

    #[test]
    fn a_dependency_that_completes_where_it_had_to_stay_healthy_fails_its_dependent() {
        let mut st = stager(
            params(),
            &[("db", no_history()), ("app", no_history())],
            &[("app", &[("db", Condition::Healthy)])],
        );
        round(&mut st, 0, &[]);
        let step = round(&mut st, 200, &[("db", exited(0, false))]);
        assert_eq!(state_of(&st, "db"), ServiceState::Completed);
        assert_eq!(
            failure_of(&step, "app").as_deref(),
            Some("dependency db failed")
        );
    }

    #[test]
    fn a_service_not_ready_within_the_timeout_fails() {
        let mut st = stager(params(), &[("slow", no_history())], &[]);
        round(&mut st, 0, &[]);
        // No container at all yet: nothing happens until the timeout.
        assert!(round(&mut st, 59 * SECOND, &[]).decisions.is_empty());
        let step = round(&mut st, 61 * SECOND, &[("slow", running(false, 8, 8))]);
        assert_eq!(
            failure_of(&step, "slow").as_deref(),
            Some("not ready after 60s")
        );
        assert!(step.done);
    }

    #[test]
    fn the_timeout_runs_from_when_compose_had_started_it() {
        let mut st = stager(params(), &[("slow", no_history())], &[]);
        let step = st.decide(0, &HashMap::new(), PLENTY);
        // compose took 30 s to start it.
        st.started(&step.starts(), 30 * SECOND);
        let step = st.decide(61 * SECOND, &HashMap::new(), PLENTY);
        assert!(failure_of(&step, "slow").is_none());
        assert!(st.services()[0].started_ms == Some(30 * SECOND));
    }

    #[test]
    fn a_service_starts_only_when_every_replica_is_up_and_all_are_healthy() {
        let mut st = Stager::new(
            params(),
            vec![("web".into(), no_history(), 2)],
            HashMap::from([("web".to_string(), Vec::new())]),
        );
        round(&mut st, 0, &[]);
        round(&mut st, 200, &[("web", running(true, 8, 8))]);
        assert_eq!(st.services()[0].state, ServiceState::Starting, "one of two");
        let two = |healthy: [bool; 2]| Observation {
            replicas: healthy
                .iter()
                .map(|&healthy| Replica::Running { healthy })
                .collect(),
            ..running(true, 16, 16)
        };
        round(&mut st, 400, &[("web", two([true, false]))]);
        assert_eq!(st.services()[0].state, ServiceState::Starting);
        round(&mut st, 2400, &[("web", two([true, true]))]);
        assert_eq!(st.services()[0].state, ServiceState::Healthy);
    }

    #[test]
    fn without_history_max_parallel_bounds_the_services_starting_at_once() {
        let services = [
            ("a", no_history()),
            ("b", no_history()),
            ("c", no_history()),
        ];
        let mut st = stager(params(), &services, &[]);
        assert_eq!(round(&mut st, 0, &[]).starts(), ["a", "b"]);
        let step = round(
            &mut st,
            200,
            &[("a", running(true, 8, 8)), ("b", running(false, 8, 8))],
        );
        assert!(step.starts().is_empty());
        // a calms down: c may start while b still starts.
        let step = round(
            &mut st,
            2200,
            &[("a", running(true, 8, 8)), ("b", running(false, 8, 8))],
        );
        assert_eq!(step.starts(), ["c"]);
        assert_eq!(st.services()[2].order, Some(3));
    }

    #[test]
    fn headroom_admits_recorded_needs_and_holds_what_starting_services_may_still_grow() {
        let p = UpParams {
            available: Some(Bytes(300 * MIB)),
            reserve: Bytes(50 * MIB),
            ..params()
        };
        let services = [
            ("a", need(100, 8)),
            ("b", need(100, 8)),
            ("c", need(100, 8)),
        ];
        let mut st = stager(p, &services, &[]);
        // 300 − 50 reserve: two of 100 fit, the third does not.
        let step = round(&mut st, 0, &[]);
        assert_eq!(step.starts(), ["a", "b"]);
        assert!(step.decisions[0].reason.contains("fits the headroom"));
        // Both at 60 MiB of 100: 250 − 120 used − 80 still to grow = 50 left.
        let spiking = [("a", running(false, 60, 60)), ("b", running(false, 60, 60))];
        assert!(round(&mut st, 200, &spiking).starts().is_empty());
        // a is past its peak: it holds only its 8 MiB now.
        let step = round(
            &mut st,
            400,
            &[("a", running(false, 8, 95)), ("b", running(false, 60, 60))],
        );
        assert_eq!(step.starts(), ["c"]);
    }

    #[test]
    fn without_available_the_hosts_mem_available_is_the_budget() {
        let mut st = stager(params(), &[("a", need(100, 8))], &[]);
        let starts = |st: &mut Stager, available: u64| {
            st.decide(0, &HashMap::new(), Bytes(available * MIB))
                .starts()
        };
        // Nothing starting: it starts alone, over budget, rather than never.
        let step = st.decide(0, &HashMap::new(), Bytes(50 * MIB));
        assert_eq!(
            step.decisions[0].act,
            Act::Start {
                alone_over_budget: true
            }
        );
        assert!(st.services()[0].over_budget);
        let mut roomy = stager(params(), &[("a", need(100, 8))], &[]);
        assert_eq!(starts(&mut roomy, 200), ["a"]);
        assert!(!roomy.services()[0].over_budget);
    }

    #[test]
    fn a_service_over_budget_waits_while_another_is_starting() {
        let p = UpParams {
            available: Some(Bytes(150 * MIB)),
            ..params()
        };
        let mut st = stager(p, &[("a", need(100, 8)), ("b", need(100, 8))], &[]);
        assert_eq!(round(&mut st, 0, &[]).starts(), ["a"]);
        assert!(round(&mut st, 200, &[("a", running(false, 90, 90))])
            .starts()
            .is_empty());
    }

    #[test]
    fn a_dependency_that_never_starts_fails_its_dependent_with_the_condition_it_lacks() {
        // app depends on a service outside the run (compose would not start it).
        let mut st = stager(
            params(),
            &[("app", no_history())],
            &[("app", &[("scaled-to-zero", Condition::Healthy)])],
        );
        let step = round(&mut st, 0, &[]);
        assert_eq!(
            failure_of(&step, "app").as_deref(),
            Some("dependency scaled-to-zero will not become healthy")
        );
        assert!(step.done);
    }

    #[test]
    fn the_run_is_done_when_every_service_is_ready_or_completed() {
        let mut st = stager(
            params(),
            &[("seed", no_history()), ("web", no_history())],
            &[],
        );
        round(&mut st, 0, &[]);
        round(
            &mut st,
            200,
            &[("seed", exited(0, false)), ("web", running(true, 8, 8))],
        );
        let step = round(&mut st, 2200, &[("web", running(true, 8, 8))]);
        assert!(step.done);
        assert!(st.all_ready());
        assert!(st.watching().next().is_none());
    }

    #[test]
    fn while_the_engine_is_away_nothing_starts_and_it_goes_on_once_it_answers() {
        let mut st = stager(
            params(),
            &[("db", no_history()), ("app", no_history())],
            &[("app", &[("db", Condition::Healthy)])],
        );
        round(&mut st, 0, &[]);
        // The engine restarts: up to 30 s of silence is waited out.
        assert_eq!(st.engine_lost(1000, "connection refused"), Step::default());
        assert_eq!(st.engine_lost(31000, "connection refused"), Step::default());
        // It answers again, the restart policy brought db back: staging goes on.
        round(&mut st, 31200, &[("db", running(true, 8, 8))]);
        let step = round(&mut st, 33200, &[("db", running(true, 8, 8))]);
        assert_eq!(step.starts(), ["app"]);
        // A later outage is timed from its own start.
        assert_eq!(st.engine_lost(40000, "broken pipe"), Step::default());
        assert!(st.engine_lost(70000, "broken pipe").give_up.is_none());
    }

    #[test]
    fn an_engine_that_does_not_come_back_ends_the_run_and_fails_what_is_not_done() {
        let mut st = stager(
            params(),
            &[("db", no_history()), ("app", no_history())],
            &[("app", &[("db", Condition::Started)])],
        );
        round(&mut st, 0, &[]);
        round(&mut st, 200, &[("db", running(true, 8, 8))]);
        round(&mut st, 2200, &[("db", running(true, 8, 8))]);
        assert_eq!(state_of(&st, "db"), ServiceState::Healthy);
        st.engine_lost(3000, "connection refused");
        let step = st.engine_lost(33001, "connection refused");
        let why = "the Docker engine did not answer for 30s (connection refused)";
        assert_eq!(step.give_up.as_deref(), Some(why));
        assert!(step.done);
        // What was ready stays ready; the rest failed with the reason.
        assert_eq!(state_of(&st, "db"), ServiceState::Healthy);
        assert_eq!(failure_of(&step, "app").as_deref(), Some(why));
    }
}
