//! Exactly-once, black box: `run sum-by-key` and `run window-agg` with checkpoints every 200 ms,
//! writing through the exactly-once file sink and slowed by `--source-rate` so that a run takes
//! a few seconds, are killed with SIGKILL at moments drawn from a seed, several times, each time
//! followed by a rerun with `--resume`; the committed output, sorted, must be byte-identical to
//! that of a run without failures — in aligned and unaligned mode, at parallelism 1, 2 and 4, in
//! one process and on a JobManager with two TaskManager processes (one of which is killed while
//! the job runs: the job restarts on the other from its latest checkpoint).
//!
//! Each scenario also checks that a kill came after a complete checkpoint (so a rerun really
//! restored state rather than starting over) and that no hidden in-progress part is left in an
//! output directory once the job has finished. The scenarios run one at a time (the machine has
//! two cores and the kill moments are relative to a run's start).

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::group::{self, Running};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A small deterministic generator (xorshift64*): the kill moments and the input of a seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// How long a run may take before the test fails (a hung job).
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// How many times a scenario kills its job before letting it finish.
const KILLS: usize = 3;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Aligned,
    Unaligned,
}

/// What to kill while the job runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Victim {
    /// The `corestream run` process and everything it started.
    Everything,
    /// TaskManager process 1 first (the job must recover by itself), then everything.
    TaskManagerThenEverything,
}

/// The non-empty lines of every visible part file in `dir`, sorted; fails if a hidden
/// in-progress part is left.
fn committed_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display())) {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with('.'), "{}: a hidden part is left after the job finished: {name}", dir.display());
        let text = std::fs::read_to_string(entry.path()).unwrap();
        lines.extend(text.lines().filter(|l| !l.is_empty()).map(String::from));
    }
    lines.sort();
    lines
}

/// At most 10 lines of `a` that `b` lacks (both sorted), for messages.
fn only_in<'a>(a: &'a [String], b: &[String]) -> Vec<&'a str> {
    a.iter().filter(|l| b.binary_search(l).is_err()).take(10).map(String::as_str).collect()
}

fn has_complete_checkpoint(ck: &Path) -> bool {
    std::fs::read_dir(ck)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("chk-") && e.path().join("_metadata").is_file())
        })
        .unwrap_or(false)
}

/// The pid of TaskManager process `index`, from the line `run` writes when it starts it.
fn taskmanager_pid(run: &mut Running, index: u32) -> libc::pid_t {
    let line = run.stderr_line(&format!("TaskManager {index} started (pid "), Duration::from_secs(30));
    let pid = line.rsplit("(pid ").next().and_then(|s| s.trim_end_matches(')').parse().ok());
    pid.unwrap_or_else(|| panic!("no pid in {line:?}"))
}

/// Runs `args` (plus `--resume CK` after the first run) until it has been killed [`KILLS`]
/// times at moments drawn from `rng` between 0.4 and 2.2 s after its start (a run that ends
/// first must have succeeded), then once more to its end; returns whether some kill came after
/// a complete checkpoint.
fn run_with_kills(args: &[String], ck: &Path, victim: Victim, rng: &mut Rng) -> bool {
    let mut restored_state = false;
    let resume = ["--resume".to_string(), ck.display().to_string()];
    for k in 0..KILLS {
        let mut line: Vec<&str> = args.iter().map(String::as_str).collect();
        if k > 0 {
            line.extend(resume.iter().map(String::as_str));
        }
        let mut run = group::start(&line);
        if victim == Victim::TaskManagerThenEverything && k == 0 {
            let tm = taskmanager_pid(&mut run, 1);
            std::thread::sleep(Duration::from_millis(500 + rng.below(1000)));
            restored_state |= has_complete_checkpoint(ck);
            // SAFETY: signalling a process of the group this test started.
            unsafe { libc::kill(tm, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(400 + rng.below(1800)));
        let before = has_complete_checkpoint(ck);
        if run.has_ended() {
            let out = run.finish_within(RUN_LIMIT);
            group::assert_status(&out, 0);
            return restored_state;
        }
        restored_state |= before;
        run.kill_group();
    }
    let mut line: Vec<&str> = args.iter().map(String::as_str).collect();
    line.extend(resume.iter().map(String::as_str));
    let out = group::start(&line).finish_within(RUN_LIMIT);
    group::assert_status(&out, 0);
    restored_state
}

fn checkpoint_args(ck: &Path, mode: Mode) -> Vec<String> {
    let mut a =
        vec!["--checkpoint-interval".into(), "200ms".into(), "--checkpoint-dir".into(), ck.display().to_string()];
    if mode == Mode::Unaligned {
        a.push("--unaligned".into());
    }
    a
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}

/// sum-by-key: the committed totals equal the reference's, each key once.
fn sum_by_key(seed: u64, mode: Mode, parallelism: u32, processes: u32) {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let (ck, out) = (dir.path().join("ck"), dir.path().join("out"));
    let mut rng = Rng::new(seed);
    let keys = 200 + rng.below(800);
    let records: u64 = 120_000;
    // About 3 s per run whatever the parallelism: the rate is per source subtask.
    let rate = records / 3 / u64::from(parallelism);
    let p = parallelism.to_string();
    let mut args = strings(&["run", "sum-by-key", "--records"]);
    args.extend([records.to_string(), "--keys".into(), keys.to_string(), "--output".into(), out.display().to_string()]);
    args.extend(["--source-rate".into(), rate.to_string(), "-p".into(), p.clone()]);
    let victim = if processes > 1 {
        let slots = parallelism.max(2).to_string();
        args.extend(["--processes".into(), processes.to_string(), "--slots".into(), slots]);
        Victim::TaskManagerThenEverything
    } else {
        args.extend(["--slots".into(), p]);
        Victim::Everything
    };
    args.extend(checkpoint_args(&ck, mode));
    let restored = run_with_kills(&args, &ck, victim, &mut rng);
    assert!(restored, "seed {seed}: no kill came after a complete checkpoint; the scenario restored nothing");
    let mut want: Vec<String> = corestream_bench::examples::reference_sum_by_key(records, keys)
        .into_iter()
        .map(|(k, t)| format!("{k},{t}"))
        .collect();
    want.sort();
    let got = committed_lines(&out);
    assert_eq!(got.len(), want.len(), "seed {seed}: one line per key");
    assert!(got == want, "seed {seed} ({mode:?}, p={parallelism}): the committed totals differ from the reference");
}

/// A CSV input of `rows` rows drawn from `rng`: 50 keys, timestamps advancing with up to 3 s of
/// disorder (so some rows are late), and a few malformed rows.
fn write_input(path: &Path, rows: u64, rng: &mut Rng) {
    let mut text = String::from("user,ts,amount\n");
    let mut t: i64 = 1_700_000_000_000;
    for i in 0..rows {
        t += rng.below(20) as i64;
        let ts = t - rng.below(3000) as i64;
        text.push_str(&format!("u{},{ts},{}\n", rng.below(50), 1 + rng.below(100)));
        if i % 20_000 == 11 {
            text.push_str("broken,row\n");
        }
    }
    std::fs::write(path, text).unwrap();
}

/// window-agg: the committed results, late rows and rejected rows equal those of a run
/// without checkpoints (sorted, without their headers).
fn window_agg(seed: u64, mode: Mode, parallelism: u32) {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| -> PathBuf { dir.path().join(name) };
    let mut rng = Rng::new(seed);
    let rows = 90_000;
    write_input(&d("in.csv"), rows, &mut rng);
    let window = ["tumbling:1s", "sliding:2s/500ms", "session:300ms"][rng.below(3) as usize];
    let job = |output: &Path, late: &Path, rejected: &Path| -> Vec<String> {
        let mut a = strings(&["run", "window-agg", "--input"]);
        a.push(d("in.csv").display().to_string());
        a.extend(strings(&["--key", "user", "--time", "ts", "--window", window, "--out-of-orderness", "1s"]));
        a.extend(strings(&["--allowed-lateness", "500ms", "--agg", "sum:amount", "--output"]));
        a.extend([output.display().to_string(), "--late-output".into(), late.display().to_string()]);
        a.extend(["--rejected-output".into(), rejected.display().to_string()]);
        a
    };
    let p = parallelism.to_string();
    let mut reference = job(&d("ref.csv"), &d("ref-late.csv"), &d("ref-rejected.csv"));
    reference.extend(["-p".into(), p.clone(), "--slots".into(), p.clone()]);
    let out = group::start(&reference.iter().map(String::as_str).collect::<Vec<_>>()).finish_within(RUN_LIMIT);
    group::assert_status(&out, 0);
    let body = |path: PathBuf| -> Vec<String> {
        let mut lines: Vec<String> = std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .skip(1)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        lines.sort();
        lines
    };

    let ck = d("ck");
    let mut args = job(&d("out"), &d("late"), &d("rejected"));
    args.extend(["-p".into(), p.clone(), "--slots".into(), p, "--source-rate".into(), (rows / 3).to_string()]);
    args.extend(checkpoint_args(&ck, mode));
    let restored = run_with_kills(&args, &ck, Victim::Everything, &mut rng);
    assert!(restored, "seed {seed}: no kill came after a complete checkpoint; the scenario restored nothing");
    for (name, reference) in [("out", "ref.csv"), ("late", "ref-late.csv"), ("rejected", "ref-rejected.csv")] {
        let (got, want) = (committed_lines(&d(name)), body(d(reference)));
        if name == "out" {
            assert!(!want.is_empty(), "seed {seed}: the reference {reference} is empty; the input tests nothing");
        }
        assert!(
            got == want,
            "seed {seed} ({mode:?}, p={parallelism}, {window}): {name} differs from the run without failures \
             ({} lines against {}); only there: {:?}; only in the reference: {:?}",
            got.len(),
            want.len(),
            only_in(&got, &want),
            only_in(&want, &got)
        );
    }
}

#[test]
fn sum_by_key_aligned_p1_survives_kills() {
    sum_by_key(1, Mode::Aligned, 1, 1);
}

#[test]
fn sum_by_key_unaligned_p2_survives_kills() {
    sum_by_key(2, Mode::Unaligned, 2, 1);
}

#[test]
fn sum_by_key_aligned_p4_survives_kills() {
    sum_by_key(3, Mode::Aligned, 4, 1);
}

#[test]
fn sum_by_key_unaligned_p4_survives_kills() {
    sum_by_key(4, Mode::Unaligned, 4, 1);
}

#[test]
fn window_agg_aligned_p2_survives_kills() {
    window_agg(5, Mode::Aligned, 2);
}

#[test]
fn window_agg_unaligned_p1_survives_kills() {
    window_agg(6, Mode::Unaligned, 1);
}

#[test]
fn window_agg_unaligned_p4_survives_kills() {
    window_agg(7, Mode::Unaligned, 4);
}

#[test]
fn window_agg_aligned_p4_survives_kills() {
    window_agg(8, Mode::Aligned, 4);
}

#[test]
fn two_taskmanagers_unaligned_p2_survive_a_lost_taskmanager_and_kills() {
    sum_by_key(9, Mode::Unaligned, 2, 2);
}

#[test]
fn two_taskmanagers_aligned_p4_survive_a_lost_taskmanager_and_kills() {
    sum_by_key(10, Mode::Aligned, 4, 2);
}
