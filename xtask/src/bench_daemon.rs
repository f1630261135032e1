//! Daemon benchmarks on the test Docker engine: how exactly it records short spikes compared
//! with a 1 s poller (what `docker stats` and cAdvisor do), and its CPU and RSS with many idle
//! containers.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::testbed::Testbed;

pub(crate) const IMAGE: &str = "guardian-test/memload";
const MIB: f64 = 1048576.0;

pub(crate) fn docker(host: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker")
        .env("DOCKER_HOST", host)
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!("docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub(crate) fn start_daemon(guardian: &Path, host: &str, state: &Path) -> anyhow::Result<Child> {
    let child = Command::new(guardian)
        .args(["daemon", "--no-metrics", "--state-dir"])
        .arg(state)
        .env("DOCKER_HOST", host)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !state.join("guardian.pid").exists() {
        if Instant::now() > deadline {
            bail!("the daemon did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

pub(crate) fn stop(mut child: Child) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

/// The memory cgroup files of a running container: (usage file, high-water file).
fn memory_files(host: &str, id: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let pid = docker(host, &["inspect", "-f", "{{.State.Pid}}", id])?;
    let groups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    Ok(
        match groups
            .lines()
            .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
        {
            Some(m) => {
                let dir = PathBuf::from(format!("/sys/fs/cgroup/memory{m}"));
                (
                    dir.join("memory.usage_in_bytes"),
                    dir.join("memory.max_usage_in_bytes"),
                )
            }
            None => {
                let rel = groups
                    .lines()
                    .find_map(|l| l.strip_prefix("0::"))
                    .context("no cgroup")?;
                let dir = PathBuf::from(format!("/sys/fs/cgroup{rel}"));
                (dir.join("memory.current"), dir.join("memory.peak"))
            }
        },
    )
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

pub fn run(guardian: &Path, runs: usize) -> anyhow::Result<()> {
    let bed = Testbed::up()?;
    let host = bed.docker_host().to_string();
    let result = spikes(guardian, &host, runs)
        .and_then(|()| idle(guardian, &host))
        .and_then(|()| staged_start(guardian, &host));
    bed.down()?;
    result
}

/// Peak accuracy: guardian's recorded peak vs a 1 s poller vs the kernel, same containers.
fn spikes(guardian: &Path, host: &str, runs: usize) -> anyhow::Result<()> {
    println!("\n## Peak accuracy on a 50 ms spike (guardian daemon at its default 1 s sampling)");
    println!("run  kernel-peak  guardian-peak  1s-poller-max");
    let state = tempfile_dir("guardian-bench-state")?;
    let daemon = start_daemon(guardian, host, &state)?;
    let mut names = Vec::new();
    let mut rows = Vec::new();
    for run in 0..runs {
        let name = format!("guardian-bench-spike-{}-{run}", std::process::id());
        let id = docker(
            host,
            &[
                "run",
                "-d",
                "--name",
                &name,
                "--memory",
                "256m",
                IMAGE,
                "memload",
                "spike",
                "--base",
                "16m",
                "--spike",
                "64m",
                "--spike-ms",
                "50",
                "--hold-ms",
                "2500",
            ],
        )?;
        let (usage, high) = memory_files(host, &id)?;
        // The poller reads usage once a second, as docker stats does.
        let stop_flag = Arc::new(AtomicBool::new(false));
        let poll_max = Arc::new(Mutex::new(0u64));
        let poller = {
            let (stop_flag, poll_max, usage) = (stop_flag.clone(), poll_max.clone(), usage.clone());
            std::thread::spawn(move || {
                while !stop_flag.load(Ordering::Relaxed) {
                    if let Some(v) = read_u64(&usage) {
                        let mut m = poll_max.lock().unwrap();
                        *m = (*m).max(v);
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
        };
        std::thread::sleep(Duration::from_millis(1500));
        let kernel = read_u64(&high).context("reading the high-water mark")?;
        docker(host, &["wait", &id])?;
        stop_flag.store(true, Ordering::Relaxed);
        let _ = poller.join();
        let polled = *poll_max.lock().unwrap();
        names.push(name);
        rows.push((kernel, polled));
    }
    std::thread::sleep(Duration::from_secs(6)); // one flush at the default interval
    stop(daemon);
    let profile = Command::new(guardian)
        .args(["profile", "--output", "json", "--state-dir"])
        .arg(&state)
        .args(["--compose-out"])
        .arg(state.join("override.yml"))
        .args(["--profile-out"])
        .arg(state.join("profile.toml"))
        .output()?;
    let profile: serde_json::Value =
        serde_json::from_slice(&profile.stdout).context("guardian profile JSON")?;
    for (run, (name, (kernel, polled))) in names.iter().zip(&rows).enumerate() {
        let recorded = profile["recommendations"]
            .as_array()
            .and_then(|recs| recs.iter().find(|r| r["service"] == name.as_str()))
            .and_then(|r| r["peak"].as_u64())
            .unwrap_or(0);
        println!(
            "{run:>3}  {:>9.1}MiB  {:>11.1}MiB  {:>11.1}MiB",
            *kernel as f64 / MIB,
            recorded as f64 / MIB,
            *polled as f64 / MIB
        );
        let _ = docker(host, &["rm", name]);
    }
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}

/// CPU and RSS of the daemon with 50, 200, 500 and then 1000 idle containers (created four at a
/// time; each is one `sleep` process and its shim, about 8 MiB of host memory).
pub(crate) fn idle(guardian: &Path, host: &str) -> anyhow::Result<()> {
    println!("\n## Daemon cost with idle containers (default 1 s sampling, 30 s measured)");
    let mut started = 0usize;
    for target in [50usize, 200, 500, 1000] {
        let names: Vec<String> = (started..target)
            .map(|i| format!("guardian-bench-idle-{}-{i}", std::process::id()))
            .collect();
        let failed = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for chunk in names.chunks(names.len().div_ceil(4).max(1)) {
                let failed = &failed;
                s.spawn(move || {
                    for name in chunk {
                        if let Err(e) =
                            docker(host, &["run", "-d", "--name", name, IMAGE, "sleep", "3600"])
                        {
                            failed.lock().unwrap().push(e);
                        }
                    }
                });
            }
        });
        if let Some(e) = failed.into_inner().unwrap().into_iter().next() {
            remove_idle(host, target);
            return Err(e.context(format!("starting {target} idle containers")));
        }
        started = target;
        let state = tempfile_dir("guardian-bench-idle")?;
        let daemon = start_daemon(guardian, host, &state)?;
        std::thread::sleep(Duration::from_secs(10)); // inventory and first samples
        let pid = daemon.id();
        let cpu0 = cpu_ticks(pid)?;
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(30));
        let cpu = (cpu_ticks(pid)? - cpu0) as f64 / clock_ticks() as f64;
        let wall = t0.elapsed().as_secs_f64();
        let rss = rss_kib(pid)?;
        stop(daemon);
        let _ = std::fs::remove_dir_all(&state);
        println!(
            "{target:>4} containers: CPU {:.2}% of one core, RSS {:.1} MiB",
            cpu / wall * 100.0,
            rss as f64 / 1024.0
        );
    }
    remove_idle(host, started);
    Ok(())
}

fn remove_idle(host: &str, count: usize) {
    let names: Vec<String> = (0..count)
        .map(|i| format!("guardian-bench-idle-{}-{i}", std::process::id()))
        .collect();
    for chunk in names.chunks(50) {
        let mut args = vec!["rm", "-f"];
        args.extend(chunk.iter().map(String::as_str));
        let _ = docker(host, &args);
    }
}

pub(crate) fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").context("bad /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

pub(crate) fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as u64 }
}

pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

pub(crate) fn tempfile_dir(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The high-water file of the cgroup the test engine puts every container under.
fn containers_parent_peak_file() -> anyhow::Result<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup")?;
    let mem = own
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
        .context("benchmarks of the staged start need the v1 memory controller (hybrid hosts)")?;
    Ok(PathBuf::from(format!(
        "/sys/fs/cgroup/memory{}/guardian-test-docker/memory.max_usage_in_bytes",
        mem.trim_end_matches('/')
    )))
}

/// Whether all five containers of `project` run, are healthy where they have a healthcheck, and
/// are past their spike.
fn stack_settled(host: &str, project: &str) -> anyhow::Result<bool> {
    let ids = docker(
        host,
        &[
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
        ],
    )?;
    let ids: Vec<&str> = ids.lines().collect();
    if ids.len() < 5 {
        return Ok(false);
    }
    for id in ids {
        let status = docker(
            host,
            &[
                "inspect",
                "-f",
                "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
                id,
            ],
        )?;
        if status.trim() != "running" && status.trim() != "running healthy" {
            return Ok(false);
        }
        let (usage, _) = memory_files(host, id)?;
        if read_u64(&usage).is_none_or(|u| u > 32 << 20) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Host peak and time until every service is ready (healthy, past its spike): plain compose vs
/// guardian, on the stack of tests/staged_start.rs and on the worst case for staging.
fn staged_start(guardian: &Path, host: &str) -> anyhow::Result<()> {
    for (stack, title) in [
        (
            "spiky-5.yml",
            "5 services spiking by 120 MiB for 3 s, healthy 6 s after start",
        ),
        (
            "spike-only-5.yml",
            "5 services spiking by 96 MiB for 1.5 s, db healthy after 1 s (worst case)",
        ),
    ] {
        println!("\n## Staged start-up, {stack}: {title} (same engine, same run)");
        staged_start_of(guardian, host, stack)?;
    }
    Ok(())
}

fn staged_start_of(guardian: &Path, host: &str, stack: &str) -> anyhow::Result<()> {
    println!("how                                     host-peak   time-to-ready");
    let dir = tempfile_dir("guardian-bench-stack")?;
    let file = dir.join("docker-compose.yml");
    std::fs::copy(
        crate::workspace_root().join("tests/stacks").join(stack),
        &file,
    )?;
    let state = dir.join("state");
    let peak_file = containers_parent_peak_file()?;
    let compose = |project: &str, args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("docker-compose")
            .env("DOCKER_HOST", host)
            .args(["-p", project, "-f"])
            .arg(&file)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "docker-compose {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    let mut plain_peak = 0u64;
    let mut plain_time = 0f64;
    let runs: [(&str, Option<&str>); 3] = [
        ("docker-compose up -d", None),
        ("guardian up (no history)", Some("none")),
        (
            "guardian up (history, budget 60% of plain)",
            Some("history"),
        ),
    ];
    for (i, (label, how)) in runs.iter().enumerate() {
        // Both guardian runs use one project, so the second finds the first one's history.
        let tag: String = stack
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        let project = match how {
            None => format!("gbench{}{tag}plain", std::process::id()),
            Some(_) => format!("gbench{}{tag}staged", std::process::id()),
        };
        std::fs::write(&peak_file, "0")?;
        let t0 = Instant::now();
        match how {
            None => compose(&project, &["up", "-d"])?,
            Some(mode) => {
                let mut cmd = Command::new(guardian);
                cmd.env("DOCKER_HOST", host)
                    .args(["up", "--output", "json", "-p", &project, "-f"])
                    .arg(&file)
                    .arg("--state-dir")
                    .arg(&state);
                if *mode == "history" {
                    let budget = format!("{}", plain_peak * 6 / 10);
                    cmd.args([
                        "--available",
                        &budget,
                        "--reserve",
                        "0",
                        "--max-parallel",
                        "5",
                    ]);
                }
                let out = cmd.stderr(Stdio::null()).output()?;
                if !out.status.success() {
                    bail!(
                        "guardian up failed: {}",
                        String::from_utf8_lossy(&out.stdout)
                    );
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while !stack_settled(host, &project)? {
            if Instant::now() > deadline {
                bail!("{label}: the stack never settled");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let elapsed = t0.elapsed();
        let peak = read_u64(&peak_file).context("reading the containers' high-water mark")?;
        if how.is_none() {
            plain_peak = peak;
        }
        compose(&project, &["down", "-t", "1"])?;
        println!(
            "{label:<40} {:>7.0}MiB ({:>3.0}%)  {:>5.1}s ({:.2}x)",
            peak as f64 / MIB,
            peak as f64 / plain_peak as f64 * 100.0,
            elapsed.as_secs_f64(),
            if i == 0 {
                1.0
            } else {
                elapsed.as_secs_f64() / plain_time
            },
        );
        if i == 0 {
            plain_time = elapsed.as_secs_f64();
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
