//! The latency job: [`build`] declares the query on an environment — in this process for a
//! one-process run ([`measure`]), or in each TaskManager of a process cluster from the
//! registered job type — and returns the process's [`LatencyPart`], whose
//! [`finish`](LatencyPart::finish) turns what this process's sinks and feeder measured into
//! accumulators.
//!
//! Which process runs the source: sink subtask `i` runs in job slot `i`, and the source (of
//! parallelism 1) in job slot 0, so the process whose sink factory builds subtask 0 is the
//! source's. Its sinks are the `local` side, every other process's the `crossing` side. A host
//! feeder thread is started in every process that builds the job and waits until it knows
//! which one it is in: it feeds if sink subtask 0 was built here, and ends once the JobMaster
//! says every task runs ([`JobSignals::ALL_RUNNING`]) without it, or when the part is dropped.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use corestream::registry::JobSignals;
use corestream::rpc::messages::Accumulators;
use corestream::{SourceSender, StreamEnvironment, WatermarkStrategy};

use super::measure::{check_size, LatencySink, Measured, Side, Start, StartOf};
use super::report::LatencyReport;
use super::schedule::{feed, warm_up_host, Fed, ScheduleSource, CHANNEL_CAPACITY, WARM_UP};
use super::{LatencyError, LatencyQuery, LatencySettings};
use crate::nexmark::queries::{self, Q5Out};
use crate::nexmark::Event;

/// How long a host feeder waits to learn whether the source runs in its process.
const PLACEMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// What one process's share of the job shares between its sinks, its feeder and its part.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) origin_ns: Arc<AtomicU64>,
    /// The event time (ms) of the last record: windows ending after it close only at the end
    /// of the input, not by time, and are not measured.
    pub(crate) last_event_ms: Arc<AtomicI64>,
    /// What each sink subtask of this process measured, pushed when it finished.
    pub(crate) out: Mutex<Vec<Measured>>,
    /// What the feeder did, once it is done (in the source's process only).
    pub(crate) fed: Mutex<Option<Fed>>,
    /// Sink subtask 0, and so the source, runs in this process.
    source_here: AtomicBool,
    /// The part was dropped without finishing (the job failed or was cancelled).
    pub(crate) abandoned: AtomicBool,
}

impl Shared {
    fn new() -> Self {
        Self {
            origin_ns: Arc::new(AtomicU64::new(0)),
            last_event_ms: Arc::new(AtomicI64::new(i64::MIN)),
            out: Mutex::new(Vec::new()),
            fed: Mutex::new(None),
            source_here: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
        }
    }

    /// What this process's sink subtasks measured, merged.
    fn measured(&self) -> Result<Measured, LatencyError> {
        let mut all = Measured::default();
        for m in self.out.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            all.add(&m)?;
        }
        Ok(all)
    }
}

/// One process's part of a latency job.
#[derive(Debug)]
pub struct LatencyPart {
    shared: Arc<Shared>,
    feeder: Option<JoinHandle<Result<Option<Fed>, LatencyError>>>,
}

impl LatencyPart {
    /// Once this process's part of the job has ended successfully: what its sinks measured, as
    /// accumulators of its side, and, in the process that fed, what the feeder did.
    pub fn finish(mut self) -> Result<Accumulators, LatencyError> {
        if let Some(feeder) = self.feeder.take() {
            let fed = feeder.join().map_err(|_| LatencyError::Panicked("feeder"))??;
            if let Some(fed) = fed {
                *self.shared.fed.lock().unwrap_or_else(|e| e.into_inner()) = Some(fed);
            }
        }
        let side = if self.shared.source_here.load(Ordering::Acquire) { Side::Local } else { Side::Crossing };
        let mut accumulators = Accumulators::new();
        self.shared.measured()?.to_accumulators(side, &mut accumulators)?;
        if let Some(fed) = self.shared.fed.lock().unwrap_or_else(|e| e.into_inner()).take() {
            fed.to_accumulators(&mut accumulators)?;
        }
        check_size(&accumulators)?;
        Ok(accumulators)
    }
}

impl Drop for LatencyPart {
    fn drop(&mut self) {
        self.shared.abandoned.store(true, Ordering::Release);
    }
}

/// Declares the query on `env` at parallelism `p` (the source has parallelism 1, so q0's
/// pass-through map and sink are fed round-robin when p > 1). q0's sink subtasks announce
/// their first warm-up record through `signals`. With a host feeder and `planning` false, the
/// feeder thread starts here. `planning`: only declare the graph (the JobManager's check).
pub fn build(
    env: &mut StreamEnvironment,
    settings: &LatencySettings,
    p: u32,
    signals: &JobSignals,
    planning: bool,
) -> Result<LatencyPart, LatencyError> {
    let total = settings.records()?;
    env.set_parallelism(p);
    let shared = Arc::new(Shared::new());
    let (sender, events) = if settings.in_source() {
        let (settings, signals, shared) = (settings.clone(), signals.clone(), shared.clone());
        let source = env.from_source("Source: schedule", Some(1), move |_ctx| {
            shared.source_here.store(true, Ordering::Release);
            Ok(ScheduleSource::new(&settings, p, signals.clone(), shared.clone())?)
        });
        (None, source)
    } else {
        let (sender, events) = env.from_channel::<(u64, Event)>(CHANNEL_CAPACITY);
        (Some(sender), events)
    };
    let interval_ns = settings.interval().as_nanos() as u64;
    match settings.query {
        LatencyQuery::Q0 => {
            let stream = events.map(|r| r).name("q0: pass-through");
            let start_of = |r: &(u64, Event)| if r.0 == WARM_UP { Start::WarmUp } else { Start::At(r.0) };
            add_sink(stream, &shared, interval_ns, Arc::new(start_of), Some(signals.clone()));
        }
        LatencyQuery::Q5 => {
            let events = events.map(|(_, e)| e).set_parallelism(1).name("Events").assign_timestamps_and_watermarks(
                WatermarkStrategy::for_monotonous_timestamps()
                    .with_timestamp_assigner(|e: &Event| e.date_time())
                    .with_per_record_emission(),
            );
            let last = shared.last_event_ms.clone();
            let start_of = move |r: &Q5Out| {
                let end_ms = r.1;
                if end_ms <= last.load(Ordering::Relaxed) {
                    Start::At(end_ms as u64 * 1_000_000)
                } else {
                    Start::Unmeasured
                }
            };
            add_sink(queries::q5_stream(events), &shared, interval_ns, Arc::new(start_of), None);
        }
    }
    let feeder = match sender {
        Some(sender) if !planning => Some(spawn_feeder(settings, total, p, sender, signals, &shared)?),
        _ => None,
    };
    Ok(LatencyPart { shared, feeder })
}

/// Adds the latency sink to `stream`; the factory of sink subtask 0 marks the process as the
/// source's.
fn add_sink<T: corestream::Data>(
    stream: corestream::DataStream<T>,
    shared: &Arc<Shared>,
    interval_ns: u64,
    start_of: StartOf<T>,
    ready: Option<JobSignals>,
) {
    let shared = shared.clone();
    stream.add_sink("Sink: latency", move |ctx| {
        if ctx.subtask == 0 {
            shared.source_here.store(true, Ordering::Release);
        }
        Ok(LatencySink {
            origin_ns: shared.origin_ns.clone(),
            interval_ns,
            start_of: start_of.clone(),
            ready: ready.clone(),
            measured: Measured::default(),
            shared: shared.clone(),
        })
    });
}

/// Whether this process feeds: `Some(true)` once sink subtask 0 was built here, `Some(false)`
/// once every task of the job runs (or the part was dropped) without it, `None` while unknown.
fn feeds_here(source_here: bool, all_running: bool, abandoned: bool) -> Option<bool> {
    match (source_here, all_running || abandoned) {
        (true, _) => Some(true),
        (false, true) => Some(false),
        (false, false) => None,
    }
}

/// Starts the host feeder thread: once it knows the source runs in this process, it warms the
/// job up (q0) until the `sinks` sink subtasks announced themselves, then offers the schedule
/// into `sender` and closes it. In another process it ends with `None`.
fn spawn_feeder(
    settings: &LatencySettings,
    total: u64,
    sinks: u32,
    sender: SourceSender<(u64, Event)>,
    signals: &JobSignals,
    shared: &Arc<Shared>,
) -> Result<JoinHandle<Result<Option<Fed>, LatencyError>>, LatencyError> {
    let (settings, signals, shared) = (settings.clone(), signals.clone(), shared.clone());
    std::thread::Builder::new()
        .name("cs-latency-feeder".into())
        .spawn(move || {
            let started = Instant::now();
            loop {
                let all_running = signals.total(JobSignals::ALL_RUNNING) > 0;
                let here = shared.source_here.load(Ordering::Acquire);
                match feeds_here(here, all_running, shared.abandoned.load(Ordering::Acquire)) {
                    Some(true) => break,
                    Some(false) => {
                        tracing::debug!("the latency source runs in another process: this one does not feed");
                        return Ok(None);
                    }
                    None if started.elapsed() > PLACEMENT_TIMEOUT => {
                        return Err(LatencyError::Feeder(format!(
                            "no task of the job started within {PLACEMENT_TIMEOUT:?}"
                        )))
                    }
                    None => std::thread::sleep(Duration::from_millis(1)),
                }
            }
            let before_clock = |event: &Event| match settings.query {
                LatencyQuery::Q0 => warm_up_host(&sender, &signals, sinks, event, &shared.abandoned).map(Some),
                // q5's sinks see window results, not the records offered: its clock starts at once.
                LatencyQuery::Q5 => Ok(None),
            };
            let send = |batch: &mut Vec<(u64, Event)>| sender.send_all(batch.drain(..)).is_ok();
            let fed = feed(&settings, total, &shared.origin_ns, &shared.last_event_ms, before_clock, send);
            drop(sender);
            fed.map(Some)
        })
        .map_err(|cause| LatencyError::Spawn { what: "feeder", cause })
}

/// Runs one measurement in this process at parallelism `p` on `env`'s cluster and reports
/// it (without a baseline; the caller adds one).
pub fn measure(mut env: StreamEnvironment, settings: &LatencySettings, p: u32) -> Result<LatencyReport, LatencyError> {
    let signals = JobSignals::local();
    let part = build(&mut env, settings, p, &signals, false)?;
    let joined = env.execute_async(&format!("latency {}", settings.query.name())).and_then(|h| h.join());
    let result = match joined {
        Ok(result) => result,
        Err(e) => {
            let mut part = part;
            part.shared.abandoned.store(true, Ordering::Release);
            if let Some(feeder) = part.feeder.take() {
                let _ = feeder.join();
            }
            return Err(e.into());
        }
    };
    let accumulators = part.finish()?;
    let mut report = LatencyReport::from_accumulators(settings, p, 1, &accumulators)?;
    report.warnings = result.warnings.iter().map(|w| w.message.clone()).collect();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_feeder_feeds_only_beside_the_source() {
        assert_eq!(feeds_here(true, false, false), Some(true));
        assert_eq!(feeds_here(true, true, true), Some(true));
        assert_eq!(feeds_here(false, true, false), Some(false));
        assert_eq!(feeds_here(false, false, true), Some(false));
        assert_eq!(feeds_here(false, false, false), None);
    }
}
