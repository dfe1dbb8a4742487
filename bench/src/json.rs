//! Flat JSON reports: the benchmarks write one JSON object of numbers, strings and nulls per
//! run (`--json`), serialized by serde_json from `#[derive(Serialize)]` structs. A report that
//! holds the same figures for several parts (each transport variant, the crossing and local
//! halves of a latency run) keeps the object flat by prefixing each part's field names
//! ([`Prefixed`]) instead of nesting objects, so that every figure stays one key.

use serde::ser::{Error as _, SerializeMap};
use serde::{Serialize, Serializer};

/// The fields of each value under its prefix, for `#[serde(flatten)]`: a part `("plain_",
/// {"gbps": 2.0})` becomes `"plain_gbps": 2.0` in the enclosing object. Each value must
/// serialize as an object.
#[derive(Debug, Clone)]
pub struct Prefixed<T>(pub Vec<(String, T)>);

impl<T: Serialize> Serialize for Prefixed<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (prefix, value) in &self.0 {
            match serde_json::to_value(value).map_err(S::Error::custom)? {
                serde_json::Value::Object(fields) => {
                    for (name, v) in fields {
                        map.serialize_entry(&format!("{prefix}{name}"), &v)?;
                    }
                }
                other => return Err(S::Error::custom(format!("part '{prefix}' is not an object: {other}"))),
            }
        }
        map.end()
    }
}

/// `value` as one line of JSON (a report file's contents).
pub fn to_line<T: Serialize>(value: &T) -> serde_json::Result<String> {
    let mut line = serde_json::to_string(value)?;
    line.push('\n');
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Part {
        gbps: Option<f64>,
        status: &'static str,
    }

    #[derive(Serialize)]
    struct Report {
        rounds: u32,
        #[serde(flatten)]
        parts: Prefixed<Part>,
    }

    #[test]
    fn prefixed_parts_stay_flat() {
        let report = Report {
            rounds: 3,
            parts: Prefixed(vec![
                ("plain_".into(), Part { gbps: Some(2.5), status: "ok" }),
                ("zc_".into(), Part { gbps: None, status: "unsupported" }),
            ]),
        };
        let v: serde_json::Value = serde_json::from_str(&to_line(&report).unwrap()).unwrap();
        assert_eq!(v["rounds"], 3);
        assert_eq!(v["plain_gbps"], 2.5);
        assert_eq!(v["plain_status"], "ok");
        assert!(v["zc_gbps"].is_null());
        assert_eq!(v["zc_status"], "unsupported");
        assert_eq!(v.as_object().unwrap().len(), 5);
    }
}
