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
# ---- enforcement: budgets through memory.high, journaled and restored ----
# Always with &: the background subshell execs into the workload, so $! is the workload itself.
run_in() { cg=$1; shift; exec sh -c 'echo $$ > "$0"; exec "$@"' "/sys/fs/cgroup/$cg/cgroup.procs" "$@" 2>/dev/null; }
stop_all() { for cg in "$@"; do echo 1 > /sys/fs/cgroup/$cg/cgroup.kill; done; sleep 0.5; }
wait_eq() { i=0; while [ $i -lt $3 ]; do [ "$(cat $1 2>/dev/null)" = "$2" ] && return 0; sleep 0.1; i=$((i+1)); done; return 1; }
wait_grep() { i=0; while [ $i -lt $3 ]; do grep -q "$2" $1 2>/dev/null && return 0; sleep 0.1; i=$((i+1)); done; return 1; }
host_oom_kills() { awk '$1=="oom_kill"{print $2}' /proc/vmstat; }
mb() { echo $(( $(cat /sys/fs/cgroup/$1/memory.current) / 1048576 )); }
DN=0
start_daemon() {
  DN=$((DN+1)); LOG=/tmp/daemon-$DN.log
  # Nice -10, as the systemd unit runs it: it must act while the workloads thrash.
  sh -c 'renice -n -10 -p $$ >/dev/null; exec guardian daemon --config "$0" --state-dir /tmp/g --no-metrics' $1 > $LOG 2>&1 &
  DAEMON=$!
  wait_grep $LOG "enforcing budgets" 600 || { echo "daemon $DN did not start"; cat $LOG; }
}
B48=50331648
mkdir /sys/fs/cgroup/b1 /sys/fs/cgroup/b3
echo 96M > /sys/fs/cgroup/b1/memory.max
echo 256M > /sys/fs/cgroup/b3/memory.max
echo 200M > /sys/fs/cgroup/b3/memory.high
printf '[enforce]\nreserve = "32m"\ncritical_reserve = "8m"\n[[budget]]\ncgroup = "/b1"\nmemory = "48m"\n[[budget]]\ncgroup = "/b3"\nmemory = "48m"\n' > /tmp/budgets.toml
start_daemon /tmp/budgets.toml
run_in b1 memload staircase --step 4m --every-ms 50 --max 160m --hold-ms 600000 & H1=$!
run_in b3 memload staircase --step 4m --every-ms 50 --max 160m --hold-ms 600000 & H3=$!
wait_eq /sys/fs/cgroup/b1/memory.high $B48 300
check budget_sets_memory_high_before_any_oom_kill sh -c "[ \$(cat /sys/fs/cgroup/b1/memory.high) = $B48 ] && grep -qx 'oom_kill 0' /sys/fs/cgroup/b1/memory.events"
wait_eq /sys/fs/cgroup/b3/memory.high $B48 300
sleep 3
cat /sys/fs/cgroup/b1/memory.events
check squeezed_group_is_throttled_not_killed sh -c "grep -qx 'oom_kill 0' /sys/fs/cgroup/b1/memory.events && grep -Eq '^high [1-9]' /sys/fs/cgroup/b1/memory.events && kill -0 $H1"
kill -TERM $DAEMON; wait $DAEMON
check clean_stop_restores_memory_high sh -c "[ \$(cat /sys/fs/cgroup/b1/memory.high) = max ] && [ \$(cat /sys/fs/cgroup/b3/memory.high) = 209715200 ] && kill -0 $H1"
# Unthrottled, b1's hog would reach its 96M memory.max: replace it with one that stays below.
stop_all b1; wait $H1
run_in b1 memload staircase --step 4m --every-ms 50 --max 80m --hold-ms 600000 & H1=$!
start_daemon /tmp/budgets.toml
wait_eq /sys/fs/cgroup/b1/memory.high $B48 300
wait_eq /sys/fs/cgroup/b3/memory.high $B48 300
kill -KILL $DAEMON; wait $DAEMON
echo "after SIGKILL: b1 high $(cat /sys/fs/cgroup/b1/memory.high), b3 high $(cat /sys/fs/cgroup/b3/memory.high)"
stop_all b1 b3; wait $H1 $H3
start_daemon /tmp/budgets.toml
echo "after restart: b1 high $(cat /sys/fs/cgroup/b1/memory.high), b3 high $(cat /sys/fs/cgroup/b3/memory.high)"
check restart_after_sigkill_restores_every_memory_high sh -c "[ \$(cat /sys/fs/cgroup/b1/memory.high) = max ] && [ \$(cat /sys/fs/cgroup/b3/memory.high) = 209715200 ]"
guardian status --state-dir /tmp/g --output json > /tmp/status.json
check restores_are_recorded grep -q '"trigger": "startup"' /tmp/status.json
kill -TERM $DAEMON; wait $DAEMON

# ---- host overcommit: a steady app, a page-cache-heavy job and a leak; without, then with guardian ----
for m in brd crc16 crc32c_generic mbcache jbd2 ext4; do insmod /lib/modules/$m.ko $([ $m = brd ] && echo rd_nr=1 rd_size=327680); done
mke2fs -q /dev/ram0 && mkdir -p /mnt && mount -t ext4 /dev/ram0 /mnt
echo 1 > /proc/sys/vm/drop_caches
AVAIL=$(awk '/^MemAvailable/{print int($2/1024)}' /proc/meminfo)
APP=$((AVAIL * 55 / 100))
echo "overcommit: MemAvailable ${AVAIL} MiB, app ${APP} MiB, leak up to ${AVAIL} MiB"
overcommit() {
  mkdir -p /sys/fs/cgroup/app /sys/fs/cgroup/cache /sys/fs/cgroup/leak
  before=$(host_oom_kills)
  run_in app memload hog --step 4m --max ${APP}m --hold-ms 600000 & A=$!
  i=0; while [ $i -lt 600 ] && [ $(mb app) -lt $((APP * 9 / 10)) ]; do sleep 0.1; i=$((i+1)); done
  run_in cache memload pagecache --file /mnt/data --size 256m --rounds 1000 & C=$!
  sleep 2
  run_in leak memload staircase --step 8m --every-ms 50 --max ${AVAIL}m --hold-ms 600000 & L=$!
  i=0; while [ $i -lt 200 ] && [ $(host_oom_kills) -eq $before ]; do sleep 0.1; i=$((i+1)); done
  KILLS=$(( $(host_oom_kills) - before ))
  CACHE_ALIVE=no; kill -0 $C 2>/dev/null && CACHE_ALIVE=yes
  echo "overcommit $1: oom kills $KILLS, leak high $(cat /sys/fs/cgroup/leak/memory.high), cache high $(cat /sys/fs/cgroup/cache/memory.high) usage $(mb cache) MiB, cache alive $CACHE_ALIVE"
  stop_all app cache leak; wait $A $C $L 2>/dev/null
  rm -f /mnt/data
  rmdir /sys/fs/cgroup/app /sys/fs/cgroup/cache /sys/fs/cgroup/leak
}
overcommit without-guardian
check without_guardian_the_overcommit_oom_kills sh -c "[ $KILLS -ge 1 ]"
printf '[enforce]\nreserve = "64m"\ncritical_reserve = "16m"\n[[budget]]\ncgroup = "/app"\nmemory = "%sm"\npriority = 10\n[[budget]]\ncgroup = "/cache"\nmemory = "96m"\n[[budget]]\ncgroup = "/leak"\nmemory = "128m"\n' $((APP + 64)) > /tmp/overcommit.toml
start_daemon /tmp/overcommit.toml
overcommit with-guardian
grep -E 'action=|level' $LOG
check with_guardian_no_oom_kill sh -c "[ $KILLS -eq 0 ]"
check leak_capped_at_its_budget grep -q 'subject=/leak action=set_high step=1 before=max after=134217728' $LOG
check page_cache_job_squeezed_under_pressure_and_still_running sh -c "grep -q 'subject=/cache action=set_high step=2' $LOG && [ $CACHE_ALIVE = yes ]"
kill -TERM $DAEMON; wait $DAEMON
grep -ho 'trigger=[a-z.]* reaction_us=[0-9]* write_us=[0-9]*' /tmp/daemon-*.log | sed 's/^/VMBENCH /'
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
    let modules = modules(&dir.join("kernel"))?;
    let initrd = initramfs(
        &dir,
        &[("guardian", &guardian), ("memload", &memload)],
        &modules,
    )?;
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
            "1536",
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
    print_reactions(&serial);
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

/// The enforcement ladder's reaction times in the guest (`VMBENCH trigger=T reaction_us=N
/// write_us=W` lines: from the wake-up to the write issued, and the write itself, which reclaims
/// synchronously when memory.high goes down), per trigger, for docs/benchmarks.md.
fn print_reactions(serial: &str) {
    type Times = (Vec<u64>, Vec<u64>);
    let mut by_trigger: std::collections::BTreeMap<String, Times> = Default::default();
    for line in serial.lines() {
        let Some((_, rest)) = line.trim_end_matches('\r').split_once("VMBENCH ") else {
            continue;
        };
        let mut trigger = None;
        let mut reaction = None;
        let mut write = None;
        for field in rest.split_whitespace() {
            match field.split_once('=') {
                Some(("trigger", t)) => trigger = Some(t.to_string()),
                Some(("reaction_us", n)) => reaction = n.parse::<u64>().ok(),
                Some(("write_us", n)) => write = n.parse::<u64>().ok(),
                _ => {}
            }
        }
        if let (Some(t), Some(r), Some(w)) = (trigger, reaction, write) {
            let entry = by_trigger.entry(t).or_default();
            entry.0.push(r);
            entry.1.push(w);
        }
    }
    let pct = |v: &mut Vec<u64>, p: f64| {
        v.sort_unstable();
        v[((v.len() - 1) as f64 * p).round() as usize]
    };
    for (trigger, (mut reaction, mut write)) in by_trigger {
        println!(
            "vm-test: after {trigger}: n={} reaction (wake-up to write issued) p50={} us p99={} us; write itself p50={} us p99={} us",
            reaction.len(),
            pct(&mut reaction, 0.5),
            pct(&mut reaction, 0.99),
            pct(&mut write, 0.5),
            pct(&mut write, 0.99),
        );
    }
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

/// The kernel modules the guest loads for a page-cache workload: a RAM disk (brd) with ext4 on
/// it, so file pages are real, reclaimable page cache (the initramfs itself is not).
const MODULES: [&str; 6] = [
    "drivers/block/brd.ko",
    "lib/crc16.ko",
    "crypto/crc32c_generic.ko",
    "fs/mbcache.ko",
    "fs/jbd2/jbd2.ko",
    "fs/ext4/ext4.ko",
];

fn modules(kernel_root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let version_dir = std::fs::read_dir(kernel_root.join("lib/modules"))
        .context("the kernel package has no lib/modules")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.join("kernel").is_dir())
        .context("the kernel package has no lib/modules/<version>/kernel")?;
    MODULES
        .iter()
        .map(|m| {
            let path = version_dir.join("kernel").join(m);
            anyhow::ensure!(path.exists(), "the kernel package has no {m}");
            Ok(path)
        })
        .collect()
}

/// A gzip'd newc cpio with busybox-static, the binaries, the modules (flat in /lib/modules) and
/// /init.
fn initramfs(
    dir: &Path,
    binaries: &[(&str, &Path)],
    modules: &[PathBuf],
) -> anyhow::Result<PathBuf> {
    let root = dir.join("initramfs");
    let _ = std::fs::remove_dir_all(&root);
    for d in [
        "bin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "sys/fs/cgroup",
        "lib/modules",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    for m in modules {
        let name = m.file_name().context("module path without a name")?;
        std::fs::copy(m, root.join("lib/modules").join(name))
            .with_context(|| format!("copying {}", m.display()))?;
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
