//! The one duration flag format of every binary: `500ms`, `30s`, `5m`,
//! `1h 30m` or ISO 8601 (`PT5M`); a bare number is refused so a flag never
//! silently means seconds in one binary and milliseconds in another.

use std::time::Duration;

/// Parses a human duration; the error says what was given and what is
/// expected (clap shows it as is).
pub fn parse(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!(
            "{s:?} has no unit: write e.g. {t}s or {t}ms (durations are 500ms, 30s, 5m, 1h)"
        ));
    }
    let d: jiff::SignedDuration = t
        .parse()
        .map_err(|e| format!("{s:?} is not a duration (e.g. 500ms, 30s, 5m, 1h): {e}"))?;
    Duration::try_from(d).map_err(|_| format!("{s:?} is negative"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_documented_forms() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse(" 5m "), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("PT5M"), Ok(Duration::from_secs(300)));
    }

    #[test]
    fn refuses_bare_numbers_negatives_and_words() {
        assert!(parse("30").unwrap_err().contains("no unit"));
        assert!(parse("-5s").unwrap_err().contains("negative"));
        assert!(parse("soon").unwrap_err().contains("not a duration"));
        assert!(parse("").is_err());
    }
}
