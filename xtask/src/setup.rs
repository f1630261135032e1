//! `cargo xtask setup`: the eBPF toolchain and the test packages, installed only when missing.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _};

use crate::run_status;

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
