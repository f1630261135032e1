//! Shared pieces of guardian's end-to-end tests: test cgroups below our own cgroup, the
//! workload binary, and a running `guardian events` whose JSON lines the test can wait for.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::{
    io::{BufRead, BufReader},
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The tests change cgroups and load eBPF: they need root, and say so instead of passing.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "guardian's end-to-end tests need root (they load eBPF and create cgroups); run them with sudo"
    );
}

pub fn guardian_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_guardian"))
}

/// The memload workload, built next to guardian by `cargo build --workspace`.
pub fn memload_bin() -> PathBuf {
    let bin = guardian_bin().with_file_name("memload");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p guardian-workload` (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// A memory cgroup of our own for one test, named `guardian-test-<name>-<pid>`, created below
/// this process's cgroups in the v1 memory tree and the unified tree (hybrid hosts), or in the
/// one v2 tree. Removed on drop, after killing anything left inside.
pub struct TestCgroup {
    /// The memory-controller directory (v1 memory tree, or the v2 directory).
    pub memory_dir: PathBuf,
    /// The unified-tree directory (the same as `memory_dir` on pure v2).
    pub unified_dir: PathBuf,
    pub v2: bool,
}

impl TestCgroup {
    pub fn new(name: &str, limit: &str) -> Self {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let line = |pred: &dyn Fn(&str) -> bool| {
            own.lines().find_map(|l| {
                let mut p = l.splitn(3, ':');
                let (_, c, path) = (p.next()?, p.next()?, p.next()?);
                pred(c).then(|| path.trim_start_matches('/').to_string())
            })
        };
        let dir_name = format!("guardian-test-{name}-{}", std::process::id());
        let unified_own =
            line(&|c| c.is_empty()).expect("no unified cgroup line in /proc/self/cgroup");
        let v1_memory = Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists();
        let unified_root = if v1_memory || Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists()
        {
            PathBuf::from("/sys/fs/cgroup/unified")
        } else {
            PathBuf::from("/sys/fs/cgroup")
        };
        let unified_dir = unified_root.join(&unified_own).join(&dir_name);
        std::fs::create_dir_all(&unified_dir).unwrap();
        let (memory_dir, v2) = if v1_memory {
            let mem_own = line(&|c| c.split(',').any(|c| c == "memory")).expect("no memory line");
            let dir = Path::new("/sys/fs/cgroup/memory")
                .join(mem_own)
                .join(&dir_name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("memory.limit_in_bytes"), limit).unwrap();
            (dir, false)
        } else {
            std::fs::write(unified_dir.join("memory.max"), limit).unwrap();
            (unified_dir.clone(), true)
        };
        TestCgroup {
            memory_dir,
            unified_dir,
            v2,
        }
    }

    /// The v2 cgroup id: the inode of the unified directory.
    pub fn id(&self) -> u64 {
        std::fs::metadata(&self.unified_dir).unwrap().ino()
    }

    /// Starts `cmd` inside this cgroup (it moves itself in before exec).
    pub fn spawn(&self, cmd: &mut Command) -> Child {
        let procs: Vec<PathBuf> = if self.v2 {
            vec![self.unified_dir.join("cgroup.procs")]
        } else {
            vec![
                self.memory_dir.join("cgroup.procs"),
                self.unified_dir.join("cgroup.procs"),
            ]
        };
        let procs: Vec<std::ffi::CString> = procs
            .iter()
            .map(|p| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap())
            .collect();
        // SAFETY: between fork and exec the closure only calls open/write/close on paths built
        // beforehand: async-signal-safe, no allocation, so the test harness's threads cannot
        // leave it waiting on a lock.
        unsafe {
            cmd.pre_exec(move || {
                for p in &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(fd);
                }
                Ok(())
            });
        }
        cmd.spawn().expect("spawning the workload")
    }

    /// Runs `cmd` inside this cgroup to completion.
    pub fn run(&self, cmd: &mut Command) -> ExitStatus {
        self.spawn(cmd).wait().unwrap()
    }

    pub fn memory_file(&self, name: &str) -> String {
        std::fs::read_to_string(self.memory_dir.join(name)).unwrap()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for dir in [&self.memory_dir, &self.unified_dir] {
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for dir in [&self.memory_dir, &self.unified_dir] {
            while dir.exists() && std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// A running `guardian events --output json`, its lines collected as they come.
pub struct Events {
    child: Child,
    lines: mpsc::Receiver<Value>,
    pub seen: Vec<Value>,
    stderr_lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stderr: thread::JoinHandle<()>,
}

impl Events {
    /// Starts `guardian events --output json <args>` and waits for its `ready` line.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(Command::new(guardian_bin()), args)
    }

    /// Like [`Events::start`], with a prepared guardian command (environment, wrapper).
    pub fn start_with(mut cmd: Command, args: &[&str]) -> Self {
        let mut child = cmd
            .args(["events", "--output", "json"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting guardian events");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("guardian printed a line that is not JSON ({e}): {line}")
                });
                if tx.send(value).is_err() {
                    return;
                }
            }
        });
        let stderr_lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = stderr_lines.clone();
        let stderr = thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut events = Events {
            child,
            lines: rx,
            seen: Vec::new(),
            stderr_lines,
            stderr,
        };
        let ready = events.wait_for(Duration::from_secs(20), |v| v["type"] == "ready");
        assert!(ready.is_some(), "guardian events never became ready");
        events
    }

    /// Waits until a line matching `pred` arrives (or one already did); returns it.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return Some(v.clone());
        }
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return Some(v);
                    }
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// Waits until guardian logs a line containing `text` to stderr.
    pub fn wait_for_log(&self, timeout: Duration, text: &str) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self
                .stderr_lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(text))
            {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Stops guardian with SIGINT, as Ctrl-C would, and returns its exit status and stderr;
    /// every line it printed is in `seen` afterwards.
    pub fn stop(mut self) -> (ExitStatus, String, Vec<Value>) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("guardian events did not exit within 10 s of SIGINT");
            }
            thread::sleep(Duration::from_millis(20));
        };
        while let Ok(v) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(v);
        }
        self.stderr.join().unwrap();
        let stderr = self.stderr_lines.lock().unwrap().join("\n");
        (status, stderr, self.seen)
    }
}

/// Runs guardian with `args` to completion: (exit status, stdout, stderr).
pub fn run_guardian(args: &[&str]) -> (ExitStatus, String, String) {
    output(Command::new(guardian_bin()).args(args))
}

pub fn output(cmd: &mut Command) -> (ExitStatus, String, String) {
    let out = cmd.output().expect("running a command");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// memload linked statically for the busybox test image; `cargo xtask test` builds it and
/// names it in `GUARDIAN_TEST_MEMLOAD_STATIC`.
pub fn static_memload() -> PathBuf {
    let path = std::env::var("GUARDIAN_TEST_MEMLOAD_STATIC").unwrap_or_else(|_| {
        panic!("GUARDIAN_TEST_MEMLOAD_STATIC is not set: run the tests with `cargo xtask test`")
    });
    PathBuf::from(path)
}

/// A name no other test run uses (compose projects, container names).
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("gt{name}{}x{nanos}", std::process::id())
}

/// The tests' Docker engine: `DOCKER_HOST` as `cargo xtask test` sets it.
pub fn require_docker() -> String {
    require_root();
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| {
        panic!("these tests need the test Docker engine: run them with `cargo xtask test`, or `cargo xtask testbed start` and export the DOCKER_HOST it prints")
    })
}

/// Runs `docker <args>` against the test engine; panics with its stderr on failure.
pub fn docker(args: &[&str]) -> String {
    let (status, stdout, stderr) = output(Command::new("docker").args(args));
    assert!(status.success(), "docker {args:?} failed: {stderr}");
    stdout.trim().to_string()
}

/// `docker compose` where the plugin exists, else Debian's `docker-compose`.
pub fn compose() -> Command {
    let plugin = Command::new("docker")
        .args(["compose", "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if plugin {
        let mut cmd = Command::new("docker");
        cmd.arg("compose");
        cmd
    } else {
        Command::new("docker-compose")
    }
}

/// The v2 cgroup id and unified path of a running container, from its main process.
pub fn container_cgroup(id: &str) -> (u64, PathBuf) {
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", id]);
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let rel = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap()
        .to_string();
    let root = if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        "/sys/fs/cgroup/unified"
    } else {
        "/sys/fs/cgroup"
    };
    let dir = PathBuf::from(format!("{root}{rel}"));
    (std::fs::metadata(&dir).unwrap().ino(), dir)
}

/// A running `guardian daemon` on a private state directory.
pub struct Daemon {
    pub child: Child,
    pub state_dir: PathBuf,
}

impl Daemon {
    /// Starts the daemon with fast sampling and flushing (extra `args` appended) and waits
    /// until its store exists.
    pub fn start(state_dir: &Path, args: &[&str]) -> Self {
        let child = Command::new(guardian_bin())
            .args(["daemon", "--state-dir", state_dir.to_str().unwrap()])
            .args(["--sample-interval", "100ms", "--flush-interval", "300ms"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting guardian daemon");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !state_dir.join("guardian.pid").exists() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        assert!(
            state_dir.join("guardian.pid").exists(),
            "the daemon did not start"
        );
        Daemon {
            child,
            state_dir: state_dir.to_path_buf(),
        }
    }

    /// `guardian status --output json` of this daemon's store.
    pub fn status(&self) -> Value {
        let (status, stdout, stderr) = run_guardian(&[
            "status",
            "--output",
            "json",
            "--state-dir",
            self.state_dir.to_str().unwrap(),
        ]);
        assert!(status.success(), "guardian status failed: {stderr}");
        serde_json::from_str(&stdout).unwrap()
    }

    /// Sends `signal` and waits for the exit; returns the status and what it logged.
    pub fn stop(mut self, signal: nix::sys::signal::Signal) -> (ExitStatus, String) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal);
        let status = self.child.wait().unwrap();
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
        }
        (status, stderr)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon's Prometheus page at `listen` (one plain HTTP/1.1 GET).
pub fn scrape_metrics(listen: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(listen).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).unwrap();
    body
}

/// Each test's daemon sees (and may act on) every container on the test engine: tests of one
/// binary that start a daemon take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn take_turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}
