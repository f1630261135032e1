use std::process::ExitCode;

use clap::Parser;
use guardian::cli::{self, exit_code, Cli, UsageError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_logging(cli::log_level(cli.quiet, cli.verbose));
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line: the cause chain joined, so the fix at the end stays visible.
            let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", chain.join(": "));
            // Checks that fail return their code; an error is bad input or a job not done.
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(exit_code::BAD_INPUT)
            } else {
                ExitCode::from(exit_code::UNABLE)
            }
        }
    }
}
