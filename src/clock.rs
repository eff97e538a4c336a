//! Wall-clock formatting for log lines (RFC 3339) and the HTTP `Date`
//! header (IMF-fixdate), both in UTC, without a date-time crate.

use std::time::{SystemTime, UNIX_EPOCH};

const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A broken-down UTC time.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u64,
    minute: u64,
    second: u64,
    weekday: usize,
}

fn now_parts() -> (u64, u32) {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (since.as_secs(), since.subsec_millis())
}

/// Converts seconds since the Unix epoch to a civil date, using Howard
/// Hinnant's `civil_from_days` algorithm for the proleptic Gregorian calendar.
fn civil(secs: u64) -> Civil {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        hour: rem / 3_600,
        minute: rem % 3_600 / 60,
        second: rem % 60,
        weekday: (days.rem_euclid(7)) as usize,
    }
}

/// Formats the current time as `2026-12-04T17:00:00.123Z`.
pub fn rfc3339_now() -> String {
    let mut text = String::with_capacity(24);
    push_rfc3339(&mut text);
    text
}

/// Appends the current time as `2026-12-04T17:00:00.123Z`. Each thread
/// formats it once per millisecond.
pub fn push_rfc3339(out: &mut String) {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, u32, String)> =
            const { std::cell::RefCell::new((u64::MAX, 0, String::new())) };
    }
    let (secs, millis) = now_parts();
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != secs || cache.1 != millis {
            *cache = (secs, millis, format_rfc3339(secs, millis));
        }
        out.push_str(&cache.2);
    })
}

fn format_rfc3339(secs: u64, millis: u32) -> String {
    let c = civil(secs);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second, millis
    )
}

/// Appends the current time as `Fri, 04 Dec 2026 17:00:00 GMT`. Each
/// thread formats it once per second.
pub fn push_http_date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let secs = now_parts().0;
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != secs {
            *cache = (secs, format_http_date(secs));
        }
        out.extend_from_slice(cache.1.as_bytes());
    });
}

fn format_http_date(secs: u64) -> String {
    let c = civil(secs);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[c.weekday],
        c.day,
        MONTHS[c.month as usize - 1],
        c.year,
        c.hour,
        c.minute,
        c.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_epoch_and_leap_day() {
        assert_eq!(format_rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339(951_782_400 + 3_661, 7),
            "2000-02-29T01:01:01.007Z"
        );
    }

    #[test]
    fn http_date_known_values() {
        assert_eq!(format_http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            format_http_date(1_796_403_600),
            "Fri, 04 Dec 2026 17:00:00 GMT"
        );
    }
}
