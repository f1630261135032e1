//! `guardian status`: what the daemon is recording, read from its store.

use std::{path::PathBuf, process::ExitCode};

use serde::Serialize;

use super::{Output, StateArgs};
use crate::{
    model::{ActionRecord, Bytes, JournalEntry, RunRecord},
    policy::{
        growth::{growth, Growth, GrowthRule},
        health::{self, Health},
        leftovers::{leftovers, Leftover, Running},
    },
    store::{RunFilter, Store},
};

/// Options of `guardian status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    state: StateArgs,
    /// How many of the latest enforcement actions to show.
    #[arg(long, default_value_t = 20)]
    actions: usize,
    /// A compose project whose newest container started longer ago than this is listed as left
    /// over (its CI job is over, it still holds memory).
    #[arg(long, default_value = "2h", value_parser = super::parse_duration)]
    leftover_after: std::time::Duration,
    /// A rise must last at least this long to count as growth (a leak, not a warm-up).
    #[arg(long, default_value = "10m", value_parser = super::parse_duration)]
    growth_over: std::time::Duration,
}

#[derive(Debug, Serialize)]
struct Growing {
    name: String,
    growth: Growth,
}

#[derive(Debug, Serialize)]
struct Status {
    /// The daemon's pid while it runs.
    daemon_pid: Option<u32>,
    store: PathBuf,
    schema_version: i64,
    /// Runs still open at the last flush, largest peak first.
    running: Vec<RunRecord>,
    /// Runs recorded in all.
    runs_recorded: usize,
    /// Values guardian holds changed right now (memory.high, cgroup.freeze), with the originals
    /// it will put back.
    holding: Vec<JournalEntry>,
    /// The latest enforcement actions, oldest first.
    actions: Vec<ActionRecord>,
    /// Running containers whose working set keeps rising (a robust slope over the stored
    /// timeline, policy/growth.rs), by name.
    growing: Vec<Growing>,
    /// Compose projects nothing started anything in for longer than `--leftover-after`, with the
    /// memory they hold.
    leftovers: Vec<Leftover>,
    /// The host's health level now (MemTotal − MemAvailable against MemTotal, thresholds from
    /// the config's `[health]`); `None` when /proc/meminfo cannot be read.
    host_health: Option<Health>,
}

/// The daemon's pid, if one holds this state directory's lock.
fn daemon_pid(state_dir: &std::path::Path) -> Option<u32> {
    crate::store::lock::holder(state_dir)?.pid
}

pub async fn run(args: StatusArgs, output: Output) -> anyhow::Result<ExitCode> {
    let config = args.state.config()?;
    let state_dir = config.state_dir.clone();
    let store = Store::open_existing(&state_dir)?;
    let runs = store.runs(&RunFilter::default())?;
    let mut running: Vec<RunRecord> = runs
        .iter()
        .filter(|r| r.ended_at_ms.is_none())
        .cloned()
        .collect();
    running.sort_by_key(|r| std::cmp::Reverse(r.peak));
    let mut growing = Vec::new();
    let mut still_up = Vec::new();
    for r in &running {
        let timeline = store.working_set_timeline(&r.container_id, r.started_at_ms)?;
        let rule = GrowthRule {
            min_span_ms: args.growth_over.as_millis() as i64,
            ..GrowthRule::default()
        };
        if let Some(g) = growth(&timeline, &rule) {
            growing.push(Growing {
                name: r.display_name(),
                growth: g,
            });
        }
        still_up.push(Running {
            project: r.project.clone(),
            name: r.display_name(),
            started_at_ms: r.started_at_ms,
            holds: timeline.last().map_or(r.typical_working_set(), |p| p.1),
        });
    }
    // Without a daemon, "running" only means "running at the last flush": a crash or a reboot
    // would list last week's stacks as left over.
    if daemon_pid(&state_dir).is_none() {
        still_up.clear();
    }
    let leftovers = leftovers(
        &still_up,
        crate::model::now_ms(),
        args.leftover_after.as_millis() as i64,
    );
    let status = Status {
        daemon_pid: daemon_pid(&state_dir),
        store: Store::file(&state_dir),
        schema_version: store.schema_version()?,
        running,
        runs_recorded: runs.len(),
        holding: store.journal()?,
        actions: store.actions(0, args.actions)?,
        growing,
        leftovers,
        host_health: {
            match (
                crate::sources::host::mem_total(),
                crate::sources::host::mem_available(),
            ) {
                (Ok(total), Ok(available)) => Some(health::host(total, available, &config.health)),
                _ => None,
            }
        },
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        Output::Human => {
            match status.daemon_pid {
                Some(pid) => println!("daemon: running (pid {pid})"),
                None => println!("daemon: not running (showing the store as last flushed)"),
            }
            if let Some(h) = &status.host_health {
                println!(
                    "host: {} ({:.0} % of {} in use)",
                    h.level,
                    h.share * 100.0,
                    h.ceiling
                );
            }
            println!(
                "store: {} (schema {}), {} runs recorded",
                status.store.display(),
                status.schema_version,
                status.runs_recorded
            );
            let show = |b: Option<Bytes>| b.map(|b| b.to_string()).unwrap_or_else(|| "-".into());
            // PEAK is the kernel's high-water mark (page cache included); UNRECL the part no
            // reclaim could free, what `guardian profile` sizes limits from.
            println!(
                "{:<32} {:>10} {:>10} {:>10} {:>10} {:>4}",
                "CONTAINER", "PEAK", "UNRECL", "STARTUP", "LIMIT", "OOM"
            );
            for r in &status.running {
                let name = r.display_name();
                println!(
                    "{name:<32} {:>10} {:>10} {:>10} {:>10} {:>4}",
                    r.peak.to_string(),
                    show(r.peak_unreclaimable),
                    r.startup_peak.to_string(),
                    show(r.memory_limit),
                    r.oom_kills
                );
            }
            for g in &status.growing {
                println!("{}: {}", g.name, g.growth);
            }
            for l in &status.leftovers {
                println!(
                    "left over: project {} ({}) holds {}, nothing started in it for {}",
                    l.project,
                    l.containers.join(", "),
                    l.holds,
                    humantime::format_duration(std::time::Duration::from_secs(
                        (l.idle_for_ms / 1000).max(0) as u64
                    ))
                );
            }
            if !status.holding.is_empty() {
                println!("\nholding (restored when the daemon stops):");
                for j in &status.holding {
                    println!("  {}  original {}", j.file, j.original);
                }
            }
            if !status.actions.is_empty() {
                println!("\nlatest actions:");
                for a in &status.actions {
                    let when = crate::model::time::rfc3339_seconds(a.at_ms);
                    println!(
                        "  {when}  {:<24} {:<12} {} -> {}  ({}{})  {}",
                        a.name,
                        a.action,
                        a.before,
                        a.after,
                        a.trigger,
                        if a.dry_run { ", dry run" } else { "" },
                        a.reason
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
