//! Churn: many short-lived labelled containers started and stopped a few at a time while the
//! daemon records and enforces. What it measures: the daemon's CPU and RSS over time (an SVG in
//! docs/), whether every run landed in the store under the right compose service (each
//! container's service name and allocation encode its index, so a run filed under another
//! service or with another container's peak is counted as a mix-up), missed runs, and the
//! store's size afterwards.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::bench_daemon::{
    clock_ticks, cpu_ticks, docker, rss_kib, start_daemon, stop, tempfile_dir, IMAGE,
};

const MIB: u64 = 1 << 20;
const PROJECT: &str = "churn";
/// Containers started at the same time.
const PARALLEL: usize = 4;

/// The allocation of container `i`: 8–23 MiB, so neighbours differ by at least 1 MiB.
fn allocation(i: usize) -> u64 {
    (8 + (i % 16) as u64) * MIB
}

/// One sample of the daemon's cost.
#[derive(Clone, Copy)]
struct CostPoint {
    at_s: f64,
    cpu_percent: f64,
    rss_mib: f64,
    finished: usize,
}

pub fn run(guardian: &Path, host: &str, containers: usize) -> anyhow::Result<()> {
    println!(
        "\n## Churn: {containers} labelled containers, {PARALLEL} at a time, daemon recording and enforcing"
    );
    let state = tempfile_dir("guardian-bench-churn")?;
    let daemon = start_daemon(guardian, host, &state)?;
    let pid = daemon.id();
    let next = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let t0 = Instant::now();
    let workers: Vec<_> = (0..PARALLEL)
        .map(|_| {
            let (next, finished, failures, host) = (
                next.clone(),
                finished.clone(),
                failures.clone(),
                host.to_string(),
            );
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= containers {
                    break;
                }
                if let Err(e) = one_container(&host, i) {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("container {i}: {e:#}"));
                }
                finished.fetch_add(1, Ordering::Relaxed);
            })
        })
        .collect();
    let mut points = Vec::new();
    let (mut last_ticks, mut last_at) = (cpu_ticks(pid)?, Instant::now());
    let start_ticks = last_ticks;
    while workers.iter().any(|w| !w.is_finished()) {
        std::thread::sleep(Duration::from_secs(5));
        let (ticks, at) = (cpu_ticks(pid)?, Instant::now());
        let cpu = (ticks - last_ticks) as f64 / clock_ticks() as f64;
        points.push(CostPoint {
            at_s: t0.elapsed().as_secs_f64(),
            cpu_percent: cpu / at.duration_since(last_at).as_secs_f64() * 100.0,
            rss_mib: rss_kib(pid)? as f64 / 1024.0,
            finished: finished.load(Ordering::Relaxed),
        });
        (last_ticks, last_at) = (ticks, at);
        if points.len() % 12 == 0 {
            let p = points.last().unwrap();
            println!(
                "  {:>5.0} s: {}/{containers} done, daemon CPU {:.1} %, RSS {:.1} MiB",
                p.at_s, p.finished, p.cpu_percent, p.rss_mib
            );
        }
    }
    for w in workers {
        let _ = w.join();
    }
    let wall = t0.elapsed().as_secs_f64();
    let mean_cpu = (cpu_ticks(pid)? - start_ticks) as f64 / clock_ticks() as f64 / wall * 100.0;
    std::thread::sleep(Duration::from_secs(8)); // the last dies and one flush
    stop(daemon);
    let failures = failures.lock().unwrap().clone();
    let attribution = check_store(guardian, &state, containers)?;
    let store_bytes = dir_size(&state);
    let _ = std::fs::remove_dir_all(&state);

    let peak_rss = points.iter().map(|p| p.rss_mib).fold(0.0, f64::max);
    let max_cpu = points.iter().map(|p| p.cpu_percent).fold(0.0, f64::max);
    println!(
        "containers        {containers} ({} failed to run: {:?})",
        failures.len(),
        failures.iter().take(3).collect::<Vec<_>>()
    );
    println!("wall time         {wall:.0} s");
    println!(
        "daemon CPU        mean {mean_cpu:.2} % of one core, highest 5 s window {max_cpu:.1} %"
    );
    println!(
        "daemon RSS        highest {peak_rss:.1} MiB, last {:.1} MiB",
        points.last().map_or(0.0, |p| p.rss_mib)
    );
    println!(
        "store             {} runs of {containers} recorded, {} missing, {} mix-ups, state directory {:.1} MiB",
        attribution.recorded,
        attribution.missing.len(),
        attribution.mixups.len(),
        store_bytes as f64 / MIB as f64
    );
    for m in attribution.mixups.iter().take(5) {
        println!("  mix-up: {m}");
    }
    for m in attribution.missing.iter().take(5) {
        println!("  missing: {m}");
    }
    let svg = crate::workspace_root().join("docs/bench-churn.svg");
    std::fs::write(&svg, chart(&points, containers))
        .with_context(|| format!("writing {}", svg.display()))?;
    println!("chart             {}", svg.display());
    Ok(())
}

/// Runs container `i` to completion and removes it.
fn one_container(host: &str, i: usize) -> anyhow::Result<()> {
    let name = format!("{PROJECT}-s{i}-1");
    let service = format!("s{i}");
    let max = format!("{}m", allocation(i) / MIB);
    let project_label = format!("com.docker.compose.project={PROJECT}");
    let service_label = format!("com.docker.compose.service={service}");
    let id = docker(
        host,
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            &project_label,
            "--label",
            &service_label,
            "--label",
            "guardian.budget=64m",
            "--memory",
            "128m",
            IMAGE,
            "memload",
            "hog",
            "--step",
            "1m",
            "--max",
            &max,
            "--hold-ms",
            "1500",
        ],
    )?;
    docker(host, &["wait", &id])?;
    docker(host, &["rm", &id])?;
    Ok(())
}

struct Attribution {
    recorded: usize,
    missing: Vec<String>,
    mixups: Vec<String>,
}

/// Reads the store through `guardian profile --output json` and checks every service `s<i>`
/// has exactly one run whose peak is container `i`'s allocation (plus at most 4 MiB of the
/// process itself), i.e. the run was filed under the right service.
fn check_store(guardian: &Path, state: &Path, containers: usize) -> anyhow::Result<Attribution> {
    let out = std::process::Command::new(guardian)
        .args([
            "profile",
            "--output",
            "json",
            "--project",
            PROJECT,
            "--state-dir",
        ])
        .arg(state)
        .arg("--compose-out")
        .arg(state.join("override.yml"))
        .arg("--profile-out")
        .arg(state.join("profile.toml"))
        .output()?;
    let profile: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "guardian profile JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let recs = profile["recommendations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut a = Attribution {
        recorded: 0,
        missing: Vec::new(),
        mixups: Vec::new(),
    };
    for i in 0..containers {
        let service = format!("s{i}");
        let Some(r) = recs.iter().find(|r| r["service"] == service.as_str()) else {
            a.missing.push(service);
            continue;
        };
        let runs = r["runs"].as_u64().unwrap_or(0);
        let peak = r["peak"].as_u64().unwrap_or(0);
        a.recorded += runs as usize;
        let want = allocation(i);
        if runs != 1 || peak < want || peak > want + 4 * MIB {
            a.mixups.push(format!(
                "{service}: {runs} runs, peak {:.1} MiB, allocated {} MiB",
                peak as f64 / MIB as f64,
                want / MIB
            ));
        }
    }
    Ok(a)
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// RSS (MiB, left axis) and CPU (% of a core, right axis) over time, as a standalone SVG.
fn chart(points: &[CostPoint], containers: usize) -> String {
    let (w, h, pad) = (720.0, 300.0, 50.0);
    let t_max = points.last().map_or(1.0, |p| p.at_s).max(1.0);
    let rss_max = (points.iter().map(|p| p.rss_mib).fold(0.0, f64::max) * 1.2).max(1.0);
    let cpu_max = (points.iter().map(|p| p.cpu_percent).fold(0.0, f64::max) * 1.2).max(1.0);
    let x = |t: f64| pad + t / t_max * (w - 2.0 * pad);
    let y = |v: f64, max: f64| h - pad - v / max * (h - 2.0 * pad);
    let line = |f: &dyn Fn(&CostPoint) -> (f64, f64)| {
        points
            .iter()
            .map(|p| {
                let (px, py) = f(p);
                format!("{px:.1},{py:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let rss = line(&|p| (x(p.at_s), y(p.rss_mib, rss_max)));
    let cpu = line(&|p| (x(p.at_s), y(p.cpu_percent, cpu_max)));
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<title>guardian daemon under churn: {containers} containers, {PARALLEL} at a time</title>
<rect width="{w}" height="{h}" fill="white"/>
<line x1="{pad}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{b}" stroke="black"/>
<line x1="{r}" y1="{pad}" x2="{r}" y2="{b}" stroke="black"/>
<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{rss}"/>
<polyline fill="none" stroke="#d62728" stroke-width="1.5" points="{cpu}"/>
<text x="{pad}" y="20">guardian daemon under churn ({containers} containers, {PARALLEL} at a time)</text>
<text x="{pad}" y="{lt}" fill="#1f77b4">RSS, 0–{rss_max:.0} MiB</text>
<text x="{rl}" y="{lt}" fill="#d62728" text-anchor="end">CPU, 0–{cpu_max:.1} % of a core</text>
<text x="{mid}" y="{xt}" text-anchor="middle">time, 0–{t_max:.0} s</text>
</svg>
"##,
        b = h - pad,
        r = w - pad,
        rl = w - pad,
        lt = pad - 8.0,
        mid = w / 2.0,
        xt = h - 15.0,
    )
}

/// Runs the churn benchmark on its own test engine.
pub fn run_on_testbed(guardian: &Path, containers: usize) -> anyhow::Result<()> {
    let bed = crate::testbed::Testbed::up()?;
    let result = run(guardian, bed.docker_host(), containers);
    bed.down()?;
    result
}
