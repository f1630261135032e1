//! `guardian status`: what the daemon is recording, read from its store.

use std::{path::PathBuf, process::ExitCode};

use serde::Serialize;

use super::{Output, StateArgs};
use crate::{
    model::{ActionRecord, Bytes, JournalEntry, RunRecord},
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
}

/// The daemon's pid, if one holds this state directory's lock.
fn daemon_pid(state_dir: &std::path::Path) -> Option<u32> {
    crate::store::lock::holder(state_dir)?.pid
}

pub async fn run(args: StatusArgs, output: Output) -> anyhow::Result<ExitCode> {
    let state_dir = args.state.state_dir()?;
    let store = Store::open_existing(&state_dir)?;
    let runs = store.runs(&RunFilter::default())?;
    let mut running: Vec<RunRecord> = runs
        .iter()
        .filter(|r| r.ended_at_ms.is_none())
        .cloned()
        .collect();
    running.sort_by_key(|r| std::cmp::Reverse(r.peak));
    let status = Status {
        daemon_pid: daemon_pid(&state_dir),
        store: Store::file(&state_dir),
        schema_version: store.schema_version()?,
        running,
        runs_recorded: runs.len(),
        holding: store.journal()?,
        actions: store.actions(0, args.actions)?,
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        Output::Human => {
            match status.daemon_pid {
                Some(pid) => println!("daemon: running (pid {pid})"),
                None => println!("daemon: not running (showing the store as last flushed)"),
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
            if !status.holding.is_empty() {
                println!("\nholding (restored when the daemon stops):");
                for j in &status.holding {
                    println!("  {}  original {}", j.file, j.original);
                }
            }
            if !status.actions.is_empty() {
                println!("\nlatest actions:");
                for a in &status.actions {
                    let when = humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH
                            + std::time::Duration::from_millis(a.at_ms.max(0) as u64),
                    );
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
