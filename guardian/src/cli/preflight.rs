//! `guardian preflight`: will this stack's memory fit on this host, before it starts?

use std::process::ExitCode;

use serde::Serialize;

use super::{
    stack::{Stack, StackArgs},
    Output, UsageError,
};
use crate::{
    model::Bytes,
    policy::staging::{levels, plan_waves, Need, NeedSource, Wave},
};

/// Options of `guardian preflight`.
#[derive(Debug, clap::Args)]
pub struct PreflightArgs {
    #[command(flatten)]
    stack: StackArgs,
}

#[derive(Debug, Serialize)]
struct Row {
    service: String,
    #[serde(flatten)]
    need: Need,
    wave: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    project: String,
    available: Bytes,
    reserve: Bytes,
    budget: Bytes,
    services: Vec<Row>,
    waves: Vec<Wave>,
    steady_total: Bytes,
    worst_wave: Bytes,
    unknown: Vec<String>,
    fits: bool,
}

pub async fn run(args: PreflightArgs, output: Output) -> anyhow::Result<ExitCode> {
    let args = args.stack;
    let stack = Stack::load(&args.files, args.project.as_deref())?;
    let order =
        levels(&stack.depends_on(), &args.services).map_err(|e| UsageError(e.to_string()))?;
    let needs = stack.needs(&args.state_dir, args.profile.as_deref())?;
    let available = match args.available {
        Some(a) => a,
        None => crate::sources::host::mem_available()?,
    };
    let budget = Bytes(available.0.saturating_sub(args.reserve.0));
    let waves = plan_waves(&order, &needs, budget);
    let mut services = Vec::new();
    for (i, w) in waves.iter().enumerate() {
        for s in &w.services {
            services.push(Row {
                service: s.clone(),
                need: needs.get(s).copied().unwrap_or_default(),
                wave: i + 1,
            });
        }
    }
    let steady_total = Bytes(
        services
            .iter()
            .filter_map(|r| r.need.steady)
            .map(|b| b.0)
            .sum(),
    );
    let worst_wave = waves.iter().map(|w| w.need).max().unwrap_or_default();
    let unknown: Vec<String> = services
        .iter()
        .filter(|r| r.need.source == NeedSource::Unknown)
        .map(|r| r.service.clone())
        .collect();
    let fits = steady_total <= budget && worst_wave <= budget;
    let report = Report {
        project: stack.project.clone(),
        available,
        reserve: args.reserve,
        budget,
        services,
        waves,
        steady_total,
        worst_wave,
        unknown,
        fits,
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Human => print(&report),
    }
    Ok(if report.fits {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print(r: &Report) {
    let show = |b: Option<Bytes>| b.map(|b| b.to_string()).unwrap_or_else(|| "?".into());
    println!(
        "{:<20} {:>10} {:>10}  {:<11} {:>4}",
        "SERVICE", "START-UP", "STEADY", "FROM", "WAVE"
    );
    for row in &r.services {
        let from = match row.need.source {
            NeedSource::Recorded => "recorded",
            NeedSource::RecordedElsewhere => "other project",
            NeedSource::Limit => "limit",
            NeedSource::Reservation => "reservation",
            NeedSource::Unknown => "UNKNOWN",
        };
        println!(
            "{:<20} {:>10} {:>10}  {:<11} {:>4}",
            row.service,
            show(row.need.startup),
            show(row.need.steady),
            from,
            row.wave
        );
    }
    let verdict = if r.fits { "fits" } else { "DOES NOT FIT" };
    println!(
        "{verdict}: project {} needs {} steady and {} in its worst wave; {} available − {} reserve = {} budget{}",
        r.project,
        r.steady_total,
        r.worst_wave,
        r.available,
        r.reserve,
        r.budget,
        if r.unknown.is_empty() { String::new() } else { format!("; unknown: {}", r.unknown.join(", ")) }
    );
}
