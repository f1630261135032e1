//! `cargo xtask fuzz`: builds the libFuzzer targets of `fuzz/` (cargo-fuzz, nightly) and runs
//! each for a bounded time over its committed seed corpus, printing executions, speed and the
//! coverage libFuzzer reached; a crash fails the task and names the input that reproduces it.
//!
//! New inputs libFuzzer finds go to `target/fuzz-corpus/<target>` (kept between runs, never
//! committed); `fuzz/corpus/<target>` holds the real captures the runs start from.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _};

use crate::{run_status, workspace_root};

/// Arguments of `cargo xtask fuzz`.
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// Seconds each target runs.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Only this target (see `fuzz/Cargo.toml`).
    #[arg(long)]
    pub only: Option<String>,
}

/// The flags every build and reproduction uses: no sanitizer (the parsers are safe Rust, so
/// what the targets find are panics, overflow and hangs; AddressSanitizer would halve the
/// executions for nothing), debug assertions and overflow checks on.
pub const BUILD_FLAGS: &[&str] = &["--sanitizer", "none", "--debug-assertions"];

/// What libFuzzer reported for one target.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Inputs executed.
    pub execs: u64,
    pub execs_per_sec: u64,
    /// Coverage counters hit (`cov:`): edges of the instrumented code.
    pub cov: u64,
    /// Features (`ft:`): edges refined by hit counts and compared values.
    pub ft: u64,
    /// Inputs in the corpus at the end (`corp:`).
    pub corpus: u64,
    /// Where libFuzzer wrote the input of a crash, timeout or out-of-memory, if it did.
    pub crash: Option<PathBuf>,
}

impl Stats {
    /// Takes in one line of libFuzzer's output (status lines, final stats, artifact notices).
    pub fn update(&mut self, line: &str) {
        let value = |key: &str| -> Option<u64> {
            let rest = &line[line.find(key)? + key.len()..];
            let digits: String = rest
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        };
        // Status lines: `#4096\tpulse  cov: 1167 ft: 2901 corp: 77/6321b lim: 1130 exec/s: …`.
        if let Some(status) = line.strip_prefix('#') {
            if let Some(v) = value("cov:") {
                self.cov = v;
            }
            if let Some(v) = value("ft:") {
                self.ft = v;
            }
            if let Some(v) = value("corp:") {
                self.corpus = v;
            }
            if let Some(v) = status
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
            {
                self.execs = v;
            }
        } else if let Some(v) = value("stat::number_of_executed_units:") {
            self.execs = v;
        } else if let Some(v) = value("stat::average_exec_per_sec:") {
            self.execs_per_sec = v;
        } else if let Some((_, path)) = line.split_once("Test unit written to ") {
            self.crash = Some(PathBuf::from(path.trim()));
        }
    }
}

/// The targets `fuzz/Cargo.toml` declares, in its order.
pub fn targets() -> anyhow::Result<Vec<String>> {
    let manifest = fuzz_dir().join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    Ok(parse_targets(&text))
}

fn parse_targets(manifest: &str) -> Vec<String> {
    let mut in_bin = false;
    let mut names = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if let Some(name) = line.strip_prefix("name = ").filter(|_| in_bin) {
            names.push(name.trim_matches('"').to_string());
        }
    }
    names
}

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

/// The built fuzzer of `target`.
fn binary(target: &str) -> PathBuf {
    fuzz_dir()
        .join("target/x86_64-unknown-linux-gnu/release")
        .join(target)
}

/// Builds every target, then runs the chosen ones for `opts.seconds` each; fails after the
/// last one if any crashed.
pub fn run(opts: &Opts) -> anyhow::Result<()> {
    let all = targets()?;
    let chosen: Vec<String> = match &opts.only {
        Some(name) if all.contains(name) => vec![name.clone()],
        Some(name) => bail!(
            "--only {name}: no such fuzz target (there are: {})",
            all.join(", ")
        ),
        None => all,
    };
    println!(
        "fuzz: building {} target(s) (cargo fuzz build, nightly)",
        chosen.len()
    );
    let mut build = Command::new("cargo");
    build
        .args(["+nightly", "fuzz", "build"])
        .args(BUILD_FLAGS)
        .current_dir(fuzz_dir());
    if let [one] = chosen.as_slice() {
        build.arg(one);
    }
    run_status(&mut build)?;
    let mut results = Vec::new();
    for (i, target) in chosen.iter().enumerate() {
        println!(
            "fuzz: [{}/{}] {target} for {} s",
            i + 1,
            chosen.len(),
            opts.seconds
        );
        results.push((target.clone(), run_one(target, opts.seconds)?));
    }
    println!(
        "\n{:<16} {:>12} {:>9} {:>6} {:>7} {:>7}  crash",
        "target", "executions", "exec/s", "cov", "ft", "corpus"
    );
    for (target, s) in &results {
        println!(
            "{target:<16} {:>12} {:>9} {:>6} {:>7} {:>7}  {}",
            s.execs,
            s.execs_per_sec,
            s.cov,
            s.ft,
            s.corpus,
            s.crash
                .as_ref()
                .map_or("-".into(), |p| p.display().to_string())
        );
    }
    let crashed: Vec<&(String, Stats)> =
        results.iter().filter(|(_, s)| s.crash.is_some()).collect();
    if crashed.is_empty() {
        return Ok(());
    }
    for (target, s) in &crashed {
        let input = s.crash.as_ref().expect("filtered on crash");
        println!(
            "fuzz: {target} crashed on {}; reproduce from fuzz/ with `cargo +nightly fuzz run {} {target} {}`",
            input.display(),
            BUILD_FLAGS.join(" "),
            input.display()
        );
    }
    bail!("{} fuzz target(s) crashed", crashed.len())
}

/// Runs one built target over its seeds for `seconds`, echoing libFuzzer's progress lines.
fn run_one(target: &str, seconds: u64) -> anyhow::Result<Stats> {
    let seeds = fuzz_dir().join("corpus").join(target);
    let work = workspace_root().join("target/fuzz-corpus").join(target);
    let artifacts = fuzz_dir().join("artifacts").join(target);
    for dir in [&work, &artifacts] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let bin = binary(target);
    // The first corpus directory receives what libFuzzer finds: the work one, so the committed
    // seeds stay as captured. A single input taking 10 s is a hang, reported like a crash.
    let mut child = Command::new(&bin)
        .arg(&work)
        .arg(&seeds)
        .arg(format!("-max_total_time={seconds}"))
        .arg("-timeout=10")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", bin.display()))?;
    let started = Instant::now();
    let mut stats = Stats::default();
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut last_echo = Instant::now();
    for line in BufReader::new(stderr).lines() {
        let line = line.context("reading the fuzzer's output")?;
        stats.update(&line);
        // Progress: libFuzzer's own status lines, at most one a second, and everything
        // about a crash.
        let status = line.contains(" INITED ") || line.contains(" pulse ");
        let trouble = stats.crash.is_some() || line.contains("ERROR") || line.contains("panicked");
        if trouble || (status && last_echo.elapsed().as_secs() >= 1) {
            println!("  {target}: {line}");
            last_echo = Instant::now();
        }
    }
    let status = child.wait()?;
    println!(
        "  {target}: {} executions in {:.0} s, cov {} ft {}",
        stats.execs,
        started.elapsed().as_secs_f64(),
        stats.cov,
        stats.ft
    );
    if !status.success() && stats.crash.is_none() {
        bail!(
            "{} exited with {status} without naming a crashing input",
            bin.display()
        );
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Whether `path` is a directory with at least one input.
    fn has_seeds(path: &Path) -> bool {
        std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_some())
    }

    #[test]
    fn status_lines_and_final_stats_give_executions_speed_and_coverage() {
        let mut s = Stats::default();
        for line in [
            "INFO: seed corpus: files: 23 min: 109b max: 1242b total: 9652b rss: 34Mb",
            "#24\tINITED cov: 1540 ft: 3390 corp: 22/9411b exec/s: 0 rss: 38Mb",
            "#65536\tpulse  cov: 1702 ft: 4188 corp: 80/20Kb lim: 1242 exec/s: 21845 rss: 44Mb",
            "#70001\tNEW    cov: 1703 ft: 4190 corp: 81/20Kb lim: 1242 exec/s: 21000 rss: 44Mb L: 12/1242 MS: 1 ChangeBit-",
            "Done 431245 runs in 21 second(s)",
            "stat::number_of_executed_units: 431245",
            "stat::average_exec_per_sec:     20535",
            "stat::new_units_added:          60",
        ] {
            s.update(line);
        }
        assert_eq!(
            s,
            Stats {
                execs: 431245,
                execs_per_sec: 20535,
                cov: 1703,
                ft: 4190,
                corpus: 81,
                crash: None,
            }
        );
    }

    #[test]
    fn a_crash_names_the_input_that_reproduces_it() {
        let mut s = Stats::default();
        s.update("==2311== ERROR: libFuzzer: deadly signal");
        s.update("artifact_prefix='/w/fuzz/artifacts/psi/'; Test unit written to /w/fuzz/artifacts/psi/crash-da39a3ee");
        assert_eq!(
            s.crash,
            Some(PathBuf::from("/w/fuzz/artifacts/psi/crash-da39a3ee"))
        );
    }

    #[test]
    fn every_declared_target_has_committed_seeds() {
        let names = targets().unwrap();
        assert!(names.len() >= 10, "{names:?}");
        for name in names {
            let seeds = fuzz_dir().join("corpus").join(&name);
            assert!(has_seeds(&seeds), "{} has no seed inputs", seeds.display());
            assert!(
                fuzz_dir().join(format!("fuzz_targets/{name}.rs")).is_file(),
                "{name} has no source"
            );
        }
    }
}
