//! The tests' private Docker engine (tests/testbed/dockerd does the work) and its images.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::Context as _;

use crate::{run_status, workspace_root};

/// Where `cargo xtask testbed start` keeps the engine's socket, data and log.
const DIR: &str = "/tmp/guardian-testbed";

#[derive(clap::Subcommand)]
pub enum Action {
    /// Start the engine (or reuse the running one) and import the test images.
    Start,
    /// Stop it and remove everything it made.
    Stop,
}

pub fn run(action: Action) -> anyhow::Result<()> {
    match action {
        Action::Start => {
            crate::setup::run(crate::setup::Scope::Tests)?;
            let bed = Testbed::up()?;
            println!("export DOCKER_HOST={}", bed.docker_host());
            Ok(())
        }
        Action::Stop => Testbed::stop_dir(DIR),
    }
}

/// A running engine: ours (stopped by `down`), or the one `DOCKER_HOST` named (left running).
pub struct Testbed {
    docker_host: String,
    owned: bool,
    static_memload: PathBuf,
}

fn script() -> PathBuf {
    workspace_root().join("tests/testbed/dockerd")
}

impl Testbed {
    /// Reuses the engine at `DOCKER_HOST` when set, else starts the private one; then imports
    /// the test images into it.
    pub fn up() -> anyhow::Result<Self> {
        let (docker_host, owned) = match std::env::var("DOCKER_HOST") {
            Ok(host) => {
                println!("testbed: reusing the engine at DOCKER_HOST={host}");
                (host, false)
            }
            Err(_) => {
                let out = Command::new(script())
                    .args(["start", DIR])
                    .stderr(Stdio::inherit())
                    .output()
                    .context("running tests/testbed/dockerd")?;
                if !out.status.success() {
                    anyhow::bail!("the test Docker engine did not start (log: {DIR}/dockerd.log)");
                }
                let stdout = String::from_utf8_lossy(&out.stdout);
                let host = stdout
                    .lines()
                    .find_map(|l| l.strip_prefix("DOCKER_HOST="))
                    .context("tests/testbed/dockerd printed no DOCKER_HOST")?
                    .to_string();
                println!("testbed: started a private engine at {host}");
                (host, true)
            }
        };
        let static_memload = static_memload()?;
        run_status(
            Command::new(script())
                .arg("images")
                .arg(&static_memload)
                .env("DOCKER_HOST", &docker_host),
        )?;
        Ok(Testbed {
            docker_host,
            owned,
            static_memload,
        })
    }

    /// memload linked statically, as the test images carry it.
    pub fn static_memload(&self) -> &std::path::Path {
        &self.static_memload
    }

    pub fn docker_host(&self) -> &str {
        &self.docker_host
    }

    /// Stops the engine if we started it.
    pub fn down(self) -> anyhow::Result<()> {
        if self.owned {
            Self::stop_dir(DIR)?;
        }
        Ok(())
    }

    fn stop_dir(dir: &str) -> anyhow::Result<()> {
        run_status(Command::new(script()).args(["stop", dir]))
    }
}

/// memload linked statically, so it runs in a busybox image with no libc.
pub fn static_memload() -> anyhow::Result<PathBuf> {
    static_binary("guardian-workload", "memload")
}

/// A release build of `package` linked statically (glibc, crt-static) into target/static, for
/// images and initramfs that have no libc; returns the path of its binary `bin`.
pub fn static_binary(package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    let target = "x86_64-unknown-linux-gnu";
    run_status(
        Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "--release",
                "-p",
                package,
                "--target",
                target,
                "--target-dir",
            ])
            .arg(workspace_root().join("target/static"))
            .current_dir(workspace_root())
            .env("RUSTFLAGS", "-C target-feature=+crt-static"),
    )?;
    Ok(workspace_root().join(format!("target/static/{target}/release/{bin}")))
}
