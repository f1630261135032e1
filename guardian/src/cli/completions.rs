//! `guardian completions <shell>` and the hidden `guardian manpage`: both generated from the
//! clap definitions, so they cannot drift from the commands (the package installs both).

use std::process::ExitCode;

use clap::CommandFactory as _;

use super::Cli;

/// Options of `guardian completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// Prints the completion script for the shell to stdout.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    clap_complete::generate(
        args.shell,
        &mut Cli::command(),
        "guardian",
        &mut std::io::stdout(),
    );
    Ok(ExitCode::SUCCESS)
}

/// Prints guardian(1) in roff to stdout: the commands, options and exit codes.
pub fn manpage() -> anyhow::Result<ExitCode> {
    clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_man_page_lists_every_command_and_the_exit_codes() {
        let mut roff = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut roff)
            .unwrap();
        let roff = String::from_utf8(roff).unwrap();
        for command in ["daemon", "status", "restore", "preflight", "completions"] {
            assert!(roff.contains(command), "{command} missing");
        }
        assert!(roff.contains("could not do its job"), "{roff}");
        assert!(roff.contains("GUARDIAN_STATE_DIR"), "{roff}");
    }

    #[test]
    fn bash_completion_offers_the_subcommands() {
        let mut script = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "guardian",
            &mut script,
        );
        let script = String::from_utf8(script).unwrap();
        assert!(script.contains("preflight"));
        assert!(script.contains("--state-dir"));
    }
}
