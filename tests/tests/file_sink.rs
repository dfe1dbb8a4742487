//! The exactly-once file sink in whole jobs without checkpoints (one part per subtask,
//! committed when the job has succeeded, replacing an earlier run's output) and the source rate
//! setting.

use corestream::{FileSinkOptions, JobError};
use corestream_tests::cluster;

fn read_parts(dir: &std::path::Path) -> (Vec<String>, Vec<u64>) {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    let mut values: Vec<u64> = names
        .iter()
        .flat_map(|n| {
            std::fs::read_to_string(dir.join(n)).unwrap().lines().map(|l| l.parse().unwrap()).collect::<Vec<_>>()
        })
        .collect();
    values.sort();
    (names, values)
}

#[test]
fn each_subtask_commits_one_part_when_the_job_succeeds_and_replaces_an_earlier_run() {
    let cluster = cluster(2);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    for (run, n) in [(0u64, 1000u64), (1, 10)] {
        let mut env = cluster.environment();
        env.set_parallelism(2);
        env.from_sequence(0..n).map(move |v| v + run * 1_000_000).sink_to_files(&dir, FileSinkOptions::default());
        env.execute("file sink").unwrap();
        let (names, values) = read_parts(&dir);
        assert_eq!(names, ["part-0-0000000000", "part-1-0000000000"], "run {run}");
        assert_eq!(values, (0..n).map(|v| v + run * 1_000_000).collect::<Vec<_>>(), "run {run}");
    }
}

#[test]
fn a_failed_job_leaves_the_earlier_output_as_it_was() {
    let cluster = cluster(1);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    let mut env = cluster.environment();
    env.set_parallelism(1);
    env.from_sequence(0..5).sink_to_files(&dir, FileSinkOptions::default());
    env.execute("first").unwrap();
    let before = read_parts(&dir);

    let mut env = cluster.environment();
    env.set_parallelism(1);
    env.from_sequence(0..100)
        .map(|v| if v == 50 { panic!("fails on purpose") } else { v })
        .sink_to_files(&dir, FileSinkOptions::default());
    assert!(env.execute("second").is_err());
    assert_eq!(read_parts(&dir), before);
}

#[test]
fn a_throttled_job_emits_every_record_and_a_rate_of_zero_is_refused() {
    let cluster = cluster(2);
    let mut env = cluster.environment();
    env.set_parallelism(2).set_source_rate(Some(1_000_000));
    let out = env.from_sequence(0..20_000).collect();
    let handle = env.execute_async("throttled").unwrap();
    let mut got: Vec<u64> = out.collect();
    handle.join().unwrap();
    got.sort();
    assert_eq!(got, (0..20_000).collect::<Vec<_>>());

    let mut env = cluster.environment();
    env.set_source_rate(Some(0));
    env.from_sequence(0..10).discard();
    match env.execute("zero rate") {
        Err(JobError::InvalidJob(m)) => assert!(m.contains("source rate of 0"), "{m}"),
        other => panic!("expected an invalid job, got {other:?}"),
    }
}
