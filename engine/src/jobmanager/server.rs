//! The JobManager's side of the control plane: it accepts TaskManager connections, challenges
//! each to prove the cluster secret, registers it with its slots, routes its messages to the
//! job masters they concern, sends heartbeats, and removes a TaskManager whose connection
//! closes or that stays silent for the heartbeat timeout (its jobs' masters are told, and
//! fail or restart those jobs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::job_master::JobEvent;
use super::state::{now_ms, TmEntry};
use super::Jm;
use crate::rpc::frame::{read_frame, write_frame};
use crate::rpc::ids::TaskManagerId;
use crate::rpc::messages::{Bytes32, JmMessage, Registration, TmMessage, PROTOCOL_VERSION};

/// How long a new connection may take to register.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued to one TaskManager at most; a TaskManager that falls this far behind is
/// treated as lost.
const OUTBOX: usize = 4096;
/// Connections being registered at once, at most.
const PENDING_REGISTRATIONS: usize = 64;

/// Accepts TaskManager connections until the JobManager stops.
pub(crate) async fn accept(jm: Arc<Jm>, listener: TcpListener) {
    let pending = Arc::new(tokio::sync::Semaphore::new(PENDING_REGISTRATIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a TaskManager connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many TaskManager connections registering at once: closed this one");
            continue;
        };
        let jm = jm.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let registered = tokio::time::timeout(REGISTRATION_TIMEOUT, register(&jm, stream)).await;
            drop(permit);
            match registered {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(%peer, error = %e, "refused a TaskManager"),
                Err(_) => tracing::warn!(%peer, "a TaskManager connection did not register in time"),
            }
        });
    }
}

/// Challenge, registration, then the connection's reader and writer.
async fn register(jm: &Arc<Jm>, mut stream: TcpStream) -> Result<(), String> {
    let nonce = crate::auth::nonce();
    write_frame(&mut stream, &JmMessage::Challenge { protocol: PROTOCOL_VERSION, nonce: Bytes32(nonce) })
        .await
        .map_err(|e| e.to_string())?;
    let registration = match read_frame::<_, TmMessage>(&mut stream).await.map_err(|e| e.to_string())? {
        TmMessage::Register(r) => r,
        _ => return Err("the first message was not a registration".into()),
    };
    if let Err(reason) = check_registration(jm, &registration, &nonce) {
        let _ = write_frame(&mut stream, &JmMessage::Refused { reason: reason.clone() }).await;
        return Err(reason);
    }
    let proof = jm.settings.secret.as_ref().map(|s| {
        Bytes32(crate::auth::mac(s, &[b"jm-registered".as_slice(), &registration.nonce.0, &registration.id.0]))
    });
    write_frame(
        &mut stream,
        &JmMessage::Registered {
            heartbeat_interval_ms: jm.settings.heartbeat_interval.as_millis() as u64,
            heartbeat_timeout_ms: jm.settings.heartbeat_timeout.as_millis() as u64,
            jobmanager_session: jm.session,
            cluster_token: Bytes32(jm.cluster_token),
            proof,
        },
    )
    .await
    .map_err(|e| e.to_string())?;

    let id = registration.id;
    let (tx, mut outbox) = mpsc::channel::<JmMessage>(OUTBOX);
    let (mut reader, mut writer) = stream.into_split();
    let jm2 = jm.clone();
    let connection = tokio::spawn(async move {
        let writing = async {
            while let Some(m) = outbox.recv().await {
                if let Err(e) = write_frame(&mut writer, &m).await {
                    return format!("writing to it failed: {e}");
                }
            }
            "its connection was replaced".to_string()
        };
        let reading = async {
            loop {
                match read_frame::<_, TmMessage>(&mut reader).await {
                    Ok(message) => {
                        // Waiting for room in a job master's inbox holds this TaskManager's
                        // messages back (backpressure) rather than dropping one.
                        if let Some((inbox, event)) = jm2.route(id, message) {
                            let _ = inbox.send(event).await;
                        }
                    }
                    Err(e) => return format!("its connection ended: {e}"),
                }
            }
        };
        let why = tokio::select! { w = writing => w, r = reading => r };
        jm2.remove_tm(id, &why);
    });
    let slots = registration.slots.len();
    tracing::info!(tm = %id, host = %registration.hostname, pid = registration.pid, slots, data = %registration.data_address, "TaskManager registered");
    let replaced = jm.insert_tm(TmEntry {
        slot_jobs: vec![None; slots],
        registration: *registration,
        tx,
        last_heartbeat: Instant::now(),
        registered_at_ms: now_ms(),
        seq: 0,
        connection: connection.abort_handle(),
        data_plane: None,
    });
    if let Some(old) = replaced {
        old.connection.abort();
    }
    Ok(())
}

/// Why a registration is refused, if it is.
fn check_registration(jm: &Jm, registration: &Registration, nonce: &[u8; 32]) -> Result<(), String> {
    if registration.protocol != PROTOCOL_VERSION {
        return Err(format!(
            "control protocol {} is not this JobManager's {PROTOCOL_VERSION}: run the same corestream version",
            registration.protocol
        ));
    }
    if let Some(secret) = &jm.settings.secret {
        let parts: [&[u8]; 3] = [b"tm-register", nonce, &registration.id.0];
        if !registration.proof.is_some_and(|p| crate::auth::verify(secret, &parts, &p.0)) {
            let what = if registration.proof.is_none() { "no" } else { "a wrong" };
            return Err(format!(
                "TaskManager {} ({}, pid {}) sent {what} proof of the cluster secret",
                registration.id, registration.hostname, registration.pid
            ));
        }
    }
    if registration.slots.is_empty() {
        return Err("a TaskManager must offer at least one slot".into());
    }
    Ok(())
}

/// Sends heartbeats and removes TaskManagers that stopped sending theirs.
pub(crate) async fn heartbeats(jm: Arc<Jm>) {
    let mut tick = tokio::time::interval(jm.settings.heartbeat_interval);
    loop {
        tick.tick().await;
        let silent: Vec<(TaskManagerId, Duration)> = jm.silent_tms(jm.settings.heartbeat_timeout);
        for (tm, quiet) in silent {
            jm.remove_tm(
                tm,
                &format!(
                    "no heartbeat for {:.1} s (heartbeat.timeout {:?})",
                    quiet.as_secs_f64(),
                    jm.settings.heartbeat_timeout
                ),
            );
        }
        jm.broadcast(JmMessage::Heartbeat);
    }
}

impl Jm {
    /// The job master a message of TaskManager `tm` concerns, with the event for it.
    pub(super) fn route(&self, tm: TaskManagerId, message: TmMessage) -> Option<(mpsc::Sender<JobEvent>, JobEvent)> {
        let mut state = self.lock();
        if let Some(t) = state.tms.get_mut(&tm) {
            t.last_heartbeat = Instant::now();
            if let TmMessage::Heartbeat { data_plane: Some(report), .. } = &message {
                if report.is_bounded() {
                    t.data_plane = Some(report.clone());
                } else {
                    tracing::warn!(%tm, "ignored a data-plane report beyond its bounds");
                }
            }
        }
        let job = match &message {
            TmMessage::Heartbeat { .. } | TmMessage::Register(_) => return None,
            TmMessage::SlotsOffered { allocation, .. } | TmMessage::SlotsRefused { allocation, .. } => {
                state.allocations.get(allocation).copied()
            }
            TmMessage::TaskStates { deployment, .. }
            | TmMessage::Metrics { deployment, .. }
            | TmMessage::Signals { deployment, .. }
            | TmMessage::PartEnded { deployment, .. }
            | TmMessage::Committed { deployment, .. }
            | TmMessage::AcknowledgeCheckpoint { deployment, .. }
            | TmMessage::DeclineCheckpoint { deployment, .. } => state.deployments.get(deployment).copied(),
        };
        let Some(job) = job else {
            tracing::debug!(%tm, "a message about a deployment this JobManager no longer tracks");
            return None;
        };
        state.jobs.get(&job).map(|j| (j.inbox.clone(), JobEvent::Tm { tm, message }))
    }
}
