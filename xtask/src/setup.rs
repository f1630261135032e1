//! `cargo xtask setup`: the eBPF toolchain and the test packages, installed only when missing.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _};

use crate::{run_status, workspace_root};

/// Debian packages the end-to-end tests use: a Docker engine with compose (the private test
/// engine), a static busybox (test images, the VM's initramfs), qemu and cpio (the cgroup v2 VM),
/// mmdebstrap and e2fsprogs' mke2fs/debugfs (the runner VM's image and disks), and real renderers for the post-mortem reports (librsvg's rsvg-convert for the SVG, Chromium
/// headless for the HTML).
const DEBIAN_PACKAGES: &[&str] = &[
    "docker.io",
    "docker-compose",
    "busybox-static",
    "qemu-system-x86",
    "cpio",
    "mmdebstrap",
    "e2fsprogs",
    "librsvg2-bin",
    "chromium",
];

pub fn run() -> anyhow::Result<()> {
    nightly_with_rust_src()?;
    bpf_linker()?;
    debian_packages(DEBIAN_PACKAGES)?;
    compose_v2()?;
    println!("setup: done");
    Ok(())
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

fn debian_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        if !packages.is_empty() {
            println!("setup: Debian packages present ({})", packages.join(", "));
        }
        return Ok(());
    }
    println!("setup: installing {}", missing.join(", "));
    run_status(Command::new("apt-get").arg("update").arg("-q"))?;
    run_status(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
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
