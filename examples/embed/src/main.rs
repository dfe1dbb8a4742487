//! An application outside the corestream workspace that embeds the engine as a user would: it
//! depends on `corestream` by path and on nothing else. It runs a job fed by the host through a
//! channel source and checks its result, then runs the Rust snippets of the README's
//! "Embedding" section verbatim (copied in by `build.rs`). Prints one line per check and exits 0
//! only when all passed; `tests/tests/embed_outside.rs` builds and runs it.

use std::collections::BTreeMap;
use std::error::Error;

use corestream::prelude::*;
use corestream::rkyv::{Archive, Deserialize, Serialize};

include!(concat!(env!("OUT_DIR"), "/readme_snippets.rs"));

/// A record defined in the application, derived through the engine's re-exported rkyv.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(crate = corestream::rkyv)]
struct Reading {
    sensor: u32,
    value: u64,
}

const READINGS: u64 = 200_000;
const SENSORS: u32 = 50;

fn reading(i: u64) -> Reading {
    Reading { sensor: (i % u64::from(SENSORS)) as u32, value: i }
}

/// Sums readings per sensor, pushed by a host thread through a bounded channel source, on two
/// slots; checks every running sum, the final sums and the job's counters.
fn channel_job() -> Result<(), Box<dyn Error>> {
    let cluster = LocalCluster::start(ClusterConfig { slots: Some(2), ..Default::default() })?;
    let mut env = cluster.environment();
    env.set_parallelism(2);
    let (sender, readings) = env.from_channel::<Reading>(1024);
    let sums = readings
        .key_by(|r: &Reading| r.sensor)
        .reduce(|a, b| Reading { sensor: a.sensor, value: a.value + b.value })
        .collect();
    let job = env.execute_async("channel sums")?;
    let feeder = std::thread::spawn(move || sender.send_all((0..READINGS).map(reading)).map_err(|e| e.to_string()));

    let mut updates = 0u64;
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    for sum in sums {
        let previous = last.insert(sum.sensor, sum.value).unwrap_or(0);
        if sum.value < previous {
            return Err(format!("sensor {}: running sum went back from {previous} to {}", sum.sensor, sum.value).into());
        }
        updates += 1;
    }
    let sent = feeder.join().map_err(|_| "the feeder thread panicked")??;
    let result = job.join()?;

    let mut expected: BTreeMap<u32, u64> = BTreeMap::new();
    for r in (0..READINGS).map(reading) {
        *expected.entry(r.sensor).or_default() += r.value;
    }
    if sent as u64 != READINGS || updates != READINGS {
        return Err(format!("sent {sent} and saw {updates} running sums, expected {READINGS} of each").into());
    }
    if last != expected {
        return Err(format!("final sums differ: got {last:?}, expected {expected:?}").into());
    }
    if result.status != JobStatus::Finished || result.records_in("Keyed Reduce") != READINGS {
        return Err(format!("unexpected job result: {result}").into());
    }
    println!("channel job: {READINGS} readings of {SENSORS} sensors from the host, sums match");
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    channel_job()?;
    for (line, snippet) in README_SNIPPETS {
        snippet().map_err(|e| format!("README.md snippet at line {line}: {e}"))?;
        println!("README snippet at line {line}: ok");
    }
    println!("embed: all checks passed");
    Ok(())
}
