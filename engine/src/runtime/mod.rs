//! The slot runtime: a [`cluster::LocalCluster`] (JobManager and one TaskManager in this
//! process, `mini`) checks the machine at start-up ([`startup`]), places slots on cores
//! ([`topology`]), and runs each job's subtasks as cooperative tasks on the slots' glommio
//! executors ([`slot`], [`task`]). A chain's records leave the task through
//! the network output ([`output`]) into the credit-based channels of `corestream-netstack`; channels
//! whose other end runs in another TaskManager process cross the one connection to that
//! TaskManager, kept by the process's network executor (`network`), where each job's links
//! are supervised (`links`).

pub mod build;
pub mod cluster;
pub mod job;
pub(crate) mod links;
pub mod metrics;
pub(crate) mod mini;
pub(crate) mod network;
pub mod output;
pub mod slot;
pub mod startup;
pub mod task;
pub mod topology;
