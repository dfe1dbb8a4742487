//! An application-mode corestream binary: it registers a job type of its own, `sensor-max`
//! (the highest reading of each sensor, over generated readings of a record type defined here),
//! and hands its `main` to [`corestream::app::main`], which runs `jobmanager ...` or
//! `taskmanager ...` with the options of the `corestream` binary. Every process of the cluster
//! runs this same binary, so each builds the job's graph from the same code; any client
//! (`corestream submit --jobmanager URL sensor-max --readings N --sensors S --output FILE`, or
//! `POST /v1/jobs`) submits it by name.

use std::path::PathBuf;
use std::process::ExitCode;

use corestream::prelude::*;
use corestream::registry::{JobContext, JobParts, JobRegistry, JobType};
use corestream::rkyv::{Archive, Deserialize, Serialize};

/// A record defined in the application, derived through the engine's re-exported rkyv.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(crate = corestream::rkyv)]
struct Reading {
    sensor: u32,
    value: u64,
}

/// Reading `i` of `sensors` sensors: deterministic, so every process and the test agree.
fn reading(i: u64, sensors: u32) -> Reading {
    let sensor = (i % u64::from(sensors)) as u32;
    Reading { sensor, value: i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 44 }
}

struct Args {
    readings: u64,
    sensors: u32,
    output: PathBuf,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let (mut readings, mut sensors, mut output) = (None, None, None);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--readings" => readings = Some(value.parse::<u64>().map_err(|e| format!("--readings {value}: {e}"))?),
            "--sensors" => sensors = Some(value.parse::<u32>().map_err(|e| format!("--sensors {value}: {e}"))?),
            "--output" => output = Some(PathBuf::from(value)),
            other => return Err(format!("unknown argument {other}; expected --readings N --sensors S --output FILE")),
        }
    }
    let sensors = sensors.ok_or("--sensors is required")?;
    if sensors == 0 {
        return Err("--sensors must be at least 1".into());
    }
    Ok(Args { readings: readings.ok_or("--readings is required")?, sensors, output: output.ok_or("--output is required")? })
}

/// `sensor<TAB>max` lines, one per sensor, written by one sink subtask and committed by the job.
fn sensor_max(env: &mut StreamEnvironment, ctx: &JobContext<'_>) -> Result<JobParts, String> {
    let a = parse(ctx.args)?;
    env.set_runtime_mode(RuntimeMode::Batch);
    let sensors = a.sensors;
    env.from_generator(a.readings, move |i| reading(i, sensors))
        .key_by(|r: &Reading| r.sensor)
        .reduce(|a, b| if b.value > a.value { b } else { a })
        .map(|r: Reading| format!("{}\t{}", r.sensor, r.value))
        .set_parallelism(1)
        .write_as_text(a.output)
        .set_parallelism(1);
    Ok(JobParts::none())
}

fn main() -> ExitCode {
    let mut registry = JobRegistry::new();
    registry.register(JobType::new(
        "sensor-max",
        "the highest of generated readings per sensor, as `sensor<TAB>max` lines in a file",
        "--readings N --sensors S --output FILE",
        sensor_max,
    ));
    corestream::app::main(registry)
}
