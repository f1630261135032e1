//! Project tasks: `cargo xtask setup | run | test | testbed | vm-test | runner-vm | bench | fuzz`.
//!
//! `setup` installs what building guardian needs (`--tests`: also what the tests need) on a fresh
//! Debian machine and skips what is already there; `run` and `test` call it first, so each is one
//! command for a new user, and `run` never installs a test package.

mod bench;
mod bench_churn;
mod bench_daemon;
mod debian;
mod dist;
mod fuzz;
mod runner_vm;
mod setup;
mod testbed;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use setup::Scope;

#[derive(Parser)]
#[command(name = "xtask", about = "guardian's build, setup and test tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain (nightly rust-src, bpf-linker against rustc's LLVM); with
    /// `--tests` also the Debian packages the tests use (never a Docker engine over an existing
    /// one). Idempotent.
    Setup {
        /// Also install what the end-to-end tests and the VMs need.
        #[arg(long)]
        tests: bool,
    },
    /// Set up, build guardian (release) and run it as root; arguments go to guardian
    /// (default: `daemon` with its embedded defaults).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then build and run every test (unit, and end-to-end on this kernel).
    Test {
        /// Extra arguments for `cargo test`, e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build what people install, into target/dist: a static guardian, a Debian package
    /// (cargo-deb), a tarball with the package's files and a container image.
    Dist {
        /// Then install the package on a clean Debian of this suite (mmdebstrap from the
        /// host's mirror: `apt install ./…deb`, run, remove, purge), e.g. `bookworm`.
        #[arg(long, value_name = "SUITE")]
        install_check: Option<String>,
    },
    /// Start or stop the private Docker engine the tests use (with its test images).
    Testbed {
        #[command(subcommand)]
        action: testbed::Action,
    },
    /// Boot Debian's kernel (cgroup v2) in qemu and run guardian's scenarios inside.
    VmTest,
    /// Boot a CI runner as users have one (Debian trixie: cgroup v2, systemd, Docker with the
    /// systemd cgroup driver, Compose v2) in qemu, install guardian there and run its scenarios.
    RunnerVm(runner_vm::Opts),
    /// Measure probe overhead and event latency on this kernel; prints the numbers.
    Bench {
        /// Runs per configuration.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Only one part: `kernel` (probe overhead, latency), `daemon` (peaks, idle cost, staged
        /// start), `idle` (the idle cost alone) or `churn` (many short-lived containers while
        /// the daemon records).
        #[arg(long)]
        only: Option<String>,
        /// Containers the churn benchmark starts and stops.
        #[arg(long, default_value_t = 1000)]
        containers: usize,
    },
    /// Build the libFuzzer targets (fuzz/, cargo-fuzz on nightly) and run each for a while
    /// over its seed corpus: executions, exec/s and coverage per target; fails on a crash.
    Fuzz(fuzz::Opts),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup { tests } => setup::run(if tests { Scope::Tests } else { Scope::Build }),
        Task::Run { args } => {
            setup::run(Scope::Build)?;
            cargo(&["build", "--release", "-p", "guardian"])?;
            let args = if args.is_empty() {
                vec!["daemon".to_string()]
            } else {
                args
            };
            let bin = workspace_root().join("target/release/guardian");
            let status = Command::new(&bin)
                .args(&args)
                .status()
                .with_context(|| format!("running {}", bin.display()))?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Test { args } => {
            setup::run(Scope::Tests)?;
            // The end-to-end tests run the workload binary next to guardian's. (The default
            // members exclude guardian-ebpf, which only builds for the BPF target.)
            cargo(&["build"])?;
            let bed = testbed::Testbed::up()?;
            let mut test_args = vec!["test"];
            test_args.extend(args.iter().map(String::as_str));
            let result = run_status(
                Command::new(env!("CARGO"))
                    .args(&test_args)
                    .current_dir(workspace_root())
                    .env("DOCKER_HOST", bed.docker_host())
                    .env("GUARDIAN_TEST_MEMLOAD_STATIC", bed.static_memload()),
            );
            bed.down()?;
            result?;
            // Every parser of outside input under libFuzzer, briefly (one build, then ~3 s a
            // target); `cargo xtask fuzz` runs them longer.
            fuzz::run(&fuzz::Opts {
                seconds: 3,
                only: None,
            })?;
            // Real cgroup v2 behaviour: the same binary inside a Debian kernel in qemu.
            vm::run()?;
            // And where it will run: a systemd + Docker + Compose v2 runner, on its own kernel
            // and on an older one without memory.peak.
            runner_vm::run(&runner_vm::Opts::default())?;
            // The package the runner VM installed, on a clean Debian bookworm (no systemd).
            dist::install_check("bookworm")?;
            runner_vm::run(&runner_vm::Opts {
                old_kernel: true,
                ..Default::default()
            })
        }
        Task::Dist { install_check } => {
            setup::run(if install_check.is_some() {
                Scope::Tests
            } else {
                Scope::Dist
            })?;
            dist::run()?;
            match install_check {
                Some(suite) => dist::install_check(&suite),
                None => Ok(()),
            }
        }
        Task::Testbed { action } => testbed::run(action),
        Task::VmTest => {
            setup::run(Scope::Tests)?;
            vm::run()
        }
        Task::RunnerVm(opts) => {
            setup::run(Scope::Tests)?;
            runner_vm::run(&opts)
        }
        Task::Fuzz(opts) => {
            setup::run(Scope::Fuzz)?;
            fuzz::run(&opts)
        }
        Task::Bench {
            runs,
            only,
            containers,
        } => {
            setup::run(Scope::Tests)?;
            cargo(&["build", "--release"])?;
            let guardian = workspace_root().join("target/release/guardian");
            match only.as_deref() {
                Some("kernel") => bench::run(runs),
                Some("daemon") => bench_daemon::run(&guardian, runs),
                Some("churn") => bench_churn::run_on_testbed(&guardian, containers),
                Some("idle") => {
                    let bed = testbed::Testbed::up()?;
                    let result = bench_daemon::idle(&guardian, bed.docker_host());
                    bed.down()?;
                    result
                }
                None => bench::run(runs)
                    .and_then(|()| bench_daemon::run(&guardian, runs))
                    .and_then(|()| bench_churn::run_on_testbed(&guardian, containers)),
                Some(other) => {
                    anyhow::bail!("--only {other}: expected kernel, daemon, idle or churn")
                }
            }
        }
    }
}

/// The workspace root (this crate lives in `<root>/xtask`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// Runs cargo with `args` in the workspace root.
fn cargo(args: &[&str]) -> anyhow::Result<()> {
    run_status(
        Command::new(env!("CARGO"))
            .args(args)
            .current_dir(workspace_root()),
    )
}

/// Runs a command, failing with its command line when it does not succeed.
pub fn run_status(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}
