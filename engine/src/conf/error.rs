//! What can be wrong with a configuration, and where it came from: each error names the key,
//! its origin (file and line, environment variable, or override), what was given and what was
//! expected. A secret's value is never part of an error.

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

use super::Role;

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A TOML document: its file (`None` for text given directly) and the value's line.
    File { path: Option<PathBuf>, line: Option<usize> },
    /// An environment variable.
    Env { var: String },
    /// [`ClusterSettings::set`](super::ClusterSettings::set) (command-line options).
    Override,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path: Some(p), line: Some(l) } => write!(f, "{}:{l}", p.display()),
            Origin::File { path: Some(p), line: None } => write!(f, "{}", p.display()),
            Origin::File { path: None, line: Some(l) } => write!(f, "configuration text, line {l}"),
            Origin::File { path: None, line: None } => f.write_str("configuration text"),
            Origin::Env { var } => write!(f, "environment variable {var}"),
            Origin::Override => f.write_str("command-line override"),
        }
    }
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    suggestion.as_ref().map(|s| format!(": did you mean {s}?")).unwrap_or_default()
}

/// A configuration that cannot be used.
#[derive(Debug, Error)]
pub enum ConfError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the configuration file {path} is larger than the limit of {max} bytes")]
    FileTooLarge { path: PathBuf, max: u64 },
    #[error("{origin}: not valid TOML: {message}")]
    Syntax { origin: Origin, message: String },
    #[error("{origin}: unknown key `{key}`{}", did_you_mean(suggestion))]
    UnknownKey { origin: Origin, key: String, suggestion: Option<String> },
    #[error(
        "{origin}: unknown configuration variable (every CORESTREAM_CONF_* variable must name a key){}",
        did_you_mean(suggestion)
    )]
    UnknownVariable { origin: Origin, suggestion: Option<String> },
    #[error("{origin}: invalid value for `{key}`: got {given}, expected {expected}")]
    InvalidValue { origin: Origin, key: &'static str, given: String, expected: String },
    #[error("{origin}: `{key}` is given twice (first at {first})")]
    Duplicate { origin: Origin, key: String, first: Origin },
    #[error(
        "{origin}: `security.cluster.secret` and `security.cluster.secret-file` are both set: set one (a later \
         source, e.g. an environment variable over the file, replaces the other)"
    )]
    TwoSecrets { origin: Origin },
    #[error("{reason}")]
    Inconsistent { keys: Vec<&'static str>, reason: String },
    #[error(
        "the {role} needs the cluster secret because `security.auth.enabled` is true, and none is configured: \
         set `security.cluster.secret-file = \"/path/to/secret\"` in the configuration file (or the environment \
         variable CORESTREAM_CONF_SECURITY_CLUSTER_SECRET, or `security.cluster.secret`) to the same secret on \
         every JobManager, TaskManager and client of the cluster (create one with `openssl rand -hex 32`), or \
         set `security.auth.enabled = false` to run without authentication"
    )]
    MissingSecret { role: Role },
}
