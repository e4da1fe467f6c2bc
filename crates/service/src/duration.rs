//! Durations in settings (`30m`, `10s`, `1500ms`, `2h`, `1h 30m`), parsed by
//! `humantime` rather than by hand.

use std::time::Duration;

/// A setting that is not a duration of at least 1 ms.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DurationError {
    /// Not something `humantime` reads.
    #[error("{input:?} is not a duration ({reason}); write e.g. 30m, 10s or 1500ms")]
    Unreadable {
        input: String,
        #[source]
        reason: humantime::DurationError,
    },
    /// Shorter than 1 ms (`0s`, `500us`).
    #[error("{0:?}: a duration must be at least 1ms")]
    TooShort(String),
}

/// A duration of at least 1 ms, e.g. `30m`, `10s`, `1500ms`, `2h`.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let d = humantime::parse_duration(s).map_err(|reason| DurationError::Unreadable {
        input: s.to_owned(),
        reason,
    })?;
    if d < Duration::from_millis(1) {
        return Err(DurationError::TooShort(s.to_owned()));
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
        // The texts clap shows, as they were when this returned a String.
        assert_eq!(
            parse_duration("0s").unwrap_err().to_string(),
            "\"0s\": a duration must be at least 1ms"
        );
        assert_eq!(
            parse_duration(" soon ").unwrap_err().to_string(),
            "\"soon\" is not a duration (expected number at 0); write e.g. 30m, 10s or 1500ms"
        );
    }
}
