//! The `guardian` command line: one file per subcommand.

mod completions;
pub(crate) mod daemon;
mod doctor;
mod events;
mod preflight;
mod profile;
mod ps;
mod report;
mod restore;
mod stack;
mod status;
mod up;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;

/// Exit codes and environment, shown by `--help` and in the man page.
const AFTER_HELP: &str = "\
Exit codes:
  0  ok; the check asked for passed
  1  the check asked for failed: preflight does not fit, profile --check, report ci found kills,
     doctor found guardian cannot run, up left services not ready
  2  bad input: a flag, the config or a compose file, a service name (the message says the fix)
  3  guardian could not do its job: no permission, a kernel feature missing, the state directory
     held by another daemon, values restore could not put back
  4  preflight cannot tell yet: run the stack once under the daemon

Environment:
  GUARDIAN_CONFIG     the configuration file (as --config)
  GUARDIAN_STATE_DIR  the daemon's state directory (as --state-dir)
  GUARDIAN_LOG        log filter, e.g. debug or guardian=trace (overrides -q/-v)
  GUARDIAN_COMPOSE    the compose tool up, preflight and profile run
  NO_COLOR            no colour in logs";

/// Linux memory guardian: OOM kills, reclaim stalls and memory pressure, per cgroup.
#[derive(Debug, Parser)]
#[command(name = "guardian", version, about, after_long_help = AFTER_HELP)]
pub struct Cli {
    /// How to print results: for people, or one JSON document (per line) for machines.
    #[arg(long, global = true, value_enum, default_value_t = Output::Human)]
    pub output: Output,
    /// Log less: warnings and errors only.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Log more: -v debug, -vv trace.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// Output format shared by every command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Human,
    Json,
}

/// guardian's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check what guardian can use on this host, with a fix for each problem.
    Doctor,
    /// Stream OOM kills, reclaim stalls, pressure and container events as they happen.
    Events(events::EventsArgs),
    /// List containers with their memory as the kernel counts it, largest first.
    Ps(ps::PsArgs),
    /// Record every container's memory into the store and serve Prometheus metrics.
    Daemon(daemon::DaemonArgs),
    /// Show what the daemon is recording, what it holds changed, and its latest actions.
    Status(status::StatusArgs),
    /// OOM post-mortems: list them, show one (md, json, html), or report a CI run's kills.
    Report(report::ReportArgs),
    /// Put back every memory.high and freeze a stopped (or crashed) daemon left changed.
    Restore(restore::RestoreArgs),
    /// Turn recorded peaks into limits: a compose override and a profile file.
    Profile(profile::ProfileArgs),
    /// Check that a compose stack's memory fits on this host before starting it.
    Preflight(preflight::PreflightArgs),
    /// Start a compose stack in waves that fit in memory, in dependency order.
    Up(up::UpArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions(completions::CompletionsArgs),
    /// Print the man page guardian(1) in roff to stdout.
    #[command(hide = true)]
    Manpage,
}

/// guardian's exit codes, the same for every command (README, man page).
pub mod exit_code {
    /// The command did what was asked; a check passed.
    pub const OK: u8 = 0;
    /// The check asked for failed: preflight does not fit, `profile --check`, `report ci` found
    /// kills, `doctor` found guardian cannot run, `up` left services not ready.
    pub const CHECK_FAILED: u8 = 1;
    /// Bad input: a flag, a config or compose file, a service name; the message says what to fix.
    pub const BAD_INPUT: u8 = 2;
    /// guardian could not do its job: no permission, a kernel feature missing, the state
    /// directory held by another daemon, values it could not restore.
    pub const UNABLE: u8 = 3;
    /// preflight cannot tell yet: run the stack once under the daemon to record its needs.
    pub const CANNOT_TELL: u8 = 4;
}

/// Where a command finds the configuration and the daemon's state directory; every command that
/// reads the store takes these, so all of them agree with the daemon (see [`Config::resolve`]).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct StateArgs {
    /// The configuration file [default: /etc/guardian/guardian.toml, if it exists]
    #[arg(long, env = "GUARDIAN_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The daemon's state directory (its store) [default: the config's state_dir, else
    /// /var/lib/guardian]
    #[arg(long, env = "GUARDIAN_STATE_DIR", global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

impl StateArgs {
    /// The configuration, with the state directory resolved; a bad config file is bad input.
    pub fn config(&self) -> Result<Config, UsageError> {
        Config::resolve(self.config.as_deref(), self.state_dir.as_deref())
            .map_err(|e| UsageError(e.to_string()))
    }

    /// Only the state directory.
    pub fn state_dir(&self) -> Result<PathBuf, UsageError> {
        Ok(self.config()?.state_dir)
    }
}

/// Bad input the user can fix (malformed compose file, unknown service, empty store): exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Runs the parsed command on a tokio runtime and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Doctor => doctor::run(cli.output).await,
            Command::Events(args) => events::run(args, cli.output).await,
            Command::Ps(args) => ps::run(args, cli.output).await,
            Command::Daemon(args) => daemon::run(args, cli.output).await,
            Command::Status(args) => status::run(args, cli.output).await,
            Command::Restore(args) => restore::run(args, cli.output).await,
            Command::Report(args) => report::run(args, cli.output).await,
            Command::Profile(args) => profile::run(args, cli.output).await,
            Command::Preflight(args) => preflight::run(args, cli.output).await,
            Command::Up(args) => up::run(args, cli.output).await,
            Command::Completions(args) => completions::completions(args),
            Command::Manpage => completions::manpage(),
        }
    })
}

/// The log level `-q`/`-v` ask for: info by default.
pub fn log_level(quiet: bool, verbose: u8) -> &'static str {
    match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    }
}

/// Logs at `level` (`GUARDIAN_LOG`, e.g. `debug`, overrides it): to the journal with priorities
/// and fields when stderr is systemd's journal stream, else to stderr one line each, coloured
/// only on a terminal and without `NO_COLOR`.
pub fn init_logging(level: &str) {
    use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let filter = tracing_subscriber::EnvFilter::try_from_env("GUARDIAN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    if stderr_is_the_journal() {
        if let Ok(journal) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(filter)
                .with(
                    journal
                        .with_syslog_identifier("guardian".into())
                        // Fields as GUARDIAN_SUBJECT=, GUARDIAN_CGROUP_ID=, …; the prefix keeps
                        // a field named `priority` from overriding the journal's PRIORITY.
                        .with_field_prefix(Some("GUARDIAN".into())),
                )
                .init();
            return;
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .without_time()
        .init();
}

/// Colour only on a terminal, and never when `NO_COLOR` is set to anything non-empty
/// (no-color.org).
pub(crate) fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// systemd sets JOURNAL_STREAM to the device and inode of the stream it connected to stderr;
/// a match means stderr goes to the journal (not redirected by a script in between).
fn stderr_is_the_journal() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream.to_str() == Some(&format!("{}:{}", stderr.dev(), stderr.ino()))
}

/// Parses "30s", "500ms", "2m" for clap.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 30s, 2m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_line_is_well_formed() {
        // clap checks names, conflicts and defaults only when a command is parsed: a flag that
        // clashes with a global one (`--config`) would fail at run time, on the user's runner.
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn no_color_turns_colour_off_even_on_a_terminal() {
        assert!(colour(true, None));
        assert!(!colour(true, Some(std::ffi::OsStr::new("1"))));
        assert!(colour(true, Some(std::ffi::OsStr::new(""))));
        assert!(!colour(false, None));
    }

    #[test]
    fn quiet_and_verbose_set_the_level() {
        assert_eq!(log_level(false, 0), "info");
        assert_eq!(log_level(true, 0), "warn");
        assert_eq!(log_level(false, 1), "debug");
        assert_eq!(log_level(false, 3), "trace");
    }

    #[test]
    fn state_dir_and_config_are_flags_of_every_command_that_reads_the_store() {
        for command in [
            "status",
            "report list",
            "restore",
            "profile",
            "preflight",
            "up",
            "daemon",
        ] {
            let mut argv = vec!["guardian"];
            argv.extend(command.split(' '));
            argv.extend(["--state-dir", "/srv/g", "--config", "/etc/g.toml"]);
            let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{command}: {e}"));
            let text = format!("{cli:?}");
            assert!(
                text.contains("/srv/g") && text.contains("/etc/g.toml"),
                "{command}: {text}"
            );
        }
    }
}
