//! `corestream bench passthrough|keyed-sum|window`: throughput of the benchmark jobs, in
//! events/s over the job's wall time.

use clap::Subcommand;
use corestream_bench::throughput::{
    peak_rss_bytes, report, start_keyed_sum, start_passthrough, start_window, window_expected_total, BenchReport,
    SequenceSplit,
};
use corestream_bench::window_agg::parse_window_spec;
use corestream_bench::window_model::WindowSpec;

use crate::args::{parse_positive_count, Common};
use crate::progress::join_with_progress;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// sequence 0..N → map (v mod 1000) × 908 / 1000 → filter ≥ 0 → count → discard.
    Passthrough {
        #[arg(long, value_parser = parse_positive_count)]
        events: u64,
        #[command(flatten)]
        common: Common,
    },
    /// sequence 0..N keyed by (v × 7919) mod K → running sum per key (through the exchange).
    KeyedSum {
        #[arg(long, value_parser = parse_positive_count)]
        events: u64,
        #[arg(long, value_parser = parse_positive_count)]
        keys: u64,
        #[command(flatten)]
        common: Common,
    },
    /// sequence 0..N, key (v × 7919) mod K, event time v / 10 ms (monotonic watermarks),
    /// counted per key and event-time window; the sink sums the counts as a check.
    Window {
        #[arg(long, value_parser = parse_positive_count)]
        events: u64,
        #[arg(long, value_parser = parse_positive_count)]
        keys: u64,
        /// tumbling:10s, sliding:10s/2s or session:5s (optionally @OFFSET for tumbling/sliding).
        #[arg(long, value_parser = parse_window_assigner)]
        window: corestream::WindowAssigner,
        /// Split the sequence into contiguous ranges per source subtask instead of
        /// interleaving it (at parallelism > 1 later ranges then wait in state for the
        /// watermark of earlier ones).
        #[arg(long)]
        contiguous: bool,
        #[command(flatten)]
        common: Common,
    },
}

/// An event-time window assigner from a window spec.
pub fn parse_window_assigner(s: &str) -> Result<corestream::WindowAssigner, String> {
    use corestream::WindowAssigner;
    let assigner = match parse_window_spec(s).map_err(|e| e.to_string())? {
        WindowSpec::Tumbling { size, offset } => {
            WindowAssigner::Tumbling { size, offset, event_time: true }
        }
        WindowSpec::Sliding { size, slide, offset } => {
            WindowAssigner::Sliding { size, slide, offset, event_time: true }
        }
        WindowSpec::Session { gap } => WindowAssigner::Session { gap, event_time: true },
    };
    assigner.validate().map_err(|e| format!("window spec '{s}': {e}"))?;
    Ok(assigner)
}

pub fn print_report(r: &BenchReport) {
    let rate = r.events_per_sec();
    println!(
        "{}: parallelism {}, {} events, count {}, wall {:.3} s, {:.2} M events/s ({:.2} M events/s per slot)",
        r.name,
        r.parallelism,
        r.events,
        r.count,
        r.wall_time.as_secs_f64(),
        rate / 1e6,
        rate / 1e6 / r.parallelism as f64
    );
    let buffers: u64 = r.result.tasks.iter().map(|t| t.buffers_out).sum();
    if buffers > 0 {
        let bytes: u64 = r.result.tasks.iter().map(|t| t.bytes_out).sum();
        let waits: u64 = r.result.tasks.iter().map(|t| t.backpressure_waits).sum();
        println!(
            "  exchange: {buffers} buffers, {:.1} MB ({:.2} GB/s), {:.1} KB per buffer, backpressure waits {waits}",
            bytes as f64 / 1e6,
            bytes as f64 / 1e9 / r.wall_time.as_secs_f64(),
            bytes as f64 / buffers as f64 / 1e3
        );
    }
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    let (report, ok) = match cmd {
        BenchCommand::Passthrough { events, common } => {
            let cluster = common.cluster()?;
            let p = common.parallelism.unwrap_or(cluster.num_slots());
            let handle = start_passthrough(&cluster, events, p)?;
            let r = report("passthrough", p, events, join_with_progress(handle, "passthrough", Some(events))?);
            let ok = r.count == events;
            (r, ok)
        }
        BenchCommand::KeyedSum { events, keys, common } => {
            let cluster = common.cluster()?;
            let p = common.parallelism.unwrap_or(cluster.num_slots());
            let handle = start_keyed_sum(&cluster, events, keys, p)?;
            let r = report("keyed-sum", p, events, join_with_progress(handle, "keyed-sum", Some(events))?);
            let ok = r.count == events;
            (r, ok)
        }
        BenchCommand::Window { events, keys, window, contiguous, common } => {
            let cluster = common.cluster()?;
            let p = common.parallelism.unwrap_or(cluster.num_slots());
            let split = if contiguous { SequenceSplit::Contiguous } else { SequenceSplit::Interleaved };
            let (handle, total) = start_window(&cluster, events, keys, window, split, p)?;
            let mut r = report("window", p, events, join_with_progress(handle, "window", Some(events))?);
            r.count = total.load(std::sync::atomic::Ordering::Relaxed);
            let expected = window_expected_total(events, window);
            let peak = peak_rss_bytes().map_or("unknown".to_string(), |b| format!("{:.1} MB", b as f64 / 1e6));
            let windows = r.result.operator("Window Count").map_or(0, |o| o.records_out);
            println!("window: {window:?}, {keys} keys, {windows} window results, peak memory (RSS) {peak}");
            println!("check: sum of window counts {} (expected {expected})", r.count);
            let ok = r.count == expected;
            if !ok {
                print_report(&r);
                anyhow::bail!("the window counts sum to {}, expected {expected}", r.count);
            }
            (r, ok)
        }
    };
    print_report(&report);
    if !ok {
        anyhow::bail!("the sink counted {} records, expected {}", report.count, report.events);
    }
    Ok(())
}
