//! `cargo xtask dist`: guardian as people install system tools, into `target/dist/`: a static
//! binary (eBPF object embedded, SQLite bundled), a Debian package made with cargo-deb (binary,
//! systemd unit enabled on install, stopped and restored on removal, commented default config,
//! docs, man page, completions), and a tarball with the very files of the package.

use std::{path::Path, process::Command};

use anyhow::{bail, Context as _};

use crate::{run_status, testbed::static_binary, workspace_root};

/// Files the package must install (paths as `dpkg-deb --contents` lists them, without `./`).
pub const EXPECTED_FILES: &[&str] = &[
    "usr/bin/guardian",
    "etc/guardian/guardian.toml",
    "lib/systemd/system/guardian.service",
    "usr/share/man/man1/guardian.1.gz",
    "usr/share/bash-completion/completions/guardian",
    "usr/share/zsh/vendor-completions/_guardian",
    "usr/share/fish/vendor_completions.d/guardian.fish",
    "usr/share/doc/guardian/README.md",
    "usr/share/doc/guardian/operating.md",
    "usr/share/doc/guardian/copyright",
];

/// Files of `listing` (`dpkg-deb --contents` or `tar -tvzf` output) that `expected` misses.
pub fn missing<'a>(listing: &str, expected: &[&'a str]) -> Vec<&'a str> {
    let listed: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches("./"))
        .collect();
    expected
        .iter()
        .copied()
        .filter(|want| {
            // Newer debhelpers put units under usr/lib (merged /usr): either is right.
            let alt = want
                .strip_prefix("lib/")
                .map(|rest| format!("usr/lib/{rest}"));
            !listed
                .iter()
                .any(|p| p == want || alt.as_deref() == Some(*p))
        })
        .collect()
}

pub fn run() -> anyhow::Result<()> {
    let root = workspace_root();
    let dist = root.join("target/dist");
    let stage = dist.join("stage");
    let _ = std::fs::remove_dir_all(&dist);
    std::fs::create_dir_all(&stage)?;

    println!("dist: building the static guardian");
    let binary = static_binary("guardian", "guardian")?;
    let staged = stage.join("guardian");
    std::fs::copy(&binary, &staged).with_context(|| format!("copying {}", binary.display()))?;
    if !is_static(&staged)? {
        bail!("{} is not statically linked", staged.display());
    }

    // The man page and completions come from the binary's own clap definitions.
    let man = capture(Command::new(&staged).arg("manpage"))?;
    std::fs::write(stage.join("guardian.1"), man)?;
    run_status(
        Command::new("gzip")
            .args(["-9nf"])
            .arg(stage.join("guardian.1")),
    )?;
    for (shell, file) in [
        ("bash", "guardian.bash"),
        ("zsh", "_guardian"),
        ("fish", "guardian.fish"),
    ] {
        let script = capture(Command::new(&staged).args(["completions", shell]))?;
        std::fs::write(stage.join(file), script)?;
    }

    println!("dist: packaging with cargo-deb");
    run_status(
        Command::new(env!("CARGO"))
            // --quiet: it warns that the staged assets are not cargo outputs, which is the point.
            .args([
                "deb",
                "--quiet",
                "-p",
                "guardian",
                "--no-build",
                "--no-strip",
                "--output",
            ])
            .arg(&dist)
            .current_dir(&root),
    )?;
    let deb = std::fs::read_dir(&dist)?
        .filter_map(|e| Some(e.ok()?.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("cargo deb left no .deb in target/dist")?;
    check_deb(&deb)?;

    // The tarball holds exactly the package's files, laid out for `tar -C / -xzf`.
    let version = env!("CARGO_PKG_VERSION");
    let tree = dist.join("tree");
    run_status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    let tarball = dist.join(format!("guardian-{version}-x86_64-linux.tar.gz"));
    run_status(
        Command::new("tar")
            .args([
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--sort=name",
                "-czf",
            ])
            .arg(&tarball)
            .arg("-C")
            .arg(&tree)
            .arg("."),
    )?;
    let listing = capture(Command::new("tar").arg("-tvzf").arg(&tarball))?;
    let gone = missing(&listing, EXPECTED_FILES);
    if !gone.is_empty() {
        bail!("{} lacks {}", tarball.display(), gone.join(", "));
    }
    std::fs::remove_dir_all(&tree)?;

    let bin = dist.join("guardian");
    std::fs::rename(&staged, &bin)?;
    std::fs::remove_dir_all(&stage)?;
    println!("dist: done");
    println!("  binary   {}", bin.display());
    println!(
        "  package  {}  (dpkg -i, or apt install ./…)",
        deb.display()
    );
    println!("  tarball  {}  (tar -C / -xzf …)", tarball.display());
    Ok(())
}

/// The package's files and maintainer scripts are what operators rely on: check both.
fn check_deb(deb: &Path) -> anyhow::Result<()> {
    let contents = capture(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    let gone = missing(&contents, EXPECTED_FILES);
    if !gone.is_empty() {
        bail!("{} lacks {}", deb.display(), gone.join(", "));
    }
    let info = capture(Command::new("dpkg-deb").arg("--info").arg(deb))?;
    for script in ["postinst", "prerm", "postrm", "conffiles"] {
        if !info.contains(script) {
            bail!("{} has no {script}", deb.display());
        }
    }
    let script = |name: &str| capture(Command::new("dpkg-deb").args(["--info"]).arg(deb).arg(name));
    let postinst = script("postinst")?;
    let prerm = script("prerm")?;
    if !postinst.contains("enable")
        || !prerm.contains("stop")
        || !prerm.contains("guardian --quiet restore")
    {
        bail!(
            "{}: the maintainer scripts do not enable, stop and restore:\n{postinst}\n{prerm}",
            deb.display()
        );
    }
    for name in ["postinst", "prerm", "postrm"] {
        let text = script(name)?;
        let out = Command::new("sh").args(["-n", "-c", &text]).output()?;
        if !out.status.success() {
            bail!("{name}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(())
}

fn is_static(binary: &Path) -> anyhow::Result<bool> {
    let bytes = std::fs::read(binary)?;
    has_no_interpreter(&bytes).with_context(|| format!("{} is not a 64-bit ELF", binary.display()))
}

/// A static executable (static-pie included) has no PT_INTERP program header: the loader is
/// never asked for a shared library. Reads the ELF64 little-endian header only.
fn has_no_interpreter(elf: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if elf.get(..5)? != b"\x7fELF\x02" {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let phoff = u64::from_le_bytes(elf.get(0x20..0x28)?.try_into().ok()?) as usize;
    let (size, count) = (u16_at(0x36)? as usize, u16_at(0x38)? as usize);
    for i in 0..count {
        let at = phoff + i * size;
        if u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?) == PT_INTERP {
            return Some(false);
        }
    }
    Some(true)
}

fn capture(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_has_an_interpreter_and_a_static_one_none() {
        // This test binary is dynamically linked (the default target).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(has_no_interpreter(&me), Some(false));
        assert_eq!(has_no_interpreter(b"#!/bin/sh\n"), None);
    }

    #[test]
    fn a_listing_with_every_file_misses_nothing_and_merged_usr_units_count() {
        let listing: String = EXPECTED_FILES
            .iter()
            .map(|f| {
                let f = f.replace("lib/systemd", "usr/lib/systemd");
                let f = f
                    .strip_prefix("usr/usr/")
                    .map_or(f.clone(), |r| format!("usr/{r}"));
                format!("-rw-r--r-- root/root 12 2026-11-30 14:00 ./{f}\n")
            })
            .collect();
        assert_eq!(missing(&listing, EXPECTED_FILES), Vec::<&str>::new());
        assert_eq!(
            missing(
                "drwxr-xr-x root/root 0 2026-11-30 ./usr/bin/guardian\n",
                &["usr/bin/guardian", "etc/guardian/guardian.toml"]
            ),
            vec!["etc/guardian/guardian.toml"]
        );
    }
}
