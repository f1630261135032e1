//! The daemon's record of every running container: peaks, working set, start-up peak and a
//! downsampled timeline, kept in memory between flushes to the store. No I/O.

use std::collections::{HashMap, VecDeque};

use super::{
    rfc3339_ms, unreclaimable_high, Bytes, CgroupRef, Container, Counters, MemoryReading,
    RunRecord, Sample,
};

/// A container being recorded.
#[derive(Clone, Debug)]
pub struct LiveRun {
    pub record: RunRecord,
    pub cgroup: Option<CgroupRef>,
    /// The latest reading, for status and metrics.
    pub last: Option<MemoryReading>,
    /// Usage at every sampling round of the last [`RECENT_MS`], for post-mortems.
    pub recent: VecDeque<(i64, Bytes)>,
    /// The previous sampling round, the start of the interval the next round covers.
    last_round: Option<Counters>,
    last_timeline_ms: Option<i64>,
    dirty: bool,
}

impl LiveRun {
    /// Whether a full reading (memory.stat and the rest) is due; between full readings only the
    /// usage and the kernel's high-water mark are read, which keeps peaks exact for little cost.
    /// The previous sampling round (the start of the interval the next round covers).
    pub fn last_round(&self) -> Option<&Counters> {
        self.last_round.as_ref()
    }

    pub fn full_reading_due(&self, now_ms: i64, interval_ms: i64) -> bool {
        self.last_timeline_ms
            .is_none_or(|t| now_ms - t >= interval_ms)
    }
}

/// How much usage history each live run keeps in memory for post-mortems.
pub const RECENT_MS: i64 = 60_000;

impl LiveRun {
    fn push_recent(&mut self, now_ms: i64, usage: Bytes) {
        self.recent.push_back((now_ms, usage));
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| now_ms - t > RECENT_MS)
        {
            self.recent.pop_front();
        }
    }
}

/// What to write at the next flush.
#[derive(Debug, Default)]
pub struct Flush {
    pub runs: Vec<RunRecord>,
    pub samples: Vec<(String, i64, Sample)>,
}

impl Flush {
    /// Keeps a flush the store could not take within bounds while the store stays unwritable
    /// (disk full, read-only): the newest record of each run (a later one supersedes the
    /// earlier), and only samples taken at or after `keep_since_ms`. Returns how many samples
    /// were dropped.
    pub fn bound(&mut self, keep_since_ms: i64) -> usize {
        let mut seen = std::collections::HashSet::new();
        let mut runs: Vec<RunRecord> = std::mem::take(&mut self.runs)
            .into_iter()
            .rev()
            .filter(|r| seen.insert((r.container_id.clone(), r.started_at_ms)))
            .collect();
        runs.reverse();
        self.runs = runs;
        let before = self.samples.len();
        self.samples.retain(|(_, _, s)| s.at_ms >= keep_since_ms);
        before - self.samples.len()
    }
}

/// Running containers' records plus what has finished since the last flush.
#[derive(Debug)]
pub struct Recorder {
    live: HashMap<String, LiveRun>,
    pending: Flush,
    timeline_interval_ms: i64,
    startup_window_ms: i64,
}

/// Raises a peak that may not be measured yet; true when it rose.
fn raise(peak: &mut Option<Bytes>, value: Bytes) -> bool {
    if peak.is_some_and(|p| p >= value) {
        return false;
    }
    *peak = Some(value);
    true
}

impl Recorder {
    pub fn new(timeline_interval_ms: i64, startup_window_ms: i64) -> Self {
        Self {
            live: HashMap::new(),
            pending: Flush::default(),
            timeline_interval_ms,
            startup_window_ms,
        }
    }

    /// Starts (or refreshes the identity of) the run of a running container. A run is one
    /// container start: a restart begins a new one.
    pub fn start(&mut self, c: &Container, now_ms: i64) {
        let started_at_ms = c
            .started_at
            .as_deref()
            .and_then(rfc3339_ms)
            .unwrap_or(now_ms);
        let live = self.live.entry(c.id.clone()).or_insert_with(|| LiveRun {
            record: RunRecord {
                container_id: c.id.clone(),
                started_at_ms,
                ..Default::default()
            },
            cgroup: None,
            last: None,
            recent: VecDeque::new(),
            last_round: None,
            last_timeline_ms: None,
            dirty: true,
        });
        if live.record.started_at_ms != started_at_ms {
            // Restarted while we were not looking: the old run ended.
            let mut old = std::mem::replace(
                &mut live.record,
                RunRecord {
                    container_id: c.id.clone(),
                    started_at_ms,
                    ..Default::default()
                },
            );
            old.ended_at_ms.get_or_insert(now_ms);
            self.pending.runs.push(old);
            live.last_timeline_ms = None;
            live.last_round = None;
        }
        let r = &mut live.record;
        r.name = c.name.clone();
        r.image = c.image.clone();
        r.project = c.compose.as_ref().map(|s| s.project.clone());
        r.service = c.compose.as_ref().map(|s| s.service.clone());
        r.memory_limit = c.memory_limit;
        r.memory_reservation = c.memory_reservation;
        if c.cgroup.is_some() {
            live.cgroup = c.cgroup.clone();
        }
        live.dirty = true;
    }

    /// Folds one reading of a container's cgroup into its run.
    pub fn observe(&mut self, id: &str, reading: &MemoryReading, now_ms: i64) {
        let Some(live) = self.live.get_mut(id) else {
            return;
        };
        let r = &mut live.record;
        // The kernel's high-water mark catches spikes between samples.
        let high = reading.peak.unwrap_or(reading.usage).max(reading.usage);
        r.peak = r.peak.max(high);
        if now_ms - r.started_at_ms <= self.startup_window_ms {
            r.startup_peak = r.startup_peak.max(high);
        }
        r.working_set_max = r.working_set_max.max(reading.working_set);
        r.working_set_sum += reading.working_set.0;
        r.working_set_samples += 1;
        r.anon_max = r.anon_max.max(reading.anon);
        raise(&mut r.peak_unreclaimable, reading.unreclaimable);
        r.oom_kills = r.oom_kills.max(reading.oom_kills);
        if reading.limit.is_some() {
            r.memory_limit = reading.limit;
        }
        let due = live
            .last_timeline_ms
            .is_none_or(|t| now_ms - t >= self.timeline_interval_ms);
        if due {
            live.last_timeline_ms = Some(now_ms);
            self.pending.samples.push((
                r.container_id.clone(),
                r.started_at_ms,
                Sample {
                    at_ms: now_ms,
                    usage: reading.usage,
                    working_set: reading.working_set,
                    anon: reading.anon,
                },
            ));
        }
        // The first reading (taken when the container starts) opens the first interval of the
        // sampling rounds, so a spike before the first round still shows in the rise of the
        // high-water mark.
        live.last_round.get_or_insert(Counters {
            usage: reading.usage,
            high_water: high,
            interval_peak: None,
            unreclaimable: reading.unreclaimable,
            // From the same memory.stat read (not usage − unreclaimable: two reads apart):
            // the page cache less tmpfs; its mapped part is counted here too, so the first
            // interval's estimate errs low by at most the mapped pages.
            reclaimable: Bytes(reading.file.0.saturating_sub(reading.shmem.0)),
        });
        live.last = Some(reading.clone());
        live.push_recent(now_ms, reading.usage);
        live.dirty = true;
    }

    /// The live run of a container.
    pub fn get(&self, id: &str) -> Option<&LiveRun> {
        self.live.get(id)
    }

    /// Folds one sampling round (usage, high-water mark, unreclaimable memory) into a run: the
    /// peak, the start-up peak, the unreclaimable peak of the interval since the previous round
    /// ([`unreclaimable_high`]) and the recent usage.
    pub fn observe_counters(&mut self, id: &str, round: Counters, now_ms: i64) {
        let Some(live) = self.live.get_mut(id) else {
            return;
        };
        let r = &mut live.record;
        let high = round
            .high_water
            .max(round.usage)
            .max(round.interval_peak.unwrap_or_default());
        if high > r.peak {
            r.peak = high;
            live.dirty = true;
        }
        if now_ms - r.started_at_ms <= self.startup_window_ms && high > r.startup_peak {
            r.startup_peak = high;
            live.dirty = true;
        }
        let unreclaimable = unreclaimable_high(live.last_round.as_ref(), &round);
        live.dirty |= raise(&mut r.peak_unreclaimable, unreclaimable);
        live.last_round = Some(round);
        live.push_recent(now_ms, round.usage);
    }

    /// The spacing of timeline points, which is also how often a full reading is due.
    pub fn timeline_interval_ms(&self) -> i64 {
        self.timeline_interval_ms
    }

    /// Ends a container's run with what Docker says of its exit.
    pub fn finish(&mut self, c: &Container, now_ms: i64) {
        let Some(mut live) = self.live.remove(&c.id) else {
            return;
        };
        let r = &mut live.record;
        r.ended_at_ms = Some(
            c.finished_at
                .as_deref()
                .and_then(rfc3339_ms)
                .unwrap_or(now_ms),
        );
        r.exit_code = c.exit_code;
        r.oom_killed = c.oom_killed;
        if c.oom_killed {
            r.oom_kills = r.oom_kills.max(1);
        }
        self.pending.runs.push(live.record);
    }

    /// Takes everything that changed since the last flush.
    pub fn take_flush(&mut self) -> Flush {
        let mut flush = std::mem::take(&mut self.pending);
        for live in self.live.values_mut().filter(|l| l.dirty) {
            live.dirty = false;
            flush.runs.push(live.record.clone());
        }
        flush
    }

    /// Puts back a flush the store could not take, so the next one writes it, bounded as
    /// [`Flush::bound`] says; returns the samples dropped.
    pub fn restore(&mut self, flush: Flush, keep_since_ms: i64) -> usize {
        let mut kept = flush;
        kept.runs.append(&mut self.pending.runs);
        kept.samples.append(&mut self.pending.samples);
        let dropped = kept.bound(keep_since_ms);
        self.pending = kept;
        dropped
    }

    /// The containers being recorded.
    pub fn live(&self) -> impl Iterator<Item = &LiveRun> {
        self.live.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(id: &str, started: &str) -> Container {
        Container {
            id: id.into(),
            name: format!("n-{id}"),
            image: "img".into(),
            compose: None,
            memory_limit: Some(Bytes(100)),
            memory_reservation: None,
            pid: Some(1),
            state: "running".into(),
            started_at: Some(started.into()),
            finished_at: None,
            exit_code: None,
            oom_killed: false,
            health: None,
            cgroup: None,
            labels: Default::default(),
            tmpfs: Vec::new(),
        }
    }

    fn reading(usage: u64, peak: u64) -> MemoryReading {
        MemoryReading {
            usage: Bytes(usage),
            peak: Some(Bytes(peak)),
            working_set: Bytes(usage / 2),
            anon: Bytes(usage),
            ..Default::default()
        }
    }

    const T0: &str = "2026-11-22T10:00:00Z";

    #[test]
    fn the_kernel_high_water_mark_is_the_peak_and_startup_peak_stops_at_the_window() {
        let t0 = rfc3339_ms(T0).unwrap();
        let mut rec = Recorder::new(10_000, 30_000);
        rec.start(&container("a", T0), t0);
        rec.observe("a", &reading(10, 80), t0 + 1_000);
        rec.observe("a", &reading(10, 90), t0 + 60_000);
        let flush = rec.take_flush();
        let r = &flush.runs[0];
        assert_eq!(r.peak, Bytes(90));
        assert_eq!(r.startup_peak, Bytes(80));
        assert_eq!(r.typical_working_set(), Bytes(5));
        // Two timeline points 59 s apart; both due.
        assert_eq!(flush.samples.len(), 2);
        assert!(rec.take_flush().runs.is_empty(), "nothing changed since");
    }

    #[test]
    fn cheap_readings_raise_the_peak_between_full_ones() {
        let t0 = rfc3339_ms(T0).unwrap();
        let mut rec = Recorder::new(10_000, 30_000);
        rec.start(&container("a", T0), t0);
        rec.observe("a", &reading(10, 20), t0 + 100);
        assert!(!rec
            .live()
            .next()
            .unwrap()
            .full_reading_due(t0 + 1_000, 10_000));
        rec.observe_counters(
            "a",
            Counters {
                usage: Bytes(10),
                high_water: Bytes(70),
                ..Default::default()
            },
            t0 + 1_000,
        );
        let run = &rec.take_flush().runs[0];
        assert_eq!((run.peak, run.startup_peak), (Bytes(70), Bytes(70)));
        assert!(rec
            .live()
            .next()
            .unwrap()
            .full_reading_due(t0 + 10_100, 10_000));
    }

    #[test]
    fn a_spike_between_the_first_reading_and_the_first_round_is_in_the_unreclaimable_peak() {
        let t0 = rfc3339_ms(T0).unwrap();
        let mut rec = Recorder::new(10_000, 30_000);
        rec.start(&container("a", T0), t0);
        let mut first = reading(10, 10);
        first.unreclaimable = Bytes(10);
        rec.observe("a", &first, t0);
        // A 100-byte anon spike came and went before the first sampling round.
        let round = Counters {
            usage: Bytes(10),
            high_water: Bytes(110),
            interval_peak: None,
            unreclaimable: Bytes(10),
            reclaimable: Bytes(0),
        };
        rec.observe_counters("a", round, t0 + 20);
        let run = &rec.take_flush().runs[0];
        assert_eq!(run.peak_unreclaimable, Some(Bytes(110)));
    }

    #[test]
    fn finishing_moves_the_run_out_with_its_exit() {
        let t0 = rfc3339_ms(T0).unwrap();
        let mut rec = Recorder::new(10_000, 30_000);
        let mut c = container("a", T0);
        rec.start(&c, t0);
        c.oom_killed = true;
        c.exit_code = Some(137);
        rec.finish(&c, t0 + 5_000);
        let flush = rec.take_flush();
        assert_eq!(flush.runs.len(), 1);
        assert_eq!(flush.runs[0].ended_at_ms, Some(t0 + 5_000));
        assert!(flush.runs[0].oom_killed && flush.runs[0].oom_kills == 1);
        assert_eq!(rec.live().count(), 0);
    }

    #[test]
    fn a_failed_flush_is_written_by_the_next_one() {
        let t0 = rfc3339_ms(T0).unwrap();
        let mut rec = Recorder::new(10_000, 30_000);
        rec.start(&container("a", T0), t0);
        let flush = rec.take_flush();
        assert_eq!(rec.restore(flush, 0), 0);
        assert_eq!(rec.take_flush().runs.len(), 1);
    }

    #[test]
    fn while_the_store_fails_one_record_per_run_and_the_last_minute_of_samples_wait() {
        let t0 = rfc3339_ms(T0).unwrap();
        let mut rec = Recorder::new(10_000, 30_000);
        rec.start(&container("a", T0), t0);
        // Ten failed flushes, a sample every 10 s: the run's record once, the samples of the
        // last minute only.
        let mut dropped = 0;
        for k in 0..10i64 {
            let mut f = rec.take_flush();
            let at = t0 + k * 10_000;
            f.samples.push((
                "a".into(),
                t0,
                Sample {
                    at_ms: at,
                    usage: Bytes(1),
                    working_set: Bytes(1),
                    anon: Bytes(1),
                },
            ));
            dropped += rec.restore(f, at - 60_000);
        }
        let f = rec.take_flush();
        assert_eq!(f.runs.len(), 1);
        assert_eq!(f.samples.len(), 7, "{:?}", f.samples);
        assert_eq!(f.samples[0].2.at_ms, t0 + 30_000);
        assert_eq!(dropped, 3);
    }

    #[test]
    fn a_restart_starts_a_new_run() {
        let t0 = rfc3339_ms(T0).unwrap();
        let mut rec = Recorder::new(10_000, 30_000);
        rec.start(&container("a", T0), t0);
        rec.start(&container("a", "2026-11-22T10:05:00Z"), t0 + 300_000);
        let flush = rec.take_flush();
        assert_eq!(flush.runs.len(), 2);
        assert!(flush.runs.iter().any(|r| r.ended_at_ms.is_some()));
    }
}
