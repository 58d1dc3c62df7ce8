//! How long a provider asked us to wait, read from its response headers.
//!
//! In order of precedence (the first that parses wins):
//!
//! 1. `retry-after-ms`: milliseconds (sent by Anthropic and OpenAI next to `retry-after`);
//! 2. `retry-after`: seconds (an integer, or a decimal) or an HTTP date;
//! 3. the rate-limit reset headers of the limits that are exhausted (`remaining` is 0):
//!    Anthropic `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-reset`
//!    (RFC 3339 times) and OpenAI `x-ratelimit-reset-{requests,tokens}` (durations such as
//!    `6m0s`, `1.5s`, `20ms`); the latest reset wins, since every exhausted limit must
//!    have recovered before a retry can succeed.
//!
//! Pure: the current time is a parameter, so tests do not depend on the clock.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use agentic_llm::retry_hint::retry_after;
//!
//! let headers = [("x-ratelimit-remaining-tokens", "0"), ("x-ratelimit-reset-tokens", "6m0s")];
//! assert_eq!(retry_after(headers, SystemTime::now()), Some(Duration::from_secs(360)));
//! assert_eq!(retry_after([("Retry-After", "2")], SystemTime::now()), Some(Duration::from_secs(2)));
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The wait the headers ask for, if any (see the [module docs](self)). Header names are
/// matched case-insensitively.
pub fn retry_after<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    now: SystemTime,
) -> Option<Duration> {
    let headers: Vec<(String, &str)> = headers
        .into_iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim()))
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| *value)
    };
    if let Some(ms) = get("retry-after-ms").and_then(parse_seconds) {
        return Some(ms / 1000);
    }
    if let Some(value) = get("retry-after") {
        if let Some(wait) = parse_seconds(value) {
            return Some(wait);
        }
        if let Some(at) = parse_http_date(value) {
            return Some(at.duration_since(now).unwrap_or_default());
        }
    }
    let exhausted = |limit: &str, prefix: &str| {
        get(&format!("{prefix}remaining-{limit}"))
            .or_else(|| get(&format!("{prefix}{limit}-remaining")))
            .is_some_and(|v| v.parse::<f64>().is_ok_and(|n| n <= 0.0))
    };
    let mut latest: Option<Duration> = None;
    let mut consider = |wait: Duration| {
        latest = Some(latest.map_or(wait, |l| l.max(wait)));
    };
    for limit in ["requests", "tokens", "input-tokens", "output-tokens"] {
        if exhausted(limit, "anthropic-ratelimit-") {
            let reset = get(&format!("anthropic-ratelimit-{limit}-reset"));
            if let Some(at) = reset.and_then(parse_rfc3339) {
                consider(at.duration_since(now).unwrap_or_default());
            }
        }
        if exhausted(limit, "x-ratelimit-") {
            let reset = get(&format!("x-ratelimit-reset-{limit}"));
            if let Some(wait) = reset.and_then(parse_go_duration) {
                consider(wait);
            }
        }
    }
    latest
}

/// A non-negative number of seconds (`"2"`, `"1.5"`).
pub fn parse_seconds(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().parse().ok()?;
    if seconds.is_finite() && seconds >= 0.0 {
        Duration::try_from_secs_f64(seconds).ok()
    } else {
        None
    }
}

/// A Go-style duration as OpenAI sends in `x-ratelimit-reset-*`: a sequence of numbers with
/// units `h`, `m`, `s`, `ms`, `us`/`µs`, `ns` (`"6m0s"`, `"1.5s"`, `"20ms"`, `"1h2m3.5s"`).
pub fn parse_go_duration(value: &str) -> Option<Duration> {
    let mut rest = value.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// An HTTP date in the preferred IMF-fixdate form (`Sun, 06 Nov 1994 08:49:37 GMT`). The two
/// obsolete forms of RFC 9110 are not accepted: no provider sends them.
pub fn parse_http_date(value: &str) -> Option<SystemTime> {
    let value = value.trim();
    let (_weekday, rest) = value.split_once(", ")?;
    let mut parts = rest.split(' ');
    let day: u32 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let (hour, minute, second) = parse_hms(parts.next()?)?;
    if parts.next()? != "GMT" || parts.next().is_some() {
        return None;
    }
    civil_to_system_time(year, month, day, hour, minute, second, 0.0, 0)
}

/// An RFC 3339 timestamp (`2025-10-30T16:17:36Z`, `2025-10-30T16:17:36.5+02:00`).
pub fn parse_rfc3339(value: &str) -> Option<SystemTime> {
    let value = value.trim();
    let (date, time) = value.split_once(['T', 't', ' '])?;
    let mut date_parts = date.split('-');
    let year: i64 = date_parts.next()?.parse().ok()?;
    let month: u32 = date_parts.next()?.parse().ok()?;
    let day: u32 = date_parts.next()?.parse().ok()?;
    if date_parts.next().is_some() {
        return None;
    }
    let (clock, offset_seconds) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
        (clock, 0)
    } else {
        let sign_at = time.rfind(['+', '-'])?;
        let (clock, offset) = time.split_at(sign_at);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let (oh, om) = offset[1..].split_once(':')?;
        let oh: i64 = oh.parse().ok()?;
        let om: i64 = om.parse().ok()?;
        (clock, sign * (oh * 3600 + om * 60))
    };
    let (whole, fraction) = match clock.split_once('.') {
        Some((whole, fraction)) => (whole, format!("0.{fraction}").parse::<f64>().ok()?),
        None => (clock, 0.0),
    };
    let (hour, minute, second) = parse_hms(whole)?;
    civil_to_system_time(
        year,
        month,
        day,
        hour,
        minute,
        second,
        fraction,
        offset_seconds,
    )
}

fn parse_hms(value: &str) -> Option<(u32, u32, u32)> {
    let mut parts = value.split(':');
    let hour = parts.next()?.parse().ok()?;
    let minute = parts.next()?.parse().ok()?;
    let second = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((hour, minute, second))
}

#[allow(clippy::too_many_arguments)]
fn civil_to_system_time(
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    fraction: f64,
    offset_seconds: i64,
) -> Option<SystemTime> {
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // 60 allows a leap second.
    if second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_seconds;
    let seconds = u64::try_from(seconds).ok()?;
    UNIX_EPOCH
        .checked_add(Duration::from_secs(seconds))?
        .checked_add(Duration::try_from_secs_f64(fraction).ok()?)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn dates_convert_to_unix_time() {
        // 1994-11-06T08:49:37Z is the example date of RFC 9110.
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(at(784_111_777))
        );
        assert_eq!(parse_rfc3339("1994-11-06T08:49:37Z"), Some(at(784_111_777)));
        assert_eq!(
            parse_rfc3339("1994-11-06T10:49:37+02:00"),
            Some(at(784_111_777))
        );
        assert_eq!(
            parse_rfc3339("1994-11-06T08:49:37.25Z"),
            Some(at(784_111_777) + Duration::from_millis(250))
        );
        assert_eq!(
            parse_rfc3339("2025-10-30T16:17:36Z"),
            Some(at(1_761_841_056))
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(at(951_782_400)));
        assert_eq!(parse_http_date("not a date"), None);
        assert_eq!(parse_rfc3339("2025-13-01T00:00:00Z"), None);
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(parse_go_duration("0s"), Some(Duration::ZERO));
        assert_eq!(
            parse_go_duration("1h2m3.5s"),
            Some(Duration::from_millis(3_723_500))
        );
        assert_eq!(parse_go_duration("250us"), Some(Duration::from_micros(250)));
        assert_eq!(parse_go_duration(""), None);
        assert_eq!(parse_go_duration("5 minutes"), None);
        assert_eq!(parse_go_duration("s"), None);
    }

    #[test]
    fn precedence_and_exhausted_limits() {
        let now = at(1_761_841_000);
        assert_eq!(
            retry_after([("retry-after-ms", "1500"), ("retry-after", "30")], now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after([("Retry-After", "Thu, 30 Oct 2025 16:17:36 GMT")], now),
            Some(Duration::from_secs(56))
        );
        // A date in the past means "now".
        assert_eq!(
            retry_after([("retry-after", "Thu, 30 Oct 2025 16:00:00 GMT")], now),
            Some(Duration::ZERO)
        );
        // Resets of limits that are not exhausted say nothing about when to retry.
        let not_exhausted = [
            ("anthropic-ratelimit-requests-remaining", "3997"),
            ("anthropic-ratelimit-requests-reset", "2025-10-30T16:17:35Z"),
        ];
        assert_eq!(retry_after(not_exhausted, now), None);
        let exhausted = [
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2025-10-30T16:17:35Z"),
            ("anthropic-ratelimit-tokens-remaining", "0"),
            ("anthropic-ratelimit-tokens-reset", "2025-10-30T16:17:40Z"),
        ];
        assert_eq!(retry_after(exhausted, now), Some(Duration::from_secs(60)));
        let openai = [
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "20ms"),
            ("x-ratelimit-remaining-tokens", "12"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ];
        assert_eq!(retry_after(openai, now), Some(Duration::from_millis(20)));
        assert_eq!(retry_after([("retry-after", "-1")], now), None);
    }
}
