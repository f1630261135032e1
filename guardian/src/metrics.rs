//! Prometheus exposition: every series guardian serves is built here from typed data (the
//! daemon hands over a [`Snapshot`] after each sampling round) and written by one renderer that
//! escapes every label value. The snapshot is served by [`serve`] on a loopback port.
//!
//! Names follow cAdvisor where it exports the same quantity (docs/operating.md maps each one).
//! Label sets, so that a fleet of runners stays cheap to scrape and store:
//! - per container (`container`, `id`, `image`, `project`, `service`): one series per running
//!   container, gone when it exits;
//! - per compose service (`project`, `service`, no container id): one series per service with a
//!   run in the store, whatever the number of runs;
//! - host-wide: no labels, or a small fixed set (`action`, `event`).

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch};
use tracing::{debug, warn};

use crate::model::{Bytes, LiveRun, MemoryEvents, RunRecord};

/// The per-service peak gauge the fleet profile sizes limits from: the kernel's high-water mark,
/// highest over the runs the store keeps. One constant, so every reader names the same series.
pub const SERVICE_PEAK: &str = "guardian_service_memory_peak_bytes";
/// The per-service unreclaimable peak (anon, shmem, mapped file, kernel memory: what a limit
/// must hold), highest over the kept runs that measured it; limits are sized from it.
pub const SERVICE_PEAK_UNRECLAIMABLE: &str = "guardian_service_memory_peak_unreclaimable_bytes";
/// Kept runs recorded before guardian measured the unreclaimable peak (sized from the
/// high-water mark while any remain).
pub const SERVICE_RUNS_WITHOUT_UNRECLAIMABLE: &str = "guardian_service_runs_without_unreclaimable";
/// The per-service start-up peak gauge (highest usage within the start-up window).
pub const SERVICE_STARTUP_PEAK: &str = "guardian_service_memory_startup_peak_bytes";
/// The per-service typical working set (the mean of its samples), for the reservation.
pub const SERVICE_TYPICAL_WORKING_SET: &str = "guardian_service_memory_typical_working_set_bytes";
/// The limit of the service's latest run.
pub const SERVICE_LIMIT: &str = "guardian_service_memory_limit_bytes";
/// How many runs of the service the store keeps.
pub const SERVICE_RUNS: &str = "guardian_service_runs";
/// How many of those runs were OOM-killed (Docker's `OOMKilled`, or the kernel's count).
pub const SERVICE_OOM_KILLED_RUNS: &str = "guardian_service_oom_killed_runs";

/// The metric type, as the `# TYPE` line says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
        }
    }
}

/// Label names (fixed by guardian) and values (anything: container names, images).
pub type Labels = Vec<(&'static str, String)>;

/// A sample value: counts and bytes stay exact integers, seconds are floats.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) if v.is_nan() => f.write_str("NaN"),
            Value::Float(v) if v == f64::INFINITY => f.write_str("+Inf"),
            Value::Float(v) if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            Value::Float(v) => write!(f, "{v}"),
        }
    }
}

struct Sample {
    /// `_bucket`, `_sum`, `_count` for histograms, else empty.
    suffix: &'static str,
    labels: Labels,
    value: Value,
}

/// One metric family: its name, help, type and samples.
pub struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: Vec<Sample>,
}

impl Family {
    /// Adds one sample of a gauge or counter.
    pub fn sample(&mut self, labels: Labels, value: impl Into<Value>) -> &mut Self {
        self.samples.push(Sample {
            suffix: "",
            labels,
            value: value.into(),
        });
        self
    }

    /// Adds one histogram: `buckets` are (upper bound, count in that bucket alone), ascending;
    /// the renderer makes them cumulative and adds `+Inf`, `_sum` and `_count`.
    pub fn histogram(&mut self, labels: Labels, buckets: &[(f64, u64)], count: u64, sum: f64) {
        let mut cumulative = 0;
        for (le, n) in buckets {
            cumulative += n;
            let mut l = labels.clone();
            l.push(("le", Value::Float(*le).to_string()));
            self.samples.push(Sample {
                suffix: "_bucket",
                labels: l,
                value: Value::Int(cumulative),
            });
        }
        let mut inf = labels.clone();
        inf.push(("le", "+Inf".into()));
        self.samples.push(Sample {
            suffix: "_bucket",
            labels: inf,
            value: Value::Int(count),
        });
        self.samples.push(Sample {
            suffix: "_sum",
            labels: labels.clone(),
            value: Value::Float(sum),
        });
        self.samples.push(Sample {
            suffix: "_count",
            labels,
            value: Value::Int(count),
        });
    }
}

/// A whole exposition: families in the order they were added.
#[derive(Default)]
pub struct Exposition {
    families: Vec<Family>,
}

impl Exposition {
    /// Starts a family; add its samples to the returned value.
    pub fn family(&mut self, name: &'static str, help: &'static str, kind: Kind) -> &mut Family {
        self.families.push(Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        });
        self.families.last_mut().expect("just pushed")
    }

    /// The text exposition format 0.0.4 (what Prometheus and `promtool check metrics` read).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(f.help));
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.name());
            for s in &f.samples {
                out.push_str(f.name);
                out.push_str(s.suffix);
                if !s.labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in s.labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {}", s.value);
            }
        }
        out
    }
}

/// A label value as the text format wants it: `\`, `"` and newline escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Help text escapes `\` and newline only.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Who a per-container series is about: the only label set with a container id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerLabels {
    pub name: String,
    /// The full id; the series carry its first 12 characters, as `docker ps` shows it.
    pub id: String,
    pub image: String,
    pub project: Option<String>,
    pub service: Option<String>,
}

impl ContainerLabels {
    /// The labels of a recorded run.
    pub fn of_run(r: &RunRecord) -> Self {
        Self {
            name: r.name.clone(),
            id: r.container_id.clone(),
            image: r.image.clone(),
            project: r.project.clone(),
            service: r.service.clone(),
        }
    }

    fn labels(&self) -> Labels {
        vec![
            ("container", self.name.clone()),
            ("id", self.id.chars().take(12).collect()),
            ("image", self.image.clone()),
            ("project", self.project.clone().unwrap_or_default()),
            ("service", self.service.clone().unwrap_or_default()),
        ]
    }
}

/// Reclaim-stall totals of one container for the histogram (from the eBPF `STALL_STATS` map).
pub struct StallSeries {
    pub container: ContainerLabels,
    /// (bucket upper bound in µs, stalls in that bucket alone), ascending.
    pub buckets_us: Vec<(u64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

/// What one compose service (or plain container name) recorded over the runs the store keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSeries {
    /// Empty outside compose.
    pub project: String,
    /// The compose service, or the container name outside compose.
    pub service: String,
    pub runs: u64,
    pub oom_killed_runs: u64,
    pub peak: Bytes,
    /// Highest unreclaimable peak over the runs that measured it.
    pub peak_unreclaimable: Option<Bytes>,
    pub runs_without_unreclaimable: u64,
    pub startup_peak: Bytes,
    pub typical_working_set: Bytes,
    /// The limit of the latest run.
    pub limit: Option<Bytes>,
}

/// The store's runs per (project, service), grouped and summed by the same rule as
/// `guardian profile` (`policy::profile::summarize`), plus how many runs were OOM-killed.
pub fn services(runs: &[RunRecord]) -> Vec<ServiceSeries> {
    crate::policy::profile::summarize(runs)
        .into_iter()
        .map(|u| {
            let oom_killed_runs = runs
                .iter()
                .filter(|r| r.project == u.project)
                .filter(|r| r.service.as_ref().unwrap_or(&r.name) == &u.service)
                .filter(|r| r.oom_killed || r.oom_kills > 0)
                .count() as u64;
            ServiceSeries {
                project: u.project.unwrap_or_default(),
                service: u.service,
                runs: u.runs,
                oom_killed_runs,
                peak: u.peak,
                peak_unreclaimable: u.peak_unreclaimable,
                runs_without_unreclaimable: u.runs_without_unreclaimable,
                startup_peak: u.startup_peak,
                typical_working_set: u.typical_working_set,
                limit: u.limit,
            }
        })
        .collect()
}

/// The enforcement ladder's series: writes made per action, groups guarded, the host's level.
#[derive(Clone, Debug, Default)]
pub struct EnforcementSeries {
    pub actions_total: BTreeMap<&'static str, u64>,
    pub guarded_groups: u64,
    /// 0 calm, 1 pressure, 2 critical.
    pub host_level: u8,
}

/// Warnings given for containers staying near their limit or budget.
#[derive(Clone, Debug, Default)]
pub struct WarningSeries {
    /// Per (container name, compose service or empty).
    pub warnings_total: BTreeMap<(String, String), u64>,
    pub in_warning: u64,
}

/// Health levels (policy::health): per container with a ceiling, and the host's.
#[derive(Default)]
pub struct HealthSeries<'a> {
    pub containers: Vec<(&'a LiveRun, crate::policy::health::Level)>,
    pub host: Option<crate::policy::health::Level>,
}

/// Everything the daemon serves, as of one sampling round.
pub struct Snapshot<'a> {
    /// Health levels of the containers and the host.
    pub health: HealthSeries<'a>,
    /// The running containers, each with the budget in force for it (if any).
    pub runs: Vec<(&'a LiveRun, Option<Bytes>)>,
    pub stalls: &'a [StallSeries],
    pub services: &'a [ServiceSeries],
    /// OOM kills the eBPF probe saw on this host since the daemon started.
    pub oom_kills_total: u64,
    pub enforcement: Option<EnforcementSeries>,
    pub warnings: WarningSeries,
}

/// Renders the daemon's snapshot as exposition text.
pub fn render(s: &Snapshot<'_>) -> String {
    let mut exp = Exposition::default();
    containers(&mut exp, &s.runs);
    let stalls = exp.family(
        "guardian_reclaim_stall_seconds",
        "Time tasks stalled in memory-cgroup direct reclaim (eBPF), per container.",
        Kind::Histogram,
    );
    for st in s.stalls {
        let buckets: Vec<(f64, u64)> = st
            .buckets_us
            .iter()
            .map(|(le, n)| (*le as f64 / 1e6, *n))
            .collect();
        stalls.histogram(st.container.labels(), &buckets, st.count, st.sum_seconds);
    }
    service_families(&mut exp, s.services);
    let levels = exp.family(
        "guardian_container_health_level",
        "Working set against the lowest ceiling (limit, memory.high, budget): 0 safe, 1 warning, 2 critical, 3 emergency.",
        Kind::Gauge,
    );
    for (run, level) in &s.health.containers {
        levels.sample(
            ContainerLabels::of_run(&run.record).labels(),
            u64::from(level.as_number()),
        );
    }
    if let Some(level) = s.health.host {
        exp.family(
            "guardian_host_health_level",
            "MemTotal − MemAvailable against MemTotal: 0 safe, 1 warning, 2 critical, 3 emergency.",
            Kind::Gauge,
        )
        .sample(vec![], u64::from(level.as_number()));
    }
    exp.family(
        "guardian_oom_kills_total",
        "OOM kills seen on this host since guardian started (eBPF).",
        Kind::Counter,
    )
    .sample(vec![], s.oom_kills_total);
    if let Some(e) = &s.enforcement {
        let actions = exp.family(
            "guardian_actions_total",
            "Writes made by the enforcement ladder, by action.",
            Kind::Counter,
        );
        for (action, n) in &e.actions_total {
            actions.sample(vec![("action", action.to_string())], *n);
        }
        exp.family(
            "guardian_guarded_groups",
            "Groups with a budget.",
            Kind::Gauge,
        )
        .sample(vec![], e.guarded_groups);
        exp.family(
            "guardian_host_memory_level",
            "0 calm, 1 pressure, 2 critical.",
            Kind::Gauge,
        )
        .sample(vec![], u64::from(e.host_level));
    }
    let warnings = exp.family(
        "guardian_memory_warnings_total",
        "Containers warned for staying near their limit or budget.",
        Kind::Counter,
    );
    for ((container, service), n) in &s.warnings.warnings_total {
        warnings.sample(
            vec![
                ("container", container.clone()),
                ("service", service.clone()),
            ],
            *n,
        );
    }
    exp.family(
        "guardian_containers_in_warning",
        "Containers near their limit or budget now.",
        Kind::Gauge,
    )
    .sample(vec![], s.warnings.in_warning);
    exp.render()
}

type RunValue = fn(&LiveRun, Option<Bytes>) -> Option<Value>;

/// The per-container families: (name, help, type, value of one run). A run without the value
/// (a limit it does not have, a file its cgroup version lacks) has no sample.
const CONTAINER_FAMILIES: &[(&str, &str, Kind, RunValue)] = &[
    (
        "guardian_container_memory_usage_bytes",
        "Memory charged to the container's cgroup (memory.current).",
        Kind::Gauge,
        |r, _| r.last.as_ref().map(|m| m.usage.0.into()),
    ),
    (
        "guardian_container_memory_working_set_bytes",
        "Usage minus inactive file pages, as kubelet and cAdvisor count it.",
        Kind::Gauge,
        |r, _| r.last.as_ref().map(|m| m.working_set.0.into()),
    ),
    (
        "guardian_container_memory_peak_bytes",
        "The kernel's high-water mark of the container's memory in this run.",
        Kind::Gauge,
        |r, _| Some(r.record.peak.0.into()),
    ),
    (
        "guardian_container_memory_limit_bytes",
        "The container's memory limit (memory.max).",
        Kind::Gauge,
        |r, _| r.record.memory_limit.map(|b| b.0.into()),
    ),
    (
        "guardian_container_memory_high_bytes",
        "The container's memory.high throttle limit, when one is set (cgroup v2).",
        Kind::Gauge,
        |r, _| r.last.as_ref().and_then(|m| m.high).map(|b| b.0.into()),
    ),
    (
        "guardian_container_memory_budget_bytes",
        "The budget guardian enforces for the container (label, config rule or profile).",
        Kind::Gauge,
        |_, budget| budget.map(|b| b.0.into()),
    ),
    (
        "guardian_container_memory_swap_bytes",
        "Swap used by the container (v2 memory.swap.current, v1 memsw usage minus usage).",
        Kind::Gauge,
        |r, _| r.last.as_ref().and_then(|m| m.swap).map(|b| b.0.into()),
    ),
    (
        "guardian_container_oom_kills_total",
        "OOM kills the kernel counted in the container's cgroup.",
        Kind::Counter,
        |r, _| Some(r.record.oom_kills.into()),
    ),
    (
        "guardian_container_pressure_memory_waiting_seconds_total",
        "Time some tasks of the container waited for memory (memory.pressure some total).",
        Kind::Counter,
        |r, _| {
            let p = r.last.as_ref()?.pressure?;
            Some((p.some.total_us as f64 / 1e6).into())
        },
    ),
    (
        "guardian_container_pressure_memory_stalled_seconds_total",
        "Time all tasks of the container stalled on memory (memory.pressure full total).",
        Kind::Counter,
        |r, _| {
            let p = r.last.as_ref()?.pressure?;
            Some((p.full.total_us as f64 / 1e6).into())
        },
    ),
];

fn containers(exp: &mut Exposition, runs: &[(&LiveRun, Option<Bytes>)]) {
    for (name, help, kind, value) in CONTAINER_FAMILIES {
        let family = exp.family(name, help, *kind);
        for (run, budget) in runs {
            if let Some(v) = value(run, *budget) {
                family.sample(ContainerLabels::of_run(&run.record).labels(), v);
            }
        }
    }
    let events = exp.family(
        "guardian_container_memory_events_total",
        "memory.events counters of the container's cgroup (v2): high, max, oom, oom_kill.",
        Kind::Counter,
    );
    for (run, _) in runs {
        let Some(e) = run.last.as_ref().and_then(|m| m.events) else {
            continue;
        };
        let MemoryEvents {
            high,
            max,
            oom,
            oom_kill,
            ..
        } = e;
        for (event, n) in [
            ("high", high),
            ("max", max),
            ("oom", oom),
            ("oom_kill", oom_kill),
        ] {
            let mut labels = ContainerLabels::of_run(&run.record).labels();
            labels.push(("event", event.into()));
            events.sample(labels, n);
        }
    }
}

type ServiceValue = fn(&ServiceSeries) -> Option<u64>;

fn service_families(exp: &mut Exposition, services: &[ServiceSeries]) {
    let labels = |s: &ServiceSeries| {
        vec![
            ("project", s.project.clone()),
            ("service", s.service.clone()),
        ]
    };
    let families: [(&'static str, &'static str, ServiceValue); 8] = [
        (
            SERVICE_PEAK,
            "Highest kernel high-water mark of the service over the runs the store keeps.",
            |s| Some(s.peak.0),
        ),
        (
            SERVICE_PEAK_UNRECLAIMABLE,
            "Highest unreclaimable peak (anon, shmem, mapped file, kernel) over the kept runs.",
            |s| s.peak_unreclaimable.map(|b| b.0),
        ),
        (
            SERVICE_RUNS_WITHOUT_UNRECLAIMABLE,
            "Kept runs of the service recorded before the unreclaimable peak was measured.",
            |s| Some(s.runs_without_unreclaimable),
        ),
        (
            SERVICE_STARTUP_PEAK,
            "Highest usage of the service within its start-up window over the kept runs.",
            |s| Some(s.startup_peak.0),
        ),
        (
            SERVICE_TYPICAL_WORKING_SET,
            "Mean working set of the service over the kept runs.",
            |s| Some(s.typical_working_set.0),
        ),
        (
            SERVICE_LIMIT,
            "Memory limit of the service's latest run.",
            |s| s.limit.map(|b| b.0),
        ),
        (SERVICE_RUNS, "Runs of the service the store keeps.", |s| {
            Some(s.runs)
        }),
        (
            SERVICE_OOM_KILLED_RUNS,
            "Kept runs of the service that were OOM-killed.",
            |s| Some(s.oom_killed_runs),
        ),
    ];
    for (name, help, value) in families {
        let family = exp.family(name, help, Kind::Gauge);
        for s in services {
            if let Some(v) = value(s) {
                family.sample(labels(s), v);
            }
        }
    }
}

/// Serves `GET /metrics` on `addr` with the latest snapshot until the process exits.
pub async fn serve(
    addr: SocketAddr,
    snapshot: watch::Receiver<Arc<String>>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tokio::spawn(server::accept_loop(listener, snapshot));
    Ok(())
}

/// Logs once that the metrics endpoint could not start.
pub fn warn_unavailable(addr: SocketAddr, e: &std::io::Error) {
    warn!(%addr, "metrics endpoint disabled: {e}; set [metrics] listen or --metrics-listen to a free port");
}

mod server {
    //! The HTTP side on hyper 1.x: one connection per scrape, bounded in number and in time.

    use super::*;

    /// Scrapers that may be connected at once; more wait in the listen backlog.
    pub(super) const MAX_CONNECTIONS: usize = 16;
    /// Time a client has to send its request headers.
    const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
    /// Time a whole connection may take, request to last byte.
    const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
    /// Pause after a failed accept (no file descriptors left, EMFILE): retrying at once would
    /// spin a core exactly when the host is short of resources.
    const ACCEPT_BACKOFF: Duration = Duration::from_millis(500);

    pub(super) async fn accept_loop(listener: TcpListener, snapshot: watch::Receiver<Arc<String>>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    warn!(
                        "metrics: accepting a connection failed ({e}); retrying in {ACCEPT_BACKOFF:?}"
                    );
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let snapshot = snapshot.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let service = hyper::service::service_fn(move |req| {
                    let body = snapshot.borrow().clone();
                    async move { Ok::<_, std::convert::Infallible>(respond(&req, &body)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(%peer, "metrics connection: {e}"),
                    Err(_) => debug!(%peer, "metrics connection timed out"),
                }
            });
        }
    }

    type Body = http_body_util::Full<hyper::body::Bytes>;

    fn respond<B>(req: &hyper::Request<B>, body: &str) -> hyper::Response<Body> {
        let found =
            req.method() == hyper::Method::GET && matches!(req.uri().path(), "/metrics" | "/");
        let (status, body) = if found {
            (hyper::StatusCode::OK, body.to_owned())
        } else {
            (
                hyper::StatusCode::NOT_FOUND,
                "guardian serves GET /metrics\n".to_owned(),
            )
        };
        hyper::Response::builder()
            .status(status)
            .header(
                hyper::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )
            .body(Body::new(body.into()))
            .expect("static headers are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses one sample line of the text format back into (name, labels, value), undoing the
    /// escapes: the inverse of the renderer, strict enough to catch a broken exposition.
    fn parse_line(line: &str) -> (String, Vec<(String, String)>, String) {
        let (name, rest) = line.split_at(line.find(['{', ' ']).unwrap());
        let mut labels = Vec::new();
        let mut rest = rest;
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices();
            let mut key = String::new();
            loop {
                let (_, c) = chars.next().unwrap();
                match c {
                    '}' => {
                        rest = &r[chars.next().unwrap().0..];
                        break;
                    }
                    ',' => {}
                    '=' => {
                        assert_eq!(chars.next().unwrap().1, '"');
                        let mut value = String::new();
                        loop {
                            match chars.next().unwrap().1 {
                                '\\' => match chars.next().unwrap().1 {
                                    'n' => value.push('\n'),
                                    c => value.push(c),
                                },
                                '"' => break,
                                c => value.push(c),
                            }
                        }
                        labels.push((std::mem::take(&mut key), value));
                    }
                    c => key.push(c),
                }
            }
        }
        (name.into(), labels, rest.trim().into())
    }

    #[test]
    fn label_values_with_quotes_backslashes_and_newlines_round_trip() {
        let nasty = "we\"ird\\name\nline2";
        let mut exp = Exposition::default();
        exp.family("guardian_test_bytes", "A test.", Kind::Gauge)
            .sample(
                vec![("container", nasty.into()), ("service", "db".into())],
                7u64,
            );
        let text = exp.render();
        let line = text.lines().find(|l| !l.starts_with('#')).unwrap();
        assert_eq!(text.lines().count(), 3, "one line per sample: {text}");
        let (name, labels, value) = parse_line(line);
        assert_eq!(name, "guardian_test_bytes");
        assert_eq!(
            labels,
            vec![
                ("container".to_string(), nasty.to_string()),
                ("service".to_string(), "db".to_string())
            ]
        );
        assert_eq!(value, "7");
    }

    #[test]
    fn histograms_are_cumulative_and_end_with_inf_sum_and_count() {
        let mut exp = Exposition::default();
        exp.family("guardian_x_seconds", "X.", Kind::Histogram)
            .histogram(
                vec![("container", "a".into())],
                &[(0.000002, 1), (0.000004, 2)],
                4,
                0.5,
            );
        let text = exp.render();
        assert!(
            text.contains("guardian_x_seconds_bucket{container=\"a\",le=\"0.000002\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("guardian_x_seconds_bucket{container=\"a\",le=\"0.000004\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("guardian_x_seconds_bucket{container=\"a\",le=\"+Inf\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("guardian_x_seconds_sum{container=\"a\"} 0.5\n"),
            "{text}"
        );
        assert!(
            text.contains("guardian_x_seconds_count{container=\"a\"} 4\n"),
            "{text}"
        );
    }

    fn run(name: &str, service: &str, peak: u64, oom: bool, started: i64) -> RunRecord {
        RunRecord {
            container_id: format!("{name}0123456789abcdef"),
            name: name.into(),
            image: "img".into(),
            project: Some("shop".into()),
            service: Some(service.into()),
            started_at_ms: started,
            ended_at_ms: None,
            memory_limit: Some(Bytes(started as u64 * 1000)),
            memory_reservation: None,
            peak: Bytes(peak),
            peak_unreclaimable: Some(Bytes(peak / 2)),
            startup_peak: Bytes(peak / 2),
            working_set_max: Bytes(0),
            working_set_sum: 10,
            working_set_samples: 2,
            anon_max: Bytes(0),
            oom_kills: 0,
            oom_killed: oom,
            exit_code: None,
        }
    }

    #[test]
    fn service_series_take_the_highest_peak_and_the_latest_limit_without_container_ids() {
        let runs = [
            run("shop-db-1", "db", 300, false, 1),
            run("shop-db-2", "db", 500, true, 2),
            run("shop-web-1", "web", 100, false, 3),
        ];
        let s = services(&runs);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].service, "db");
        assert_eq!((s[0].runs, s[0].oom_killed_runs), (2, 1));
        assert_eq!(s[0].peak, Bytes(500));
        assert_eq!(s[0].startup_peak, Bytes(250));
        assert_eq!(s[0].limit, Some(Bytes(2000)));
        assert_eq!(s[0].typical_working_set, Bytes(5));
        let text = render(&Snapshot {
            health: HealthSeries::default(),
            runs: vec![],
            stalls: &[],
            services: &s,
            oom_kills_total: 0,
            enforcement: None,
            warnings: WarningSeries::default(),
        });
        assert!(
            text.contains(&format!(
                "{SERVICE_PEAK}{{project=\"shop\",service=\"db\"}} 500\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "{SERVICE_RUNS}{{project=\"shop\",service=\"web\"}} 1\n"
            )),
            "{text}"
        );
        let service_lines = text.lines().filter(|l| l.starts_with("guardian_service_"));
        assert!(
            service_lines.clone().all(|l| !l.contains("id=")),
            "service series carry no container id: {text}"
        );
    }

    #[test]
    fn the_exposition_passes_promtool_when_it_is_installed() {
        // The end-to-end test (tests/fleet.rs) runs promtool on a live scrape; here the renderer
        // alone, with every family and a hostile name, when the prometheus package is present.
        let Ok(promtool) = which_promtool() else {
            eprintln!("promtool not installed (apt-get install prometheus): skipped");
            return;
        };
        let runs = [run("we\"ird\\name", "db", 300, true, 1)];
        let s = services(&runs);
        let stall = StallSeries {
            container: ContainerLabels::of_run(&runs[0]),
            buckets_us: vec![(2, 1), (4, 0)],
            count: 1,
            sum_seconds: 0.000001,
        };
        let text = render(&Snapshot {
            health: HealthSeries::default(),
            runs: vec![],
            stalls: std::slice::from_ref(&stall),
            services: &s,
            oom_kills_total: 1,
            enforcement: Some(EnforcementSeries {
                actions_total: [("squeeze", 2)].into_iter().collect(),
                guarded_groups: 1,
                host_level: 0,
            }),
            warnings: WarningSeries {
                warnings_total: [(("a\"b".to_string(), "db".to_string()), 1)]
                    .into_iter()
                    .collect(),
                in_warning: 1,
            },
        });
        let mut child = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics failed:\n{}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn the_server_answers_metrics_while_a_silent_client_holds_a_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_tx, rx) = watch::channel(Arc::new("guardian_up 1\n".to_string()));
        tokio::spawn(server::accept_loop(listener, rx));
        // A client that connects and never sends a request must not stall the next scrape.
        let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let page = get(addr, "/metrics").await;
        assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
        assert!(page.contains("text/plain; version=0.0.4"), "{page}");
        assert!(page.ends_with("guardian_up 1\n"), "{page}");
        let other = get(addr, "/secrets").await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
    }

    /// Every family guardian can serve (a snapshot with each part present).
    fn exported_names() -> Vec<String> {
        let text = render(&Snapshot {
            health: HealthSeries::default(),
            runs: vec![],
            stalls: &[],
            services: &[],
            oom_kills_total: 0,
            enforcement: Some(EnforcementSeries::default()),
            warnings: WarningSeries::default(),
        });
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .map(String::from)
            .collect()
    }

    #[test]
    fn every_dashboard_query_names_exported_series_and_parses() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/grafana-dashboard.json")).unwrap();
        let exported = exported_names();
        let mut exprs: Vec<String> = Vec::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                exprs.push(target["expr"].as_str().unwrap().to_string());
            }
        }
        assert!(exprs.len() >= 6, "{exprs:?}");
        for e in &exprs {
            let names: Vec<&str> = e
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("guardian_"))
                .collect();
            assert!(!names.is_empty(), "no guardian series in {e}");
            for n in names {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| n.strip_suffix(s))
                    .filter(|b| exported.iter().any(|x| x == b))
                    .unwrap_or(n);
                assert!(
                    exported.iter().any(|x| x == base),
                    "{n} in {e} is not a series guardian exports"
                );
            }
        }
        // Parsed by Prometheus' own parser: each query as a recording rule.
        let Ok(promtool) = which_promtool() else {
            eprintln!("promtool not installed (apt-get install prometheus): parse check skipped");
            return;
        };
        let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
        for (i, e) in exprs.iter().enumerate() {
            // Grafana's variables, as Grafana substitutes them.
            let promql = e.replace("$__rate_interval", "5m").replace("$pool", ".*");
            rules.push_str(&format!(
                "      - record: guardian:dashboard_{i}\n        expr: {}\n",
                serde_json::to_string(&promql).unwrap()
            ));
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.yml");
        std::fs::write(&file, &rules).unwrap();
        let out = std::process::Command::new(promtool)
            .args(["check", "rules"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool check rules: {}{}\n{rules}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn which_promtool() -> Result<std::path::PathBuf, ()> {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
            .ok_or(())
    }
}
