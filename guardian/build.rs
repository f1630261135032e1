//! Builds the eBPF programs (guardian-ebpf) with aya-build so that `cargo build` is the only
//! build command; the object is embedded in the binary.
use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let ebpf_dir = manifest_dir.join("../guardian-ebpf");
    check_toolchain()?;
    let root_dir = ebpf_dir
        .to_str()
        .context("guardian-ebpf path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "guardian-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

/// Fails early, with the fix, when the eBPF toolchain is not installed.
fn check_toolchain() -> anyhow::Result<()> {
    const FIX: &str = "run `cargo xtask setup` to install the eBPF toolchain";
    if which::which("bpf-linker").is_err() {
        bail!("bpf-linker is not on PATH: {FIX}");
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .with_context(|| format!("the nightly Rust toolchain is missing: {FIX}"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        bail!("rust-src for nightly is missing: {FIX}");
    }
    Ok(())
}
