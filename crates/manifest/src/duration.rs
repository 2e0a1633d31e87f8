//! The one duration syntax of vedge's flags and the harness's: `500ms`, `2s`, `1.5s`, `5m` (or
//! `5min`), `1h`, `1d`, or a bare number of seconds. It sits beside the manifest code because the
//! edge and the harness both depend on this crate and neither should carry its own variant.

use std::time::Duration;

/// Parses `s` (surrounding whitespace and a space before the unit are allowed).
pub fn parse(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|ch: char| !(ch.is_ascii_digit() || ch == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 500ms, 2s, 5m, 1h, 1d)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => {
            return Err(format!(
                "`{s}`: unknown unit `{other}` (use ms, s, m, h, d)"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{s}` is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_fractions_and_bare_seconds() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("3m"), Ok(Duration::from_secs(180)));
        assert_eq!(parse("3min"), Ok(Duration::from_secs(180)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse(" 2 s "), Ok(Duration::from_secs(2)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn nonsense_negative_and_unknown_units_are_errors() {
        for bad in ["", "fast", "-1s", "2 fortnights", "1.2.3s", "s", "inf"] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains(&format!("`{bad}`")), "{bad}: {e}");
        }
    }
}
