use corestream::{ClusterConfig, LocalCluster};

#[test]
fn sequence_map_filter_discard() {
    let cluster = LocalCluster::start(ClusterConfig { slots: Some(2), ..Default::default() }).unwrap();
    let env = cluster.environment();
    env.from_sequence(0..1_000_000).map(|v| (v % 1000) as i64 * 908 / 1000).filter(|v| *v >= 0).discard();
    let result = env.execute("smoke").unwrap();
    println!("{result}");
    assert_eq!(result.records_in("Sink"), 1_000_000);
}

#[test]
fn keyed_sum_through_exchange() {
    let cluster = LocalCluster::start(ClusterConfig { slots: Some(2), ..Default::default() }).unwrap();
    let mut env = cluster.environment();
    env.set_runtime_mode(corestream::RuntimeMode::Batch);
    let out = env
        .from_sequence(0..100_000)
        .map(|v| ((v * 7919) % 10, v))
        .key_by(|r: &(u64, u64)| r.0)
        .reduce(|a, b| (a.0, a.1 + b.1))
        .collect();
    let handle = env.execute_async("keyed").unwrap();
    let mut totals: Vec<(u64, u64)> = out.collect();
    let result = handle.join().unwrap();
    println!("{result}");
    totals.sort();
    let mut expect = vec![0u64; 10];
    for v in 0..100_000u64 {
        expect[((v * 7919) % 10) as usize] += v;
    }
    assert_eq!(totals, expect.iter().enumerate().map(|(k, s)| (k as u64, *s)).collect::<Vec<_>>());
    assert_eq!(cluster.pool().in_use(), 0);
}
