//! `cargo xtask dist`: guardian as people install system tools, into `target/dist/`: a static
//! binary (eBPF object embedded, SQLite bundled), a Debian package made with cargo-deb (binary,
//! systemd unit enabled on install, stopped and restored on removal, commented default config,
//! docs, man page, completions), a tarball with the very files of the package, and a container
//! image of the same binary (`docker load -i`), for hosts that run their agents as containers.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

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
    let deb = built_deb()?;
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

    let image = image(&dist, &staged, version)?;

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
    match image {
        Some(image) => println!(
            "  image    {}  (docker load -i …; the docker run line is in docs/operating.md)",
            image.display()
        ),
        None => println!("  image    not built: no Docker engine here (see above)"),
    }
    Ok(())
}

/// The image's name; `docker load` of the saved file gives `guardian:<version>` and
/// `guardian:latest`.
pub const IMAGE: &str = "guardian";

/// The file `cargo xtask dist` saves the image to (`docker save` format).
pub fn image_file(version: &str) -> PathBuf {
    workspace_root().join(format!("target/dist/guardian-image-{version}.tar"))
}

/// What the image runs and keeps, as `docker import --change` lines: the daemon by default,
/// the store in a volume. (`docker stop` sends SIGTERM, on which it restores and exits.)
fn image_changes(version: &str) -> Vec<String> {
    vec![
        r#"ENTRYPOINT ["/usr/bin/guardian"]"#.into(),
        r#"CMD ["daemon"]"#.into(),
        "VOLUME /var/lib/guardian".into(),
        "LABEL org.opencontainers.image.title=guardian".into(),
        format!("LABEL org.opencontainers.image.version={version}"),
        "LABEL org.opencontainers.image.description=\"memory guardian for containers: run it with the docker run line of /usr/share/doc/guardian/operating.md\"".into(),
    ]
}

/// The container image: the static binary, the commented default config and the docs on an
/// empty base, made with `docker import` (no base image, no registry, no builder: the binary
/// needs nothing else) and saved with `docker save`. Uses the engine at `DOCKER_HOST` or the
/// system socket when one answers, else starts a private one (tests/testbed/dockerd) for the
/// build; `None` when the host has no Docker engine at all (the rest of dist still stands).
fn image(dist: &Path, binary: &Path, version: &str) -> anyhow::Result<Option<PathBuf>> {
    let Some(engine) = Engine::find()? else {
        println!("dist: no Docker engine (no DOCKER_HOST, no answering /var/run/docker.sock, no dockerd on PATH): the container image is skipped; install Docker and rerun `cargo xtask dist` to get it");
        return Ok(None);
    };
    println!(
        "dist: building the container image with the engine at {}",
        engine.host
    );
    let root = dist.join("image-root");
    let _ = std::fs::remove_dir_all(&root);
    for dir in [
        "usr/bin",
        "etc/guardian",
        "var/lib/guardian",
        "usr/share/doc/guardian",
        "tmp",
    ] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    std::fs::copy(binary, root.join("usr/bin/guardian"))?;
    let src = workspace_root();
    std::fs::copy(
        src.join("guardian/packaging/guardian.toml"),
        root.join("etc/guardian/guardian.toml"),
    )?;
    for doc in ["README.md", "docs/operating.md"] {
        let from = src.join(doc);
        std::fs::copy(
            &from,
            root.join("usr/share/doc/guardian")
                .join(from.file_name().unwrap()),
        )?;
    }
    // Modes set, not inherited from the builder's umask or checkout: guardian refuses a config
    // that others can write (as sshd does), so a 0664 file from a umask-002 checkout would stop
    // the daemon in the image.
    use std::os::unix::fs::PermissionsExt as _;
    set_modes(&root)?;
    std::fs::set_permissions(
        root.join("usr/bin/guardian"),
        std::fs::Permissions::from_mode(0o755),
    )?;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    let rootfs = dist.join("image-rootfs.tar");
    run_status(
        Command::new("tar")
            .args([
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--sort=name",
                "-cf",
            ])
            .arg(&rootfs)
            .arg("-C")
            .arg(&root)
            .arg("."),
    )?;
    let tag = format!("{IMAGE}:{version}");
    let result = (|| -> anyhow::Result<PathBuf> {
        let mut import = engine.docker();
        import.arg("import");
        for change in image_changes(version) {
            import.arg("--change").arg(change);
        }
        capture(import.arg(&rootfs).arg(&tag))?;
        capture(
            engine
                .docker()
                .args(["tag", &tag, &format!("{IMAGE}:latest")]),
        )?;
        // The image runs: the entrypoint answers with this version.
        let out =
            capture(
                engine
                    .docker()
                    .args(["run", "--rm", "--network", "none", &tag, "--version"]),
            )?;
        if !out.contains(version) {
            bail!("the image's `guardian --version` printed {out:?}, expected {version}");
        }
        let file = image_file(version);
        capture(
            engine
                .docker()
                .arg("save")
                .arg("-o")
                .arg(&file)
                .arg(&tag)
                .arg(format!("{IMAGE}:latest")),
        )?;
        Ok(file)
    })();
    engine.stop()?;
    std::fs::remove_dir_all(&root)?;
    std::fs::remove_file(&rootfs)?;
    result.map(Some)
}

/// Directories 0755 and files 0644 below `dir`, whatever the umask made them.
fn set_modes(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_type()?.is_dir() {
            set_modes(&e.path())?;
        } else {
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o644))?;
        }
    }
    Ok(())
}

/// A Docker engine to build the image with: the user's, or a private one started for it.
struct Engine {
    host: String,
    /// The private engine's directory, stopped and removed after the build.
    private: Option<&'static str>,
}

impl Engine {
    const PRIVATE_DIR: &'static str = "/tmp/guardian-dist-dockerd";

    fn find() -> anyhow::Result<Option<Self>> {
        if let Ok(host) = std::env::var("DOCKER_HOST") {
            return Ok(Some(Engine {
                host,
                private: None,
            }));
        }
        let system = "unix:///var/run/docker.sock";
        let answers = Command::new("docker")
            .args(["-H", system, "version", "--format", "{{.Server.Version}}"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if answers {
            return Ok(Some(Engine {
                host: system.into(),
                private: None,
            }));
        }
        if crate::setup::dockerd_on_path().is_none() {
            return Ok(None);
        }
        let script = workspace_root().join("tests/testbed/dockerd");
        let out = capture(Command::new(&script).args(["start", Self::PRIVATE_DIR])).with_context(
            || {
                format!(
                    "starting a private Docker engine for the image (log: {}/dockerd.log)",
                    Self::PRIVATE_DIR
                )
            },
        )?;
        let host = out
            .lines()
            .find_map(|l| l.strip_prefix("DOCKER_HOST="))
            .context("tests/testbed/dockerd printed no DOCKER_HOST")?
            .to_string();
        Ok(Some(Engine {
            host,
            private: Some(Self::PRIVATE_DIR),
        }))
    }

    fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_HOST", &self.host);
        cmd
    }

    fn stop(&self) -> anyhow::Result<()> {
        if let Some(dir) = self.private {
            run_status(
                Command::new(workspace_root().join("tests/testbed/dockerd")).args(["stop", dir]),
            )?;
        }
        Ok(())
    }
}

/// The `.deb` that [`run`] left in target/dist.
pub fn built_deb() -> anyhow::Result<PathBuf> {
    crate::debian::debs(&workspace_root().join("target/dist"))
        .into_iter()
        .next()
        .context("no .deb in target/dist: cargo xtask dist builds it")
}

/// Installs the `.deb` that `run` built into a clean Debian `suite` made with mmdebstrap from
/// the host's own mirror (minbase: nothing of guardian's dependencies is there before), the way
/// the README says (`apt install ./guardian_….deb`), checks that it runs and that its files
/// are in place, then removes and purges it and checks that nothing of it is left. Nothing is
/// kept: mmdebstrap's target is /dev/null. (The runner VM does the same on trixie with a
/// running systemd; here no systemd runs, so the maintainer scripts' systemctl calls are skipped
/// as on any chroot or container build.)
pub fn install_check(suite: &str) -> anyhow::Result<()> {
    let deb = built_deb()?;
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    let mirror = crate::debian::mirror()?;
    println!("dist: installing {name} on a clean Debian {suite} (mmdebstrap, ≈ 1–2 minutes)");
    let t = std::time::Instant::now();
    let check_installed = "guardian --version && guardian --help >/dev/null \
        && dpkg -s guardian | grep -qx 'Status: install ok installed' \
        && test -f /etc/guardian/guardian.toml && test -f /usr/share/man/man1/guardian.1.gz \
        && { test -f /lib/systemd/system/guardian.service || test -f /usr/lib/systemd/system/guardian.service; }";
    let check_removed = "! test -e /usr/bin/guardian && test -f /etc/guardian/guardian.toml";
    let check_purged =
        "! test -e /etc/guardian && ! dpkg-query -W guardian 2>/dev/null | grep -q .";
    let out = Command::new("mmdebstrap")
        .args(["--variant=minbase", "--quiet"])
        .arg(format!("--customize-hook=copy-in {} /tmp", deb.display()))
        .arg(format!(
            "--customize-hook=chroot \"$1\" apt-get install -y -q /tmp/{name} >/dev/null"
        ))
        .arg(format!(
            "--customize-hook=chroot \"$1\" sh -ec \"{check_installed}\""
        ))
        .arg("--customize-hook=chroot \"$1\" apt-get remove -y -q guardian >/dev/null")
        .arg(format!(
            "--customize-hook=chroot \"$1\" sh -ec \"{check_removed}\""
        ))
        .arg("--customize-hook=chroot \"$1\" apt-get purge -y -q guardian >/dev/null")
        .arg(format!(
            "--customize-hook=chroot \"$1\" sh -ec \"{check_purged}\""
        ))
        .arg(suite)
        .arg("/dev/null")
        .arg(format!(
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {mirror} {suite} main"
        ))
        .output()
        .context("starting mmdebstrap (cargo xtask setup --tests installs it)")?;
    if !out.status.success() {
        bail!(
            "{name} on a clean Debian {suite}: install, check, remove or purge failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!(
        "dist: {name} installs (apt install ./…), runs, removes and purges cleanly on Debian {suite} ({:.0} s)",
        t.elapsed().as_secs_f64()
    );
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
