//! RFC 3339 timestamps (image-spec `config.md` `created`) without a date library: UTC
//! formatting, lenient parsing (fractions and offsets), and docker's "2 hours ago".

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `SOURCE_DATE_EPOCH` (reproducible-builds.org/specs/source-date-epoch) when set and valid.
pub fn source_date_epoch() -> Option<i64> {
    std::env::var("SOURCE_DATE_EPOCH").ok()?.trim().parse().ok()
}

/// `1970-01-01T00:00:00Z` form.
pub fn format_rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `1970-01-01T00:00:00.000000000Z` form of the current instant (orders events that
/// happen within one second, e.g. containers created back to back).
pub fn now_rfc3339_nanos() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = format_rfc3339(now.as_secs() as i64);
    format!(
        "{}.{:09}Z",
        seconds.trim_end_matches('Z'),
        now.subsec_nanos()
    )
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` into epoch seconds.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, s) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    let mut rest = &text[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (rest[1..3].parse::<i64>().ok()? * 3600 + rest[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - offset)
}

/// "3 days ago", the way `docker images` shows ages.
pub fn ago(then: i64, now: i64) -> String {
    let secs = (now - then).max(0);
    let plural = |n: i64, unit: &str| {
        if n == 1 {
            format!("1 {unit} ago")
        } else {
            format!("{n} {unit}s ago")
        }
    };
    match secs {
        0..60 => "Less than a minute ago".to_string(),
        60..3600 => plural(secs / 60, "minute"),
        3600..86_400 => plural(secs / 3600, "hour"),
        86_400..1_209_600 => plural(secs / 86_400, "day"),
        1_209_600..5_184_000 => plural(secs / 604_800, "week"),
        5_184_000..63_072_000 => plural(secs / 2_592_000, "month"),
        _ => plural(secs / 31_536_000, "year"),
    }
}

/// A duration as docker's `ps` words it ("Up 3 seconds", "Up About a minute",
/// "Exited (0) 2 hours ago"): `secs` in seconds.
pub fn duration(secs: i64) -> String {
    let plural = |n: i64, unit: &str| {
        if n == 1 {
            format!("1 {unit}")
        } else {
            format!("{n} {unit}s")
        }
    };
    let minutes = secs / 60;
    let hours = (secs + 1800) / 3600;
    match secs.max(0) {
        0 => "Less than a second".to_string(),
        1..60 => plural(secs, "second"),
        60..120 => "About a minute".to_string(),
        120..3600 => plural(minutes, "minute"),
        _ if hours == 1 => "About an hour".to_string(),
        _ if hours < 48 => plural(hours, "hour"),
        _ if hours < 24 * 7 * 2 => plural(hours / 24, "day"),
        _ if hours < 24 * 30 * 2 => plural(hours / 24 / 7, "week"),
        _ if hours < 24 * 365 * 2 => plural(hours / 24 / 30, "month"),
        _ => plural(hours / 24 / 365, "year"),
    }
}

// Howard Hinnant's civil calendar algorithms (http://howardhinnant.github.io/date_algorithms.html).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_docker_ps() {
        let cases = [
            (0, "Less than a second"),
            (1, "1 second"),
            (59, "59 seconds"),
            (90, "About a minute"),
            (150, "2 minutes"),
            (3600, "About an hour"),
            (5 * 3600, "5 hours"),
            (3 * 86_400, "3 days"),
            (20 * 86_400, "2 weeks"),
            (90 * 86_400, "3 months"),
            (800 * 86_400, "2 years"),
        ];
        for (secs, text) in cases {
            assert_eq!(duration(secs), text, "{secs} s");
        }
    }

    #[test]
    fn formats_and_parses_known_instants() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20Z"), Some(1_700_000_000));
        assert_eq!(
            parse_rfc3339("2023-11-14T23:13:20.123456789+01:00"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn round_trips_over_many_days() {
        for secs in (-100_000_000..4_000_000_000i64).step_by(7_777_777) {
            assert_eq!(parse_rfc3339(&format_rfc3339(secs)), Some(secs));
        }
    }

    #[test]
    fn nanosecond_stamps_parse_and_sort() {
        let a = now_rfc3339_nanos();
        let b = now_rfc3339_nanos();
        assert!(a <= b);
        assert!(parse_rfc3339(&a).is_some(), "{a}");
    }

    #[test]
    fn ages_read_like_docker() {
        assert_eq!(ago(0, 30), "Less than a minute ago");
        assert_eq!(ago(0, 7200), "2 hours ago");
        assert_eq!(ago(0, 86_400), "1 day ago");
    }
}
