//! `guardian report`: the OOM post-mortems the daemon recorded — list them, show one as
//! Markdown, JSON or HTML, or turn a CI run's kills into JUnit XML / GitHub annotations so the
//! job fails with the reason instead of "exit 137".

use std::{fmt::Write as _, process::ExitCode, time::Duration};

use super::{parse_duration, Output, StateArgs, UsageError};
use crate::{
    model::{Cause, Incident},
    policy::incidents::{fails_ci, headline},
    report::incident::{esc, render, show, Format},
    store::Store,
};

/// Options of `guardian report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    state: StateArgs,
    #[command(subcommand)]
    command: ReportCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ReportCommand {
    /// Every recorded OOM incident, newest last.
    List {
        /// Only incidents this recent, e.g. 2h.
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
    },
    /// One incident (an id from `list`, or a unique prefix of it).
    Show {
        id: String,
        #[arg(long, value_enum, default_value_t = Format::Md)]
        format: Format,
    },
    /// The kills of a CI run as JUnit XML or GitHub Actions annotations; exit 1 if there were any.
    Ci {
        /// The run's length: incidents this recent, e.g. 30m.
        #[arg(long, value_parser = parse_duration, default_value = "1h")]
        since: Duration,
        #[arg(long, value_enum, default_value_t = CiFormat::Github)]
        format: CiFormat,
        /// Only this compose project.
        #[arg(long)]
        project: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum CiFormat {
    Junit,
    Github,
}

fn since_ms(d: Option<Duration>) -> i64 {
    d.map_or(0, |d| crate::model::now_ms() - d.as_millis() as i64)
}

pub async fn run(args: ReportArgs, output: Output) -> anyhow::Result<ExitCode> {
    let store = Store::open_existing(&args.state.state_dir()?)?;
    match args.command {
        ReportCommand::List { since } => {
            let incidents = store.incidents(since_ms(since))?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&incidents)?),
                Output::Human => print_list(&incidents),
            }
            Ok(ExitCode::SUCCESS)
        }
        ReportCommand::Show { id, format } => {
            let incident = store.incident(&id)?.ok_or_else(|| {
                UsageError(format!(
                    "no incident {id:?} (or more than one starts so); `guardian report list` shows them"
                ))
            })?;
            let format = if output == Output::Json {
                Format::Json
            } else {
                format
            };
            print!("{}", render(&incident, format));
            Ok(ExitCode::SUCCESS)
        }
        ReportCommand::Ci {
            since,
            format,
            project,
        } => {
            let incidents: Vec<Incident> = store
                .incidents(since_ms(Some(since)))?
                .into_iter()
                .filter(|i| {
                    project.as_deref().is_none_or(|p| {
                        i.container.as_ref().and_then(|c| c.project.as_deref()) == Some(p)
                    })
                })
                .collect();
            print!(
                "{}",
                match format {
                    CiFormat::Junit => junit(&incidents),
                    CiFormat::Github => github(&incidents),
                }
            );
            // Warnings and throttling are annotated; kills and freezes fail the run.
            Ok(if incidents.iter().any(|i| fails_ci(&i.cause)) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

fn print_list(incidents: &[Incident]) {
    if incidents.is_empty() {
        println!("no incidents recorded");
        return;
    }
    println!(
        "{:<44} {:<24} {:<24} {:<9} {:>9} {:>9} {:>9}",
        "ID", "TIME", "NAME", "KIND", "LIMIT", "PEAK", "SUGGEST"
    );
    for i in incidents {
        let kind = match (&i.cause, i.kind) {
            (Cause::KernelOom, Some(crate::model::OomKind::Cgroup)) => "cgroup",
            (Cause::KernelOom, Some(crate::model::OomKind::Global)) => "global",
            (Cause::KernelOom, None) => "?",
            (other, _) => other.name(),
        };
        println!(
            "{:<44} {:<24} {:<24} {:<9} {:>9} {:>9} {:>9}",
            i.id,
            i.time,
            i.name,
            kind,
            show(i.limit),
            show(i.peak),
            show(i.suggested_limit)
        );
    }
}

/// How an incident is titled in CI output: "OOM kill: ci/db", "Frozen by guardian: ci/db".
fn ci_title(i: &Incident) -> String {
    format!("{}: {}", headline(&i.cause), i.name)
}

/// One failing test case per kill or freeze, named by the service; warnings and throttling are
/// passing test cases with their text as output.
fn junit(incidents: &[Incident]) -> String {
    let mut o = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let failures = incidents.iter().filter(|i| fails_ci(&i.cause)).count();
    let _ = writeln!(
        o,
        "<testsuite name=\"guardian OOM kills\" tests=\"{}\" failures=\"{}\">",
        incidents.len().max(1),
        failures
    );
    if incidents.is_empty() {
        o.push_str("  <testcase classname=\"guardian\" name=\"no OOM kills\"/>\n");
    }
    for i in incidents.iter().filter(|i| !fails_ci(&i.cause)) {
        let _ = writeln!(
            o,
            "  <testcase classname=\"guardian.{}\" name=\"{}\">\n    <system-out>{}</system-out>\n  </testcase>",
            i.cause.name(),
            esc(&i.name),
            esc(&format!("{}: {}", ci_title(i), i.next_step))
        );
    }
    for i in incidents.iter().filter(|i| fails_ci(&i.cause)) {
        let _ = writeln!(
            o,
            "  <testcase classname=\"guardian.{}\" name=\"{}\">\n    <failure message=\"{}\" type=\"{}\">{}</failure>\n  </testcase>",
            i.cause.name(),
            esc(&i.name),
            esc(&match i.cause {
                Cause::KernelOom => format!("OOM kill of {}: {}", i.name, i.next_step),
                _ => format!("{}: {}", ci_title(i), i.next_step),
            }),
            match i.cause {
                Cause::KernelOom => "oom_kill",
                _ => i.cause.name(),
            },
            esc(&render(i, Format::Md))
        );
    }
    o.push_str("</testsuite>\n");
    o
}

/// `::error` workflow commands: one annotation per kill with the reason and the next step.
fn github(incidents: &[Incident]) -> String {
    let esc = |s: &str| {
        s.replace('%', "%25")
            .replace('\r', "%0D")
            .replace('\n', "%0A")
    };
    let title = |s: &str| esc(s).replace(':', "%3A").replace(',', "%2C");
    incidents
        .iter()
        .map(|i| {
            format!(
                "::{} title={}::{} (report {})\n",
                if fails_ci(&i.cause) {
                    "error"
                } else {
                    "warning"
                },
                title(&ci_title(i)),
                esc(&i.next_step),
                i.id
            )
        })
        .collect()
}
