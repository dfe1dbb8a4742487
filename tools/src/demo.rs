//! `corestream demo`, the main job of the quick start: on one embedded cluster, word count over
//! a generated corpus (checked against a single-threaded count), a keyed sum over generated
//! records (checked against a reference), the throughput benchmarks at 1 slot and at every
//! slot, and the event-time window benchmark (tumbling, sliding and session counts, each
//! checked), side by side in the same run.

use std::collections::HashMap;
use std::io::BufWriter;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use corestream::{ClusterConfig, LocalCluster};
use corestream_bench::corpus::write_corpus;
use corestream_bench::examples::{self, checksum, reference_sum_by_key, reference_wordcount};
use corestream_bench::throughput::{
    finish, report, start_keyed_sum, start_passthrough, start_window, window_expected_total, BenchReport, SequenceSplit,
};

use crate::args::{parse_bounded, parse_keys, parse_positive_count, parse_slots};
use crate::bench::print_report;
use crate::limits::CORPUS_MB_MAX;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Size of the generated word-count corpus, in MB.
    #[arg(long, default_value = "64", value_parser = parse_corpus_mb)]
    corpus_mb: u64,
    /// Records of the keyed sum.
    #[arg(long, default_value = "10M", value_parser = parse_positive_count)]
    records: u64,
    /// Events of each benchmark run.
    #[arg(long, default_value = "200M", value_parser = parse_positive_count)]
    events: u64,
    /// Events of each window benchmark run.
    #[arg(long, default_value = "20M", value_parser = parse_positive_count)]
    window_events: u64,
    /// Keys of the keyed sum and keyed benchmark.
    #[arg(long, default_value = "10k", value_parser = parse_keys)]
    keys: u64,
    /// Slots of the cluster (default: one per physical core).
    #[arg(long, value_parser = parse_slots)]
    pub slots: Option<u32>,
}

/// `--corpus-mb`: 1 to [`CORPUS_MB_MAX`].
fn parse_corpus_mb(s: &str) -> Result<u64, String> {
    parse_bounded(s, "MB", CORPUS_MB_MAX)
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let cluster = LocalCluster::start(ClusterConfig { slots: args.slots, ..Default::default() })
        .context("cannot start the local cluster")?;
    let slots = cluster.num_slots();
    println!(
        "corestream demo: local cluster with {slots} slot(s) pinned to CPUs {:?} ({} physical cores), {} network buffers of 32 KB",
        cluster.slot_cpus(),
        cluster.physical_cores(),
        cluster.pool().capacity()
    );

    let dir = std::env::temp_dir().join(format!("corestream-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let outcome = demo_jobs(&cluster, &args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

fn demo_jobs(cluster: &LocalCluster, args: &DemoArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    let slots = cluster.num_slots();
    // 1. Word count.
    let corpus = dir.join("corpus.txt");
    let bytes = write_corpus(&mut BufWriter::new(std::fs::File::create(&corpus)?), args.corpus_mb * 1_000_000, 42)?;
    let output: PathBuf = dir.join("counts.tsv");
    let mut env = cluster.environment();
    examples::wordcount(&mut env, &corpus, &output, corestream::InvalidUtf8::Skip);
    let result = env.execute("wordcount")?;
    let got = read_counts(&output)?;
    let expected = reference_wordcount(&std::fs::read(&corpus)?);
    let verified = got == expected;
    let secs = result.wall_time.as_secs_f64();
    println!("\n== word count over {:.1} MB of generated text, parallelism {slots}", bytes as f64 / 1e6);
    println!(
        "{} lines, {} words, {} distinct; {:.3} s = {:.1} MB/s, {:.2} M words/s; equals the single-threaded count: {}",
        result.records_in("Tokenize"),
        result.records_in("Count"),
        got.len(),
        secs,
        bytes as f64 / 1e6 / secs,
        result.records_in("Count") as f64 / 1e6 / secs,
        if verified { "yes" } else { "NO" }
    );
    let mut top: Vec<(&String, &u64)> = got.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let top: Vec<String> = top.iter().take(8).map(|(w, c)| format!("{w}={c}")).collect();
    println!("top words: {}", top.join(" "));
    if !verified {
        bail!("word count differs from the reference");
    }

    // 2. Keyed sum with collected totals.
    let mut env = cluster.environment();
    let totals = examples::sum_by_key(&mut env, args.records, args.keys);
    let handle = env.execute_async("sum-by-key")?;
    let collected: Vec<(u64, u64)> = totals.collect();
    let result = handle.join()?;
    let ok = checksum(collected.iter().copied()) == checksum(reference_sum_by_key(args.records, args.keys));
    println!("\n== keyed sum: {} records over {} keys, parallelism {slots}", args.records, args.keys);
    println!(
        "{:.2} M events/s, checksum {:016x}, equals the reference: {}",
        args.records as f64 / 1e6 / result.wall_time.as_secs_f64(),
        checksum(collected.iter().copied()),
        if ok { "yes" } else { "NO" }
    );
    if !ok {
        bail!("keyed sum differs from the reference");
    }

    // 3. Benchmarks, 1 slot and all slots, in this one run.
    println!("\n== throughput, {} events per run (same machine, same run)", args.events);
    let mut reports: Vec<BenchReport> = Vec::new();
    let mut parallelisms = vec![1];
    if slots > 1 {
        parallelisms.push(slots);
    }
    let env_at = |p: u32| {
        let mut env = cluster.environment();
        env.set_parallelism(p);
        env
    };
    for &p in &parallelisms {
        let r = finish("passthrough", p, args.events, start_passthrough(env_at(p), args.events)?)?;
        print_report(&r);
        reports.push(r);
    }
    let keyed_events = args.events / 4;
    for &p in &parallelisms {
        let r = finish("keyed-sum", p, keyed_events, start_keyed_sum(env_at(p), keyed_events, args.keys)?)?;
        print_report(&r);
        reports.push(r);
    }
    if let Some(bad) = reports.iter().find(|r| r.count != r.events) {
        bail!("{} at parallelism {} counted {} of {} events", bad.name, bad.parallelism, bad.count, bad.events);
    }
    if parallelisms.len() == 2 {
        for name in ["passthrough", "keyed-sum"] {
            let rate =
                |p: u32| reports.iter().find(|r| r.name == name && r.parallelism == p).map(|r| r.events_per_sec());
            if let (Some(one), Some(all)) = (rate(1), rate(slots)) {
                println!("scaling {name}: {slots} slots / 1 slot = {:.2}x", all / one);
            }
        }
    }

    // 4. Event-time windows: count per key and window, 1 slot and all slots.
    println!(
        "\n== event-time windows: {} events over {} keys, event time v/10 ms, monotonic watermarks",
        args.window_events, args.keys
    );
    for spec in ["tumbling:10s", "sliding:10s/2s", "session:5s"] {
        let assigner = crate::bench::parse_window_assigner(spec).map_err(anyhow::Error::msg)?.assigner;
        let mut rates = Vec::new();
        for &p in &parallelisms {
            let (handle, total) =
                start_window(env_at(p), args.window_events, args.keys, assigner, SequenceSplit::Interleaved)?;
            let mut r = report(spec, p, args.window_events, handle.join()?);
            r.count = total.load(std::sync::atomic::Ordering::Relaxed);
            let expected = window_expected_total(args.window_events, assigner);
            print_report(&r);
            if r.count != expected {
                bail!("{spec} at parallelism {p}: window counts sum to {}, expected {expected}", r.count);
            }
            rates.push(r.events_per_sec());
        }
        if let [one, all] = rates[..] {
            println!("scaling {spec}: {slots} slots / 1 slot = {:.2}x", all / one);
        }
    }
    if let Some(peak) = corestream_bench::throughput::peak_rss_bytes() {
        println!("peak memory of this process (RSS): {:.1} MB", peak as f64 / 1e6);
    }
    println!("\nFor reference (issue figures): Apache Flink 2.3 on a 2-core machine, parallelism 2: passthrough ≈ 13 M events/s; tumbling 10 s count over 10,000 keys ≈ 1.7 M events/s with ≈ 2.8 GB peak memory.");
    Ok(())
}

fn read_counts(path: &std::path::Path) -> anyhow::Result<HashMap<String, u64>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read '{}'", path.display()))?;
    let mut counts = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let (w, c) = line.split_once('\t').with_context(|| format!("line {} of the output has no tab", i + 1))?;
        let c: u64 = c.parse().with_context(|| format!("line {} of the output has a bad count", i + 1))?;
        if counts.insert(w.to_string(), c).is_some() {
            bail!("word '{w}' appears twice in the output");
        }
    }
    Ok(counts)
}
