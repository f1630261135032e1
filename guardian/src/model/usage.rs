//! What guardian records about a container's memory over one run (one start to exit).

use serde::{Deserialize, Serialize};

use super::Bytes;

/// One container lifetime and its memory, as the daemon keeps it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub container_id: String,
    pub name: String,
    pub image: String,
    pub project: Option<String>,
    pub service: Option<String>,
    /// Unix milliseconds.
    pub started_at_ms: i64,
    /// Unix milliseconds; `None` while it runs.
    pub ended_at_ms: Option<i64>,
    pub memory_limit: Option<Bytes>,
    pub memory_reservation: Option<Bytes>,
    /// The kernel's high-water mark (v1 max_usage_in_bytes, v2 memory.peak).
    pub peak: Bytes,
    /// The highest unreclaimable memory (anon, shmem, mapped file pages, kernel memory: the
    /// part of `peak` no reclaim could free), exact for spikes as `model::unreclaimable_high`
    /// says; `None` for runs recorded before guardian measured it.
    pub peak_unreclaimable: Option<Bytes>,
    /// The highest usage within the start-up window.
    pub startup_peak: Bytes,
    pub working_set_max: Bytes,
    /// Sum and count of working-set samples, for the typical working set.
    pub working_set_sum: u64,
    pub working_set_samples: u64,
    pub anon_max: Bytes,
    /// OOM kills the kernel counted in the container's cgroup.
    pub oom_kills: u64,
    /// Docker's `State.OOMKilled` at exit: the container itself died of it.
    pub oom_killed: bool,
    pub exit_code: Option<i64>,
}

impl RunRecord {
    /// How a person names it: `project/service` under compose, else the container name.
    pub fn display_name(&self) -> String {
        match (&self.project, &self.service) {
            (Some(p), Some(s)) => format!("{p}/{s}"),
            _ => self.name.clone(),
        }
    }

    /// The peak a limit must hold: the unreclaimable peak, else (runs recorded before it was
    /// measured) the high-water mark.
    pub fn sizing_peak(&self) -> Bytes {
        self.peak_unreclaimable.unwrap_or(self.peak)
    }

    /// The mean working set over the run's samples.
    pub fn typical_working_set(&self) -> Bytes {
        Bytes(
            self.working_set_sum
                .checked_div(self.working_set_samples)
                .unwrap_or(0),
        )
    }
}

/// One point of a container's downsampled timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Unix milliseconds.
    pub at_ms: i64,
    pub usage: Bytes,
    pub working_set: Bytes,
    pub anon: Bytes,
}
