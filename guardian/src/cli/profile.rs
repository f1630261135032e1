//! `guardian profile`: limits from recorded peaks, as a compose override and a profile file;
//! `--check` compares a compose file's limits with them (a CI gate); `merge` combines runners.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, SystemTime},
};

use serde::Serialize;

use super::{parse_duration, Output, UsageError};
use crate::{
    model::{compose_size, Bytes, ProfileFile, Recommendation, ServiceUsage, PROFILE_SCHEMA},
    policy::profile::{merge, recommend, summarize, BaseMemory},
    report::{
        profile::compose_override,
        table::{self, Table},
        write_atomic,
    },
    sources::{
        compose::{stack_named_or_here, ComposeArgs, ComposeTool},
        profiles,
        prometheus::{self, Prometheus, PrometheusError},
    },
    store::{RunFilter, Store},
};

/// Options of `guardian profile`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ProfileArgs {
    #[command(subcommand)]
    action: Option<ProfileAction>,
    #[command(flatten)]
    state: super::StateArgs,
    /// Only this compose project.
    #[arg(long)]
    project: Option<String>,
    /// Only these services (repeatable).
    #[arg(long)]
    service: Vec<String>,
    /// Only runs that started within this long (e.g. 7d).
    #[arg(long, value_parser = parse_duration)]
    since: Option<Duration>,
    /// Only the latest N runs of each service.
    #[arg(long)]
    runs: Option<usize>,
    /// Margin over the observed peak: "20%" or "0.2".
    #[arg(long, default_value = "20%", value_parser = parse_margin)]
    margin: f64,
    /// Where to write the compose override.
    #[arg(long, default_value = "docker-compose.guardian.yml")]
    compose_out: PathBuf,
    /// Where to write the profile (default profiles/<project>.toml).
    #[arg(long)]
    profile_out: Option<PathBuf>,
    /// Compare the compose file's limits with the recommendation instead of writing files;
    /// exit 1 when a limit is below an observed peak.
    #[arg(long)]
    check: bool,
    /// Compose files, as `docker compose -f` (default: the ones compose finds here): --check
    /// reads their limits, and the override uses the memory keys they use.
    #[arg(short = 'f', long = "file")]
    files: Vec<PathBuf>,
    /// Compose profiles to activate (repeatable), as `docker compose --profile`.
    #[arg(long = "profile")]
    profiles: Vec<String>,
    /// Compose env file, as `docker compose --env-file`.
    #[arg(long = "env-file")]
    env_files: Vec<PathBuf>,
    /// Recommend from every runner: the base URL of the Prometheus that scrapes their guardian
    /// daemons (e.g. http://prometheus:9090) instead of this host's store.
    #[arg(long, value_name = "URL", conflicts_with_all = ["since", "runs"])]
    prometheus: Option<String>,
    /// With --prometheus: how far back to look (e.g. 14d).
    #[arg(long, default_value = "14d", value_parser = parse_duration, requires = "prometheus")]
    range: Duration,
    /// With --prometheus: PromQL label matchers that pick the runners, e.g. '{runner_pool="x"}'.
    #[arg(long, requires = "prometheus")]
    selector: Option<String>,
    /// Refuse (exit 1) to recommend for a service seen in fewer runs (default 3 with
    /// --prometheus, 1 from this host's store).
    #[arg(long, value_name = "N")]
    min_runs: Option<u64>,
    /// Print the recommendation table as CSV or Markdown instead of the human table.
    #[arg(long, value_enum)]
    table: Option<Table>,
}

/// The runs behind a recommendation, said with it.
#[derive(Clone, Debug, Serialize)]
struct Basis {
    /// The store file or the Prometheus URL.
    source: String,
    /// Runners whose runs count (1 for this host's store).
    runners: u64,
    /// Runs over all services.
    runs: u64,
}

#[derive(Debug, clap::Subcommand)]
enum ProfileAction {
    /// Combine profiles from several runners (highest peaks win) into one.
    Merge {
        /// Profile files to merge.
        #[arg(required = true, num_args = 2..)]
        files: Vec<PathBuf>,
        /// Where to write the merged profile.
        #[arg(short = 'o', long = "out")]
        out: PathBuf,
        /// Margin over the merged peaks.
        #[arg(long, default_value = "20%", value_parser = parse_margin)]
        margin: f64,
    },
}

fn parse_margin(s: &str) -> Result<f64, String> {
    let value = match s.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => s.trim().parse::<f64>(),
    }
    .map_err(|_| format!("{s:?} is not a margin; write 20% or 0.2"))?;
    if (0.0..=10.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{s:?} is out of range (0% to 1000%)"))
    }
}

fn now_rfc3339() -> String {
    crate::model::time::rfc3339_seconds(crate::model::now_ms())
}

pub async fn run(args: ProfileArgs, output: Output) -> anyhow::Result<ExitCode> {
    if let Some(ProfileAction::Merge { files, out, margin }) = &args.action {
        return merge_files(files, out, *margin, output);
    }
    let (recs, basis) = match &args.prometheus {
        Some(url) => fleet_recommendations(&args, url).await?,
        None => recommendations(&args)?,
    };
    if let Some(code) = refuse_below_min_runs(&args, &recs) {
        return Ok(code);
    }
    if args.check {
        return check(&args, &recs, output);
    }
    // The stack, when the user named one or one is here: read before anything is written, so
    // a broken stack writes nothing.
    let compose = compose_args(&args);
    let base: BTreeMap<String, BaseMemory> = if stack_named_or_here(&compose) {
        let tool = ComposeTool::detect().map_err(|e| UsageError(e.to_string()))?;
        let stack = tool
            .resolve(&compose)
            .map_err(|e| UsageError(e.to_string()))?;
        stack
            .model
            .services
            .iter()
            .map(|(name, svc)| {
                let base = BaseMemory {
                    key: svc.limit_key,
                    limit: svc.memory_limit,
                    memswap: svc.memswap_limit,
                };
                (name.clone(), base)
            })
            .collect()
    } else {
        BTreeMap::new()
    };
    let project = args
        .project
        .clone()
        .or_else(|| recs.iter().find_map(|r| r.usage.project.clone()));
    let profile_out = args.profile_out.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "profiles/{}.toml",
            project.as_deref().unwrap_or("default")
        ))
    });
    let file = ProfileFile {
        schema: PROFILE_SCHEMA,
        generated_at: now_rfc3339(),
        margin: args.margin,
        services: recs.clone(),
    };
    write_atomic(
        &args.compose_out,
        compose_override(&recs, args.margin, &base).as_bytes(),
    )?;
    write_atomic(&profile_out, file.to_toml().as_bytes())?;
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "recommendations": recs,
                "basis": basis,
                "compose_override": args.compose_out,
                "profile": profile_out,
            }))?
        ),
        Output::Human if args.table.is_some() => {
            // The table alone on stdout, so it can be redirected into a file; the rest to stderr.
            print!("{}", table::render(&recs, args.table.expect("checked")));
            eprintln!(
                "from {} run(s) on {} runner(s) ({}); wrote {} and {}",
                basis.runs,
                basis.runners,
                basis.source,
                args.compose_out.display(),
                profile_out.display()
            );
        }
        Output::Human => {
            print_recommendations(&recs);
            println!(
                "from {} run(s) on {} runner(s) ({})",
                basis.runs, basis.runners, basis.source
            );
            println!(
                "wrote {} and {}",
                args.compose_out.display(),
                profile_out.display()
            );
            let yours: String = if args.files.is_empty() {
                "-f <your compose file> ".into()
            } else {
                args.files
                    .iter()
                    .map(|f| format!("-f {} ", f.display()))
                    .collect()
            };
            println!(
                "use: docker compose {yours}-f {} up",
                args.compose_out.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Refuses, with exit 1 and the reason on stderr, when a service has fewer runs than the
/// minimum: a limit from one lucky run is a guess (as krr refuses below its minimum data points).
fn refuse_below_min_runs(args: &ProfileArgs, recs: &[Recommendation]) -> Option<ExitCode> {
    let min = args
        .min_runs
        .unwrap_or(if args.prometheus.is_some() { 3 } else { 1 });
    let few: Vec<String> = recs
        .iter()
        .filter(|r| r.usage.runs < min)
        .map(|r| format!("{} ({} run(s))", r.usage.service, r.usage.runs))
        .collect();
    if few.is_empty() {
        return None;
    }
    eprintln!(
        "refused: fewer than {min} runs for {}; wait for more runs, pick services with --service, or lower --min-runs",
        few.join(", ")
    );
    Some(ExitCode::from(super::exit_code::CHECK_FAILED))
}

/// Asks the fleet's Prometheus and recommends a limit per service, from every runner's peaks.
async fn fleet_recommendations(
    args: &ProfileArgs,
    url: &str,
) -> anyhow::Result<(Vec<Recommendation>, Basis)> {
    let usage_error = |e: PrometheusError| UsageError(e.to_string());
    let prometheus = Prometheus::new(url).map_err(usage_error)?;
    let matchers = prometheus::matchers(args.selector.as_deref(), args.project.as_deref());
    let fleet = prometheus
        .fleet(&matchers, args.range)
        .await
        .map_err(usage_error)?;
    let mut usage = fleet.services;
    if usage.is_empty() {
        return Err(UsageError(format!(
            "Prometheus at {url} has no {} series{} in the last {}: is it scraping the guardian daemons (see docs/operating.md, Many runners)?",
            crate::metrics::SERVICE_PEAK,
            if matchers.is_empty() { String::new() } else { format!(" matching {{{matchers}}}") },
            humantime::format_duration(args.range)
        ))
        .into());
    }
    select_services(args, &mut usage)?;
    let basis = Basis {
        source: url.to_string(),
        runners: fleet.runners,
        runs: usage.iter().map(|u| u.runs).sum(),
    };
    Ok((
        usage.iter().map(|u| recommend(u, args.margin)).collect(),
        basis,
    ))
}

/// Keeps the services named by --service; an unknown name is bad input.
fn select_services(args: &ProfileArgs, usage: &mut Vec<ServiceUsage>) -> Result<(), UsageError> {
    if args.service.is_empty() {
        return Ok(());
    }
    for s in &args.service {
        if !usage.iter().any(|u| &u.service == s) {
            let known: Vec<&str> = usage.iter().map(|u| u.service.as_str()).collect();
            return Err(UsageError(format!(
                "unknown service {s:?}; recorded: {}",
                known.join(", ")
            )));
        }
    }
    usage.retain(|u| args.service.contains(&u.service));
    Ok(())
}

/// Reads the store and recommends a limit per service.
fn recommendations(args: &ProfileArgs) -> anyhow::Result<(Vec<Recommendation>, Basis)> {
    let state_dir = args.state.state_dir()?;
    let store = Store::open_existing(&state_dir).map_err(|e| UsageError(e.to_string()))?;
    let since_ms = args.since.map(|d| {
        SystemTime::now()
            .checked_sub(d)
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |t| t.as_millis() as i64)
    });
    let runs = store.runs(&RunFilter {
        project: args.project.clone(),
        since_ms,
        last_runs: args.runs,
    })?;
    let mut usage = summarize(&runs);
    if usage.is_empty() {
        return Err(UsageError(format!(
            "no runs recorded in {}{}: let `guardian daemon` watch a run first",
            Store::file(&state_dir).display(),
            args.project
                .as_ref()
                .map(|p| format!(" for project {p}"))
                .unwrap_or_default()
        ))
        .into());
    }
    select_services(args, &mut usage)?;
    let basis = Basis {
        source: Store::file(&state_dir).display().to_string(),
        runners: 1,
        runs: usage.iter().map(|u| u.runs).sum(),
    };
    Ok((
        usage.iter().map(|u| recommend(u, args.margin)).collect(),
        basis,
    ))
}

/// PEAK is the kernel's high-water mark (page cache included), UNRECL the unreclaimable peak
/// ("-" for runs recorded before guardian measured it); WHY says which one sized the limit.
fn print_recommendations(recs: &[Recommendation]) {
    println!(
        "{:<28} {:>5} {:>10} {:>10} {:>10} {:>12}  WHY",
        "SERVICE", "RUNS", "PEAK", "UNRECL", "LIMIT", "RECOMMENDED"
    );
    for r in recs {
        let u = &r.usage;
        let name = match &u.project {
            Some(p) => format!("{p}/{}", u.service),
            None => u.service.clone(),
        };
        println!(
            "{name:<28} {:>5} {:>10} {:>10} {:>10} {:>12}  {}",
            u.runs,
            u.peak.to_string(),
            u.peak_unreclaimable
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            u.limit.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            compose_size(r.recommended_limit),
            r.reason
        );
    }
}

#[derive(Debug, Serialize)]
struct CheckRow {
    service: String,
    limit: Option<Bytes>,
    /// The peak the recommendation was sized from (unreclaimable, else high-water mark).
    peak: Option<Bytes>,
    recommended: Option<Bytes>,
    verdict: &'static str,
    /// How much the limit exceeds the recommendation.
    excess: Option<Bytes>,
}

fn check(args: &ProfileArgs, recs: &[Recommendation], output: Output) -> anyhow::Result<ExitCode> {
    let tool = ComposeTool::detect().map_err(|e| UsageError(e.to_string()))?;
    let stack = tool
        .resolve(&compose_args(args))
        .map_err(|e| UsageError(e.to_string()))?;
    let model = stack.model;
    let project = args.project.clone().unwrap_or(stack.project);
    let mut rows = Vec::new();
    for (service, svc) in &model.services {
        let rec = recs.iter().find(|r| {
            &r.usage.service == service && r.usage.project.as_deref() == Some(project.as_str())
        });
        let (verdict, excess) = match (rec, svc.memory_limit) {
            (None, _) => ("no data", None),
            (Some(r), Some(limit))
                if limit < r.usage.sizing_peak().0
                    || (r.usage.oom_killed && r.usage.limit == Some(limit)) =>
            {
                ("TOO LOW", None)
            }
            (Some(r), Some(limit)) if limit > r.recommended_limit => {
                ("oversized", Some(Bytes(limit.0 - r.recommended_limit.0)))
            }
            (Some(_), Some(_)) => ("ok", None),
            (Some(_), None) => ("no limit", None),
        };
        rows.push(CheckRow {
            service: service.clone(),
            limit: svc.memory_limit,
            peak: rec.map(|r| r.usage.sizing_peak().0),
            recommended: rec.map(|r| r.recommended_limit),
            verdict,
            excess,
        });
    }
    let too_low = rows.iter().filter(|r| r.verdict == "TOO LOW").count();
    let total_limits: u64 = rows.iter().filter_map(|r| r.limit).map(|b| b.0).sum();
    let saved: u64 = rows.iter().filter_map(|r| r.excess).map(|b| b.0).sum();
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "project": project,
                "services": rows,
                "too_low": too_low,
                "total_limits": total_limits,
                "saved": saved,
            }))?
        ),
        Output::Human => {
            let show = |b: Option<Bytes>| b.map(|b| b.to_string()).unwrap_or_else(|| "-".into());
            println!(
                "{:<20} {:>10} {:>10} {:>12}  VERDICT",
                "SERVICE", "LIMIT", "PEAK", "RECOMMENDED"
            );
            for r in &rows {
                println!(
                    "{:<20} {:>10} {:>10} {:>12}  {}",
                    r.service,
                    show(r.limit),
                    show(r.peak),
                    show(r.recommended),
                    r.verdict
                );
            }
            println!(
                "project {project}: limits total {}, {} could be freed; {too_low} limit(s) below an observed peak",
                Bytes(total_limits),
                Bytes(saved)
            );
        }
    }
    Ok(if too_low > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The compose options given to `guardian profile` (its --project filters the store).
fn compose_args(args: &ProfileArgs) -> ComposeArgs {
    ComposeArgs {
        files: args.files.clone(),
        project: None,
        profiles: args.profiles.clone(),
        env_files: args.env_files.clone(),
    }
}

fn merge_files(
    files: &[PathBuf],
    out: &Path,
    margin: f64,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let profiles = files
        .iter()
        .map(|f| {
            profiles::read(f)
                .map(|p| p.services)
                .map_err(|e| UsageError(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let merged = ProfileFile {
        schema: PROFILE_SCHEMA,
        generated_at: now_rfc3339(),
        margin,
        services: merge(&profiles, margin),
    };
    write_atomic(out, merged.to_toml().as_bytes())?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&merged)?),
        Output::Human => {
            print_recommendations(&merged.services);
            println!("wrote {} from {} profiles", out.display(), files.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}
