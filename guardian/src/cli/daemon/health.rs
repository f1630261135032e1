//! The daemon's health levels: each recorded container's level (policy::health) and the host's,
//! as metrics, and one log event per level change (`journalctl -u guardian` shows them).

use std::collections::HashMap;

use tracing::info;

use crate::{
    metrics::HealthSeries,
    model::{Bytes, LiveRun},
    policy::health::{self, Level, Thresholds},
    sources::host,
};

/// The levels last reported, to say each change once.
pub struct HealthWatch {
    thresholds: Thresholds,
    last: HashMap<String, Level>,
}

impl HealthWatch {
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            last: HashMap::new(),
        }
    }

    /// The levels now, from each run's latest full reading (working set, limit, memory.high)
    /// and its budget, and the host's from /proc/meminfo; logs the levels that changed.
    pub fn observe<'a>(
        &mut self,
        runs: impl Iterator<Item = (&'a LiveRun, Option<Bytes>)>,
    ) -> HealthSeries<'a> {
        let mut series = HealthSeries::default();
        let mut now: HashMap<String, Level> = HashMap::new();
        let mut names: HashMap<String, String> = HashMap::new();
        for (run, budget) in runs {
            let Some(r) = run.last.as_ref() else { continue };
            let Some(h) =
                health::container(r.working_set, r.limit, r.high, budget, &self.thresholds)
            else {
                continue;
            };
            now.insert(run.record.container_id.clone(), h.level);
            names.insert(run.record.container_id.clone(), run.record.display_name());
            series.containers.push((run, h.level));
        }
        if let (Ok(total), Ok(available)) = (host::mem_total(), host::mem_available()) {
            let h = health::host(total, available, &self.thresholds);
            now.insert("host".into(), h.level);
            series.host = Some(h.level);
        }
        for change in health::changes(&mut self.last, &now) {
            let subject = names
                .get(&change.key)
                .map_or(change.key.as_str(), String::as_str);
            info!(
                subject,
                from = change.from.map_or("-", Level::as_str),
                to = change.to.as_str(),
                "health level changed"
            );
        }
        series
    }
}
