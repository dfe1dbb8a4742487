//! The configuration of the cluster processes (`corestream jobmanager|taskmanager --config
//! FILE`): a TOML file whose keys are Flink's names where Flink has the setting, environment
//! variables that override it, and command-line overrides, loaded into the typed
//! [`ClusterSettings`].
//!
//! Dotted keys and tables are the same (`jobmanager.rpc.port = 6123` or `[jobmanager.rpc]`
//! `port = 6123`): the document is flattened into dotted keys and each is checked against one
//! table of known keys (`keys`) that gives its type, bounds, default and description. An
//! unknown key is refused with the nearest known one suggested; a value of the wrong type or
//! out of bounds is refused naming the key, where it came from (file and line, environment
//! variable, override), what was given and what was expected. Durations and sizes need a unit
//! (`"10 s"`, `"1 MiB"`). The precedence is defaults < file < `CORESTREAM_CONF_<KEY>`
//! variables < [`ClusterSettings::set`]; each layer is applied whole or not at all. The
//! reference in `docs/CONFIGURATION.md` is rendered from the same table (`reference`).
//!
//! Loading reads the configuration file and nothing else: the environment is an argument, the
//! secret file is read by [`crate::auth::ClusterSecret::from_settings`].

mod error;
pub(crate) mod keys;
mod load;
pub mod reference;
mod settings;
pub mod value;

pub use error::{ConfError, Origin};
pub use keys::env_var_name;
pub use load::CONFIG_FILE_BYTES_MAX;
pub use settings::{
    CheckpointSettings, ClusterSettings, ExponentialDelaySettings, FailureRateSettings, FixedDelaySettings,
    HeartbeatSettings, JobManagerSettings, NetworkSettings, RestApiSettings, RestartSettings, RestartStrategyType,
    SecuritySettings, SlotSettings, TaskManagerSettings,
};

/// Prefix of the environment variables that set keys.
pub const ENV_PREFIX: &str = "CORESTREAM_CONF_";

/// Which process loads the configuration; each needs different keys to be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    JobManager,
    TaskManager,
    /// A command-line client of the REST API; it needs no secret from the configuration.
    Client,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::JobManager => "JobManager",
            Role::TaskManager => "TaskManager",
            Role::Client => "client",
        })
    }
}

/// Why a listener of a cluster process could not bind `address`, naming the keys that set it
/// and what to do: another port when it is taken, a local address when the host is not one.
pub fn listen_error(
    what: &str,
    address: std::net::SocketAddr,
    host_key: &str,
    port_key: &str,
    error: &std::io::Error,
) -> String {
    use std::io::ErrorKind;
    let port = address.port();
    match error.kind() {
        ErrorKind::AddrInUse => format!(
            "cannot listen for {what} on {address}: port {port} is already in use by another process; stop that \
             process or set another port with `{port_key}`"
        ),
        ErrorKind::AddrNotAvailable => format!(
            "cannot listen for {what} on {address}: {} is not an address of this machine; set `{host_key}` to one \
             of its addresses (or 0.0.0.0 for all of them)",
            address.ip()
        ),
        ErrorKind::PermissionDenied => format!(
            "cannot listen for {what} on {address}: permission denied (a port below 1024 needs privileges); set \
             `{port_key}` to a port above 1023"
        ),
        _ => format!("cannot listen for {what} on {address} (`{host_key}`, `{port_key}`): {error}"),
    }
}

#[cfg(test)]
mod tests;
