//! The text forms of configuration values: durations ("10 s", "500ms", "1 min"), sizes
//! ("1 MiB", "64kb"), host names and addresses. Each parser returns the canonical value or a
//! sentence saying what was expected; each formatter writes the form its parser reads back
//! (`parse(format(v)) == v`), which the reference and the effective settings print.

use std::net::IpAddr;
use std::time::Duration;

/// Duration units, longest name first within a unit so that "min" is not read as "m"+"in".
const DURATION_UNITS: &[(&[&str], u128)] = &[
    (&["d", "day", "days"], 86_400_000_000_000),
    (&["h", "hour", "hours"], 3_600_000_000_000),
    (&["min", "mins", "minute", "minutes", "m"], 60_000_000_000),
    (&["s", "sec", "secs", "second", "seconds"], 1_000_000_000),
    (&["ms", "milli", "millis", "millisecond", "milliseconds"], 1_000_000),
    (&["us", "µs", "micro", "micros", "microsecond", "microseconds"], 1_000),
    (&["ns", "nano", "nanos", "nanosecond", "nanoseconds"], 1),
];

/// Size units; all binary, as in Flink (`1 kb` = 1024 bytes).
const SIZE_UNITS: &[(&[&str], u64)] = &[
    (&["b", "bytes"], 1),
    (&["k", "kb", "kib", "kibibytes"], 1 << 10),
    (&["m", "mb", "mib", "mebibytes"], 1 << 20),
    (&["g", "gb", "gib", "gibibytes"], 1 << 30),
    (&["t", "tb", "tib", "tebibytes"], 1 << 40),
];

pub(crate) const DURATION_HINT: &str =
    "a duration: an integer and a unit, e.g. \"10 s\", \"500ms\", \"1 min\", \"1h\" \
     (units: ns, us, ms, s, min, h, d)";
pub(crate) const SIZE_HINT: &str =
    "a size: an integer and a unit, e.g. \"1 MiB\", \"64kb\", \"512 b\" (units: b, kb/KiB, mb/MiB, gb/GiB, tb/TiB; \
     all binary: 1 kb = 1024 bytes)";

/// Splits "10 s" / "500ms" into (10, "ms"): digits first, optional blanks, then the unit.
fn split_number(text: &str) -> Option<(u128, &str)> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits == 0 || digits > 30 {
        return None;
    }
    let number = t[..digits].parse::<u128>().ok()?;
    Some((number, t[digits..].trim_start()))
}

/// Reads a duration with a unit. A bare number is refused: the message asks for a unit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = split_number(text).ok_or_else(|| format!("expected {DURATION_HINT}"))?;
    if unit.is_empty() {
        return Err(format!("a duration needs a unit: write e.g. \"{number} s\" or \"{number} ms\""));
    }
    if unit.starts_with(['.', ',']) {
        return Err(format!("a duration is a whole number of a unit: write e.g. \"1500 ms\", not \"{}\"", text.trim()));
    }
    let lower = unit.to_lowercase();
    let nanos_per = DURATION_UNITS
        .iter()
        .find(|(names, _)| names.contains(&lower.as_str()))
        .map(|(_, n)| *n)
        .ok_or_else(|| format!("unknown duration unit \"{unit}\": expected {DURATION_HINT}"))?;
    let nanos = number.checked_mul(nanos_per).filter(|n| *n <= u64::MAX as u128 * 1_000_000_000);
    let nanos = nanos.ok_or_else(|| format!("\"{}\" is too long a duration", text.trim()))?;
    Ok(Duration::new((nanos / 1_000_000_000) as u64, (nanos % 1_000_000_000) as u32))
}

/// Writes a duration in the largest unit that divides it exactly ("10 s", "1 min", "0 ms").
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0 ms".into();
    }
    let units: [(&str, u128); 7] = [
        ("d", 86_400_000_000_000),
        ("h", 3_600_000_000_000),
        ("min", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ];
    let (name, per) = units.iter().find(|(_, per)| nanos.is_multiple_of(*per)).copied().unwrap_or(("ns", 1));
    format!("{} {name}", nanos / per)
}

/// Reads a size with a unit into bytes. A bare number is refused: the message asks for a unit.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) = split_number(text).ok_or_else(|| format!("expected {SIZE_HINT}"))?;
    if unit.is_empty() {
        return Err(format!("a size needs a unit: write e.g. \"{number} b\" or \"{number} KiB\""));
    }
    let lower = unit.to_lowercase();
    let per = SIZE_UNITS
        .iter()
        .find(|(names, _)| names.contains(&lower.as_str()))
        .map(|(_, n)| *n)
        .ok_or_else(|| format!("unknown size unit \"{unit}\": expected {SIZE_HINT}"))?;
    number
        .checked_mul(per as u128)
        .and_then(|b| u64::try_from(b).ok())
        .ok_or_else(|| format!("\"{}\" is too large a size", text.trim()))
}

/// Writes a size in the largest binary unit that divides it exactly ("1 MiB", "100 b").
pub fn format_size(bytes: u64) -> String {
    let units: [(&str, u64); 5] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("b", 1)];
    if bytes == 0 {
        return "0 b".into();
    }
    let (name, per) = units.iter().find(|(_, per)| bytes.is_multiple_of(*per)).copied().unwrap_or(("b", 1));
    format!("{} {name}", bytes / per)
}

/// Checks a host: an IPv4 or IPv6 address (without brackets) or a DNS name (RFC 1123: labels
/// of letters, digits and '-', neither first nor last, 1 to 63 characters; 253 in all).
pub fn check_host(text: &str) -> Result<(), String> {
    const EXPECTED: &str = "expected an IP address (\"127.0.0.1\", \"::1\") or a host name (\"jm.example.org\")";
    if text.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if text.is_empty() || text.len() > 253 {
        return Err(format!("{EXPECTED}; a host name has 1 to 253 characters"));
    }
    let name = text.strip_suffix('.').unwrap_or(text);
    for label in name.split('.') {
        let ok_chars = label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if label.is_empty() || label.len() > 63 || !ok_chars || label.starts_with('-') || label.ends_with('-') {
            return Err(format!("{EXPECTED}; \"{label}\" is not a valid label of a host name"));
        }
    }
    if name.rsplit('.').next().is_some_and(|top| top.bytes().all(|b| b.is_ascii_digit())) {
        return Err(format!("{EXPECTED}; it looks like an IPv4 address but is not one"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations_read_with_and_without_blank() {
        assert_eq!(parse_duration("10 s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1 min"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2 DAYS"), Ok(Duration::from_secs(2 * 86_400)));
        assert_eq!(parse_duration(" 3m "), Ok(Duration::from_secs(180)));
        assert_eq!(parse_duration("7us"), Ok(Duration::from_micros(7)));
        assert_eq!(parse_duration("0 ms"), Ok(Duration::ZERO));
    }

    #[test]
    fn durations_refuse_bare_numbers_and_junk() {
        let e = parse_duration("10").unwrap_err();
        assert!(e.contains("needs a unit") && e.contains("\"10 s\""), "{e}");
        assert!(parse_duration("10 fortnights").unwrap_err().contains("unknown duration unit \"fortnights\""));
        assert!(parse_duration("-1 s").is_err());
        assert!(parse_duration("1.5 s").unwrap_err().contains("whole number"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999999 d").unwrap_err().contains("too long"));
        assert!(parse_duration(&"9".repeat(40)).is_err());
    }

    #[test]
    fn sizes_are_binary() {
        assert_eq!(parse_size("1 MiB"), Ok(1 << 20));
        assert_eq!(parse_size("64kb"), Ok(64 << 10));
        assert_eq!(parse_size("100 mb"), Ok(100 << 20));
        assert_eq!(parse_size("7 b"), Ok(7));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("1048576").unwrap_err().contains("needs a unit"));
        assert!(parse_size("1 MB/s").unwrap_err().contains("unknown size unit"));
        assert!(parse_size("99999999999 TiB").unwrap_err().contains("too large"));
    }

    #[test]
    fn formats_pick_the_largest_exact_unit() {
        assert_eq!(format_duration(Duration::from_secs(10)), "10 s");
        assert_eq!(format_duration(Duration::from_secs(300)), "5 min");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1 h");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500 ms");
        assert_eq!(format_duration(Duration::ZERO), "0 ms");
        assert_eq!(format_size(1 << 20), "1 MiB");
        assert_eq!(format_size(1000), "1000 b");
        assert_eq!(format_size(0), "0 b");
    }

    #[test]
    fn hosts() {
        for ok in ["127.0.0.1", "::1", "fe80::1", "localhost", "jm-1.example.org", "example.org.", "a"] {
            assert_eq!(check_host(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-a.org", "a-.org", "a..b", "has space", "a_b", "[::1]", "256.1.1.1", "1.2.3", "é.org"] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
        assert!(check_host(&"a".repeat(64)).is_err());
        assert!(check_host(&["a"; 127].join(".")).is_ok(), "253 characters");
        assert!(check_host(&["a"; 128].join(".")).is_err(), "255 characters");
    }

    proptest! {
        #[test]
        fn durations_round_trip(nanos in 0u64..u64::MAX) {
            let d = Duration::from_nanos(nanos);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn sizes_round_trip(bytes in 0u64..u64::MAX) {
            prop_assert_eq!(parse_size(&format_size(bytes)), Ok(bytes));
        }
    }
}
