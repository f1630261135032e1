//! `cargo xtask bench`: what guardian's probes cost and how fast their events arrive, measured
//! on this kernel with the release binaries. Prints numbers; docs/benchmarks.md records them.

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::workspace_root;

pub fn run(runs: usize) -> anyhow::Result<()> {
    let release = workspace_root().join("target/release");
    let guardian = release.join("guardian");
    let memload = release.join("memload");
    if nix_is_not_root() {
        bail!("the benchmarks load eBPF and create cgroups: run them as root");
    }
    let scratch = tempfile_path("guardian-bench-pagecache");

    println!("## Probe overhead ({runs} runs each, probes off/on interleaved)");
    let unlimited = BenchCgroup::new("faults", None)?;
    let faults = overhead(&guardian, runs, || {
        let out = unlimited
            .output(Command::new(&memload).args(["faults", "--size", "256m", "--rounds", "10"]))?;
        parse_field(&out, "ns_per_fault=")
    })?;
    faults.print("page faults, no limit (ns per fault)");

    let limited = BenchCgroup::new("reclaim", Some("48M"))?;
    let reclaim = overhead(&guardian, runs, || {
        let start = Instant::now();
        limited.output(Command::new(&memload).args([
            "pagecache",
            "--file",
            &scratch,
            "--size",
            "160m",
            "--rounds",
            "3",
        ]))?;
        Ok(start.elapsed().as_secs_f64() * 1000.0)
    })?;
    reclaim.print("page cache under a 48M limit, constant memcg reclaim (ms per run)");

    println!(
        "\n## Event latency: bpf_ktime_get_ns() in the kernel to the JSON line read by a consumer"
    );
    let mut stall_lat = Vec::new();
    for _ in 0..runs {
        let mut events = EventStream::start(&guardian, &["--stall-threshold", "0s"])?;
        limited.output(Command::new(&memload).args([
            "pagecache",
            "--file",
            &scratch,
            "--size",
            "160m",
            "--rounds",
            "2",
        ]))?;
        stall_lat.extend(events.latencies_until_quiet("reclaim_stall")?);
    }
    print_latency("reclaim_stall", &mut stall_lat);

    let oom_cg = BenchCgroup::new("oom", Some("32M"))?;
    let mut oom_lat = Vec::new();
    let mut events = EventStream::start(&guardian, &[])?;
    for _ in 0..runs.max(10) {
        let _ = oom_cg.output(Command::new(&memload).args(["hog", "--step", "1m"]));
    }
    oom_lat.extend(events.latencies_until_quiet("oom_kill")?);
    print_latency(
        "oom_kill (includes /proc and cgroup enrichment)",
        &mut oom_lat,
    );
    let _ = std::fs::remove_file(&scratch);
    Ok(())
}

fn nix_is_not_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() != 0 }
}

fn tempfile_path(name: &str) -> String {
    std::env::temp_dir()
        .join(format!("{name}-{}", std::process::id()))
        .display()
        .to_string()
}

fn parse_field(out: &str, key: &str) -> anyhow::Result<f64> {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {key} in workload output {out:?}"))
}

struct Overhead {
    off: Vec<f64>,
    on: Vec<f64>,
    /// Time the kernel spent in guardian's programs during the "on" runs, and their count.
    probe_ns: u64,
    probe_runs: u64,
    /// Wall time of the "on" runs, for the probes' share of it.
    on_wall: Duration,
}

impl Overhead {
    fn print(&self, what: &str) {
        let (off, on) = (median(&self.off), median(&self.on));
        println!(
            "{what}: off median {off:.1} (min {:.1}), on median {on:.1} (min {:.1}), slowdown {:+.2}%",
            min(&self.off),
            min(&self.on),
            (on / off - 1.0) * 100.0
        );
        let avg = if self.probe_runs > 0 {
            self.probe_ns as f64 / self.probe_runs as f64
        } else {
            0.0
        };
        println!(
            "  kernel time in guardian's programs (BPF run-time stats): {} runs, {avg:.0} ns each, {:.3} ms = {:.4}% of {:.1} s of workload",
            self.probe_runs,
            self.probe_ns as f64 / 1e6,
            self.probe_ns as f64 / self.on_wall.as_nanos() as f64 * 100.0,
            self.on_wall.as_secs_f64()
        );
    }
}

/// Runs `measure` with the probes detached and attached, alternating so drift hits both.
fn overhead(
    guardian: &Path,
    runs: usize,
    mut measure: impl FnMut() -> anyhow::Result<f64>,
) -> anyhow::Result<Overhead> {
    let mut result = Overhead {
        off: Vec::new(),
        on: Vec::new(),
        probe_ns: 0,
        probe_runs: 0,
        on_wall: Duration::ZERO,
    };
    // Run-time stats stay on while this fd is open (BPF_ENABLE_STATS).
    let _stats =
        aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF run-time stats")?;
    measure()?; // warm the page cache and the binaries
    for _ in 0..runs {
        result.off.push(measure()?);
        let events = EventStream::start(guardian, &[])?;
        let before = probe_stats();
        let start = Instant::now();
        result.on.push(measure()?);
        result.on_wall += start.elapsed();
        let after = probe_stats();
        result.probe_ns += after.0 - before.0;
        result.probe_runs += after.1 - before.1;
        drop(events);
    }
    Ok(result)
}

/// (run time ns, run count) summed over guardian's loaded programs.
fn probe_stats() -> (u64, u64) {
    aya::programs::loaded_programs()
        .flatten()
        .filter(|p| {
            p.name_as_str()
                .is_some_and(|n| n.starts_with("oom_mark_victim") || n.starts_with("memcg_reclaim"))
        })
        .fold((0, 0), |(ns, n), p| {
            (ns + p.run_time().as_nanos() as u64, n + p.run_count())
        })
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn print_latency(what: &str, lat_us: &mut [f64]) {
    if lat_us.is_empty() {
        println!("{what}: no events");
        return;
    }
    lat_us.sort_by(f64::total_cmp);
    let pct = |p: f64| lat_us[((lat_us.len() - 1) as f64 * p).round() as usize];
    println!(
        "{what}: n={} p50 {:.0}us p99 {:.0}us max {:.0}us",
        lat_us.len(),
        pct(0.50),
        pct(0.99),
        lat_us[lat_us.len() - 1]
    );
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `guardian events --output json` with its lines read as they arrive.
struct EventStream {
    child: Child,
    lines: std::sync::mpsc::Receiver<(u64, String)>,
}

impl EventStream {
    fn start(guardian: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(guardian)
            .args(["events", "--output", "json"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting guardian events")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send((monotonic_ns(), line)).is_err() {
                    return;
                }
            }
        });
        let stream = Self { child, lines: rx };
        let (_, first) = stream
            .lines
            .recv_timeout(Duration::from_secs(20))
            .context("guardian events did not start")?;
        if !first.contains("\"ebpf\":true") {
            bail!("guardian events started without eBPF: {first}");
        }
        Ok(stream)
    }

    /// Latencies in µs of events of `kind` until no line came for a second.
    fn latencies_until_quiet(&mut self, kind: &str) -> anyhow::Result<Vec<f64>> {
        let tag = format!("\"type\":\"{kind}\"");
        let mut out = Vec::new();
        while let Ok((received, line)) = self.lines.recv_timeout(Duration::from_secs(1)) {
            if !line.contains(&tag) {
                continue;
            }
            let ktime = parse_field(&line.replace(',', " "), "\"ktime_ns\":")? as u64;
            out.push(received.saturating_sub(ktime) as f64 / 1000.0);
        }
        Ok(out)
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

/// A cgroup for one benchmark below our own, as the tests make them; removed on drop.
struct BenchCgroup {
    dirs: Vec<PathBuf>,
}

impl BenchCgroup {
    fn new(name: &str, limit: Option<&str>) -> anyhow::Result<Self> {
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let path_of = |pred: &dyn Fn(&str) -> bool| {
            own.lines().find_map(|l| {
                let mut p = l.splitn(3, ':');
                let (_, c, path) = (p.next()?, p.next()?, p.next()?);
                pred(c).then(|| path.trim_start_matches('/').to_string())
            })
        };
        let leaf = format!("guardian-test-bench-{name}-{}", std::process::id());
        let mut dirs = Vec::new();
        let v1 = Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists();
        if v1 {
            let mem = Path::new("/sys/fs/cgroup/memory")
                .join(
                    path_of(&|c| c.split(',').any(|c| c == "memory"))
                        .context("no memory cgroup")?,
                )
                .join(&leaf);
            std::fs::create_dir_all(&mem)?;
            if let Some(limit) = limit {
                std::fs::write(mem.join("memory.limit_in_bytes"), limit)?;
            }
            dirs.push(mem);
        }
        let unified_root = if v1 {
            "/sys/fs/cgroup/unified"
        } else {
            "/sys/fs/cgroup"
        };
        let uni = Path::new(unified_root)
            .join(path_of(&|c| c.is_empty()).context("no unified cgroup")?)
            .join(&leaf);
        std::fs::create_dir_all(&uni)?;
        if let (false, Some(limit)) = (v1, limit) {
            std::fs::write(uni.join("memory.max"), limit)?;
        }
        dirs.push(uni);
        Ok(Self { dirs })
    }

    /// Runs `cmd` inside the group; returns its stdout.
    fn output(&self, cmd: &mut Command) -> anyhow::Result<String> {
        let procs: Vec<PathBuf> = self.dirs.iter().map(|d| d.join("cgroup.procs")).collect();
        // SAFETY: the closure only writes two small files; glibc's fork leaves malloc usable
        // in the child even though reader threads exist in the parent.
        unsafe {
            cmd.pre_exec(move || {
                for p in &procs {
                    std::fs::write(p, "0")?;
                }
                Ok(())
            });
        }
        let out = cmd.stderr(Stdio::null()).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
