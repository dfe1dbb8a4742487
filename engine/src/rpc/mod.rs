//! The control plane of the cluster runtime: identifiers ([`ids`]), the typed messages between
//! the JobManager and its TaskManagers ([`messages`]) and their framing on a TCP connection
//! ([`frame`]). It runs on tokio threads of its own in each process, never on a slot core.

pub mod frame;
pub mod ids;
pub mod messages;
