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
    let store = match Store::open_existing(&state_dir) {
        Ok(store) => store,
        // The journal of original values is in that file: say what may still be changed.
        Err(e) if e.is_unreadable_file() => {
            let suspects = Hierarchy::detect()
                .map(|h| crate::actions::possibly_changed(&h))
                .unwrap_or_default();
            let list = if suspects.is_empty() {
                "no cgroup has a memory.high other than max or is frozen, so nothing is left changed".to_string()
            } else {
                format!("these may still be changed: {}", suspects.join("; "))
            };
            return Err(UsageError(format!(
                "{e}; the journal of original values cannot be read: {list}"
            ))
            .into());
        }
        Err(e) => return Err(e.into()),
    };
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
