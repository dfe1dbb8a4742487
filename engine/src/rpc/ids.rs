//! Identifiers of the cluster runtime: jobs, TaskManagers and deployments. Job and TaskManager
//! ids are 16 random bytes printed as 32 lowercase hex digits, like Flink's `JobID` and
//! `ResourceID`, so they stay unique across JobManager restarts and clusters.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// An id that is not 32 hex digits.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("'{given}' is not a valid {what}: expected 32 hexadecimal digits")]
pub struct IdError {
    pub what: &'static str,
    pub given: String,
}

fn random_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    // The kernel's random source failing is not something a process can recover from.
    getrandom::fill(&mut b).expect("the kernel's random number generator is unavailable");
    b
}

fn to_hex(bytes: &[u8; 16], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

fn from_hex(s: &str, what: &'static str) -> Result<[u8; 16], IdError> {
    let err = || IdError { what, given: s.chars().take(64).collect() };
    if s.len() != 32 || !s.is_ascii() {
        return Err(err());
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| err())?;
    }
    Ok(out)
}

macro_rules! hex_id {
    ($name:ident, $what:literal) => {
        #[doc = concat!("A ", $what, ": 16 random bytes, printed as 32 hex digits.")]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// A new random id.
            pub fn random() -> Self {
                Self(random_bytes())
            }

            /// The first 8 hex digits, for log lines and names.
            pub fn short(&self) -> String {
                self.to_string()[..8].to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                to_hex(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                to_hex(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                from_hex(s, $what).map(Self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_id!(JobId, "job id");
hex_id!(TaskManagerId, "TaskManager id");
hex_id!(TriggerId, "savepoint request id");

/// One deployment of one job attempt: every attempt (a restart too) gets a new key, so frames
/// and reports of an earlier attempt can never be taken for the current one's.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeploymentKey(pub u64);

impl DeploymentKey {
    /// A random key, never 0 (reserved on the data connections for connection-level frames).
    pub fn random() -> Self {
        loop {
            let b = random_bytes();
            let key = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
            if key != 0 {
                return Self(key);
            }
        }
    }
}

impl fmt::Display for DeploymentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for DeploymentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_text_and_json() {
        let id = JobId::random();
        assert_eq!(id.to_string().len(), 32);
        assert_eq!(id.to_string().parse::<JobId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<JobId>(&json).unwrap(), id);
        assert_ne!(JobId::random(), id);
    }

    #[test]
    fn bad_ids_name_what_was_wrong() {
        for bad in [
            "",
            "abc",
            "zz000000000000000000000000000000",
            "00000000000000000000000000000000ff",
            "é0000000000000000000000000000000",
        ] {
            let e = bad.parse::<JobId>().unwrap_err();
            assert!(e.to_string().contains("job id"), "{e}");
        }
        assert!(serde_json::from_str::<TaskManagerId>("\"nope\"").unwrap_err().to_string().contains("TaskManager id"));
    }
}
