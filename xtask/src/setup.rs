//! `cargo xtask setup`: the eBPF toolchain, and with `--tests` the test packages, installed only
//! when missing. What to install is planned by [`plan`], a pure function of what is present, so
//! "never install a Docker engine over an existing one" is a tested rule, not a hope.

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use anyhow::{bail, Context as _};

use crate::{run_status, workspace_root};

/// What a task needs set up: building guardian (`run`), or also testing it (`test`, `vm-test`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Nightly rust-src and bpf-linker: what `cargo build` of guardian needs. No Debian packages.
    Build,
    /// Build, plus the Debian packages and Compose v2 the end-to-end tests and VMs use.
    Tests,
    /// Build, plus cargo-deb for `cargo xtask dist`.
    Dist,
    /// Build, plus cargo-fuzz for `cargo xtask fuzz`.
    Fuzz,
}

/// Debian packages the end-to-end tests use, each with why: a Docker engine with compose (the
/// private test engine), a static busybox (test images, the VM's initramfs), qemu and cpio (the
/// cgroup v2 VM), mmdebstrap and e2fsprogs (the runner VM's image and disks), and real renderers
/// for the post-mortem reports. The engine (`docker.io`) is planned separately: see [`plan`].
const TEST_PACKAGES: &[(&str, &str)] = &[
    (
        "docker-compose",
        "the compose tests run every case with docker-compose 1.29 too",
    ),
    ("busybox-static", "test images and the VM's initramfs"),
    ("qemu-system-x86", "the cgroup v2 VM and the runner VM"),
    ("cpio", "the VM's initramfs"),
    ("mmdebstrap", "the runner VM's Debian image"),
    ("e2fsprogs", "the runner VM's disks (mke2fs, debugfs)"),
    (
        "librsvg2-bin",
        "renders the post-mortem SVG chart (rsvg-convert)",
    ),
    ("chromium", "renders the post-mortem HTML report headless"),
    (
        "prometheus",
        "the fleet-profile test scrapes two daemons with a real Prometheus; promtool checks the exposition",
    ),
];

/// The engine setup installs for the tests when the host has none.
const ENGINE_PACKAGE: &str = "docker.io";

/// Packages that mean "this host already has a Docker engine or CLI": installing `docker.io`
/// next to Docker's own `docker-ce` packages conflicts with them, and apt may remove the user's.
pub const DOCKER_PACKAGES: &[&str] = &[
    "docker.io",
    "docker-ce",
    "docker-ce-cli",
    "docker-ce-rootless-extras",
    "docker-ee",
    "docker-ee-cli",
    "moby-engine",
    "moby-cli",
    "containerd.io",
    "podman-docker",
];

/// What setup found on the host.
#[derive(Debug, Default, Clone)]
pub struct Present {
    /// Installed Debian packages (at least those among [`TEST_PACKAGES`] and [`DOCKER_PACKAGES`]).
    pub packages: BTreeSet<String>,
    /// A `dockerd` on PATH, whatever installed it (a package, a tarball, a snap).
    pub dockerd: Option<PathBuf>,
}

/// One package setup will install, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    pub package: &'static str,
    pub reason: String,
}

/// Setup's decision: packages to install, and notes on what it deliberately left alone.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    pub install: Vec<Install>,
    pub notes: Vec<String>,
}

/// Which Debian packages `scope` needs on a host where `present` is installed. Building needs
/// none; the tests need [`TEST_PACKAGES`] and an engine, but an engine is planned only when the
/// host has no `dockerd` and no Docker package at all.
pub fn plan(scope: Scope, present: &Present) -> Plan {
    let mut plan = Plan::default();
    if scope != Scope::Tests {
        return plan;
    }
    let docker: Vec<&str> = DOCKER_PACKAGES
        .iter()
        .copied()
        .filter(|p| present.packages.contains(*p))
        .collect();
    match (&present.dockerd, docker.is_empty()) {
        (Some(path), _) => plan.notes.push(format!(
            "Docker engine present ({}): no engine install, the tests use it",
            path.display()
        )),
        (None, false) => plan.notes.push(format!(
            "Docker packages installed ({}): no engine install; the tests need dockerd on PATH",
            docker.join(", ")
        )),
        (None, true) => plan.install.push(Install {
            package: ENGINE_PACKAGE,
            reason: "no Docker engine on this host: the tests start a private dockerd".into(),
        }),
    }
    for (package, reason) in TEST_PACKAGES {
        if !present.packages.contains(*package) {
            plan.install.push(Install {
                package,
                reason: (*reason).to_string(),
            });
        }
    }
    plan
}

/// Sets up what `scope` needs, skipping what is there.
pub fn run(scope: Scope) -> anyhow::Result<()> {
    nightly_with_rust_src()?;
    bpf_linker()?;
    if scope == Scope::Tests {
        let plan = plan(scope, &present()?);
        for note in &plan.notes {
            println!("setup: {note}");
        }
        install(&plan)?;
        compose_v2()?;
    }
    // The runner VM (part of the tests) installs guardian from the package `dist` builds.
    if scope == Scope::Dist || scope == Scope::Tests {
        cargo_deb()?;
    }
    // `test` runs every fuzz target briefly.
    if scope == Scope::Fuzz || scope == Scope::Tests {
        cargo_fuzz()?;
    }
    println!("setup: done");
    Ok(())
}

/// cargo-deb, from crates.io when `cargo deb` does not answer.
fn cargo_deb() -> anyhow::Result<()> {
    if output(Command::new("cargo").args(["deb", "--version"])).is_some() {
        println!("setup: cargo-deb present");
        return Ok(());
    }
    println!("setup: installing cargo-deb (builds the .deb; a few minutes)");
    run_status(Command::new("cargo").args(["install", "cargo-deb", "--locked"]))
}

/// cargo-fuzz (builds and runs the libFuzzer targets in fuzz/), from crates.io when `cargo fuzz`
/// does not answer.
fn cargo_fuzz() -> anyhow::Result<()> {
    if output(Command::new("cargo").args(["fuzz", "--version"])).is_some() {
        println!("setup: cargo-fuzz present");
        return Ok(());
    }
    println!("setup: installing cargo-fuzz (builds the fuzz targets; a few minutes)");
    run_status(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

/// What is installed among the packages setup cares about, and a `dockerd` on PATH.
fn present() -> anyhow::Result<Present> {
    // dpkg-query exits 1 when a name is unknown but still lists the known ones.
    let names: Vec<&str> = TEST_PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .chain(DOCKER_PACKAGES.iter().copied())
        .collect();
    let listing = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\\n"])
        .args(&names)
        .output()
        .context("running dpkg-query: setup --tests needs a Debian-based host")?;
    let packages = String::from_utf8_lossy(&listing.stdout)
        .lines()
        // "install ok installed", or "hold ok installed" for a package the user pinned.
        .filter(|l| l.ends_with(" ok installed"))
        .filter_map(|l| l.split_whitespace().next())
        .map(|p| p.split(':').next().unwrap_or(p).to_string())
        .collect();
    Ok(Present {
        packages,
        dockerd: dockerd_on_path(),
    })
}

/// A `dockerd` on PATH, whatever installed it.
pub fn dockerd_on_path() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("dockerd"))
            .find(|p| p.is_file())
    })
}

fn install(plan: &Plan) -> anyhow::Result<()> {
    if plan.install.is_empty() {
        println!("setup: test packages present");
        return Ok(());
    }
    for i in &plan.install {
        println!("setup: installing {} ({})", i.package, i.reason);
    }
    run_status(Command::new("apt-get").arg("update").arg("-q"))?;
    run_status(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(plan.install.iter().map(|i| i.package))
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nightly_with_rust_src() -> anyhow::Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is not installed: install Rust with rustup first")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        println!("setup: installing the nightly toolchain (the eBPF crate needs -Z build-std)");
        run_status(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if components.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: nightly rust-src present");
    } else {
        println!("setup: adding rust-src to nightly");
        run_status(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// bpf-linker must link against the very LLVM that rustc nightly uses, so it is built from
/// crates.io against the libLLVM shipped in nightly's sysroot (found, not hard-coded).
fn bpf_linker() -> anyhow::Result<()> {
    if output(Command::new("bpf-linker").arg("--version")).is_some() {
        println!("setup: bpf-linker present");
        return Ok(());
    }
    let version = output(Command::new("rustc").args(["+nightly", "-vV"]))
        .context("rustc +nightly -vV failed")?;
    let llvm_major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV does not name its LLVM version")?
        .to_string();
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("rustc +nightly --print sysroot failed")?;
    let libdir = PathBuf::from(sysroot.trim()).join("lib");
    let lib = std::fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find_map(|name| {
            name.strip_prefix("lib")?
                .strip_suffix(".so")
                .filter(|stem| stem.starts_with(&format!("LLVM-{llvm_major}")))
                .map(str::to_string)
        })
        .with_context(|| format!("no libLLVM-{llvm_major}*.so in {}", libdir.display()))?;
    println!("setup: building bpf-linker against {lib} (about a minute)");
    let libdir = libdir.display();
    run_status(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm_major},no-llvm-linking"),
            ])
            .env(
                "RUSTFLAGS",
                format!("-L native={libdir} -l dylib={lib} -C link-arg=-Wl,-rpath,{libdir}"),
            ),
    )?;
    if output(Command::new("bpf-linker").arg("--version")).is_none() {
        bail!("bpf-linker was installed but does not run; is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

/// Where setup puts Compose v2 (Debian trixie's docker-compose 2.x; bookworm has only 1.29):
/// the end-to-end tests run every compose case with it and with the host's docker-compose.
pub fn compose_v2_path() -> PathBuf {
    workspace_root().join("target/tools/compose-v2/docker-compose")
}

/// Compose v2 from Debian trixie, without touching the host's apt configuration: a sources
/// list of its own (the host's own Debian mirror, suite trixie) and a lists directory under
/// target/tools, `apt-get download`, then `dpkg-deb -x` of the one binary. Its binary runs on
/// bookworm (glibc >= 2.34). Skipped when present.
fn compose_v2() -> anyhow::Result<()> {
    let dest = compose_v2_path();
    if output(Command::new(&dest).args(["version", "--short"])).is_some_and(|v| v.starts_with('2'))
    {
        println!("setup: Compose v2 present ({})", dest.display());
        return Ok(());
    }
    let work = workspace_root().join("target/tools/trixie-apt");
    let trixie = crate::debian::Release::new(&work, "trixie")?;
    println!("setup: downloading Compose v2 (docker-compose from Debian trixie)");
    trixie.update()?;
    let deb = trixie.download("docker-compose", &work.join("debs"))?;
    let extracted = work.join("x");
    let _ = std::fs::remove_dir_all(&extracted);
    run_status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&extracted))?;
    let binary = extracted.join("usr/libexec/docker/cli-plugins/docker-compose");
    std::fs::create_dir_all(dest.parent().expect("a file in a directory"))?;
    std::fs::copy(&binary, &dest)
        .with_context(|| format!("copying {} to {}", binary.display(), dest.display()))?;
    match output(Command::new(&dest).args(["version", "--short"])) {
        Some(v) if v.starts_with('2') => {
            println!("setup: Compose v2 {} at {}", v.trim(), dest.display());
            Ok(())
        }
        _ => bail!(
            "{} does not run: Compose v2 needs glibc >= 2.34",
            dest.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(packages: &[&str], dockerd: Option<&str>) -> Present {
        Present {
            packages: packages.iter().map(|p| p.to_string()).collect(),
            dockerd: dockerd.map(PathBuf::from),
        }
    }

    fn installs(plan: &Plan) -> Vec<&str> {
        plan.install.iter().map(|i| i.package).collect()
    }

    #[test]
    fn building_installs_no_debian_package() {
        assert_eq!(plan(Scope::Build, &host(&[], None)), Plan::default());
        assert_eq!(plan(Scope::Dist, &host(&[], None)), Plan::default());
    }

    #[test]
    fn docker_ce_installed_means_no_docker_io() {
        let p = plan(Scope::Tests, &host(&["docker-ce", "docker-ce-cli"], None));
        assert!(!installs(&p).contains(&"docker.io"), "{p:?}");
        assert!(p.notes[0].contains("docker-ce, docker-ce-cli"), "{p:?}");
    }

    #[test]
    fn a_dockerd_on_path_means_no_engine_install() {
        let p = plan(Scope::Tests, &host(&[], Some("/usr/local/bin/dockerd")));
        assert!(!installs(&p).contains(&"docker.io"), "{p:?}");
        assert!(p.notes[0].contains("/usr/local/bin/dockerd"), "{p:?}");
    }

    #[test]
    fn a_host_without_docker_gets_docker_io_for_the_tests_with_a_reason() {
        let p = plan(Scope::Tests, &host(&["cpio"], None));
        assert_eq!(installs(&p)[0], "docker.io");
        assert!(p.install[0].reason.contains("no Docker engine"));
        assert!(!installs(&p).contains(&"cpio"));
        assert!(installs(&p).contains(&"qemu-system-x86"));
    }

    #[test]
    fn a_host_with_everything_installs_nothing() {
        let all: Vec<&str> = TEST_PACKAGES.iter().map(|(p, _)| *p).collect();
        let p = plan(Scope::Tests, &host(&all, Some("/usr/bin/dockerd")));
        assert!(p.install.is_empty(), "{p:?}");
    }
}
