//! Leaks: whether a container's working set keeps rising across a run. A robust fitted slope
//! (Theil–Sen: the median of the slopes between every pair of points, so a few spikes or a
//! cache flush do not move it) over the timeline's working set (usage − inactive_file, so page
//! cache that the kernel can drop is not mistaken for a leak), reported only when the rise is
//! steady (most pairs rise), long enough and large enough to matter. Pure functions.

use serde::Serialize;

use crate::model::Bytes;

/// When a rise counts as growth.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GrowthRule {
    /// The timeline must span at least this long (ms).
    pub min_span_ms: i64,
    /// The fitted rise over the span must reach this many bytes …
    pub min_rise: Bytes,
    /// … and this share of the median working set.
    pub min_rise_share: f64,
    /// Share of point pairs that must rise (a steady climb, not one step).
    pub min_rising_pairs: f64,
}

impl Default for GrowthRule {
    fn default() -> Self {
        Self {
            min_span_ms: 10 * 60_000,
            min_rise: Bytes(16 << 20),
            min_rise_share: 0.1,
            min_rising_pairs: 0.7,
        }
    }
}

/// A steady rise: "growing 12.0MiB/min over 40 min".
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Growth {
    /// Fitted slope, bytes per minute.
    pub per_minute: Bytes,
    /// Span of the points the slope was fitted over (ms).
    pub over_ms: i64,
    /// Fitted rise over that span.
    pub rise: Bytes,
}

impl std::fmt::Display for Growth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "growing {}/min over {} min",
            self.per_minute,
            (self.over_ms + 30_000) / 60_000
        )
    }
}

/// At most this many points enter the fit (evenly thinned): the pairwise median is quadratic.
const MAX_POINTS: usize = 240;

/// The growth of a series of `(time ms, working set)` points (in time order), or `None` when
/// it is flat, falling, too short, too small or not steady.
pub fn growth(points: &[(i64, Bytes)], rule: &GrowthRule) -> Option<Growth> {
    let points = thin(points);
    let (first, last) = (points.first()?, points.last()?);
    let span = last.0 - first.0;
    if span < rule.min_span_ms || points.len() < 3 {
        return None;
    }
    let mut slopes = Vec::with_capacity(points.len() * points.len() / 2);
    let mut rising = 0usize;
    for (i, a) in points.iter().enumerate() {
        for b in &points[i + 1..] {
            if b.0 > a.0 {
                let s = (b.1 .0 as f64 - a.1 .0 as f64) / (b.0 - a.0) as f64;
                rising += usize::from(s > 0.0);
                slopes.push(s);
            }
        }
    }
    if slopes.is_empty() {
        return None;
    }
    let slope = median(&mut slopes); // bytes per ms
    let rise = slope * span as f64;
    let mut levels: Vec<f64> = points.iter().map(|p| p.1 .0 as f64).collect();
    let typical = median(&mut levels);
    let steady = rising as f64 / slopes.len() as f64 >= rule.min_rising_pairs;
    let large = rise >= rule.min_rise.0 as f64 && rise >= rule.min_rise_share * typical;
    (slope > 0.0 && steady && large).then(|| Growth {
        per_minute: Bytes((slope * 60_000.0).round() as u64),
        over_ms: span,
        rise: Bytes(rise.round() as u64),
    })
}

fn thin(points: &[(i64, Bytes)]) -> Vec<(i64, Bytes)> {
    if points.len() <= MAX_POINTS {
        return points.to_vec();
    }
    let step = points.len() as f64 / MAX_POINTS as f64;
    let mut out: Vec<_> = (0..MAX_POINTS)
        .map(|i| points[(i as f64 * step) as usize])
        .collect();
    out.push(*points.last().expect("non-empty"));
    out
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// One point every 10 s (the daemon's timeline interval) for `minutes`.
    fn series(minutes: i64, f: impl Fn(i64) -> u64) -> Vec<(i64, Bytes)> {
        (0..=minutes * 6)
            .map(|i| (i * 10_000, Bytes(f(i * 10_000))))
            .collect()
    }

    #[test]
    fn a_steady_leak_is_reported_with_its_rate_and_span() {
        // 100 MiB base, +12 MiB per minute for 40 minutes.
        let s = series(40, |t| 100 * MIB + (12 * MIB * t as u64) / 60_000);
        let g = growth(&s, &GrowthRule::default()).expect("a leak");
        assert!(
            (g.per_minute.0 as f64 / MIB as f64 - 12.0).abs() < 0.01,
            "{g:?}"
        );
        assert_eq!(g.over_ms, 40 * 60_000);
        assert_eq!(g.to_string(), "growing 12.0MiB/min over 40 min");
    }

    #[test]
    fn spikes_on_a_flat_service_are_not_a_leak() {
        // 200 MiB with a 300 MiB spike every 5 minutes (a batch job's burst), 40 minutes.
        let s = series(40, |t| {
            if (t / 10_000) % 30 == 0 {
                500 * MIB
            } else {
                200 * MIB
            }
        });
        assert_eq!(growth(&s, &GrowthRule::default()), None);
    }

    #[test]
    fn a_single_step_up_is_not_a_steady_climb() {
        // A cache warmed once: 100 MiB, then 180 MiB from minute 5 on.
        let s = series(40, |t| if t < 5 * 60_000 { 100 * MIB } else { 180 * MIB });
        assert_eq!(growth(&s, &GrowthRule::default()), None);
    }

    #[test]
    fn a_short_run_says_nothing_yet() {
        let s = series(5, |t| 100 * MIB + (50 * MIB * t as u64) / 60_000);
        assert_eq!(growth(&s, &GrowthRule::default()), None);
    }

    #[test]
    fn a_slow_rise_below_the_size_that_matters_is_ignored() {
        // 2 GiB database growing 100 KiB per minute: 4 MiB over 40 min is noise.
        let s = series(40, |t| 2048 * MIB + (100 * 1024 * t as u64) / 60_000);
        assert_eq!(growth(&s, &GrowthRule::default()), None);
    }

    #[test]
    fn a_long_timeline_is_thinned_and_still_fitted() {
        // 24 h at 10 s: 8641 points, +1 MiB/min.
        let s = series(24 * 60, |t| 64 * MIB + (MIB * t as u64) / 60_000);
        let g = growth(&s, &GrowthRule::default()).expect("a leak");
        assert!(
            (g.per_minute.0 as f64 / MIB as f64 - 1.0).abs() < 0.01,
            "{g:?}"
        );
    }
}
