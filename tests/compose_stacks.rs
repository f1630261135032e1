//! Compose stacks as people write them (tests/stacks/compose/): guardian must find and plan each
//! stack exactly as the compose tool does from the same directory and environment, and `guardian
//! up` must start what compose would. Every case runs with Compose v2 (from `cargo xtask setup --tests`)
//! and with Debian's docker-compose 1.29; where a tool lacks a feature, its own error is shown.

mod support;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
};

use guardian::{
    model::{Bytes, RunRecord},
    store::Store,
};
use serde_json::Value;
use support::{docker, guardian_bin, output, require_docker, unique};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// One compose tool: the command line guardian is told to use (GUARDIAN_COMPOSE).
#[derive(Clone, Debug)]
struct Tool {
    major: u32,
    cmd: String,
}

/// Compose v2 (GUARDIAN_TEST_COMPOSE_V2, else where `cargo xtask setup --tests` puts it) and the host's
/// docker-compose 1.x.
fn tools() -> Vec<Tool> {
    let v2 = std::env::var("GUARDIAN_TEST_COMPOSE_V2").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/tools/compose-v2/docker-compose"
        )
        .into()
    });
    let version = |cmd: &str| {
        Command::new(cmd)
            .args(["version", "--short"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    assert!(
        version(&v2).is_some_and(|v| v.starts_with('2')),
        "Compose v2 is missing at {v2}: run `cargo xtask setup --tests` (or set GUARDIAN_TEST_COMPOSE_V2)"
    );
    let mut out = vec![Tool { major: 2, cmd: v2 }];
    if version("docker-compose").is_some_and(|v| v.starts_with('1')) {
        out.push(Tool {
            major: 1,
            cmd: "docker-compose".into(),
        });
    }
    out
}

/// A copy of a fixture in a directory with a unique name (compose names the project after it).
struct Staged {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    name: String,
}

fn stage(fixture: &str) -> Staged {
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("c");
    let dir = tmp.path().join(&name);
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/stacks/compose")
        .join(fixture);
    copy_dir(&from, &dir);
    Staged {
        _tmp: tmp,
        dir,
        name,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// How a case is run: compose's own options (given to guardian and to the tool alike), services
/// named to guardian, and the environment.
#[derive(Clone, Default)]
struct Run<'a> {
    args: Vec<&'a str>,
    services: Vec<&'a str>,
    env: Vec<(&'a str, String)>,
}

impl Run<'_> {
    fn command(&self, program: impl AsRef<std::ffi::OsStr>, tool: &Tool, dir: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(dir)
            .env("GUARDIAN_COMPOSE", &tool.cmd)
            .env_remove("COMPOSE_FILE")
            .env_remove("COMPOSE_PROJECT_NAME")
            .env_remove("COMPOSE_PROFILES");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn guardian(&self, tool: &Tool, dir: &Path, sub: &[&str]) -> (ExitStatus, String, String) {
        let mut cmd = self.command(guardian_bin(), tool, dir);
        output(cmd.args(sub).args(&self.args).args(&self.services))
    }

    /// `guardian preflight --output json` with an empty store and 8 GiB to plan with.
    fn preflight(&self, tool: &Tool, dir: &Path) -> (Option<i32>, Value, String) {
        let empty = tempfile::tempdir().unwrap();
        let (status, stdout, stderr) = self.guardian(
            tool,
            dir,
            &[
                "preflight",
                "--output",
                "json",
                "--state-dir",
                empty.path().to_str().unwrap(),
                "--available",
                "8g",
            ],
        );
        let report = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        (status.code(), report, stderr)
    }

    /// The compose tool itself, with the same options (compose's own flags only).
    fn compose(&self, tool: &Tool, dir: &Path, sub: &[&str]) -> (ExitStatus, String, String) {
        let mut cmd = self.command(&tool.cmd, tool, dir);
        output(cmd.args(&self.args).args(sub))
    }

    /// `guardian up`, then the containers the engine runs for `project`, per service; then
    /// `down`.
    fn up_and_count(&self, tool: &Tool, dir: &Path, project: &str) -> BTreeMap<String, usize> {
        let state = tempfile::tempdir().unwrap();
        let (status, stdout, stderr) = self.guardian(
            tool,
            dir,
            &[
                "up",
                "--output",
                "json",
                "--state-dir",
                state.path().to_str().unwrap(),
                "--available",
                "8g",
                "--settle",
                "1s",
                "--timeout",
                "60s",
            ],
        );
        let containers = docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
            "--format",
            "{{.Label \"com.docker.compose.service\"}}",
        ]);
        let (down, _, down_err) = self.compose(tool, dir, &["down", "-t", "1"]);
        assert!(status.success(), "guardian up failed: {stdout}{stderr}");
        assert!(down.success(), "compose down failed: {down_err}");
        let mut counts = BTreeMap::new();
        for s in containers.lines().filter(|l| !l.is_empty()) {
            *counts.entry(s.to_string()).or_insert(0) += 1;
        }
        counts
    }
}

/// Services and replicas in guardian's plan.
fn planned(report: &Value) -> BTreeMap<String, usize> {
    report["services"]
        .as_array()
        .unwrap_or_else(|| panic!("no services in {report}"))
        .iter()
        .map(|s| {
            (
                s["service"].as_str().unwrap().to_string(),
                s["replicas"].as_u64().unwrap() as usize,
            )
        })
        .collect()
}

fn service<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == name)
        .unwrap_or_else(|| panic!("{name} not planned: {report}"))
}

fn left_out(report: &Value) -> BTreeMap<String, String> {
    report["left_out"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["service"].as_str().unwrap().to_string(),
                l["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(s, n)| (s.to_string(), *n)).collect()
}

/// The plan matches what the tool resolves (v2's own `config --format json`: name and
/// services) and what `up` starts on the engine.
fn check_against_tool_and_engine(run: &Run, tool: &Tool, dir: &Path, report: &Value) {
    let project = report["project"].as_str().unwrap().to_string();
    if tool.major >= 2 {
        let (status, stdout, stderr) = run.compose(tool, dir, &["config", "--format", "json"]);
        assert!(status.success(), "{stderr}");
        let resolved: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(resolved["name"], project.as_str());
        // compose's services: guardian plans each, or leaves it out for replicas: 0.
        let theirs: Vec<String> = resolved["services"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let mut ours: Vec<String> = planned(report)
            .into_keys()
            .chain(
                left_out(report)
                    .into_iter()
                    .filter(|(_, why)| why == "replicas: 0")
                    .map(|(s, _)| s),
            )
            .collect();
        ours.sort();
        assert_eq!(ours, theirs, "plan {report} vs compose {stdout}");
    }
    assert_eq!(
        run.up_and_count(tool, dir, &project),
        planned(report),
        "guardian up with {tool:?} started other containers than the plan"
    );
}

#[test]
fn a_directory_with_only_compose_yaml_is_found() {
    require_docker();
    for tool in tools() {
        let s = stage("1-compose-yaml");
        let run = Run::default();
        let (code, report, stderr) = run.preflight(&tool, &s.dir);
        assert_eq!(code, Some(0), "{tool:?}: {stderr}");
        assert_eq!(report["project"], s.name.as_str());
        assert_eq!(planned(&report), counts(&[("web", 1)]));
        assert_eq!(service(&report, "web")["ceiling"], 64 * MIB);
        check_against_tool_and_engine(&run, &tool, &s.dir, &report);
    }
}

#[test]
fn the_override_file_is_merged_as_compose_merges_it() {
    require_docker();
    for tool in tools() {
        let s = stage("2-override");
        let run = Run::default();
        let (code, report, stderr) = run.preflight(&tool, &s.dir);
        assert_eq!(code, Some(0), "{tool:?}: {stderr}");
        assert_eq!(planned(&report), counts(&[("extra", 1), ("web", 1)]));
        assert_eq!(service(&report, "web")["ceiling"], GIB);
        assert_eq!(service(&report, "extra")["ceiling"], 512 * MIB);
        check_against_tool_and_engine(&run, &tool, &s.dir, &report);
        // An explicit -f turns the override off, in compose and in guardian alike.
        let explicit = Run {
            args: vec!["-f", "docker-compose.yml"],
            ..Default::default()
        };
        let (_, report, stderr) = explicit.preflight(&tool, &s.dir);
        assert_eq!(planned(&report), counts(&[("web", 1)]), "{stderr}");
        assert_eq!(service(&report, "web")["ceiling"], 256 * MIB);
    }
}

#[test]
fn compose_file_project_name_profiles_and_env_file_come_from_the_environment() {
    require_docker();
    for tool in tools() {
        let s = stage("3-environment");
        let project = format!("{}env", s.name);
        std::fs::write(
            s.dir.join("sub/.env"),
            format!("COMPOSE_PROJECT_NAME={project}\nCOMPOSE_PROFILES=extra\nWEB_LIMIT=200m\n"),
        )
        .unwrap();
        let run = Run {
            env: vec![("COMPOSE_FILE", "sub/docker-compose.yml:sub/more.yml".into())],
            ..Default::default()
        };
        let (code, report, stderr) = run.preflight(&tool, &s.dir);
        assert_eq!(code, Some(0), "{tool:?}: {stderr}");
        assert_eq!(report["project"], project.as_str());
        assert_eq!(
            planned(&report),
            counts(&[("debug", 1), ("more", 1), ("web", 1)])
        );
        assert_eq!(service(&report, "web")["ceiling"], 200 * MIB);
        check_against_tool_and_engine(&run, &tool, &s.dir, &report);
    }
}

#[test]
fn a_service_in_an_inactive_profile_is_left_out_and_said_so() {
    require_docker();
    for tool in tools() {
        let s = stage("4-profiles");
        let run = Run::default();
        let (code, report, stderr) = run.preflight(&tool, &s.dir);
        assert_eq!(code, Some(0), "{tool:?}: {stderr}");
        assert_eq!(planned(&report), counts(&[("web", 1)]));
        assert_eq!(
            left_out(&report),
            [("debug".to_string(), "profile debug not active".to_string())].into()
        );
        assert_eq!(report["bounded_ceiling"], 256 * MIB);
        check_against_tool_and_engine(&run, &tool, &s.dir, &report);
        // Named on the command line, compose starts it whatever its profile: so does guardian.
        let named = Run {
            services: vec!["debug"],
            ..Default::default()
        };
        let (code, report, stderr) = named.preflight(&tool, &s.dir);
        assert_eq!(code, Some(0), "{tool:?}: {stderr}");
        assert_eq!(planned(&report), counts(&[("debug", 1)]));
        assert_eq!(
            named.up_and_count(&tool, &s.dir, report["project"].as_str().unwrap()),
            counts(&[("debug", 1)])
        );
        // --profile means what it means to compose.
        let debug = Run {
            args: vec!["--profile", "debug"],
            ..Default::default()
        };
        let (code, report, stderr) = debug.preflight(&tool, &s.dir);
        assert_eq!(code, Some(0), "{tool:?}: {stderr}");
        assert_eq!(planned(&report), counts(&[("debug", 1), ("web", 1)]));
        assert_eq!(report["bounded_ceiling"], 2 * GIB + 256 * MIB);
        check_against_tool_and_engine(&debug, &tool, &s.dir, &report);
    }
}

#[test]
fn replicas_multiply_and_replicas_zero_is_not_started() {
    require_docker();
    for tool in tools() {
        let s = stage("5-replicas");
        let run = Run::default();
        let (code, report, stderr) = run.preflight(&tool, &s.dir);
        assert_eq!(code, Some(0), "{tool:?}: {stderr}");
        assert_eq!(planned(&report), counts(&[("web", 3), ("worker", 2)]));
        assert_eq!(service(&report, "web")["ceiling"], 3 * GIB);
        assert_eq!(service(&report, "worker")["ceiling"], 128 * MIB);
        assert_eq!(
            left_out(&report),
            [("idle".to_string(), "replicas: 0".to_string())].into()
        );
        check_against_tool_and_engine(&run, &tool, &s.dir, &report);
    }
}

#[test]
fn a_limit_above_the_host_is_unbounded_and_without_history_the_answer_is_cannot_tell() {
    require_docker();
    let host_total: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024;
    assert!(
        host_total < 128 * GIB,
        "this case needs a host under 128 GiB"
    );
    for tool in tools() {
        let s = stage("6-host-limit");
        let run = Run::default();
        let (code, report, stderr) = run.preflight(&tool, &s.dir);
        // Not "does not fit": nothing known says so.
        assert_eq!(code, Some(4), "{tool:?}: {stderr}");
        assert_eq!(report["verdict"], "cannot_tell");
        for unbounded in ["db", "cache", "tmp"] {
            let svc = service(&report, unbounded);
            assert_eq!(svc["knowledge"], "unbounded", "{unbounded}: {svc}");
            assert_eq!(svc["ceiling"], host_total);
        }
        // Sized tmpfs and shm count where no limit bounds them, and only there.
        assert_eq!(service(&report, "tmp")["unbounded_tmpfs"], 96 * MIB);
        assert_eq!(service(&report, "app")["unbounded_tmpfs"], Value::Null);
        assert_eq!(service(&report, "app")["ceiling"], 128 * MIB);
        check_against_tool_and_engine(&run, &tool, &s.dir, &report);
    }
}

#[test]
fn a_broken_stack_gives_the_tools_real_error_on_one_line_and_writes_nothing() {
    require_docker();
    for tool in tools() {
        let s = stage("7-broken");
        let run = Run::default();
        let (code, _, stderr) = run.preflight(&tool, &s.dir);
        assert_eq!(code, Some(2), "{tool:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("error: docker-compose.yml: "),
            "{stderr}"
        );
        assert!(stderr.contains("missing.env"), "{stderr}");
        assert!(!stderr.contains("Defaulting to a blank string"), "{stderr}");
        assert!(
            stderr.contains(&format!("(ran: {} config", tool.cmd)),
            "{stderr}"
        );
        // guardian profile reads the stack before it writes anything.
        let state = recorded_store(&s.name, "web", &[10 * MIB]);
        let (status, _, stderr) = run.guardian(
            &tool,
            &s.dir,
            &[
                "profile",
                "--state-dir",
                state.path().to_str().unwrap(),
                "--compose-out",
                "override.yml",
                "--profile-out",
                "p.toml",
            ],
        );
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("missing.env"), "{stderr}");
        assert!(!s.dir.join("override.yml").exists() && !s.dir.join("p.toml").exists());
    }
}

/// A store with one recorded run per peak, as replicas 1, 2, … of `service`.
fn recorded_store(project: &str, service: &str, peaks: &[u64]) -> tempfile::TempDir {
    let state = tempfile::tempdir().unwrap();
    let mut store = Store::open(state.path()).unwrap();
    let now = guardian::model::now_ms();
    let runs: Vec<RunRecord> = peaks
        .iter()
        .enumerate()
        .map(|(i, peak)| RunRecord {
            container_id: format!("{service}{i}"),
            name: format!("{project}-{service}-{}", i + 1),
            image: "guardian-test/memload".into(),
            project: Some(project.into()),
            service: Some(service.into()),
            started_at_ms: now - 60_000,
            ended_at_ms: Some(now),
            memory_limit: Some(Bytes(256 * MIB)),
            peak: Bytes(*peak),
            startup_peak: Bytes(*peak),
            working_set_sum: peak / 2,
            working_set_samples: 1,
            ..Default::default()
        })
        .collect();
    store.flush(&runs, &[]).unwrap();
    state
}

#[test]
fn the_profile_override_keeps_mem_limit_moves_memswap_and_sizes_replicas_from_the_highest() {
    require_docker();
    for tool in tools() {
        let s = stage("8-profile-override");
        let state = recorded_store(&s.name, "web", &[40 * MIB, 100 * MIB]);
        let run = Run::default();
        let (status, stdout, stderr) = run.guardian(
            &tool,
            &s.dir,
            &[
                "profile",
                "--state-dir",
                state.path().to_str().unwrap(),
                "--project",
                &s.name,
                "--compose-out",
                "docker-compose.guardian.yml",
                "--profile-out",
                "p.toml",
            ],
        );
        assert!(status.success(), "{tool:?}: {stdout}{stderr}");
        let text = std::fs::read_to_string(s.dir.join("docker-compose.guardian.yml")).unwrap();
        assert!(!text.contains("deploy"), "{text}");
        // The highest replica peaked at 100 MiB: 120 MiB each; 256 MiB of swap on top as before.
        let with_override = Run {
            args: vec![
                "-f",
                "docker-compose.yml",
                "-f",
                "docker-compose.guardian.yml",
            ],
            ..Default::default()
        };
        let (code, report, stderr) = with_override.preflight(&tool, &s.dir);
        assert_eq!(
            code,
            Some(0),
            "{tool:?} refused the override: {stderr}\n{text}"
        );
        assert_eq!(service(&report, "web")["ceiling"], 2 * 120 * MIB);
        let project = report["project"].as_str().unwrap().to_string();
        let (up, _, up_err) = with_override.compose(&tool, &s.dir, &["up", "-d"]);
        assert!(up.success(), "{up_err}");
        let ids = docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
        ]);
        let limits: Vec<String> = ids
            .lines()
            .map(|id| {
                docker(&[
                    "inspect",
                    "-f",
                    "{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}}",
                    id,
                ])
            })
            .collect();
        let (down, _, _) = with_override.compose(&tool, &s.dir, &["down", "-t", "1"]);
        assert!(down.success());
        let expected = format!("{} {}", 120 * MIB, 376 * MIB);
        assert_eq!(limits, vec![expected.clone(), expected], "{tool:?}");
    }
}

#[test]
fn extends_and_yaml_merge_keys_resolve_as_compose_resolves_them() {
    require_docker();
    for tool in tools() {
        let s = stage("extends");
        let (code, report, stderr) = Run::default().preflight(&tool, &s.dir);
        assert_eq!(code, Some(0), "{tool:?}: {stderr}");
        assert_eq!(service(&report, "web")["ceiling"], 96 * MIB);
        check_against_tool_and_engine(&Run::default(), &tool, &s.dir, &report);

        let s = stage("anchors");
        let (code, report, stderr) = Run::default().preflight(&tool, &s.dir);
        assert_eq!(code, Some(0), "{tool:?}: {stderr}");
        assert_eq!(service(&report, "web")["ceiling"], 48 * MIB);
        assert_eq!(service(&report, "api")["ceiling"], 80 * MIB);
        check_against_tool_and_engine(&Run::default(), &tool, &s.dir, &report);
    }
}

#[test]
fn include_and_reset_work_with_compose_v2_and_v1_shows_its_own_error() {
    require_docker();
    for tool in tools() {
        let include = stage("include");
        let reset = stage("reset");
        let (inc_code, inc, inc_err) = Run::default().preflight(&tool, &include.dir);
        let (res_code, res, res_err) = Run::default().preflight(&tool, &reset.dir);
        if tool.major >= 2 {
            assert_eq!(inc_code, Some(0), "{inc_err}");
            assert_eq!(service(&inc, "db")["ceiling"], 160 * MIB);
            assert_eq!(service(&inc, "web")["ceiling"], 32 * MIB);
            check_against_tool_and_engine(&Run::default(), &tool, &include.dir, &inc);
            // !reset drops the limit: unbounded, so no verdict without history.
            assert_eq!(res_code, Some(4), "{res_err}");
            assert_eq!(service(&res, "web")["knowledge"], "unbounded");
            check_against_tool_and_engine(&Run::default(), &tool, &reset.dir, &res);
        } else {
            // docker-compose 1.x knows neither: its own errors, whole, on one line.
            assert_eq!(inc_code, Some(2), "{inc_err}");
            assert_eq!(inc_err.trim().lines().count(), 1, "{inc_err}");
            assert!(
                inc_err.contains("'include' does not match any of the regexes")
                    && inc_err.contains("For more on the Compose file format versions"),
                "{inc_err}"
            );
            assert_eq!(res_code, Some(2), "{res_err}");
            assert!(
                res_err.contains("could not determine a constructor for the tag '!reset'"),
                "{res_err}"
            );
        }
    }
}
