//! One deployment's links on the shared data connections, supervised on the network executor
//! ([`super::network`]). The supervisor opens a [`JobLink`] per peer TaskManager that shares a
//! channel with this one, then ties the links and the job together until every link has
//! ended:
//! - a link that fails fails the job with its [`NetError`] (which names the peer), and the
//!   failure cancels every local task;
//! - a peer that cancels the job cancels it here;
//! - the job's own cancellation or failure (its `JobShared` flags, whose bells ring the
//!   supervisor) cancels or fails every link still open, so the peers learn of it at once.
//!
//! Each link's traffic becomes one [`ConnectionSummary`] of the job. The decisions are the pure
//! functions [`on_link_end`] and [`interruption`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use corestream_netstack::{DataPlane, JobEnd, JobLink, LocalChannel, NetError};

use super::metrics::ConnectionSummary;
use super::network::JobNetwork;
use crate::error::JobError;

/// What a link's end does to the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JobAction {
    /// Nothing: the link finished, or this side ended it.
    None,
    /// The peer cancelled the job: cancel it here too.
    Cancel { reason: String },
    /// The link failed: fail the job with this error.
    Fail(NetError),
}

pub(crate) fn on_link_end(end: &JobEnd) -> JobAction {
    match end {
        JobEnd::Finished | JobEnd::Cancelled { .. } | JobEnd::FailedHere { .. } => JobAction::None,
        JobEnd::PeerCancelled { reason } => JobAction::Cancel { reason: reason.clone() },
        JobEnd::Failed(e) => JobAction::Fail(e.clone()),
    }
}

/// How a cancelled job ends its open links: fail them with the job's failure, or cancel them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Interruption {
    Fail { message: String },
    Cancel { reason: String },
}

pub(crate) fn interruption(job: &str, failure: Option<String>) -> Interruption {
    match failure {
        Some(message) => Interruption::Fail { message },
        None => Interruption::Cancel { reason: format!("job '{job}' was cancelled") },
    }
}

struct Opened {
    name: String,
    link: JobLink,
    outbound: Vec<Arc<LocalChannel>>,
    reported: bool,
}

/// Removes the deployment from the running table when the supervisor ends, however it ends.
struct Registered {
    deployment: u64,
    running: Rc<RefCell<HashMap<u64, Vec<JobLink>>>>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.running.borrow_mut().remove(&self.deployment);
    }
}

/// Opens `network`'s links on `plane` and supervises them until each has ended (see the module
/// doc); `running` lists the links of every supervised deployment, for shutdown.
pub(crate) async fn supervise(plane: DataPlane, network: JobNetwork, running: Rc<RefCell<HashMap<u64, Vec<JobLink>>>>) {
    let JobNetwork { deployment, job, bell, links, summaries, done } = network;
    let mut opened = Vec::with_capacity(links.len());
    for l in links {
        match plane.open_job(l.peer, l.spec) {
            Ok(link) => opened.push(Opened { name: l.name, link, outbound: l.outbound, reported: false }),
            Err(e) => job.fail(JobError::Network(e)),
        }
    }
    running.borrow_mut().insert(deployment, opened.iter().map(|o| o.link.clone()).collect());
    let _registered = Registered { deployment, running };
    for o in &opened {
        let (link, bell) = (o.link.clone(), bell.clone());
        glommio::spawn_local(async move {
            link.ended().await;
            bell.ring();
        })
        .detach();
    }
    let mut interrupted = false;
    loop {
        for o in opened.iter_mut().filter(|o| !o.reported) {
            let Some(ended) = o.link.try_end() else { continue };
            o.reported = true;
            let remote_credit_stalls = o.outbound.iter().map(|c| c.credit_stalls()).sum();
            summaries.lock().unwrap_or_else(|e| e.into_inner()).push(ConnectionSummary {
                peer: o.name.clone(),
                stats: ended.stats,
                remote_credit_stalls,
            });
            match on_link_end(&ended.end) {
                JobAction::None => {}
                JobAction::Cancel { reason } => {
                    tracing::warn!(peer = %o.name, %reason, "the peer cancelled the job");
                    job.cancel();
                }
                JobAction::Fail(e) => job.fail(JobError::Network(e)),
            }
        }
        if opened.iter().all(|o| o.reported) {
            break;
        }
        if !interrupted && job.is_cancelled() {
            interrupted = true;
            let how = interruption(&job.name, job.failure_message());
            for o in opened.iter().filter(|o| !o.reported) {
                match &how {
                    Interruption::Fail { message } => o.link.fail(message),
                    Interruption::Cancel { reason } => o.link.cancel(reason),
                }
            }
            continue;
        }
        bell.wait().await;
    }
    // The links' channels go with them; the job's owner may now read complete summaries.
    drop(opened);
    bell.clear_waker();
    drop(done);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_end_fails_or_cancels_the_job_only_when_the_peer_or_the_connection_ended_it() {
        assert_eq!(on_link_end(&JobEnd::Finished), JobAction::None);
        assert_eq!(on_link_end(&JobEnd::Cancelled { reason: "r".into() }), JobAction::None);
        assert_eq!(on_link_end(&JobEnd::FailedHere { message: "m".into() }), JobAction::None);
        assert_eq!(
            on_link_end(&JobEnd::PeerCancelled { reason: "stop".into() }),
            JobAction::Cancel { reason: "stop".into() }
        );
        let lost = NetError::PeerLost { peer: "TaskManager 1f2e3d4c (127.0.0.1:1)".into(), detail: "reset".into() };
        assert_eq!(on_link_end(&JobEnd::Failed(lost.clone())), JobAction::Fail(lost));
    }

    #[test]
    fn a_failed_job_fails_its_links_and_a_cancelled_one_cancels_them() {
        assert_eq!(
            interruption("q", Some("operator 'Map' failed".into())),
            Interruption::Fail { message: "operator 'Map' failed".into() }
        );
        assert_eq!(interruption("q", None), Interruption::Cancel { reason: "job 'q' was cancelled".into() });
    }
}
