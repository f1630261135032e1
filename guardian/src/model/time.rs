//! Wall-clock times as guardian stores and prints them: Unix milliseconds (`i64`, 0 before 1970)
//! and RFC 3339 text in UTC, as Docker writes `State.StartedAt`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix milliseconds of a wall-clock time (0 before 1970).
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

/// Unix milliseconds of an RFC 3339 time, as Docker writes `State.StartedAt`; `None` when it
/// does not parse or is before 1970.
pub fn rfc3339_ms(s: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339(s).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_millis() as i64)
}

/// The wall-clock time of Unix milliseconds (times before 1970 clamp to 1970).
pub fn system_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// RFC 3339 with milliseconds, e.g. `2026-11-30T20:13:07.681Z`.
pub fn rfc3339_millis(ms: i64) -> String {
    humantime::format_rfc3339_millis(system_time(ms)).to_string()
}

/// RFC 3339 to the second, e.g. `2026-11-30T20:13:07Z`.
pub fn rfc3339_seconds(ms: i64) -> String {
    humantime::format_rfc3339_seconds(system_time(ms)).to_string()
}

/// A compact stamp safe in file names and sortable as text, e.g. `20261130T201307Z`.
pub fn file_stamp(ms: i64) -> String {
    rfc3339_seconds(ms)
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_through_rfc3339_and_clamp_before_1970() {
        let ms = 1_796_069_587_681;
        assert_eq!(rfc3339_millis(ms), "2026-11-30T20:13:07.681Z");
        assert_eq!(rfc3339_seconds(ms), "2026-11-30T20:13:07Z");
        assert_eq!(file_stamp(ms), "20261130T201307Z");
        assert_eq!(rfc3339_ms(&rfc3339_millis(ms)), Some(ms));
        // Docker's nanosecond stamps parse to the millisecond.
        assert_eq!(rfc3339_ms("2026-11-30T20:13:07.681093097Z"), Some(ms));
        assert_eq!(rfc3339_millis(-5), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms("0001-01-01T00:00:00Z"), None);
    }
}
