//! End-to-end tests of `corestream bench transport`: a 64 MiB run writes one flat JSON object
//! with a positive figure for plain send/recv and, for every other variant, either a positive
//! figure or the mark "unsupported"; a size of zero exits 2. A watchdog kills a run that has
//! not ended after [`HANG_LIMIT`].

mod common;

use std::time::Duration;

use common::{number, parse_flat_object, Value};

const HANG_LIMIT: Duration = Duration::from_secs(60);
const VARIANTS: [&str; 5] = ["plain", "uring", "send_zc", "send_zc_fixed", "multishot"];

#[test]
fn a_64_mib_run_reports_every_variant() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("t.json");
    let out =
        common::run_corestream(&["bench", "transport", "--bytes", "64M", "--json", json.to_str().unwrap()], HANG_LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("median GB/s"), "{stdout}");

    let fields = parse_flat_object(&std::fs::read_to_string(&json).unwrap()).expect("valid JSON");
    assert_eq!(number(&fields, "rounds"), 3.0);
    assert_eq!(number(&fields, "bytes_per_run"), (64u64 << 20) as f64);
    assert_eq!(fields["plain_status"], Value::Str("ok".to_string()));
    assert!(number(&fields, "plain_gbps") > 0.0);
    for v in VARIANTS {
        match &fields[&format!("{v}_status")] {
            Value::Str(s) if s == "ok" => assert!(number(&fields, &format!("{v}_gbps")) > 0.0, "{v}"),
            Value::Str(s) if s == "unsupported" => {
                assert_eq!(fields[&format!("{v}_gbps")], Value::Null, "{v}");
                assert!(stdout.contains("not supported by this kernel"), "{stdout}");
            }
            other => panic!("{v}_status is {other:?}"),
        }
    }
}

#[test]
fn zero_bytes_exits_2() {
    let out = common::run_corestream(&["bench", "transport", "--bytes", "0"], HANG_LIMIT);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 1 byte"));
}
