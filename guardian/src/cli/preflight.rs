//! `guardian preflight`: will this stack's memory fit on this host, before it starts? Only
//! what is known (recorded needs, reservations) can fail a stack; limits are ceilings, so a
//! stack known only by its limits gets "cannot tell yet" and its own exit code.

use std::{collections::HashMap, process::ExitCode};

use serde::Serialize;

use super::{
    exit_code,
    stack::{Stack, StackArgs},
    Output, UsageError,
};
use crate::{
    model::Bytes,
    policy::{
        stack::{verdict, Knowledge, LeftOut, ServicePlan, Totals, Verdict},
        staging::{levels, plan_waves, Need, NeedSource, Wave},
    },
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
    plan: ServicePlan,
    wave: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    project: String,
    available: Bytes,
    reserve: Bytes,
    budget: Bytes,
    host_total: Bytes,
    services: Vec<Row>,
    left_out: Vec<LeftOut>,
    /// Waves split by known needs only: a limit is no reason to wait.
    waves: Vec<Wave>,
    #[serde(flatten)]
    totals: Totals,
    unknown: Vec<String>,
    verdict: Verdict,
    fits: bool,
}

pub async fn run(args: PreflightArgs, output: Output) -> anyhow::Result<ExitCode> {
    let args = args.stack;
    let stack = Stack::load(&args.compose, &args.services)?;
    stack.check_wanted(&args.services)?;
    let order =
        levels(&stack.depends_on(), &args.services).map_err(|e| UsageError(e.to_string()))?;
    let plan = stack.plan(&args.state.state_dir()?, args.profile_file.as_deref())?;
    let available = match args.available {
        Some(a) => a,
        None => crate::sources::host::mem_available()?,
    };
    let budget = Bytes(available.0.saturating_sub(args.reserve.0));
    let in_order: Vec<&String> = order.iter().flatten().collect();
    let plans: HashMap<String, ServicePlan> = plan
        .services
        .iter()
        .filter(|(s, _)| in_order.contains(s))
        .map(|(s, p)| (s.clone(), p.clone()))
        .collect();
    let known: HashMap<String, Need> = plans
        .iter()
        .filter(|(_, p)| p.knowledge == Knowledge::Known)
        .map(|(s, p)| (s.clone(), p.need))
        .collect();
    let waves = plan_waves(&order, &known, budget);
    let worst = waves.iter().map(|w| w.need).max().unwrap_or_default();
    let (verdict, totals) = verdict(&plans, worst, budget);
    let mut services = Vec::new();
    for (i, w) in waves.iter().enumerate() {
        for s in &w.services {
            services.push(Row {
                service: s.clone(),
                plan: plans[s].clone(),
                wave: i + 1,
            });
        }
    }
    let unknown = services
        .iter()
        .filter(|r| r.plan.need.source == NeedSource::Unknown)
        .map(|r| r.service.clone())
        .collect();
    let report = Report {
        project: stack.project.clone(),
        available,
        reserve: args.reserve,
        budget,
        host_total: crate::sources::host::mem_total()?,
        services,
        left_out: plan.left_out,
        waves,
        totals,
        unknown,
        verdict,
        fits: verdict == Verdict::Fits,
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Human => print(&report),
    }
    Ok(match report.verdict {
        Verdict::Fits => ExitCode::SUCCESS,
        Verdict::DoesNotFit => ExitCode::FAILURE,
        Verdict::CannotTell => ExitCode::from(exit_code::CANNOT_TELL),
    })
}

fn print(r: &Report) {
    let show = |b: Option<Bytes>| b.map(|b| b.to_string()).unwrap_or_else(|| "-".into());
    println!(
        "{:<20} {:>3} {:>10} {:>10} {:>20} {:>10}  {:<13} {:>4}  WHY",
        "SERVICE", "N", "START-UP", "STEADY", "CEILING", "TMPFS+SHM", "FROM", "WAVE"
    );
    for row in &r.services {
        let p = &row.plan;
        let from = match p.need.source {
            NeedSource::Recorded => "recorded",
            NeedSource::RecordedElsewhere => "other project",
            NeedSource::Reservation => "reservation",
            NeedSource::Limit => "limit",
            NeedSource::Unknown => "nothing",
        };
        let (startup, steady) = match p.knowledge {
            Knowledge::Known => (show(p.need.startup), show(p.need.steady)),
            _ => ("?".into(), "?".into()),
        };
        let ceiling = match p.knowledge {
            Knowledge::Unbounded => format!("unbounded ({})", p.ceiling),
            _ => p.ceiling.to_string(),
        };
        println!(
            "{:<20} {:>3} {:>10} {:>10} {:>20} {:>10}  {:<13} {:>4}  {}",
            row.service,
            p.replicas,
            startup,
            steady,
            ceiling,
            show(p.unbounded_tmpfs),
            from,
            row.wave,
            p.reason
        );
    }
    for l in &r.left_out {
        println!("left out: {} ({})", l.service, l.reason);
    }
    let t = &r.totals;
    let known = format!(
        "known needs {} steady and {} in the worst wave; {} available − {} reserve = {} budget",
        t.known_steady, t.known_worst_wave, r.available, r.reserve, r.budget
    );
    match r.verdict {
        Verdict::Fits if t.bounded_ceiling.0 > 0 => println!(
            "fits: project {}: {known}; the services without history fit even at their limits ({})",
            r.project, t.bounded_ceiling
        ),
        Verdict::Fits => println!("fits: project {}: {known}", r.project),
        Verdict::DoesNotFit => println!("DOES NOT FIT: project {}: {known}", r.project),
        Verdict::CannotTell => println!(
            "cannot tell yet — run it once under the daemon: project {}: {known}; {} only bounded by limits (up to {}), {} unbounded",
            r.project,
            r.services.iter().filter(|s| s.plan.knowledge == Knowledge::Bounded).count(),
            t.bounded_ceiling,
            t.unbounded,
        ),
    }
}
