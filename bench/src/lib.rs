//! Benchmark and example jobs of corestream, shared by the `corestream` command-line program,
//! the end-to-end tests and the figures in the closing notes. Every job here is built on an
//! embedded [`corestream::LocalCluster`]; the registry ([`examples::EXAMPLES`]) names the jobs
//! that `corestream plan` and `corestream run` know.

pub mod checksum;
pub mod corpus;
pub mod exact;
pub mod examples;
pub mod json;
pub mod latency;
pub mod network;
pub mod nexmark;
pub mod session;
pub mod throughput;
pub mod transport;
pub mod window_agg;
pub mod window_model;
