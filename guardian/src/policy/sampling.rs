//! When to sample a container fast: most CI OOM kills take less than one normal sampling
//! interval from start to kill, so a group that is new, or near the lowest of its limit, budget
//! and memory.high, is read every few tens of milliseconds until it is safe again. Pure.

use crate::model::Bytes;

/// A group at or above this share of its ceiling starts being sampled fast.
pub const ENTER_SHARE: f64 = 0.80;
/// A fast-sampled group goes back to the normal interval only below this share (hysteresis, so
/// a group hovering at the threshold does not flap).
pub const LEAVE_SHARE: f64 = 0.70;
/// A run this young (milliseconds since it started) is sampled fast whatever its usage: its
/// need is unknown yet, and a start-up that overruns its limit dies within this time.
pub const YOUNG_MS: i64 = 3000;

/// What the decision looks at for one container.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SampleInputs {
    /// Its latest usage (v2 `memory.current`, v1 `memory.usage_in_bytes`).
    pub usage: Bytes,
    /// Its hard limit (v2 `memory.max`, v1 `memory.limit_in_bytes`).
    pub limit: Option<Bytes>,
    /// guardian's budget for it.
    pub budget: Option<Bytes>,
    /// v2 `memory.high`.
    pub high: Option<Bytes>,
    /// Milliseconds since its run started.
    pub age_ms: i64,
    /// Whether it is sampled fast now.
    pub fast_now: bool,
}

/// Why a group is (or is not) sampled fast.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rate {
    /// Younger than [`YOUNG_MS`].
    FastYoung,
    /// Usage at this share of its lowest ceiling.
    FastNearCeiling(f64),
    /// Safe: the normal interval.
    Normal,
}

impl Rate {
    pub fn is_fast(self) -> bool {
        !matches!(self, Rate::Normal)
    }
}

/// Fast while young, or while usage ≥ [`ENTER_SHARE`] of the lowest of limit, budget and
/// memory.high (≥ [`LEAVE_SHARE`] once fast); normal otherwise, and for a group with no ceiling.
pub fn rate(i: &SampleInputs) -> Rate {
    if i.age_ms < YOUNG_MS {
        return Rate::FastYoung;
    }
    let Some(ceiling) = [i.limit, i.budget, i.high]
        .into_iter()
        .flatten()
        .filter(|c| c.0 > 0)
        .min()
    else {
        return Rate::Normal;
    };
    let share = i.usage.0 as f64 / ceiling.0 as f64;
    let threshold = if i.fast_now { LEAVE_SHARE } else { ENTER_SHARE };
    if share >= threshold {
        Rate::FastNearCeiling(share)
    } else {
        Rate::Normal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn at(usage: u64, limit: Option<u64>, fast_now: bool) -> SampleInputs {
        SampleInputs {
            usage: Bytes(usage * MIB),
            limit: limit.map(|l| Bytes(l * MIB)),
            age_ms: 60_000,
            fast_now,
            ..Default::default()
        }
    }

    #[test]
    fn a_new_container_is_sampled_fast_whatever_its_usage() {
        let young = SampleInputs {
            age_ms: 200,
            ..at(1, Some(48), false)
        };
        assert_eq!(rate(&young), Rate::FastYoung);
    }

    #[test]
    fn a_group_near_its_limit_is_sampled_fast() {
        assert_eq!(
            rate(&at(40, Some(48), false)),
            Rate::FastNearCeiling(40.0 / 48.0)
        );
        assert_eq!(rate(&at(30, Some(48), false)), Rate::Normal);
    }

    #[test]
    fn it_stays_fast_until_it_is_clearly_safe_again() {
        // 36/48 = 75 %: below the entry share, above the leaving one.
        assert!(rate(&at(36, Some(48), true)).is_fast());
        assert!(!rate(&at(36, Some(48), false)).is_fast());
        assert!(!rate(&at(30, Some(48), true)).is_fast());
    }

    #[test]
    fn the_lowest_ceiling_counts_budget_and_memory_high_too() {
        let mut i = at(90, Some(1024), false);
        assert_eq!(rate(&i), Rate::Normal);
        i.budget = Some(Bytes(100 * MIB));
        assert!(rate(&i).is_fast());
        i.budget = None;
        i.high = Some(Bytes(110 * MIB));
        assert!(rate(&i).is_fast());
    }

    #[test]
    fn a_group_without_a_ceiling_is_sampled_normally() {
        assert_eq!(rate(&at(4000, None, false)), Rate::Normal);
    }
}
