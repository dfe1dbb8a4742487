//! The feeders: the schedule offered by q0's source subtask ([`ScheduleSource`]) or by a host
//! thread through a channel source ([`feed`]), the warm-up before the clock starts (both wait
//! for the job signal [`SINKS_READY`]), what a feeder did ([`Fed`], reported as accumulators
//! by the part that fed), and the baseline: the same schedule through a plain channel and
//! thread, with no engine.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corestream::operators::monotonic_ns;
use corestream::registry::{decode_histogram, JobSignals};
use corestream::rpc::messages::{Accumulator, Accumulators};
use corestream::{SourceError, SourceFunction, SourceSender, SourceStatus};
use hdrhistogram::Histogram;

use super::job::Shared;
use super::measure::{histogram_accumulator, new_histogram, record_value};
use super::{LatencyError, LatencySettings, OFFER_GRACE, SINKS_READY};
use crate::nexmark::{Event, GeneratorConfig, NexmarkGenerator};

/// Records waiting in the source channel before the feeder blocks (backpressure).
pub(crate) const CHANNEL_CAPACITY: usize = 1 << 14;

/// The most records the feeder offers in one send: records due at the same moment (the feeder
/// was late, or the rate is above what one record per send can reach) go together and wake
/// the source once.
const MAX_BATCH: u64 = 1024;

/// Distinct events the feeder offers: record `i` is event `i mod POOL_EVENTS` of the
/// generator, generated before the clock starts. Generating an event costs about 0.4 µs, too
/// much for one thread at 1 M records/s beside sending; a clone costs a fraction of that.
const POOL_EVENTS: u64 = 1 << 18;

/// The scheduled time of a warm-up record: `CLOCK_MONOTONIC`'s zero, long past in any run.
pub(crate) const WARM_UP: u64 = 0;

/// How often the feeder offers a round of warm-up records (one per sink subtask).
const WARM_UP_EVERY: Duration = Duration::from_millis(1);

/// How long the feeder waits for every sink subtask's first warm-up record.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the feeder did before the schedule's clock started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmUp {
    /// Warm-up records offered.
    pub records: u64,
    /// From the first warm-up record to the last sink subtask's announcement.
    pub time: Duration,
}

/// What the feeder did.
#[derive(Debug, Clone)]
pub(crate) struct Fed {
    pub offered: u64,
    pub offer_time: Duration,
    pub lag: Histogram<u64>,
    pub warm_up: Option<WarmUp>,
    /// How far behind schedule it was when it stopped with records not offered.
    pub behind_at_stop: Duration,
}

const FED_OFFERED: &str = "latency.fed.offered";
const FED_OFFER_TIME: &str = "latency.fed.offer-time-ns";
const FED_LAG: &str = "latency.fed.lag";
const FED_BEHIND: &str = "latency.fed.behind-at-stop-ns";
const FED_WARM_UP_RECORDS: &str = "latency.fed.warm-up-records";
const FED_WARM_UP_TIME: &str = "latency.fed.warm-up-ns";

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl Fed {
    /// Adds the feeder's figures to `into` (only the part that fed has them).
    pub(crate) fn to_accumulators(&self, into: &mut Accumulators) -> Result<(), LatencyError> {
        into.insert(FED_OFFERED.into(), Accumulator::Count(self.offered));
        into.insert(FED_OFFER_TIME.into(), Accumulator::Max(nanos(self.offer_time)));
        into.insert(FED_LAG.into(), histogram_accumulator(&self.lag)?);
        into.insert(FED_BEHIND.into(), Accumulator::Max(nanos(self.behind_at_stop)));
        if let Some(w) = &self.warm_up {
            into.insert(FED_WARM_UP_RECORDS.into(), Accumulator::Count(w.records));
            into.insert(FED_WARM_UP_TIME.into(), Accumulator::Max(nanos(w.time)));
        }
        Ok(())
    }

    /// The feeder's figures from the merged accumulators.
    pub(crate) fn from_accumulators(from: &Accumulators) -> Result<Fed, LatencyError> {
        let problem = |name: &str, problem: &str| LatencyError::Result { name: name.into(), problem: problem.into() };
        let count = |name: &str| match from.get(name) {
            Some(Accumulator::Count(n)) => Ok(Some(*n)),
            None => Ok(None),
            Some(_) => Err(problem(name, "expected a count")),
        };
        let duration = |name: &str| match from.get(name) {
            Some(Accumulator::Max(ns)) => Ok(Some(Duration::from_nanos((*ns).max(0) as u64))),
            None => Ok(None),
            Some(_) => Err(problem(name, "expected a maximum")),
        };
        let offered = count(FED_OFFERED)?.ok_or(LatencyError::NotFed)?;
        let lag = match from.get(FED_LAG) {
            Some(Accumulator::Histogram(bytes)) => {
                decode_histogram(bytes).map_err(|e| LatencyError::Result { name: FED_LAG.into(), problem: e })?
            }
            _ => return Err(problem(FED_LAG, "expected a histogram")),
        };
        let warm_up = match (count(FED_WARM_UP_RECORDS)?, duration(FED_WARM_UP_TIME)?) {
            (Some(records), Some(time)) => Some(WarmUp { records, time }),
            _ => None,
        };
        Ok(Fed {
            offered,
            offer_time: duration(FED_OFFER_TIME)?.unwrap_or_default(),
            lag,
            warm_up,
            behind_at_stop: duration(FED_BEHIND)?.unwrap_or_default(),
        })
    }
}

/// When a feeder whose clock started at `origin` stops offering: the end of the schedule
/// plus [`OFFER_GRACE`] (`CLOCK_MONOTONIC` ns).
fn offer_deadline(settings: &LatencySettings, origin: u64) -> u64 {
    origin.saturating_add((settings.duration + OFFER_GRACE).as_nanos() as u64)
}

/// What the warm-up does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WarmUpStep {
    /// Every sink subtask has received a record: start the clock.
    Start,
    /// Offer more warm-up records and wait.
    Continue,
    /// [`READY_TIMEOUT`] passed with sink subtasks still waiting.
    GiveUp,
}

/// The warm-up's decision from the number of sink subtasks that announced themselves so far.
fn warm_up_step(ready: u64, sinks: u32, waited: Duration) -> WarmUpStep {
    if ready >= u64::from(sinks) {
        WarmUpStep::Start
    } else if waited > READY_TIMEOUT {
        WarmUpStep::GiveUp
    } else {
        WarmUpStep::Continue
    }
}

fn not_ready(ready: u64, sinks: u32, records: u64) -> String {
    format!(
        "{} of the {sinks} sink subtask(s) received no record within {READY_TIMEOUT:?} of the job's start ({records} \
         warm-up records offered)",
        u64::from(sinks).saturating_sub(ready)
    )
}

/// The warm-up of a [`ScheduleSource`].
struct Warming {
    records: u64,
    started: Instant,
    next_round: Instant,
}

/// q0's source when the schedule is offered in the source subtask: first warm-up records, one
/// per sink subtask every [`WARM_UP_EVERY`], until the job signal [`SINKS_READY`] says every
/// sink subtask has one; then record `i` at `origin + i / rate`, every record due in one batch,
/// idle until the next is due. It reads the signal's total at each step and never blocks.
pub(crate) struct ScheduleSource {
    settings: LatencySettings,
    total: u64,
    pool: Vec<Event>,
    sinks: u32,
    signals: JobSignals,
    warming: Option<Warming>,
    warm_up: Option<WarmUp>,
    origin: u64,
    /// [`offer_deadline`] once the clock started.
    deadline: u64,
    next: u64,
    lag: Histogram<u64>,
    shared: Arc<Shared>,
}

impl ScheduleSource {
    pub(crate) fn new(
        settings: &LatencySettings,
        sinks: u32,
        signals: JobSignals,
        shared: Arc<Shared>,
    ) -> Result<Self, LatencyError> {
        let total = settings.records()?;
        let generator = NexmarkGenerator::new(GeneratorConfig::default(), settings.seed);
        let pool = (0..total.min(POOL_EVENTS)).map(|n| generator.event(n)).collect();
        let now = Instant::now();
        Ok(Self {
            settings: settings.clone(),
            total,
            pool,
            sinks,
            signals,
            warming: Some(Warming { records: 0, started: now, next_round: now }),
            warm_up: None,
            origin: 0,
            deadline: u64::MAX,
            next: 0,
            lag: new_histogram(),
            shared,
        })
    }

    /// One step of the warm-up: `Some` status while it goes on, `None` once the clock started.
    fn warm(&mut self, out: &mut Vec<(u64, Event)>) -> Result<Option<SourceStatus>, SourceError> {
        let Some(w) = &mut self.warming else { return Ok(None) };
        let ready = self.signals.total(SINKS_READY);
        match warm_up_step(ready, self.sinks, w.started.elapsed()) {
            WarmUpStep::GiveUp => return Err(not_ready(ready, self.sinks, w.records).into()),
            WarmUpStep::Continue => {
                let now = Instant::now();
                if now >= w.next_round {
                    out.extend((0..self.sinks).map(|_| (WARM_UP, self.pool[0].clone())));
                    w.records += u64::from(self.sinks);
                    w.next_round = now + WARM_UP_EVERY;
                }
                return Ok(Some(SourceStatus::IdleUntil(w.next_round)));
            }
            WarmUpStep::Start => {}
        }
        self.warm_up = Some(WarmUp { records: w.records, time: w.started.elapsed() });
        tracing::debug!(
            records = w.records,
            sinks = self.sinks,
            "every sink subtask is ready: the latency clock starts"
        );
        self.warming = None;
        self.origin = monotonic_ns();
        self.deadline = offer_deadline(&self.settings, self.origin);
        self.shared.origin_ns.store(self.origin, Ordering::Relaxed);
        let last = self.origin + self.settings.offset_ns(self.total - 1);
        self.shared.last_event_ms.store((last / 1_000_000) as i64, Ordering::Relaxed);
        Ok(None)
    }

    /// Ends the schedule after the records offered so far; `behind` is how far behind it was
    /// when it stopped with records left.
    fn finish(&mut self, behind: Duration) -> SourceStatus {
        let lag = std::mem::replace(&mut self.lag, new_histogram());
        let offer_time = Duration::from_nanos(monotonic_ns() - self.origin);
        let fed = Fed { offered: self.next, offer_time, lag, warm_up: self.warm_up, behind_at_stop: behind };
        *self.shared.fed.lock().unwrap_or_else(|e| e.into_inner()) = Some(fed);
        SourceStatus::Finished
    }
}

impl SourceFunction<(u64, Event)> for ScheduleSource {
    fn next_batch(&mut self, out: &mut Vec<(u64, Event)>, max_records: usize) -> Result<SourceStatus, SourceError> {
        if let Some(status) = self.warm(out)? {
            return Ok(status);
        }
        let now = monotonic_ns();
        if now >= self.deadline && self.next < self.total {
            let behind = now.saturating_sub(self.origin + self.settings.offset_ns(self.next));
            return Ok(self.finish(Duration::from_nanos(behind)));
        }
        let end = self.total.min(self.next + max_records as u64);
        while self.next < end {
            let scheduled = self.origin + self.settings.offset_ns(self.next);
            if scheduled > now {
                break;
            }
            record_value(&mut self.lag, now - scheduled);
            let mut event = self.pool[(self.next % POOL_EVENTS) as usize].clone();
            event.set_date_time((scheduled / 1_000_000) as i64);
            out.push((scheduled, event));
            self.next += 1;
        }
        if self.next == self.total {
            return Ok(self.finish(Duration::ZERO));
        }
        let due = self.origin + self.settings.offset_ns(self.next);
        Ok(match due.checked_sub(monotonic_ns()) {
            Some(wait) if wait > 0 => SourceStatus::IdleUntil(Instant::now() + Duration::from_nanos(wait)),
            _ => SourceStatus::More,
        })
    }
}

/// Offers warm-up records through `sender`, one per sink subtask every [`WARM_UP_EVERY`],
/// until the job signal [`SINKS_READY`] reaches `sinks` (or `stop` is set: the job ended).
pub(crate) fn warm_up_host(
    sender: &SourceSender<(u64, Event)>,
    signals: &JobSignals,
    sinks: u32,
    event: &Event,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<WarmUp, LatencyError> {
    let started = Instant::now();
    let mut records = 0u64;
    loop {
        if stop.load(Ordering::Acquire) {
            return Err(LatencyError::Feeder("the job ended during the warm-up".into()));
        }
        let ready = signals.total(SINKS_READY);
        match warm_up_step(ready, sinks, started.elapsed()) {
            WarmUpStep::Start => return Ok(WarmUp { records, time: started.elapsed() }),
            WarmUpStep::GiveUp => return Err(LatencyError::Feeder(not_ready(ready, sinks, records))),
            WarmUpStep::Continue => {}
        }
        for _ in 0..sinks {
            match sender.try_send((WARM_UP, event.clone())) {
                Ok(()) => records += 1,
                Err(e) if e.is_full() => break,
                Err(_) => {
                    return Err(LatencyError::Feeder(
                        "the job stopped reading before every sink subtask received a record".into(),
                    ))
                }
            }
        }
        signals.wait_for(SINKS_READY, u64::from(sinks), WARM_UP_EVERY);
    }
}

/// Offers the schedule's `total` records through `send` (which drains the batch, or returns
/// false when nobody reads any more): record `i` at `origin + i / rate`, where `origin` is
/// taken once `before_clock` (the warm-up) returned. It waits — sleeping when the next record
/// is more than 200 µs away, yielding its core otherwise — and then hands over every record
/// whose time has come, up to [`MAX_BATCH`] at once, so a feeder that fell behind catches up
/// instead of falling further behind. Each record carries its scheduled time; events are
/// stamped with it (in ms) as their event time. Events come from a pool of the generator's
/// first [`POOL_EVENTS`], generated before the warm-up.
pub(crate) fn feed(
    settings: &LatencySettings,
    total: u64,
    origin_ns: &AtomicU64,
    last_event_ms: &AtomicI64,
    before_clock: impl FnOnce(&Event) -> Result<Option<WarmUp>, LatencyError>,
    mut send: impl FnMut(&mut Vec<(u64, Event)>) -> bool,
) -> Result<Fed, LatencyError> {
    let generator = NexmarkGenerator::new(GeneratorConfig::default(), settings.seed);
    let pool: Vec<Event> = (0..total.min(POOL_EVENTS)).map(|n| generator.event(n)).collect();
    let warm_up = before_clock(&pool[0])?;
    let origin = monotonic_ns();
    origin_ns.store(origin, Ordering::Relaxed);
    last_event_ms.store(((origin + settings.offset_ns(total - 1)) / 1_000_000) as i64, Ordering::Relaxed);
    let deadline = offer_deadline(settings, origin);
    let mut batch: Vec<(u64, Event)> = Vec::with_capacity(MAX_BATCH as usize);
    let (mut next, mut offered, mut lag) = (0u64, 0u64, new_histogram());
    let mut behind_at_stop = Duration::ZERO;
    while next < total {
        let scheduled = origin + settings.offset_ns(next);
        let mut now = monotonic_ns();
        if now >= deadline {
            behind_at_stop = Duration::from_nanos(now - scheduled);
            // Windows after the last record offered close only at the end of the input.
            let last = origin + settings.offset_ns(next.saturating_sub(1));
            last_event_ms.store((last / 1_000_000) as i64, Ordering::Relaxed);
            break;
        }
        while now < scheduled {
            let wait = scheduled - now;
            if wait > 200_000 {
                std::thread::sleep(Duration::from_nanos(wait - 100_000));
            } else {
                std::thread::yield_now();
            }
            now = monotonic_ns();
        }
        while next < total && batch.len() < MAX_BATCH as usize {
            let scheduled = origin + settings.offset_ns(next);
            if scheduled > now {
                break;
            }
            record_value(&mut lag, now - scheduled);
            let mut event = pool[(next % POOL_EVENTS) as usize].clone();
            event.set_date_time((scheduled / 1_000_000) as i64);
            batch.push((scheduled, event));
            next += 1;
        }
        let n = batch.len() as u64;
        if !send(&mut batch) {
            break;
        }
        offered += n;
    }
    let end = monotonic_ns();
    Ok(Fed { offered, offer_time: Duration::from_nanos(end - origin), lag, warm_up, behind_at_stop })
}

/// The harness alone, for comparison: the same feeder and schedule into a bounded channel read
/// by a plain thread that records each record's latency, with no engine in between. Its
/// percentiles are what the machine itself (thread wake-ups, scheduling, the hypervisor) adds.
pub fn measure_baseline(settings: &LatencySettings) -> Result<Histogram<u64>, LatencyError> {
    let total = settings.records()?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, Event)>(CHANNEL_CAPACITY);
    let reader = std::thread::Builder::new()
        .name("cs-latency-baseline".into())
        .spawn(move || {
            let mut h = new_histogram();
            while let Ok((scheduled, event)) = rx.recv() {
                let now = monotonic_ns();
                record_value(&mut h, now.saturating_sub(scheduled).max(1));
                drop(event);
            }
            h
        })
        .map_err(|cause| LatencyError::Spawn { what: "baseline reader", cause })?;
    let (origin, last) = (AtomicU64::new(0), AtomicI64::new(0));
    let fed = feed(settings, total, &origin, &last, |_| Ok(None), |batch| batch.drain(..).all(|r| tx.send(r).is_ok()));
    drop(tx);
    let h = reader.join().map_err(|_| LatencyError::Panicked("baseline reader"))?;
    let fed = fed?;
    if h.len() != fed.offered {
        return Err(LatencyError::BaselineLost { received: h.len(), offered: fed.offered });
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::{Feeder, LatencyQuery};

    #[test]
    fn the_clock_starts_once_every_sink_announced_itself() {
        assert_eq!(warm_up_step(0, 2, Duration::ZERO), WarmUpStep::Continue);
        assert_eq!(warm_up_step(1, 2, READY_TIMEOUT), WarmUpStep::Continue);
        assert_eq!(warm_up_step(2, 2, READY_TIMEOUT * 2), WarmUpStep::Start);
        assert_eq!(warm_up_step(3, 2, Duration::ZERO), WarmUpStep::Start);
        assert_eq!(warm_up_step(1, 2, READY_TIMEOUT + Duration::from_millis(1)), WarmUpStep::GiveUp);
        let e = not_ready(1, 4, 300);
        assert!(e.starts_with("3 of the 4 sink subtask(s)") && e.contains("300 warm-up records"), "{e}");
    }

    #[test]
    fn the_feeders_figures_round_trip() {
        let mut lag = new_histogram();
        record_value(&mut lag, 1234);
        let fed = Fed {
            offered: 20_000,
            offer_time: Duration::from_millis(999),
            lag,
            warm_up: Some(WarmUp { records: 42, time: Duration::from_millis(150) }),
            behind_at_stop: Duration::ZERO,
        };
        let mut accs = Accumulators::new();
        fed.to_accumulators(&mut accs).unwrap();
        let back = Fed::from_accumulators(&accs).unwrap();
        assert_eq!((back.offered, back.offer_time, back.warm_up), (20_000, fed.offer_time, fed.warm_up));
        assert_eq!(back.lag.len(), 1);
        assert!(matches!(Fed::from_accumulators(&Accumulators::new()), Err(LatencyError::NotFed)));
        accs.remove(FED_WARM_UP_RECORDS);
        assert_eq!(Fed::from_accumulators(&accs).unwrap().warm_up, None);
    }

    #[test]
    fn a_feeder_that_cannot_keep_up_stops_after_the_grace() {
        let settings = LatencySettings {
            query: LatencyQuery::Q0,
            rate: 1_000_000_000,
            duration: Duration::from_millis(10),
            seed: 1,
            baseline: false,
            feeder: Feeder::Host,
        };
        let (origin, last) = (AtomicU64::new(0), AtomicI64::new(0));
        let mut sent = 0u64;
        let fed = feed(
            &settings,
            10_000_000,
            &origin,
            &last,
            |_| Ok(None),
            |batch| {
                sent += batch.len() as u64;
                batch.clear();
                std::thread::sleep(Duration::from_millis(1));
                true
            },
        )
        .unwrap();
        assert_eq!(fed.offered, sent);
        assert!(fed.offered < 10_000_000 && fed.behind_at_stop > Duration::ZERO, "{fed:?}");
        assert!(fed.offer_time >= OFFER_GRACE && fed.offer_time < OFFER_GRACE * 5, "{fed:?}");
    }
}
