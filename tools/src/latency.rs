//! `corestream bench latency`: the command's refusals, the calls into the harness
//! ([`corestream_bench::latency`]) — in this process, or with `--processes N` as the job type
//! `bench-latency` ([`register`]) on a JobManager here and N TaskManager processes
//! ([`crate::cluster_run`]) — and the lines and report files of the run.

use std::path::Path;
use std::time::Duration;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::Parser;
use corestream::registry::{JobContext, JobParts, JobRegistry, JobType};
use corestream::StreamEnvironment;
use corestream_bench::latency::{self, Feeder, LatencyQuery, LatencyReport, LatencySettings};

use crate::args::Common;

/// The job type `bench latency --processes` runs.
pub const JOB_TYPE: &str = "bench-latency";

/// `--query`: q0 or q5, with each one's description in `--help`.
pub fn query_parser() -> impl TypedValueParser<Value = LatencyQuery> {
    PossibleValuesParser::new(LatencyQuery::ALL.map(|q| PossibleValue::new(q.name()).help(q.about())))
        .try_map(|s| s.parse::<LatencyQuery>())
}

/// `--feeder`: source or host.
pub fn feeder_parser() -> impl TypedValueParser<Value = Feeder> {
    PossibleValuesParser::new(Feeder::ALL.map(|f| PossibleValue::new(f.name()).help(f.about())))
        .try_map(|s| s.parse::<Feeder>())
}

/// The arguments of the job type `bench-latency` (q0 across TaskManager processes).
#[derive(Parser, Debug)]
#[command(name = "bench-latency", no_binary_name = true)]
struct JobArgs {
    #[arg(long, value_parser = crate::bench::parse_rate)]
    rate: u64,
    #[arg(long, value_parser = crate::args::parse_positive_duration)]
    duration: Duration,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, value_parser = feeder_parser(), default_value = "source")]
    feeder: Feeder,
    #[arg(long, value_parser = crate::args::parse_duration)]
    buffer_timeout: Option<Duration>,
}

impl JobArgs {
    fn settings(&self) -> LatencySettings {
        LatencySettings {
            query: LatencyQuery::Q0,
            rate: self.rate,
            duration: self.duration,
            seed: self.seed,
            baseline: false,
            feeder: self.feeder,
        }
    }
}

/// The arguments of the job for `settings` and `common`.
fn job_args(settings: &LatencySettings, common: &Common) -> Vec<String> {
    let mut args = vec![
        "--rate".to_string(),
        settings.rate.to_string(),
        "--duration".to_string(),
        format!("{}ns", settings.duration.as_nanos()),
        "--seed".to_string(),
        settings.seed.to_string(),
        "--feeder".to_string(),
        settings.feeder.name().to_string(),
    ];
    if let Some(t) = common.buffer_timeout {
        args.extend(["--buffer-timeout".to_string(), format!("{}ns", t.as_nanos())]);
    }
    args
}

fn build_job(env: &mut StreamEnvironment, ctx: &JobContext<'_>) -> Result<JobParts, String> {
    let a = JobArgs::try_parse_from(ctx.args).map_err(|e| e.render().to_string().trim_end().to_string())?;
    if let Some(t) = a.buffer_timeout {
        env.set_buffer_timeout(t);
    }
    let p = env.config().parallelism.ok_or("the job needs its parallelism to count its sink subtasks")?;
    let part = latency::build(env, &a.settings(), p, &ctx.signals, ctx.planning).map_err(|e| e.to_string())?;
    if ctx.planning {
        return Ok(JobParts::none());
    }
    Ok(JobParts::with_accumulators(move || part.finish().map_err(|e| e.to_string())))
}

/// Registers the job type [`JOB_TYPE`].
pub fn register(registry: &mut JobRegistry) {
    registry.register(JobType::new(
        JOB_TYPE,
        "Nexmark q0 offered at a fixed rate against a schedule; latency from each record's scheduled time to its \
         sink (the job of `bench latency --processes`); accumulators latency.*",
        "--rate N --duration D [--seed S] [--feeder source|host] [--buffer-timeout D]",
        build_job,
    ));
}

/// Exits with status 2, as clap does for an invalid option, with `message`.
fn refuse(kind: clap::error::ErrorKind, message: String) -> ! {
    clap::Error::raw(kind, format!("{message}\n")).exit()
}

/// `corestream bench latency`: refuses impossible settings (exit status 2), runs, prints the
/// figures and writes the requested files.
pub fn run(
    settings: &LatencySettings,
    json: Option<&Path>,
    hdr_log: Option<&Path>,
    plot: Option<&Path>,
    common: &Common,
) -> anyhow::Result<()> {
    if let Err(e) = settings.records() {
        refuse(clap::error::ErrorKind::ValueValidation, e.to_string());
    }
    if common.processes > 1 && settings.query != LatencyQuery::Q0 {
        refuse(
            clap::error::ErrorKind::ArgumentConflict,
            format!(
                "--query {} runs in one process; only q0 runs across TaskManager processes (--processes {})",
                settings.query.name(),
                common.processes
            ),
        );
    }
    // The baseline runs first, before any cluster starts.
    let baseline = if settings.baseline { Some(latency::measure_baseline(settings)?) } else { None };
    let mut report = if common.processes > 1 {
        let (parallelism, _) = crate::cluster_run::slots(common)?;
        let outcome = crate::cluster_run::run(common, JOB_TYPE, job_args(settings, common))?;
        let mut report =
            LatencyReport::from_accumulators(settings, parallelism, common.processes, &outcome.accumulators)?;
        report.warnings = outcome.warnings;
        report
    } else {
        let cluster = common.cluster()?;
        let p = common.parallelism.unwrap_or(cluster.num_slots());
        latency::measure(common.environment(&cluster), settings, p)?
    };
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    report.baseline = baseline;
    println!("{}", report.lines());
    let mut files = Vec::new();
    if let Some(path) = json {
        files.push((path.to_path_buf(), report.json()?.into_bytes()));
    }
    if let Some(path) = hdr_log {
        files.push((path.to_path_buf(), report.hdr_log()?));
    }
    if let Some(path) = plot {
        files.push((path.to_path_buf(), report.svg().into_bytes()));
    }
    crate::outputs::commit_all(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_arguments_round_trip() {
        let settings = LatencySettings {
            query: LatencyQuery::Q0,
            rate: 20_000,
            duration: Duration::from_millis(1500),
            seed: 7,
            baseline: true,
            feeder: Feeder::Host,
        };
        #[derive(Parser)]
        struct Options {
            #[command(flatten)]
            common: Common,
        }
        let common = Options::try_parse_from(["x", "--buffer-timeout", "250us"]).unwrap().common;
        let parsed = JobArgs::try_parse_from(job_args(&settings, &common)).unwrap();
        let back = parsed.settings();
        assert_eq!((back.rate, back.duration, back.seed, back.feeder), (20_000, settings.duration, 7, Feeder::Host));
        assert_eq!(parsed.buffer_timeout, Some(Duration::from_micros(250)));
        let e = JobArgs::try_parse_from(["--rate", "0", "--duration", "1s"]).unwrap_err().to_string();
        assert!(e.contains("at least 1 record/s"), "{e}");
    }
}
