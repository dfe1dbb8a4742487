//! The TaskManager of an embedded cluster ([`crate::LocalCluster`]): the control loop of a
//! TaskManager process (slot reservations, deployments, task states, cancellation, part
//! outcomes, heartbeats), reached by a JobManager in the same process over a pair of bounded
//! channels that carry the same [`JmMessage`] and [`TmMessage`] values as a TCP connection —
//! no socket, no JSON, no challenge (both ends are this process, registered once by the
//! JobManager itself). When that JobManager goes away, or the cluster stops, it cancels every
//! deployment and waits until each has ended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::deployment::DeploymentEvent;
use super::{cancel_all, Control, Outbound, SessionEnd, Shared, TaskManagerConfig, TaskManagerStatus};
use crate::jobmanager::InProcessLink;
use crate::registry::JobRegistry;
use crate::rpc::frame::FrameError;
use crate::rpc::ids::TaskManagerId;
use crate::rpc::messages::JmMessage;
use crate::runtime::cluster::LocalCluster;

/// Messages from the JobManager waiting for the control loop, at most.
const INCOMING_MAX: usize = 256;
/// Deployment events waiting for the control loop, at most (as in a TaskManager process).
const EVENTS_MAX: usize = 1024;

/// How the JobManager of this process reaches its TaskManager.
pub(crate) struct InProcessSettings {
    pub id: TaskManagerId,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
}

/// Runs the TaskManager's control loop over `link` until `shutdown` is set or the JobManager
/// drops its end; then cancels every deployment and waits for them.
pub(crate) async fn run_in_process(
    settings: InProcessSettings,
    cluster: LocalCluster,
    registry: JobRegistry,
    link: InProcessLink,
    mut shutdown: watch::Receiver<bool>,
) {
    let status = TaskManagerStatus { registered: true, registrations: 1, ..Default::default() };
    let control = Control {
        id: settings.id,
        cluster,
        registry,
        settings: TaskManagerConfig::default(),
        shared: Arc::new(Shared { status: Mutex::new(status) }),
    };
    let (events_tx, mut events) = mpsc::channel::<DeploymentEvent>(EVENTS_MAX);
    let mut deployments = HashMap::new();
    let InProcessLink { mut to_tm, from_tm } = link;
    // The session reads what a connection's reader would deliver: messages, then its end.
    let (incoming_tx, incoming) = mpsc::channel::<Result<JmMessage, FrameError>>(INCOMING_MAX);
    let forward = tokio::spawn(async move {
        while let Some(message) = to_tm.recv().await {
            if incoming_tx.send(Ok(message)).await.is_err() {
                return;
            }
        }
        let _ = incoming_tx.send(Err(FrameError::Closed)).await;
    });
    let end = control
        .serve(
            incoming,
            Outbound::Local(from_tm),
            settings.heartbeat_timeout,
            settings.heartbeat_interval,
            &events_tx,
            &mut events,
            &mut deployments,
            &mut shutdown,
        )
        .await;
    if let SessionEnd::Lost(why) = end {
        tracing::warn!(%why, "the embedded JobManager is gone: cancelling every task");
    }
    forward.abort();
    cancel_all(&mut deployments, &mut events).await;
}
