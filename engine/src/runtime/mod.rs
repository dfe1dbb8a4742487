//! The slot runtime: a [`cluster::LocalCluster`] (JobManager and one TaskManager in this
//! process) checks the machine at start-up ([`startup`]), places slots on cores
//! ([`topology`]), and runs each job's subtasks as cooperative tasks on the slots' glommio
//! executors ([`slot`], [`task`]). A chain's records leave the task through
//! the network output ([`output`]) into the credit-based channels of `corestream-netstack`; channels
//! whose other end runs in another TaskManager process cross a connection driven by
//! [`remote`] on the job's gateway slot.

pub mod build;
pub mod cluster;
pub mod job;
pub mod metrics;
pub mod output;
pub mod remote;
pub mod slot;
pub mod startup;
pub mod task;
pub mod topology;
