//! `guardian restore`: puts back every value the daemon changed (memory.high, cgroup.freeze),
//! from the journal in its store — what a daemon killed with SIGKILL left behind. The daemon
//! does the same at start-up; this is for `ExecStopPost=` and for people.

use std::{path::PathBuf, process::ExitCode};

use super::{status::daemon_pid, Output, UsageError};
use crate::{actions::Executor, sources::cgroup::Hierarchy, store::Store};

/// Options of `guardian restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The daemon's state directory.
    #[arg(long, default_value = "/var/lib/guardian")]
    state_dir: PathBuf,
}

pub async fn run(args: RestoreArgs, output: Output) -> anyhow::Result<ExitCode> {
    if let Some(pid) = daemon_pid(&args.state_dir) {
        return Err(UsageError(format!(
            "the daemon (pid {pid}) is running and holds these values; stop it (it restores them on exit)"
        ))
        .into());
    }
    let store = Store::open_existing(&args.state_dir)?;
    let executor = Executor::new(Hierarchy::detect()?, false);
    let restored = executor.restore_all(&store, "restore")?;
    let left = store.journal()?;
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({ "restored": restored, "left": left })
        ),
        Output::Human => {
            for a in &restored {
                println!("{}: {} -> {}", a.file, a.before, a.after);
            }
            println!(
                "restored {} value(s){}",
                restored.len(),
                if left.is_empty() {
                    String::new()
                } else {
                    format!("; {} could not be restored, see the log above", left.len())
                }
            );
        }
    }
    Ok(if left.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
