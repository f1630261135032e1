//! `guardian up` while the Docker engine goes away: a restart is waited out and staging goes
//! on; an engine that does not come back ends `up` with a one-line error and exit code 3. In
//! both, the start-up peaks recorded before are in the store. Each test runs its own dockerd
//! (tests/testbed/dockerd), since stopping the shared one would break every other test.

mod support;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use guardian::store::{RunFilter, Store};
use support::{guardian_bin, output, require_docker, static_memload, unique};

/// `first` is healthy after 1 s; `second` waits for it and is healthy 8 s after it starts. Both
/// come back after an engine restart (`restart: always`); `init` lets memload stop at once.
const STACK: &str = r#"
version: "2.4"
x-memload: &memload
  image: guardian-test/memload
  init: true
  restart: always
  healthcheck:
    test: ["CMD", "test", "-f", "/tmp/ready"]
    interval: 1s
    start_period: 60s
services:
  first:
    <<: *memload
    command: memload spike --delay-ms 0 --base 8m --spike 40m --spike-ms 300 --ready-ms 1000 --hold-ms 600000
  second:
    <<: *memload
    command: memload spike --delay-ms 0 --base 8m --spike 40m --spike-ms 300 --ready-ms 8000 --hold-ms 600000
    depends_on:
      first:
        condition: service_healthy
"#;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/testbed/dockerd");

/// A private dockerd in a short /tmp directory (the socket path must fit 108 bytes), stopped
/// and removed on drop.
struct Engine {
    dir: PathBuf,
}

impl Engine {
    fn start(name: &str) -> Self {
        let dir = PathBuf::from(format!("/tmp/gt-engine-{name}-{}", std::process::id()));
        let engine = Self { dir };
        engine.up();
        let (status, _, stderr) = output(
            Command::new(SCRIPT)
                .args(["images"])
                .arg(static_memload())
                .env("DOCKER_HOST", engine.host()),
        );
        assert!(status.success(), "importing the test image: {stderr}");
        engine
    }

    fn up(&self) {
        let (status, _, stderr) = output(Command::new(SCRIPT).arg("start").arg(&self.dir));
        assert!(status.success(), "starting the private dockerd: {stderr}");
    }

    fn host(&self) -> String {
        format!("unix://{}/docker.sock", self.dir.display())
    }

    /// SIGTERM to dockerd, as `systemctl stop docker` does; returns once it has exited.
    fn stop_daemon(&self) {
        let pid = std::fs::read_to_string(self.dir.join("docker.pid")).unwrap();
        let pid = pid.trim();
        assert!(Command::new("kill")
            .args(["-TERM", pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(60);
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(
                Instant::now() < deadline,
                "dockerd did not stop within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = Command::new(SCRIPT).arg("stop").arg(&self.dir).status();
    }
}

/// `guardian up` (human output, one line per change) running in the background.
struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Up {
    fn spawn(engine: &Engine, file: &Path, project: &str, state: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(guardian_bin())
            .args(["up", "-f"])
            .arg(file)
            .args(["-p", project, "--state-dir"])
            .arg(state)
            .args(extra)
            .env("DOCKER_HOST", engine.host())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stdout line containing `text`.
    fn wait_for(&mut self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                let found = line.contains(text);
                self.seen.push(line);
                if found {
                    return;
                }
            }
        }
        panic!("no {text:?} within 90 s; saw:\n{}", self.seen.join("\n"));
    }

    /// Waits for guardian to exit (never hangs: killed after `limit`): status, stdout, stderr.
    fn finish(mut self, limit: Duration) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "guardian up still ran after {limit:?}; saw:\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(1)) {
            self.seen.push(line);
        }
        let mut stderr = String::new();
        std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        (status, self.seen.join("\n"), stderr)
    }
}

/// The start-up peaks the store holds for `project`, by service.
fn recorded_peaks(state: &Path, project: &str) -> Vec<(String, u64)> {
    let store = Store::open(state).unwrap();
    let filter = RunFilter {
        project: Some(project.into()),
        ..Default::default()
    };
    store
        .runs(&filter)
        .unwrap()
        .into_iter()
        .map(|r| (r.service.unwrap_or_default(), r.startup_peak.0))
        .collect()
}

fn stack_file(dir: &Path) -> PathBuf {
    let file = dir.join("compose.yml");
    std::fs::write(&file, STACK).unwrap();
    file
}

#[test]
fn up_waits_out_an_engine_restart_and_finishes_the_stack() {
    require_docker();
    let engine = Engine::start("restart");
    let dir = tempfile::tempdir().unwrap();
    let file = stack_file(dir.path());
    let project = unique("restart");
    let mut up = Up::spawn(&engine, &file, &project, dir.path(), &[]);
    up.wait_for("first: ready");
    up.wait_for("second: starting");
    engine.stop_daemon();
    engine.up();
    let (status, stdout, stderr) = up.finish(Duration::from_secs(120));
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("2 of 2 services ready"), "{stdout}");
    assert!(
        stderr.contains("does not answer; waiting for it"),
        "the outage was seen: {stderr}"
    );
    let peaks = recorded_peaks(dir.path(), &project);
    for service in ["first", "second"] {
        assert!(
            peaks.iter().any(|(s, p)| s == service && *p > 8 << 20),
            "{service}'s start-up peak is recorded: {peaks:?}"
        );
    }
}

#[test]
fn up_gives_up_with_one_line_and_code_3_when_the_engine_stays_away_keeping_the_peaks() {
    require_docker();
    let engine = Engine::start("gone");
    let dir = tempfile::tempdir().unwrap();
    let file = stack_file(dir.path());
    let project = unique("gone");
    let mut up = Up::spawn(
        &engine,
        &file,
        &project,
        dir.path(),
        &["--engine-wait", "3s"],
    );
    up.wait_for("first: ready");
    up.wait_for("second: starting");
    let stopped = Instant::now();
    engine.stop_daemon();
    let (status, stdout, stderr) = up.finish(Duration::from_secs(60));
    assert!(
        stopped.elapsed() < Duration::from_secs(30),
        "gave up in time"
    );
    assert_eq!(status.code(), Some(3), "{stdout}\n{stderr}");
    let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error.len(), 1, "{stderr}");
    assert!(
        error[0].contains("the Docker engine did not answer for 3s")
            && error[0].contains("1 of 2 services ready"),
        "{stderr}"
    );
    assert!(
        stdout.contains("second: FAILED: the Docker engine"),
        "{stdout}"
    );
    let peaks = recorded_peaks(dir.path(), &project);
    assert!(
        peaks.iter().any(|(s, p)| s == "first" && *p > 8 << 20),
        "first's start-up peak survived: {peaks:?}"
    );
}
