//! Shared helpers of the end-to-end tests: clusters of a given size and reference results.

use corestream::{ClusterConfig, LocalCluster};

/// A local cluster with `slots` slots (more than the machine's cores is allowed).
pub fn cluster(slots: u32) -> LocalCluster {
    LocalCluster::start(ClusterConfig { slots: Some(slots), ..Default::default() }).expect("cluster starts")
}
