//! Helpers shared by the CLI tests: running the `corestream` binary under a watchdog (a hung
//! job fails its test instead of blocking the suite), in a process group with its TaskManagers
//! ([`group`]), and reading the flat JSON reports of the bench commands.

#![allow(dead_code)] // each test file uses part of this module

pub mod group;
pub mod measured;
pub mod netns;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `corestream` with `args`; kills it and fails the test if it has not ended within
/// `limit`. Its output is read while it runs, so large outputs cannot fill the pipes.
pub fn run_corestream<S: AsRef<OsStr>>(args: &[S], limit: Duration) -> Output {
    run_corestream_with_env(args, &[], limit)
}

/// [`run_corestream`] with the variables `env` added to its environment.
pub fn run_corestream_with_env<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &OsStr)], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_corestream"))
        .args(args)
        .env("CORESTREAM_LOG", "off")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the corestream binary");
    let collect = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).expect("cannot read the output of corestream");
            bytes
        })
    };
    let stdout = collect(Box::new(child.stdout.take().unwrap()));
    let stderr = collect(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let shown: Vec<String> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
            panic!("`corestream {}` did not end within {limit:?}: the job hangs", shown.join(" "));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

/// The names in `dir`, sorted: what a run left behind.
pub fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// A value of a flat JSON report.
#[derive(Debug, PartialEq)]
pub enum Value {
    Number(f64),
    Str(String),
    Null,
}

/// Parses a flat JSON object whose values are numbers, strings without escapes or null.
pub fn parse_flat_object(text: &str) -> Result<HashMap<String, Value>, String> {
    let body = text
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or("not an object: must start with '{' and end with '}'")?;
    let mut fields = HashMap::new();
    for member in body.split(',') {
        let (key, value) = member.split_once(':').ok_or_else(|| format!("member without ':': {member}"))?;
        let key = key.trim();
        let key = key
            .strip_prefix('"')
            .and_then(|k| k.strip_suffix('"'))
            .ok_or_else(|| format!("key is not a string: {key}"))?;
        let value = value.trim();
        let value = if value == "null" {
            Value::Null
        } else if let Some(s) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Value::Str(s.to_string())
        } else {
            let n: f64 = value.parse().map_err(|_| format!("value of '{key}' is not a number: {value}"))?;
            if !n.is_finite() {
                return Err(format!("value of '{key}' is not finite: {value}"));
            }
            Value::Number(n)
        };
        if fields.insert(key.to_string(), value).is_some() {
            return Err(format!("duplicate key '{key}'"));
        }
    }
    Ok(fields)
}

/// The number at `key`; fails the test if it is missing or not a number.
pub fn number(fields: &HashMap<String, Value>, key: &str) -> f64 {
    match fields.get(key) {
        Some(Value::Number(n)) => *n,
        other => panic!("'{key}' should be a number, is {other:?}"),
    }
}

/// Standard base64 (with padding), as the interval log encodes histograms.
pub fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    } as u32;
    let mut out = Vec::new();
    for chunk in s.trim_end_matches('=').as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}
