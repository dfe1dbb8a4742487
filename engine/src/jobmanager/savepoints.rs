//! Savepoint requests: the dispatcher records each (`POST /v1/jobs/{id}/savepoints` and
//! `/stop`) as in progress and hands the job master a [`SavepointTicket`]; the ticket carries
//! the request through the coordinator (triggered, then completed or failed) and updates the
//! record the REST API polls. A ticket dropped unfinished (the job master was not running an
//! attempt, the attempt ended first) marks its request failed, so no request stays in progress
//! for good. Each job keeps its newest [`SAVEPOINT_REQUESTS_MAX`] requests.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::api::{SavepointInfo, SavepointStatus};
use super::state::now_ms;
use super::Jm;
use crate::checkpoint::CheckpointId;
use crate::rpc::ids::{JobId, TriggerId};

/// Savepoint requests a job keeps for polling.
pub const SAVEPOINT_REQUESTS_MAX: usize = 16;

/// The name of a savepoint's own directory: `savepoint-<job, 8 digits>-<request, 12 digits>`.
pub(crate) fn savepoint_dir_name(job: JobId, request: TriggerId) -> String {
    format!("savepoint-{}-{}", job.short(), &request.to_string()[..12])
}

/// Adds `info` to a job's requests, forgetting the oldest finished ones past the limit.
pub(crate) fn record(requests: &mut VecDeque<SavepointInfo>, info: SavepointInfo) {
    requests.push_back(info);
    while requests.len() > SAVEPOINT_REQUESTS_MAX {
        match requests.iter().position(|r| r.status != SavepointStatus::InProgress) {
            Some(i) => {
                requests.remove(i);
            }
            None => {
                requests.pop_front();
            }
        }
    }
}

/// Applies `f` to request `request` of `requests` if it is still in progress.
fn update(requests: &mut VecDeque<SavepointInfo>, request: &str, f: impl FnOnce(&mut SavepointInfo)) {
    if let Some(r) = requests.iter_mut().find(|r| r.request_id == request && r.status == SavepointStatus::InProgress) {
        f(r);
    }
}

/// One savepoint request on its way through the job master (see the module documentation).
pub(crate) struct SavepointTicket {
    jm: Arc<Jm>,
    job: JobId,
    pub request: TriggerId,
    /// The directory the savepoint's own directory is made in.
    pub target: PathBuf,
    /// Cancel the job once the savepoint is complete.
    pub stop: bool,
    done: bool,
}

impl std::fmt::Debug for SavepointTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SavepointTicket")
            .field("job", &self.job)
            .field("request", &self.request)
            .field("target", &self.target)
            .field("stop", &self.stop)
            .finish()
    }
}

impl SavepointTicket {
    pub(crate) fn new(jm: Arc<Jm>, job: JobId, request: TriggerId, target: PathBuf, stop: bool) -> Self {
        Self { jm, job, request, target, stop, done: false }
    }

    /// The savepoint's own directory.
    pub(crate) fn destination(&self) -> PathBuf {
        self.target.join(savepoint_dir_name(self.job, self.request))
    }

    /// The coordinator triggered it as checkpoint `id`.
    pub(crate) fn triggered(&self, id: CheckpointId) {
        let request = self.request.to_string();
        self.jm.update_job(self.job, |j| update(&mut j.savepoints, &request, |r| r.checkpoint_id = Some(id)));
    }

    /// It is complete, in `location`.
    pub(crate) fn complete(mut self, location: &Path) {
        self.done = true;
        let (request, location) = (self.request.to_string(), location.display().to_string());
        tracing::info!(job = %self.job, %request, %location, "savepoint complete");
        self.jm.update_job(self.job, |j| {
            update(&mut j.savepoints, &request, |r| {
                r.status = SavepointStatus::Completed;
                r.location = Some(location);
                r.end_ms = Some(now_ms());
            })
        });
    }

    /// No savepoint will be taken for it.
    pub(crate) fn fail(mut self, reason: impl Into<String>) {
        self.done = true;
        self.mark_failed(reason.into());
    }

    fn mark_failed(&self, reason: String) {
        let request = self.request.to_string();
        tracing::warn!(job = %self.job, %request, %reason, "savepoint failed");
        self.jm.update_job(self.job, |j| {
            update(&mut j.savepoints, &request, |r| {
                r.status = SavepointStatus::Failed;
                r.failure = Some(reason);
                r.end_ms = Some(now_ms());
            })
        });
    }
}

impl Drop for SavepointTicket {
    fn drop(&mut self) {
        if !self.done {
            self.mark_failed(
                "the job was not running when the request arrived, or its attempt ended before the savepoint \
                 completed; request one while the job runs"
                    .into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, status: SavepointStatus) -> SavepointInfo {
        SavepointInfo {
            request_id: id.into(),
            status,
            stop: false,
            target_directory: "/sp".into(),
            checkpoint_id: None,
            location: None,
            failure: None,
            trigger_ms: 0,
            end_ms: None,
        }
    }

    #[test]
    fn the_oldest_finished_requests_go_first_past_the_limit() {
        let mut requests = VecDeque::new();
        record(&mut requests, info("running", SavepointStatus::InProgress));
        for i in 0..SAVEPOINT_REQUESTS_MAX {
            record(&mut requests, info(&format!("done-{i}"), SavepointStatus::Completed));
        }
        assert_eq!(requests.len(), SAVEPOINT_REQUESTS_MAX);
        assert_eq!(requests[0].request_id, "running", "a request in progress is kept");
        assert_eq!(requests[1].request_id, "done-1");
        update(&mut requests, "done-1", |r| r.status = SavepointStatus::Failed);
        assert_eq!(requests[1].status, SavepointStatus::Completed, "a finished request never changes");
        update(&mut requests, "running", |r| r.checkpoint_id = Some(4));
        assert_eq!(requests[0].checkpoint_id, Some(4));
    }

    #[test]
    fn a_savepoint_directory_names_its_job_and_request() {
        let job = JobId([0xab; 16]);
        let request = TriggerId([0x01; 16]);
        assert_eq!(savepoint_dir_name(job, request), "savepoint-abababab-010101010101");
    }
}
