//! `guardian ps`: every container with its memory as the kernel counts it, largest first.

use std::{path::PathBuf, process::ExitCode};

use serde::Serialize;

use super::{Output, UsageError};
use crate::{
    config::Config,
    model::{
        resolve_guard, Budget, BudgetRule, Bytes, Container, ContainerState, LabelPolicy,
        MemoryReading, ProfileBudget,
    },
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
}

pub async fn run(args: PsArgs, output: Output) -> anyhow::Result<ExitCode> {
    let hierarchy = Hierarchy::detect()?;
    let client = DockerClient::connect(hierarchy.clone()).await?;
    let config = Config::load(args.config.as_deref()).map_err(|e| UsageError(e.to_string()))?;
    let (profiles, errors) = budgets_from(&config.enforce.profiles);
    let labels = config.enforce.label_policy();
    if let Some(e) = errors.first() {
        return Err(UsageError(format!("{e}; fix or remove the profile")).into());
    }
    let containers = client.containers(args.all).await?;
    let mut rows: Vec<Row> = containers
        .iter()
        .map(|c| row(&hierarchy, c, &config.budget, &profiles, &labels))
        .collect();
    rows.sort_by(|a, b| b.usage.cmp(&a.usage).then_with(|| a.name.cmp(&b.name)));
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Human => print_table(&rows),
    }
    Ok(ExitCode::SUCCESS)
}

fn row(
    hierarchy: &Hierarchy,
    c: &Container,
    rules: &[BudgetRule],
    profiles: &[ProfileBudget],
    labels: &LabelPolicy,
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
    }
}

fn print_table(rows: &[Row]) {
    let show = |b: Option<Bytes>| b.map(|b| b.to_string()).unwrap_or_else(|| "-".into());
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    println!(
        "{:<width$}  {:<10}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>6}  {:>4}  BUDGET FROM",
        "NAME", "STATE", "USAGE", "WORKSET", "PEAK", "LIMIT", "HIGH", "BUDGET", "PSI10", "OOM"
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
        println!(
            "{:<width$}  {:<10}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>6}  {:>4}  {from}",
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
}
