//! A fleet of runners through Prometheus: two guardian daemons, each watching its own Docker
//! engine, scraped by a real Prometheus (Debian's `prometheus` package) started here on
//! loopback; `guardian profile --prometheus` must recommend from the higher peak. And the
//! exposition of a live daemon passes `promtool check metrics`.

mod support;

use std::{
    io::Write as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{output, require_docker, run_guardian, static_memload, unique};

const IMAGE: &str = "guardian-test/memload";
const MIB: u64 = 1 << 20;

/// A free loopback port (bound, then released for the server that takes it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn testbed_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/testbed/dockerd")
}

/// The second runner's Docker engine: `GUARDIAN_TEST_DOCKER_HOST_B` when set (a test bed
/// already running), else a private engine started here and stopped at the end.
struct Engine {
    host: String,
    owned_dir: Option<PathBuf>,
}

impl Engine {
    fn second() -> Self {
        if let Ok(host) = std::env::var("GUARDIAN_TEST_DOCKER_HOST_B") {
            return Engine {
                host,
                owned_dir: None,
            };
        }
        let dir = PathBuf::from(format!(
            "/tmp/guardian-testbed-fleet-{}",
            std::process::id()
        ));
        let (status, stdout, stderr) =
            output(Command::new(testbed_script()).arg("start").arg(&dir));
        assert!(status.success(), "second test engine: {stderr}");
        let host = stdout
            .lines()
            .find_map(|l| l.strip_prefix("DOCKER_HOST="))
            .expect("tests/testbed/dockerd printed no DOCKER_HOST")
            .to_string();
        let engine = Engine {
            host,
            owned_dir: Some(dir),
        };
        let (status, _, stderr) = output(
            Command::new(testbed_script())
                .arg("images")
                .arg(static_memload())
                .env("DOCKER_HOST", &engine.host),
        );
        assert!(status.success(), "importing the test image: {stderr}");
        engine
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(dir) = &self.owned_dir {
            let _ = Command::new(testbed_script()).arg("stop").arg(dir).status();
        }
    }
}

fn docker_at(host: &str, args: &[&str]) -> String {
    let (status, stdout, stderr) =
        output(Command::new("docker").args(args).env("DOCKER_HOST", host));
    assert!(
        status.success(),
        "docker {args:?} at {host} failed: {stderr}"
    );
    stdout.trim().to_string()
}

/// A guardian daemon watching the engine at `docker_host`, serving metrics on `listen`.
struct Runner {
    child: Child,
    state: tempfile::TempDir,
    listen: String,
}

impl Runner {
    fn start(docker_host: &str) -> Self {
        let state = tempfile::tempdir().unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let child = Command::new(support::guardian_bin())
            .args(["daemon", "--state-dir", state.path().to_str().unwrap()])
            .args(["--sample-interval", "100ms", "--flush-interval", "300ms"])
            .args(["--metrics-listen", &listen, "--no-enforce"])
            .env("DOCKER_HOST", docker_host)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting guardian daemon");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !state.path().join("guardian.pid").exists() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        Runner {
            child,
            state,
            listen,
        }
    }

    /// The exposition text (body only).
    fn scrape(&self) -> String {
        let page = support::scrape_metrics(&self.listen);
        page.split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default()
    }

    /// The value of the first sample line that starts with `series` and contains `needle`.
    fn value(&self, series: &str, needle: &str) -> Option<u64> {
        self.scrape()
            .lines()
            .find(|l| l.starts_with(series) && l.contains(needle))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs memload's hog to `max_mib` as compose service `project/service` and waits for its exit.
fn run_service(host: &str, project: &str, service: &str, max_mib: u64) {
    let id = docker_at(
        host,
        &[
            "run",
            "-d",
            "--label",
            &format!("com.docker.compose.project={project}"),
            "--label",
            &format!("com.docker.compose.service={service}"),
            "--memory",
            "256m",
            IMAGE,
            "memload",
            "hog",
            "--step",
            "1m",
            "--max",
            &format!("{max_mib}m"),
            "--hold-ms",
            "1500",
        ],
    );
    docker_at(host, &["wait", &id]);
    docker_at(host, &["rm", &id]);
}

/// A Prometheus server on loopback scraping `targets` every second, its TSDB in a temp dir.
struct PrometheusServer {
    child: Child,
    _dir: tempfile::TempDir,
    url: String,
}

impl PrometheusServer {
    fn start(targets: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: guardian\n    static_configs:\n      - targets: [{}]\n        labels:\n          runner_pool: fleet-test\n",
                targets.join(", ")
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus: install the Debian package (cargo xtask setup --tests)");
        let server = PrometheusServer {
            child,
            _dir: dir,
            url: format!("http://{addr}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = std::net::TcpStream::connect(&addr).is_ok_and(|mut c| {
                let _ = c.write_all(b"GET /-/ready HTTP/1.0\r\n\r\n");
                let mut page = String::new();
                let _ = std::io::Read::read_to_string(&mut c, &mut page);
                page.starts_with("HTTP/1.0 200") || page.starts_with("HTTP/1.1 200")
            });
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "prometheus did not get ready");
            thread::sleep(Duration::from_millis(200));
        }
        server
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn profile_json(args: &[&str]) -> (i32, Value, String) {
    let (status, stdout, stderr) = run_guardian(args);
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (status.code().unwrap_or(-1), json, stderr)
}

#[test]
fn fleet_profile_recommends_from_the_runner_with_the_higher_peak() {
    let host_a = require_docker();
    let _turn = support::take_turn();
    let engine_b = Engine::second();
    let runner_a = Runner::start(&host_a);
    let runner_b = Runner::start(&engine_b.host);
    let project = unique("fleet");
    run_service(&host_a, &project, "db", 16);
    run_service(&engine_b.host, &project, "db", 48);

    // Each daemon's per-service peak, once its run is flushed.
    let needle = format!("project=\"{project}\",service=\"db\"");
    let peak_of = |r: &Runner| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = r.value("guardian_service_memory_peak_bytes{", &needle) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "no service peak from {}",
                r.listen
            );
            thread::sleep(Duration::from_millis(200));
        }
    };
    let (peak_a, peak_b) = (peak_of(&runner_a), peak_of(&runner_b));
    assert!(
        peak_a >= 16 * MIB && peak_b >= 48 * MIB && peak_b > peak_a,
        "{peak_a} {peak_b}"
    );

    let prometheus = PrometheusServer::start(&[&runner_a.listen, &runner_b.listen]);
    let out = tempfile::tempdir().unwrap();
    let compose_out = out.path().join("override.yml");
    let profile_out = out.path().join("profile.toml");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "profile",
            "--prometheus",
            &prometheus.url,
            "--range",
            "10m",
            "--selector",
            "{runner_pool=\"fleet-test\"}",
            "--project",
            &project,
            "--compose-out",
            compose_out.to_str().unwrap(),
            "--profile-out",
            profile_out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        profile_json(&refs)
    };
    // Until Prometheus has scraped both runners.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, json, stderr) = run(&["--min-runs", "2", "--output", "json"]);
        if code == 0 && json["basis"]["runners"] == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fleet profile never saw both runners: exit {code}, {json}, {stderr}"
        );
        thread::sleep(Duration::from_millis(500));
    }
    // Both runners are in Prometheus now; two scrape intervals later every series of both is
    // (a scrape can land while the profile's queries run).
    thread::sleep(Duration::from_secs(2));
    let (code, json, stderr) = run(&["--min-runs", "2", "--output", "json"]);
    assert_eq!(code, 0, "{stderr}");
    // The daemon may have raised its peak by a final reading after we first read it.
    let peak_b = peak_of(&runner_b);
    let rec = &json["recommendations"][0];
    assert_eq!(
        json["recommendations"].as_array().unwrap().len(),
        1,
        "{json}"
    );
    assert_eq!(rec["service"], "db", "{json}");
    assert_eq!(
        rec["peak"].as_u64(),
        Some(peak_b),
        "the higher peak wins: {json}"
    );
    assert_eq!(rec["runs"].as_u64(), Some(2), "{json}");
    assert_eq!(json["basis"]["runs"].as_u64(), Some(2), "{json}");
    // Sized from what cannot be reclaimed, the highest any runner exported.
    let unreclaimable_b = runner_b
        .value("guardian_service_memory_peak_unreclaimable_bytes{", &needle)
        .expect("runner B exports the unreclaimable peak");
    assert!(
        unreclaimable_b >= 48 * MIB && unreclaimable_b <= peak_b,
        "{unreclaimable_b} {peak_b}"
    );
    assert_eq!(
        rec["peak_unreclaimable"].as_u64(),
        Some(unreclaimable_b),
        "{json}"
    );
    assert_eq!(rec["sized_from"], "unreclaimable", "{json}");
    let fleet_limit = rec["recommended_limit"].as_u64().unwrap();
    assert!(fleet_limit as f64 >= unreclaimable_b as f64 * 1.2, "{json}");
    let toml = std::fs::read_to_string(&profile_out).unwrap();
    assert!(toml.contains("db"), "{toml}");
    assert!(std::fs::read_to_string(&compose_out)
        .unwrap()
        .contains("db"));

    // Runner A alone would have recommended less: the fleet is what raised it.
    let (code, local, stderr) = profile_json(&[
        "profile",
        "--output",
        "json",
        "--state-dir",
        runner_a.state.path().to_str().unwrap(),
        "--project",
        &project,
        "--compose-out",
        out.path().join("a.yml").to_str().unwrap(),
        "--profile-out",
        out.path().join("a.toml").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        local["recommendations"][0]["recommended_limit"]
            .as_u64()
            .unwrap()
            < fleet_limit,
        "{local}"
    );

    // Fewer runs than asked for: refused, exit 1, one line that says why.
    let (code, _, stderr) = run(&["--min-runs", "3"]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("fewer than 3 runs for db (2 run(s))"),
        "{stderr}"
    );

    // The table as CSV on stdout, for a spreadsheet.
    let a = args(&["--min-runs", "2", "--table", "csv"]);
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    let (status, stdout, stderr) = run_guardian(&refs);
    assert!(status.success(), "{stderr}");
    let mut lines = stdout.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("project,service,runs,peak_bytes"));
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with(&format!("{project},db,2,{peak_b},")),
        "{stdout}"
    );
    assert!(stderr.contains("on 2 runner(s)"), "{stderr}");

    // A URL that is not the Prometheus API (a path below it): one line, exit 2.
    let wrong = format!("{}/not-prometheus", prometheus.url);
    let (status, _, stderr) = run_guardian(&["profile", "--prometheus", &wrong]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not a Prometheus API answer"), "{stderr}");
}

#[test]
fn a_prometheus_that_is_down_is_a_one_line_error_with_exit_2() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let (status, stdout, stderr) = run_guardian(&["profile", "--prometheus", &url]);
    assert_eq!(status.code(), Some(2), "{stdout}{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach Prometheus at {url}")) && stderr.contains("refused"),
        "{stderr}"
    );
    let (status, _, stderr) = run_guardian(&["profile", "--prometheus", "prometheus:9090"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not an http:// URL"), "{stderr}");
}

#[test]
fn a_live_scrape_passes_promtool_check_metrics() {
    let host = require_docker();
    let _turn = support::take_turn();
    let runner = Runner::start(&host);
    // Compose labels may hold anything; the exposition must stay valid.
    let project = format!("{}\"quoted\\back", unique("promtool"));
    let name = unique("promtool");
    let id = docker_at(
        &host,
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            &format!("com.docker.compose.project={project}"),
            "--label",
            "com.docker.compose.service=db",
            "--memory",
            "96m",
            IMAGE,
            "memload",
            "hog",
            "--step",
            "1m",
            "--max",
            "8m",
            "--hold-ms",
            "5000",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut body = String::new();
    while Instant::now() < deadline
        && !(body.contains(&name) && body.contains("guardian_service_memory_peak_bytes{"))
    {
        thread::sleep(Duration::from_millis(200));
        body = runner.scrape();
    }
    docker_at(&host, &["rm", "-f", &id]);
    assert!(
        body.contains(&name),
        "the container's series never appeared:\n{body}"
    );
    assert!(
        body.contains("project=\"gtpromtool") && body.contains("\\\"quoted\\\\back\""),
        "the project label is escaped:\n{body}"
    );
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool: install the Debian package prometheus (cargo xtask setup --tests)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}
