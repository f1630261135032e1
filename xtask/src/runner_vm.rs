//! `cargo xtask runner-vm`: guardian on a CI runner as its users have one — Debian trixie
//! (kernel 6.12, cgroup v2 only), systemd as PID 1, Docker with the systemd cgroup driver and
//! Compose v2 — booted under qemu (TCG: our hosts are VMs without KVM).
//!
//! The system image is built once with mmdebstrap into an ext4 file under
//! `target/runner-vm/image-<key>`, the key being a hash of the package list and the image's
//! set-up script; each run boots a throw-away copy of it (qemu's `snapshot=on`). What a run
//! tests comes on a second disk (the payload: guardian's static binary and unit, memload, the
//! test image's tarball, the compose stacks and `tests/runner-vm/run`), and results come back on
//! a third (`/out`), read with debugfs after the guest powers off; the serial console shows
//! progress. In the guest, `guardian-runnervm.service` (after docker.service) installs guardian
//! as a user would (`dpkg -i` of the package `cargo xtask dist` builds: the unit enabled and
//! started, the default config) and runs the scenarios, each printing `RUNNERVM <name>
//! PASS|FAIL`.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{run_status, workspace_root};

/// The Debian release the runner runs.
const SUITE: &str = "trixie";

/// What the image holds: systemd, Docker (the engine and its CLI, which trixie splits) and
/// Compose v2, the kernel with an initrd, and the few tools the scenarios use.
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "zstd",
    "linux-image-amd64",
    "initramfs-tools",
    "docker.io",
    "docker-cli",
    "docker-compose",
    "iproute2",
    "procps",
    "ca-certificates",
    "jq",
    // A userspace OOM killer, disabled below; the `killers` scenario starts it (issue 15 case 5).
    "earlyoom",
];

/// Run by mmdebstrap on the finished root filesystem (`$1`): what a runner's image has that a
/// bare debootstrap lacks, and what keeps the boot short and quiet under TCG.
const CUSTOMIZE: &str = r#"set -e
root="$1"
echo runner > "$root/etc/hostname"
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' > "$root/etc/fstab"
mkdir -p "$root/payload" "$root/out" "$root/etc/docker"
# The default on systemd hosts, written out: containers at /system.slice/docker-<id>.scope.
printf '{ "exec-opts": ["native.cgroupdriver=systemd"] }\n' > "$root/etc/docker/daemon.json"
rm -f "$root"/etc/systemd/system/timers.target.wants/*
ln -sf /dev/null "$root/etc/systemd/system/systemd-firstboot.service"
# Installed for the killers scenario only: off unless a scenario starts it.
rm -f "$root/etc/systemd/system/multi-user.target.wants/earlyoom.service"
passwd --root "$root" -d root
mkdir -p "$root/etc/systemd/system/serial-getty@ttyS0.service.d"
printf '[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,57600,38400,9600 - $TERM\n' > "$root/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf"
cat > "$root/etc/systemd/system/guardian-runnervm.service" <<'UNIT'
[Unit]
Description=guardian runner-VM scenarios (from the payload disk)
After=docker.service local-fs.target
Wants=docker.service

[Service]
Type=exec
# The payload and results disks are mounted here, not by fstab: under TCG udev announces
# them to systemd too late for a device unit's timeout.
ExecStart=/bin/sh -c 'mount -o ro /dev/vdb /payload && mount /dev/vdc /out && exec /payload/run'

StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/guardian-runnervm.service "$root/etc/systemd/system/multi-user.target.wants/guardian-runnervm.service"
"#;

/// The older kernel booted for the same scenarios where kernels lack newer files (5.10 has no
/// memory.peak, added in 5.19): Debian bullseye's, installed into the same image beside
/// trixie's own.
const OLD_SUITE: &str = "bullseye";

/// Guest memory: room for systemd, dockerd and the stacks, small enough that the overcommit and
/// global-OOM scenarios fill it in seconds.
const GUEST_MIB: u32 = 2048;

/// The longest a whole boot with every scenario may take.
const TIMEOUT: Duration = Duration::from_secs(45 * 60);

#[derive(clap::Args, Default)]
pub struct Opts {
    /// Run only these scenarios (comma-separated names as the guest prints them, e.g.
    /// `doctor,identity`); the set-up runs always.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Boot with guardian installed and no scenarios, with a root shell on this terminal
    /// (qemu's serial console: Ctrl-A X quits).
    #[arg(long)]
    pub shell: bool,
    /// Boot the older kernel (Debian bullseye's 5.10) instead of trixie's.
    #[arg(long)]
    pub old_kernel: bool,
}

pub fn run(opts: &Opts) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = workspace_root().join("target/runner-vm");
    std::fs::create_dir_all(&dir)?;
    let image = image(&dir)?;
    let built = started.elapsed();
    let (kernel, initrd) = if opts.old_kernel {
        (&image.old_kernel, &image.old_initrd)
    } else {
        (&image.kernel, &image.initrd)
    };
    let payload = payload(&dir)?;
    // The old kernel's boot keeps its console and results apart from the main one's.
    let tag = if opts.old_kernel { "-old-kernel" } else { "" };
    let out = dir.join(format!("out{tag}.img"));
    let _ = std::fs::remove_file(&out);
    run_status(
        Command::new("mke2fs")
            .args(["-q", "-t", "ext4", "-L", "out"])
            .arg(&out)
            .arg("256M"),
    )?;
    let mut append = String::from("root=/dev/vda rw console=ttyS0 panic=-1");
    if !opts.only.is_empty() {
        append.push_str(&format!(" runnervm.only={}", opts.only.join(",")));
    }
    if opts.shell {
        append.push_str(" runnervm.shell");
    } else {
        // Nobody types at the console: no login prompt there (its terminal probes are noise).
        append.push_str(" systemd.mask=serial-getty@ttyS0.service");
    }
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2"])
        .args(["-m", &GUEST_MIB.to_string()])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-drive")
        .arg(drive(&image.disk, "snapshot=on"))
        .arg("-drive")
        .arg(drive(&payload, "readonly=on"))
        .arg("-drive")
        .arg(drive(&out, ""))
        .args(["-append", &append]);
    if opts.shell {
        println!("runner-vm: booting with a root shell on the serial console (Ctrl-A X quits)");
        run_status(&mut qemu)?;
        return Ok(());
    }
    let log = dir.join(format!("serial{tag}.log"));
    println!(
        "runner-vm: booting Debian {SUITE} (systemd, Docker, Compose v2) with {} kernel under TCG; console in {}",
        if opts.old_kernel { format!("{OLD_SUITE}'s") } else { "its own".to_string() },
        log.display()
    );
    let boot = Instant::now();
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (cargo xtask setup installs it)")?;
    let mut follow = Follow::new(&log);
    loop {
        follow.print_new();
        if child.try_wait()?.is_some() {
            break;
        }
        if boot.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            follow.print_new();
            bail!(
                "the runner VM did not finish in {} minutes; see {}",
                TIMEOUT.as_secs() / 60,
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    follow.print_new();
    let results_dir = dir.join(format!("results{tag}"));
    let _ = std::fs::remove_dir_all(&results_dir);
    std::fs::create_dir_all(&results_dir)?;
    let dumped = Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump /r {}", results_dir.display()))
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let results = std::fs::read_to_string(results_dir.join("r/results")).unwrap_or_default();
    let source = if dumped && !results.is_empty() {
        results
    } else {
        // The out disk was not written (the guest died early): the console is all there is.
        std::fs::read_to_string(&log)?
    };
    let summary = Summary::parse(&source);
    println!(
        "runner-vm: phases: image {:.0} s{}, boot to poweroff {:.0} s",
        built.as_secs_f64(),
        if built.as_secs() < 2 { " (cached)" } else { "" },
        boot.elapsed().as_secs_f64()
    );
    for (phase, secs) in &summary.timings {
        println!("runner-vm: phase {phase}: {secs}");
    }
    for failed in &summary.failed {
        println!("runner-vm: FAILED {failed}");
    }
    println!(
        "runner-vm: artifacts (guardian's journal, reports, the store) in {}",
        results_dir.join("r").display()
    );
    println!(
        "runner-vm: {} passed, {} failed",
        summary.passed.len(),
        summary.failed.len()
    );
    if !summary.finished {
        bail!(
            "the guest did not finish its scenarios; see {}",
            log.display()
        );
    }
    if !summary.failed.is_empty() || summary.passed.is_empty() {
        bail!(
            "runner-vm failed; the guest's console is in {}",
            log.display()
        );
    }
    Ok(())
}

fn drive(file: &Path, extra: &str) -> String {
    let mut d = format!("file={},if=virtio,format=raw", file.display());
    if !extra.is_empty() {
        d.push(',');
        d.push_str(extra);
    }
    d
}

/// The `RUNNERVM` lines of a run: scenario results, phase timings and the end marker.
#[derive(Debug, Default, PartialEq)]
struct Summary {
    passed: Vec<String>,
    failed: Vec<String>,
    timings: Vec<(String, String)>,
    finished: bool,
}

impl Summary {
    fn parse(text: &str) -> Self {
        let mut s = Summary::default();
        for line in text.lines() {
            let Some((_, rest)) = line.trim_end_matches('\r').split_once("RUNNERVM ") else {
                continue;
            };
            let words: Vec<&str> = rest.split_whitespace().collect();
            match words.as_slice() {
                ["END"] => s.finished = true,
                ["TIME", phase, secs @ ..] => {
                    s.timings.push((phase.to_string(), secs.join(" ")));
                }
                [name, "PASS"] => s.passed.push(name.to_string()),
                [name, "FAIL", ..] => s.failed.push(name.to_string()),
                _ => {}
            }
        }
        s
    }
}

/// Prints the console's `RUNNERVM` lines as they arrive: progress for a run of many minutes.
struct Follow {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl Follow {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            offset: 0,
            partial: String::new(),
        }
    }

    fn print_new(&mut self) {
        use std::io::{Read as _, Seek as _};
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        if f.seek(std::io::SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        let Ok(n) = f.read_to_end(&mut buf) else {
            return;
        };
        self.offset += n as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        let mut stdout = std::io::stdout().lock();
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            if let Some((_, rest)) = line.trim_end().split_once("RUNNERVM ") {
                let _ = writeln!(stdout, "runner-vm: {rest}");
            }
        }
        let _ = stdout.flush();
    }
}

/// The cached system image: the disk and the kernel and initrd to boot it with.
struct Image {
    disk: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    old_kernel: PathBuf,
    old_initrd: PathBuf,
}

/// Builds the image unless one for the same package list and set-up script is cached.
fn image(dir: &Path) -> anyhow::Result<Image> {
    let mirror = crate::debian::mirror()?;
    let old_kernel_deb = old_kernel_deb(dir)?;
    let deb_name = old_kernel_deb
        .file_name()
        .context("the old kernel package has no file name")?
        .to_string_lossy()
        .into_owned();
    let key = image_key(&deb_name);
    let image_dir = dir.join(format!("image-{key}"));
    let ready = image_dir.join("ready");
    let at = |name: &str| image_dir.join(name);
    let image = Image {
        disk: at("rootfs.ext4"),
        kernel: at("vmlinuz"),
        initrd: at("initrd.img"),
        old_kernel: at("vmlinuz-old"),
        old_initrd: at("initrd.img-old"),
    };
    if ready.exists() {
        println!("runner-vm: using the cached image {}", image_dir.display());
        return Ok(image);
    }
    // Images of other keys are stale: a changed package list or set-up script.
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_name().to_string_lossy().starts_with("image-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    std::fs::create_dir_all(&image_dir)?;
    let rootfs = image_dir.join("rootfs");
    println!(
        "runner-vm: building the {SUITE} image with mmdebstrap (≈ 2 minutes, once per package list)"
    );
    let t = Instant::now();
    run_status(
        Command::new("mmdebstrap")
            .args(["--variant=apt"])
            .arg(format!("--include={}", PACKAGES.join(",")))

            .args([
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            ])
            .arg(format!("--customize-hook={CUSTOMIZE}"))
            // The old kernel comes from another release: dpkg installs it beside trixie's
            // (apt inside mmdebstrap cannot see files outside the chroot).
            .arg(format!(
                "--customize-hook=copy-in {} /tmp",
                old_kernel_deb.display()
            ))
            .arg(format!(
                "--customize-hook=chroot \"$1\" dpkg -i /tmp/{deb_name} && rm \"$1/tmp/{deb_name}\""
            ))
            .arg(SUITE)
            .arg(&rootfs)
            .arg(format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {mirror} {SUITE} main"
            )),
    )
    .context("mmdebstrap failed (cargo xtask setup installs it; it needs the Debian mirror)")?;
    println!(
        "runner-vm: mmdebstrap took {:.0} s",
        t.elapsed().as_secs_f64()
    );
    // Two kernels in /boot: trixie's (the newest version) and the old one.
    let mut versions: Vec<String> = std::fs::read_dir(rootfs.join("boot"))?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix("vmlinuz-")
                .map(str::to_string)
        })
        .collect();
    versions.sort_by(|a, b| version_cmp(a, b));
    let (Some(old), Some(new)) = (versions.first().cloned(), versions.last().cloned()) else {
        bail!("the image has no kernel in /boot");
    };
    anyhow::ensure!(
        old != new,
        "the image has one kernel only ({new}); expected two"
    );
    let boot = rootfs.join("boot");
    std::fs::copy(boot.join(format!("vmlinuz-{new}")), &image.kernel)?;
    std::fs::copy(boot.join(format!("initrd.img-{new}")), &image.initrd)?;
    std::fs::copy(boot.join(format!("vmlinuz-{old}")), &image.old_kernel)?;
    std::fs::copy(boot.join(format!("initrd.img-{old}")), &image.old_initrd)?;
    // No loop devices needed: mke2fs copies the tree in, keeping owners and modes.
    run_status(
        Command::new("mke2fs")
            .args(["-q", "-t", "ext4", "-L", "runner", "-d"])
            .arg(&rootfs)
            .arg(at("rootfs.ext4"))
            .arg("6G"),
    )?;
    std::fs::remove_dir_all(&rootfs)?;
    std::fs::write(
        &ready,
        format!(
            "suite {SUITE}\npackages {}\nkernels {new} {old}\n",
            PACKAGES.join(" ")
        ),
    )?;
    Ok(image)
}

/// Compares kernel versions such as `5.10.0-35-amd64` and `6.12.57+deb13-amd64` numerically.
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let nums = |s: &str| -> Vec<u64> {
        s.split(|c: char| !c.is_ascii_digit())
            .filter(|p| !p.is_empty())
            .map(|p| p.parse().unwrap_or(0))
            .collect()
    };
    nums(a).cmp(&nums(b))
}

/// Debian bullseye's kernel package (5.10), downloaded once.
fn old_kernel_deb(dir: &Path) -> anyhow::Result<PathBuf> {
    let apt = dir.join(format!("apt-{OLD_SUITE}"));
    let debs = apt.join("debs");
    if let Some(deb) = crate::debian::debs(&debs).into_iter().next() {
        return Ok(std::fs::canonicalize(deb)?);
    }
    let release = crate::debian::Release::new(&apt, OLD_SUITE)?;
    release.update()?;
    let kernel = release.dependency("linux-image-amd64", "linux-image-")?;
    release.download(&kernel, &debs)
}

/// A short hash of what the image is made of (FNV-1a: stable across Rust versions).
fn image_key(deb_name: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in SUITE
        .bytes()
        .chain(PACKAGES.join(",").bytes())
        .chain(CUSTOMIZE.bytes())
        .chain(deb_name.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The second disk: what this run tests (the package and the container image, memload, the test image, the stacks and
/// the scenario script), laid out as the guest's /payload.
fn payload(dir: &Path) -> anyhow::Result<PathBuf> {
    // guardian as users install it: the Debian package `cargo xtask dist` builds.
    crate::dist::run()?;
    let deb = crate::dist::built_deb()?;
    let memload = crate::testbed::static_memload()?;
    let root = dir.join("payload");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("stacks"))?;
    let ws = workspace_root();
    let copy = |from: &Path, to: &str| -> anyhow::Result<()> {
        std::fs::copy(from, root.join(to))
            .with_context(|| format!("copying {}", from.display()))?;
        Ok(())
    };
    copy(&deb, "guardian.deb")?;
    // And as hosts that run their agents as containers install it: the image dist saved.
    let image_tar = crate::dist::image_file(env!("CARGO_PKG_VERSION"));
    if !image_tar.exists() {
        anyhow::bail!(
            "cargo xtask dist built no container image ({} is missing): the runner VM tests it; the tests' setup installs a Docker engine",
            image_tar.display()
        );
    }
    copy(&image_tar, "guardian-image.tar")?;
    copy(&memload, "memload")?;
    copy(&ws.join("tests/runner-vm/run"), "run")?;
    copy(&ws.join("tests/stacks/spiky-5.yml"), "stacks/spiky-5.yml")?;
    for e in std::fs::read_dir(ws.join("tests/runner-vm/stacks"))?.flatten() {
        let name = e.file_name();
        std::fs::copy(e.path(), root.join("stacks").join(&name))?;
    }
    run_status(
        Command::new(ws.join("tests/testbed/dockerd"))
            .arg("tarball")
            .arg(root.join("memload-image.tar"))
            .arg(&memload)
            .stdout(Stdio::null()),
    )?;
    let image = dir.join("payload.img");
    let _ = std::fs::remove_file(&image);
    let size_mib = dir_size(&root)? / (1 << 20) * 2 + 64;
    run_status(
        Command::new("mke2fs")
            .args(["-q", "-t", "ext4", "-L", "payload", "-d"])
            .arg(&root)
            .arg(&image)
            .arg(format!("{size_mib}M")),
    )?;
    Ok(image)
}

fn dir_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)?.flatten() {
        let meta = e.metadata()?;
        total += if meta.is_dir() {
            dir_size(&e.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_compare_numerically() {
        let mut v = vec!["6.12.57+deb13-amd64", "5.10.0-35-amd64", "6.1.0-9-amd64"];
        v.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(
            v,
            ["5.10.0-35-amd64", "6.1.0-9-amd64", "6.12.57+deb13-amd64"]
        );
    }

    #[test]
    fn results_are_read_from_runnervm_lines() {
        let text = "[  OK  ] Started x\r\nRUNNERVM TIME boot_to_docker 61.2 s\nRUNNERVM doctor PASS\nsomething RUNNERVM budget_sets_high FAIL memory.high max\nRUNNERVM END\n";
        let s = Summary::parse(text);
        assert_eq!(s.passed, ["doctor"]);
        assert_eq!(s.failed, ["budget_sets_high"]);
        assert_eq!(
            s.timings,
            [("boot_to_docker".to_string(), "61.2 s".to_string())]
        );
        assert!(s.finished);
    }
}
