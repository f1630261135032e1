//! Leftover stacks: compose projects whose containers outlived the CI job that started them.
//! A project counts as left over when even its most recently started container has been
//! running longer than a CI job would (`after`): nothing started anything in it since. Pure.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::Bytes;

/// A running container as the store last saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Running {
    pub project: Option<String>,
    pub name: String,
    /// Unix ms.
    pub started_at_ms: i64,
    /// Its latest usage (memory.current / memory.usage_in_bytes).
    pub holds: Bytes,
}

/// A stack that is still up long after its last start.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Leftover {
    pub project: String,
    pub containers: Vec<String>,
    /// Sum of the containers' latest usage.
    pub holds: Bytes,
    /// Since the newest container of the project started (ms).
    pub idle_for_ms: i64,
}

/// The projects among `running` whose newest container started more than `after_ms` before
/// `now_ms`, most memory first. Containers outside any compose project are not stacks.
pub fn leftovers(running: &[Running], now_ms: i64, after_ms: i64) -> Vec<Leftover> {
    let mut by_project: BTreeMap<&str, Vec<&Running>> = BTreeMap::new();
    for r in running {
        if let Some(p) = r.project.as_deref() {
            by_project.entry(p).or_default().push(r);
        }
    }
    let mut out: Vec<Leftover> = by_project
        .into_iter()
        .filter_map(|(project, runs)| {
            let newest = runs.iter().map(|r| r.started_at_ms).max()?;
            let idle_for_ms = now_ms - newest;
            (idle_for_ms > after_ms).then(|| Leftover {
                project: project.to_string(),
                containers: runs.iter().map(|r| r.name.clone()).collect(),
                holds: Bytes(runs.iter().map(|r| r.holds.0).sum()),
                idle_for_ms,
            })
        })
        .collect();
    out.sort_by(|a, b| {
        b.holds
            .cmp(&a.holds)
            .then_with(|| a.project.cmp(&b.project))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    fn run(project: Option<&str>, name: &str, started_h: i64, mib: u64) -> Running {
        Running {
            project: project.map(str::to_string),
            name: name.into(),
            started_at_ms: started_h * H,
            holds: Bytes(mib << 20),
        }
    }

    #[test]
    fn a_stack_nothing_started_in_for_longer_than_a_job_is_left_over() {
        let running = [
            run(Some("ci-1234"), "db", 0, 300),
            run(Some("ci-1234"), "app", 0, 100),
            run(Some("ci-1300"), "db", 9, 250),
        ];
        let l = leftovers(&running, 10 * H, 2 * H);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].project, "ci-1234");
        assert_eq!(l[0].holds, Bytes(400 << 20));
        assert_eq!(l[0].idle_for_ms, 10 * H);
        assert_eq!(l[0].containers, vec!["db", "app"]);
    }

    #[test]
    fn one_recent_start_keeps_a_stack_in_use() {
        // A long-running db with an app restarted an hour ago: the job is still on it.
        let running = [
            run(Some("dev"), "db", 0, 300),
            run(Some("dev"), "app", 9, 100),
        ];
        assert!(leftovers(&running, 10 * H, 2 * H).is_empty());
    }

    #[test]
    fn containers_outside_compose_are_not_stacks() {
        assert!(leftovers(&[run(None, "registry", 0, 50)], 10 * H, 2 * H).is_empty());
    }

    #[test]
    fn the_biggest_leftover_comes_first() {
        let running = [run(Some("a"), "x", 0, 10), run(Some("b"), "y", 0, 900)];
        let l = leftovers(&running, 10 * H, 2 * H);
        assert_eq!(
            l.iter().map(|l| l.project.as_str()).collect::<Vec<_>>(),
            ["b", "a"]
        );
    }
}
