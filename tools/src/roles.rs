//! `corestream jobmanager` and `corestream taskmanager`: this binary as one role of a cluster,
//! running until SIGINT or SIGTERM. The TaskManager registers the job types of [`crate::jobs`];
//! an application that links corestream registers its own and runs the same roles.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use corestream::jobmanager::{JobManager, JobManagerSettings};
use corestream::taskmanager::{TaskManager, TaskManagerSettings};
use corestream::ClusterConfig;

#[derive(Args, Debug)]
pub struct JobManagerArgs {
    /// Address TaskManagers connect to (jobmanager.rpc.address:jobmanager.rpc.port).
    #[arg(long, default_value = "127.0.0.1:6123", value_name = "IP:PORT")]
    pub rpc_bind: SocketAddr,
    /// How long a TaskManager may stay silent before it is removed with its slots.
    #[arg(long, value_parser = crate::args::parse_positive_duration, default_value = "50s")]
    pub heartbeat_timeout: Duration,
}

#[derive(Args, Debug)]
pub struct TaskManagerArgs {
    /// The JobManager's control address.
    #[arg(long, default_value = "127.0.0.1:6123", value_name = "HOST:PORT")]
    pub jobmanager: String,
    /// Slots (default: one per physical core).
    #[arg(long, value_parser = crate::args::parse_slots)]
    pub slots: Option<u32>,
    /// Address the data listener binds (port 0: any).
    #[arg(long, default_value = "0.0.0.0:0", value_name = "IP:PORT")]
    pub data_bind: SocketAddr,
    /// Slot i is pinned to core `core-offset + i`, so TaskManagers sharing a machine take
    /// different cores.
    #[arg(long, default_value_t = 0)]
    pub core_offset: u32,
    /// How long a data connection to another TaskManager may stay silent.
    #[arg(long, value_parser = crate::args::parse_positive_duration, default_value = "10s")]
    pub heartbeat_timeout: Duration,
    /// 32 KB buffers in the pool (default: sized from the slots).
    #[arg(long)]
    pub network_buffers: Option<u32>,
}

/// Waits for SIGINT or SIGTERM.
fn wait_for_signal() -> anyhow::Result<i32> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
        .context("cannot install signal handlers")?;
    Ok(signals.forever().next().unwrap_or(signal_hook::consts::SIGTERM))
}

pub fn jobmanager(args: JobManagerArgs) -> anyhow::Result<()> {
    let settings = JobManagerSettings {
        rpc_bind: args.rpc_bind,
        heartbeat_interval: (args.heartbeat_timeout / 5).max(Duration::from_millis(10)),
        heartbeat_timeout: args.heartbeat_timeout,
        ..Default::default()
    };
    let jm = JobManager::start(settings, crate::jobs::registry())?;
    println!("jobmanager: listening for TaskManagers on {}", jm.rpc_address());
    let signal = wait_for_signal()?;
    tracing::info!(signal, "JobManager stopping");
    jm.shutdown();
    Ok(())
}

pub fn taskmanager(args: TaskManagerArgs) -> anyhow::Result<()> {
    let settings = TaskManagerSettings {
        jobmanager: args.jobmanager,
        cluster: ClusterConfig {
            slots: args.slots,
            core_offset: args.core_offset,
            network_buffers: args.network_buffers,
            net: corestream::NetConfig {
                heartbeat_timeout: args.heartbeat_timeout,
                heartbeat_interval: args.heartbeat_timeout / 5,
                ..Default::default()
            },
            ..Default::default()
        },
        data_bind: args.data_bind,
        ..Default::default()
    };
    let tm = TaskManager::start(settings, crate::jobs::registry())?;
    println!(
        "taskmanager {}: {} slot(s), data on {}",
        tm.id(),
        tm.num_slots(),
        tm.data_address().map_or_else(|| "-".into(), |a| a.to_string())
    );
    let signal = wait_for_signal()?;
    tracing::info!(signal, "TaskManager stopping");
    tm.shutdown();
    Ok(())
}
