//! `cargo xtask vm-test`: guardian on a real cgroup v2 kernel. Boots Debian's current kernel
//! package under qemu (TCG: our hosts are VMs without KVM) with an initramfs holding
//! busybox-static, a static guardian and memload, runs scenarios in the guest, and reads
//! `VMTEST <name> PASS|FAIL` lines from the serial console — as aya tests on real kernels.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{run_status, workspace_root};

/// What the guest runs as /init.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc none /proc; mount -t sysfs none /sys; mount -t devtmpfs none /dev
mount -t tmpfs none /tmp
mount -t cgroup2 none /sys/fs/cgroup
echo +memory > /sys/fs/cgroup/cgroup.subtree_control
check() { name=$1; shift; if "$@" >/dev/null 2>&1; then echo "VMTEST $name PASS"; else echo "VMTEST $name FAIL"; fi; }
echo "VMTEST kernel $(uname -r)"

guardian doctor > /tmp/doctor.txt 2>&1
cat /tmp/doctor.txt
check doctor_sees_cgroup_v2 grep -Eq '^OK +cgroups +cgroup v2, memory controller at /sys/fs/cgroup' /tmp/doctor.txt
check doctor_budgets_available grep -Eq '^OK +budgets' /tmp/doctor.txt
check doctor_loads_bpf grep -Eq '^OK +ebpf' /tmp/doctor.txt

mkdir /sys/fs/cgroup/t
echo 64M > /sys/fs/cgroup/t/memory.max
guardian events --output json --duration 25s --watch /sys/fs/cgroup/t > /tmp/ev.json 2>/tmp/ev.err &
for i in $(seq 1 100); do grep -q '"type":"ready"' /tmp/ev.json 2>/dev/null && break; sleep 0.2; done
check events_ready grep -q '"ebpf":true' /tmp/ev.json
sh -c 'echo $$ > /sys/fs/cgroup/t/cgroup.procs; exec memload hog --step 1m' 2>/dev/null
wait
cat /tmp/ev.err
grep -v reclaim_stall /tmp/ev.json
check oom_kill_names_victim_and_cgroup sh -c "grep '\"type\":\"oom_kill\"' /tmp/ev.json | grep '\"comm\":\"memload\"' | grep -q '\"path\":\"/t\"'"
check oom_kill_reads_v2_limit sh -c "grep '\"type\":\"oom_kill\"' /tmp/ev.json | grep -q '\"limit\":67108864'"
check memory_events_inotify_reports_the_kill sh -c "grep '\"type\":\"memcg_oom\"' /tmp/ev.json | grep -q '\"cgroup\":\"/sys/fs/cgroup/t\"'"
check kernel_counted_the_kill grep -Eq '^oom_kill [1-9]' /sys/fs/cgroup/t/memory.events
check reclaim_stalls_counted_for_the_cgroup sh -c "grep '\"type\":\"summary\"' /tmp/ev.json | grep -q '\"path\":\"/t\"'"
echo "VMTEST END"
poweroff -f
"#;

pub fn run() -> anyhow::Result<()> {
    let dir = workspace_root().join("target/vm");
    std::fs::create_dir_all(&dir)?;
    let kernel = kernel(&dir)?;
    // Static: the guest has no libc. The eBPF object is embedded as always.
    let guardian = crate::testbed::static_binary("guardian", "guardian")?;
    let memload = crate::testbed::static_memload()?;
    let initrd = initramfs(&dir, &[("guardian", &guardian), ("memload", &memload)])?;
    println!(
        "vm-test: booting {} (TCG, about a minute)",
        kernel.display()
    );
    let log = dir.join("serial.log");
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-m",
            "1024",
            "-smp",
            "2",
        ])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (cargo xtask setup installs it)")?;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            bail!("the VM did not finish in 5 minutes; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let serial = std::fs::read_to_string(&log)?;
    let results: Vec<&str> = serial
        .lines()
        .filter_map(|l| {
            l.trim_end_matches('\r')
                .split_once("VMTEST ")
                .map(|(_, r)| r)
        })
        .collect();
    let mut passed = 0;
    let mut failed = 0;
    for r in &results {
        println!("vm-test: {r}");
        if r.ends_with(" PASS") {
            passed += 1;
        } else if r.ends_with(" FAIL") {
            failed += 1;
        }
    }
    println!(
        "vm-test: guest finished in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    println!("vm-test: {passed} passed, {failed} failed");
    if !results.contains(&"END") {
        bail!(
            "the guest did not finish its scenarios; see {}",
            log.display()
        );
    }
    if failed > 0 || passed == 0 {
        bail!(
            "vm-test failed; the guest's console is in {}",
            log.display()
        );
    }
    Ok(())
}

/// Debian's current kernel image package, downloaded and unpacked once into `dir`.
fn kernel(dir: &Path) -> anyhow::Result<PathBuf> {
    let root = dir.join("kernel");
    if let Some(k) = find_vmlinuz(&root) {
        return Ok(k);
    }
    let depends = |update: bool| -> anyhow::Result<Option<String>> {
        if update {
            run_status(Command::new("apt-get").args(["update", "-q"]))?;
        }
        let out = Command::new("apt-cache")
            .args(["depends", "linux-image-amd64"])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("Depends: "))
            .filter(|p| p.starts_with("linux-image-"))
            .map(str::to_string))
    };
    let package = match depends(false)? {
        Some(p) => p,
        None => depends(true)?.context("Debian's linux-image-amd64 names no kernel package")?,
    };
    println!("vm-test: downloading {package} (Debian's kernel, not installed on the host)");
    let download = dir.join("download");
    std::fs::create_dir_all(&download)?;
    run_status(
        Command::new("apt-get")
            .args(["download", "-q", &package])
            .current_dir(&download),
    )?;
    let deb = std::fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    run_status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    std::fs::remove_dir_all(&download)?;
    find_vmlinuz(&root).context("the kernel package has no boot/vmlinuz-*")
}

fn find_vmlinuz(root: &Path) -> Option<PathBuf> {
    std::fs::read_dir(root.join("boot"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
}

/// A gzip'd newc cpio with busybox-static, the binaries and /init.
fn initramfs(dir: &Path, binaries: &[(&str, &Path)]) -> anyhow::Result<PathBuf> {
    let root = dir.join("initramfs");
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "proc", "sys", "dev", "tmp", "sys/fs/cgroup"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("busybox-static is missing: run cargo xtask setup")?;
    for (name, path) in binaries {
        std::fs::copy(path, root.join("bin").join(name))
            .with_context(|| format!("copying {}", path.display()))?;
    }
    let init = root.join("init");
    std::fs::write(&init, INIT)?;
    run_status(Command::new("chmod").arg("+x").arg(&init))?;
    let out = dir.join("initramfs.cpio.gz");
    run_status(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "find . | cpio -o -H newc --quiet | gzip -1 > {}",
                out.display()
            ))
            .current_dir(&root),
    )?;
    Ok(out)
}
