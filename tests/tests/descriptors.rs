//! Jobs release their file descriptors: a long-lived process runs many jobs. Alone in its test
//! binary, because it counts the descriptors of the whole process (tests running beside it in
//! the same process would open their own).

use corestream_tests::cluster;

/// Regression: every job used to leak one eventfd per slot for the life of the process — glommio
/// 0.9 task headers held an `Arc` of their executor's `SleepNotifier` (DataDog/glommio#448), and
/// a long-lived process running many jobs ended with "Too many open files" at slot start (seen
/// with `PROPTEST_CASES=1000` on this file). The vendored glommio now keeps an executor id in
/// task headers instead (third_party/glommio/PATCHES.md).
#[test]
fn jobs_do_not_leak_file_descriptors() {
    let cluster = cluster(2);
    let open_fds = || std::fs::read_dir("/proc/self/fd").expect("procfs").count();
    let job = || {
        let mut env = cluster.environment();
        env.set_parallelism(2);
        env.from_sequence(0..10).discard();
        env.execute("descriptors").expect("job succeeds");
    };
    job();
    let before = open_fds();
    for _ in 0..20 {
        job();
    }
    let leaked = open_fds().saturating_sub(before);
    let kinds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .expect("procfs")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    assert!(leaked < 10, "20 jobs on 2 slots left {leaked} more file descriptors open: {kinds:?}");
}
