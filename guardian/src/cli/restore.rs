//! `guardian restore`: puts back every value the daemon changed (memory.high, cgroup.freeze),
//! from the journal in its store — what a daemon killed with SIGKILL left behind. The daemon
//! does the same at start-up; this is for `ExecStopPost=` and for people.

use std::process::ExitCode;

use super::{Output, StateArgs, UsageError};
use crate::{
    actions::Executor,
    sources::cgroup::Hierarchy,
    store::{
        lock::{LockError, StateLock},
        Store,
    },
};

/// Options of `guardian restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    state: StateArgs,
}

pub async fn run(args: RestoreArgs, output: Output) -> anyhow::Result<ExitCode> {
    let state_dir = args.state.state_dir()?;
    let store = Store::open_existing(&state_dir)?;
    // The lock, not a pid file, says whether a daemon is alive; holding it while we restore
    // also keeps a daemon from starting half-way through.
    let _lock = match StateLock::acquire(&state_dir) {
        Ok(lock) => lock,
        Err(LockError::Held { holder, .. }) => {
            return Err(UsageError(format!(
                "the daemon ({holder}) is running and holds these values; stop it (it restores them on exit)"
            ))
            .into())
        }
        Err(e) => return Err(e.into()),
    };
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
        ExitCode::from(super::exit_code::UNABLE)
    })
}
