//! `guardian ps`: every container with its memory as the kernel counts it, largest first, and
//! its health level; `--watch` refreshes in place like `docker stats`.

use std::{
    io::{IsTerminal as _, Write as _},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use serde::Serialize;

use super::{Output, UsageError};
use crate::{
    config::Config,
    model::{
        resolve_guard, Budget, BudgetRule, Bytes, Container, ContainerState, LabelPolicy,
        MemoryReading, ProfileBudget,
    },
    policy::health::{self, Health, Level, Thresholds},
    sources::{
        cgroup::{read_memory, Hierarchy},
        docker::DockerClient,
        profiles::budgets_from,
    },
};

/// Options of `guardian ps`.
#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// Include containers that have exited (and say whether the OOM killer ended them).
    #[arg(long)]
    all: bool,
    /// The daemon's config, for budgets from rules and profiles (default
    /// /etc/guardian/guardian.toml, if it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Refresh every INTERVAL (default 2s) until Ctrl-C: in place on a terminal, one table (or
    /// one JSON line) per refresh otherwise.
    #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "2s",
          value_parser = super::parse_duration)]
    watch: Option<Duration>,
}

/// One row of the table.
#[derive(Debug, Serialize)]
struct Row {
    name: String,
    id: String,
    image: String,
    project: Option<String>,
    service: Option<String>,
    state: String,
    usage: Option<Bytes>,
    working_set: Option<Bytes>,
    peak: Option<Bytes>,
    limit: Option<Bytes>,
    /// memory.high as the kernel has it (cgroup v2); `None` = max or not v2.
    high: Option<Bytes>,
    /// Its budget and where it came from (label, rule, profile); `None` = observed only.
    budget: Option<Budget>,
    priority: i32,
    avoid: bool,
    /// Labels set on the container but not used, each with why (not a size, below the floor,
    /// more than the host).
    ignored_labels: Vec<String>,
    psi_some_avg10: Option<f64>,
    oom_kills: Option<u64>,
    oom_killed: bool,
    cgroup_id: Option<u64>,
    /// Working set against the lowest of limit, memory.high and budget (policy/health.rs);
    /// `None` when the container has no ceiling or no reading.
    health: Option<Health>,
}

pub async fn run(args: PsArgs, output: Output) -> anyhow::Result<ExitCode> {
    let hierarchy = Hierarchy::detect()?;
    let client = DockerClient::connect(hierarchy.clone()).await?;
    let config = Config::load(args.config.as_deref()).map_err(|e| UsageError(e.to_string()))?;
    let (profiles, errors) = budgets_from(&config.enforce.profiles);
    if let Some(e) = errors.first() {
        return Err(UsageError(format!("{e}; fix or remove the profile")).into());
    }
    let view = View {
        hierarchy,
        rules: config.budget.clone(),
        profiles,
        labels: config.enforce.label_policy(),
        thresholds: config.health,
        all: args.all,
    };
    let Some(every) = args.watch else {
        let rows = view.rows(&client).await?;
        match output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
            Output::Human => print!("{}", view.table(&rows, false)),
        }
        return Ok(ExitCode::SUCCESS);
    };
    let terminal = std::io::stdout().is_terminal();
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
        let rows = view.rows(&client).await?;
        let text = match (output, terminal) {
            (Output::Json, _) => format!("{}\n", serde_json::to_string(&rows)?),
            // Home, the table, then clear what a longer previous table left below it.
            (Output::Human, true) => format!(
                "\x1b[H{}\x1b[J",
                view.table(
                    &rows,
                    super::colour(true, std::env::var_os("NO_COLOR").as_deref())
                )
            ),
            (Output::Human, false) => format!("{}\n", view.table(&rows, false)),
        };
        // A reader that went away (`| head`) ends the watch, as it ends `docker stats`.
        let mut out = std::io::stdout().lock();
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            r => r?,
        }
    }
}

/// What every refresh needs: the hierarchy, the budget sources and the level thresholds.
struct View {
    hierarchy: Hierarchy,
    rules: Vec<BudgetRule>,
    profiles: Vec<ProfileBudget>,
    labels: LabelPolicy,
    thresholds: Thresholds,
    all: bool,
}

impl View {
    async fn rows(&self, client: &DockerClient) -> anyhow::Result<Vec<Row>> {
        let containers = client.containers(self.all).await?;
        let mut rows: Vec<Row> = containers
            .iter()
            .map(|c| {
                row(
                    &self.hierarchy,
                    c,
                    &self.rules,
                    &self.profiles,
                    &self.labels,
                    &self.thresholds,
                )
            })
            .collect();
        rows.sort_by(|a, b| b.usage.cmp(&a.usage).then_with(|| a.name.cmp(&b.name)));
        Ok(rows)
    }

    /// The host's level line and the table; `colour` paints the levels (terminal only).
    fn table(&self, rows: &[Row], colour: bool) -> String {
        let host = match (
            crate::sources::host::mem_total(),
            crate::sources::host::mem_available(),
        ) {
            (Ok(total), Ok(available)) => {
                let h = health::host(total, available, &self.thresholds);
                format!(
                    "host: {} ({:.0} % of {} in use, {} available)\n",
                    paint(h.level, colour),
                    h.share * 100.0,
                    total,
                    available
                )
            }
            _ => "host: - (/proc/meminfo unreadable)\n".to_string(),
        };
        host + &format_table(rows, colour)
    }
}

/// A level's name, in colour on a terminal (green, yellow, red, bold red).
fn paint(level: Level, colour: bool) -> String {
    if !colour {
        return level.to_string();
    }
    let code = match level {
        Level::Safe => "32",
        Level::Warning => "33",
        Level::Critical => "31",
        Level::Emergency => "1;31",
    };
    format!("\x1b[{code}m{level}\x1b[0m")
}

fn row(
    hierarchy: &Hierarchy,
    c: &Container,
    rules: &[BudgetRule],
    profiles: &[ProfileBudget],
    labels: &LabelPolicy,
    thresholds: &Thresholds,
) -> Row {
    let guard = resolve_guard(c, rules, profiles, labels);
    // A container that exits between the listing and this read has no reading: blank row.
    let reading: Option<MemoryReading> = c.cgroup.as_ref().and_then(|cg| {
        let memory = cg.memory_path.as_deref()?;
        read_memory(hierarchy, memory, cg.path.as_deref()).ok()
    });
    let state = if c.oom_killed && c.run_state() != ContainerState::Running {
        "oom-killed".to_string()
    } else {
        c.state.clone()
    };
    let health = reading.as_ref().and_then(|r| {
        health::container(
            r.working_set,
            r.limit.or(c.memory_limit),
            r.high,
            guard.budget.as_ref().map(|b| b.bytes),
            thresholds,
        )
    });
    Row {
        name: c.display_name(),
        id: c.id.chars().take(12).collect(),
        image: c.image.clone(),
        project: c.compose.as_ref().map(|s| s.project.clone()),
        service: c.compose.as_ref().map(|s| s.service.clone()),
        state,
        usage: reading.as_ref().map(|r| r.usage),
        working_set: reading.as_ref().map(|r| r.working_set),
        peak: reading.as_ref().and_then(|r| r.peak),
        limit: reading.as_ref().and_then(|r| r.limit).or(c.memory_limit),
        high: reading.as_ref().and_then(|r| r.high),
        budget: guard.budget,
        priority: guard.priority,
        avoid: guard.avoid,
        ignored_labels: guard.ignored_labels,
        psi_some_avg10: reading
            .as_ref()
            .and_then(|r| r.pressure)
            .map(|p| p.some.avg10),
        oom_kills: reading.as_ref().map(|r| r.oom_kills),
        oom_killed: c.oom_killed,
        cgroup_id: c.cgroup.as_ref().map(|cg| cg.id.0),
        health,
    }
}

fn format_table(rows: &[Row], colour: bool) -> String {
    use std::fmt::Write as _;
    let show = |b: Option<Bytes>| b.map(|b| b.to_string()).unwrap_or_else(|| "-".into());
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$}  {:<10}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:<22}  {:>6}  {:>4}  BUDGET FROM",
        "NAME", "STATE", "USAGE", "WORKSET", "PEAK", "LIMIT", "HIGH", "BUDGET", "LEVEL", "PSI10", "OOM"
    );
    for r in rows {
        let mut from = match (&r.budget, r.avoid) {
            (_, true) => "avoid (never squeezed)".to_string(),
            (Some(b), false) => b.source.to_string(),
            (None, false) => "- (observed only)".to_string(),
        };
        for why in &r.ignored_labels {
            from.push_str(&format!("; {why}"));
        }
        // "critical 81% of budget", padded before painting so the columns stay aligned.
        let level = match &r.health {
            Some(h) => {
                let text = format!("{} {:.0}% of {}", h.level, h.share * 100.0, h.against);
                let pad = 22usize.saturating_sub(text.chars().count());
                let painted = text.replacen(h.level.as_str(), &paint(h.level, colour), 1);
                format!("{painted}{}", " ".repeat(pad))
            }
            None => format!("{:<22}", "-"),
        };
        let _ = writeln!(
            out,
            "{:<width$}  {:<10}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {level}  {:>6}  {:>4}  {from}",
            r.name,
            r.state,
            show(r.usage),
            show(r.working_set),
            show(r.peak),
            show(r.limit),
            show(r.high),
            show(r.budget.as_ref().map(|b| b.bytes)),
            r.psi_some_avg10
                .map(|p| format!("{p:.2}"))
                .unwrap_or_else(|| "-".into()),
            r.oom_kills
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
        );
    }
    out
}
