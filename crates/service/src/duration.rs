//! Durations in settings (`30m`, `10s`, `1500ms`, `2h`, `1h 30m`), parsed by
//! `humantime` rather than by hand.

use std::time::Duration;

/// A duration of at least 1 ms, e.g. `30m`, `10s`, `1500ms`, `2h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration ({e}); write e.g. 30m, 10s or 1500ms"))?;
    if d < Duration::from_millis(1) {
        return Err(format!("{s:?}: a duration must be at least 1ms"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_mins(30)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 2h "), Ok(Duration::from_hours(2)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_mins(90)));
        for bad in ["30", "0s", "500us", "m", "", "ten minutes", "-5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
