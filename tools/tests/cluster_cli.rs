//! The cluster runtime across processes, driven only through the command line: a
//! `corestream jobmanager` (REST and control ports chosen by the kernel, read from the line it
//! prints, authentication with a secret file) and two `corestream taskmanager` processes of two
//! slots each; once both have registered (`GET /v1/taskmanagers`), `corestream submit -p 2`
//! runs `wordcount`, `sum-by-key`, `window-agg` (golden cases of
//! `tools/tests/golden/window-agg/`) and `nexmark --query q5`, and each result must equal the
//! local-mode run's (`corestream run …`, `corestream bench nexmark --checksum`): the sorted word
//! counts, the checksums and key counts, the window-agg files byte for byte with the summary's
//! counts, and the q5 record count and checksum. Each job ran on both TaskManagers (its result
//! lists a data connection).
//!
//! The same runs with the JobManager and TaskManager A in network namespace A and
//! TaskManager B in namespace B, joined only by a veth pair (the veth's byte counters show the
//! exchange crossed it); where namespaces are not permitted (not root, no `ip`, `ip netns add`
//! refused) that test prints `skipped: …` and passes. The command-line client runs in
//! namespace A through `ip netns exec`, and the test reads the REST API from a thread that
//! entered namespace A.
//!
//! Two jobs submitted with `--detached` at once run together on both TaskManagers and give
//! correct results, and the TaskManagers' counters (`data_plane` of
//! `GET /v1/taskmanagers/{id}`) show one data connection between the pair, shared by both.
//!
//! Every process runs in its own process group under a watchdog ([`common::group`]); the roles
//! are stopped with SIGTERM at the end of a test and must exit 0, and whatever is left of a
//! failed test is killed when its handles drop.

mod common;

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::group::{assert_status, line_with, sorted_lines, start_program, write_text, Finished, Running};
use common::netns::{namespaces_refused, Namespaces};
use corestream::client::RestClient;
use corestream::jobmanager::api::{JobState, TaskManagerInfo};
use corestream::rpc::ids::{JobId, TaskManagerId};
use tempfile::TempDir;

/// Longest a command may take before its watchdog kills it.
const HANG_LIMIT: Duration = Duration::from_secs(60);
/// Longest a role may take to print its address line, and the TaskManagers to register.
const START_LIMIT: Duration = Duration::from_secs(20);
const CORESTREAM: &str = env!("CARGO_BIN_EXE_corestream");
const SECRET: &str = "cluster-cli-test-secret-0123456789abcdef";

/// Where a process runs: in this network namespace or, through `ip netns exec`, in a named one.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    Here,
    Netns(String),
}

impl Place {
    /// The program and arguments that run `argv` here.
    fn command(&self, argv: &[&str]) -> (String, Vec<String>) {
        let argv = argv.iter().map(|a| a.to_string());
        match self {
            Place::Here => {
                let mut argv = argv;
                let program = argv.next().expect("a program");
                (program, argv.collect())
            }
            Place::Netns(ns) => {
                ("ip".to_string(), ["netns", "exec", ns].map(String::from).into_iter().chain(argv).collect())
            }
        }
    }

    /// Starts `argv` here in its own process group.
    fn start(&self, argv: &[&str]) -> Running {
        let (program, args) = self.command(argv);
        start_program(&program, &args.iter().map(String::as_str).collect::<Vec<_>>(), &[])
    }

    /// Starts a `corestream` role with its standard output sent to standard error, where
    /// [`Running::stderr_line`] reads it line by line (`sh` and `ip netns exec` both exec, so the
    /// process is the role's).
    fn start_role(&self, role_args: &[&str]) -> Running {
        let mut argv = vec!["sh", "-c", "exec \"$@\" >&2", "sh", CORESTREAM];
        argv.extend_from_slice(role_args);
        self.start(&argv)
    }

    /// Runs `f` on a thread that entered this network namespace (`setns` affects only the
    /// calling thread).
    fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = match self {
            Place::Here => return f(),
            Place::Netns(ns) => ns.clone(),
        };
        std::thread::spawn(move || {
            let path = format!("/run/netns/{ns}");
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
            // SAFETY: setns(2) on an open descriptor of a network namespace; it moves only this
            // thread, which ends when `f` returns.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns into {ns}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("the thread in the namespace panicked")
    }
}

/// A JobManager and two TaskManagers, each a process of the `corestream` binary.
struct Cluster {
    /// Holds the configuration and the secret file.
    _dir: TempDir,
    secret: PathBuf,
    /// Where the command-line client runs and the REST API is read.
    client_place: Place,
    rest_url: String,
    jm: Option<Running>,
    tms: Vec<Running>,
    tm_ids: Vec<TaskManagerId>,
}

impl Cluster {
    /// Starts the JobManager at `jm_place` (control plane on `rpc_host`, REST on loopback),
    /// then one TaskManager of two slots at each of `tm_places`, and waits until all registered.
    fn start(jm_place: Place, rpc_host: &str, tm_places: &[Place]) -> Cluster {
        let dir = TempDir::new().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let config = dir.path().join("corestream.toml");
        std::fs::write(
            &config,
            format!(
                "jobmanager.rpc.address = \"{rpc_host}\"\njobmanager.rpc.port = 0\nrest.port = 0\n\
                 rest.bind-address = \"127.0.0.1\"\nheartbeat.interval = \"100ms\"\nheartbeat.timeout = \"10s\"\n\
                 [security.cluster]\nsecret-file = \"{}\"\n",
                secret.display()
            ),
        )
        .unwrap();
        let mut jm = jm_place.start_role(&["jobmanager", "--config", config.to_str().unwrap()]);
        // "jobmanager: TaskManagers connect to 127.0.0.1:40123; REST API on http://127.0.0.1:40124"
        let line = jm.stderr_line("REST API on", START_LIMIT);
        let rpc = line.split("connect to ").nth(1).and_then(|r| r.split(';').next()).expect("the control address");
        let rest_port = line.rsplit(':').next().expect("the REST port").trim().to_string();
        let rest_url = format!("http://127.0.0.1:{rest_port}");
        let mut cluster = Cluster {
            _dir: dir,
            secret,
            client_place: jm_place,
            rest_url,
            jm: Some(jm),
            tms: Vec::new(),
            tm_ids: Vec::new(),
        };
        for place in tm_places {
            let mut tm = place.start_role(&[
                "taskmanager",
                "--jobmanager",
                rpc,
                "--slots",
                "2",
                "--config",
                config.to_str().unwrap(),
            ]);
            // "taskmanager 5f3c…: 2 slot(s), data on 127.0.0.1:40125"
            let line = tm.stderr_line("slot(s), data on", START_LIMIT);
            let id = line.strip_prefix("taskmanager ").and_then(|l| l.split(':').next()).expect("a TaskManager id");
            cluster.tm_ids.push(id.parse().unwrap_or_else(|e| panic!("{e}: {line}")));
            cluster.tms.push(tm);
        }
        let wanted = cluster.tm_ids.clone();
        cluster.eventually("both TaskManagers registered", move |c| {
            let registered: Vec<TaskManagerId> = c.task_managers().unwrap_or_default().iter().map(|t| t.id).collect();
            wanted.iter().all(|id| registered.contains(id))
        });
        cluster
    }

    /// A REST client of the JobManager with the cluster secret (used where the client runs).
    fn client(&self) -> impl Fn() -> RestClient + Send + 'static {
        let url = self.rest_url.clone();
        move || RestClient::new(&url, Some(SECRET.to_string())).expect("a valid URL")
    }

    /// Runs `f` with a REST client where the command-line client runs.
    fn rest<T: Send + 'static>(&self, f: impl FnOnce(&RestClient) -> T + Send + 'static) -> T {
        let client = self.client();
        self.client_place.enter(move || f(&client()))
    }

    /// Waits until `f` holds (polled every 50 ms with a client in the right namespace), at most
    /// [`START_LIMIT`].
    fn eventually(&self, what: &str, f: impl Fn(&RestClient) -> bool + Send + 'static) {
        let what = what.to_string();
        let ok = self.rest(move |c| {
            let deadline = Instant::now() + START_LIMIT;
            while Instant::now() < deadline {
                if f(c) {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        });
        assert!(ok, "{what} within {START_LIMIT:?}");
    }

    fn task_manager(&self, id: TaskManagerId) -> TaskManagerInfo {
        self.rest(move |c| c.task_manager(id)).unwrap_or_else(|e| panic!("GET /v1/taskmanagers/{id}: {e}"))
    }

    /// `corestream ARGS` where the client runs, under the watchdog.
    fn corestream(&self, args: &[&str]) -> Finished {
        let mut argv = vec![CORESTREAM];
        argv.extend_from_slice(args);
        self.client_place.start(&argv).finish_within(HANG_LIMIT)
    }

    /// `corestream submit [--detached] -p 2 JOB ARGS` against this cluster.
    fn submit(&self, detached: bool, job_and_args: &[&str]) -> Finished {
        let mut args = vec!["submit", "--jobmanager", &self.rest_url, "--secret-file", self.secret.to_str().unwrap()];
        if detached {
            args.push("--detached");
        }
        args.extend_from_slice(&["-p", "2"]);
        args.extend_from_slice(job_and_args);
        self.corestream(&args)
    }

    /// [`Self::submit`] that must succeed; returns the job's accumulators. The job must have
    /// used a data connection (it ran on both TaskManagers).
    #[track_caller]
    fn submit_ok(&self, job_and_args: &[&str]) -> BTreeMap<String, String> {
        let out = self.submit(false, job_and_args);
        assert_status(&out, 0);
        assert!(out.stdout.lines().any(|l| l.starts_with("Job ") && l.contains(" FINISHED in ")), "{}", out.stdout);
        assert!(!section(&out.stdout, "Network:").is_empty(), "the job ran on one TaskManager only:\n{}", out.stdout);
        section(&out.stdout, "Accumulators:")
            .into_iter()
            .map(|l| {
                let (k, v) = l.split_once(": ").unwrap_or_else(|| panic!("not an accumulator: {l}"));
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    /// Stops the TaskManagers, then the JobManager, with SIGTERM; each must exit 0 and leave
    /// no process of its group behind.
    fn stop(mut self) {
        let roles: Vec<Running> = self.tms.drain(..).chain(self.jm.take()).collect();
        for role in roles {
            // SAFETY: kill(2) on the process this test started (it is the leader of its group).
            unsafe { libc::kill(role.pid(), libc::SIGTERM) };
            let out = role.finish_within(START_LIMIT);
            assert_status(&out, 0);
            assert!(!out.leftover, "a process outlived its role:\n{}", out.stderr);
        }
    }
}

/// The indented lines under `title` in `corestream submit`'s output.
fn section(stdout: &str, title: &str) -> Vec<String> {
    stdout
        .lines()
        .skip_while(|l| *l != title)
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.trim().to_string())
        .collect()
}

/// A local-mode `corestream ARGS` in this namespace, which must succeed.
#[track_caller]
fn local(args: &[&str]) -> Finished {
    let out = Place::Here.start(&[&[CORESTREAM], args].concat()).finish_within(HANG_LIMIT);
    assert_status(&out, 0);
    out
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/window-agg")
}

/// The arguments of a golden case with its placeholders replaced: the input of the case, and
/// `{output}`, `{late}` and `{rejected}` as files named after `run` in `dir`.
fn case_args(case: &str, dir: &Path, run: &str) -> Vec<String> {
    let golden = golden_dir();
    let line = std::fs::read_to_string(golden.join(format!("{case}.args"))).unwrap();
    line.split_whitespace()
        .map(|word| match word {
            "{input}" => golden.join(format!("{case}.input.csv")).display().to_string(),
            "{output}" => dir.join(format!("{run}.out.csv")).display().to_string(),
            "{late}" => dir.join(format!("{run}.late.csv")).display().to_string(),
            "{rejected}" => dir.join(format!("{run}.rejected.csv")).display().to_string(),
            other => {
                assert!(!other.contains('{'), "unknown placeholder {other}");
                other.to_string()
            }
        })
        .collect()
}

/// The files a window-agg run wrote in `dir`: the output, the late rows and the rejected rows
/// (by default next to the output), with their contents (absent files left out).
fn written(dir: &Path, run: &str) -> BTreeMap<String, String> {
    ["out.csv", "late.csv", "rejected.csv", "out.csv.rejected.csv"]
        .into_iter()
        .filter_map(|suffix| {
            let text = std::fs::read_to_string(dir.join(format!("{run}.{suffix}"))).ok()?;
            Some((suffix.to_string(), text))
        })
        .collect()
}

/// The counts of `run window-agg`'s summary line, by the cluster job's accumulator names.
fn window_agg_figures(out: &Finished) -> BTreeMap<String, String> {
    // "window-agg: 12 rows read, 1 rejected, 0 late, 9 window results in 0.081 s (job …) -> …"
    let line = line_with(out, "window-agg: ");
    let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    let before = |label: &str| -> String {
        let at = words.iter().position(|w| *w == label).unwrap_or_else(|| panic!("no {label} in {line}"));
        words[at - 1].to_string()
    };
    BTreeMap::from([
        ("rows-read".to_string(), before("rows")),
        ("rows-rejected".to_string(), before("rejected")),
        ("rows-late".to_string(), before("late")),
        ("window-results".to_string(), before("window")),
    ])
}

/// The checksum in `run sum-by-key`'s "checksum 0123abcd… (reference …: match)" line, as
/// `submit` prints an accumulator.
fn sum_by_key_checksum(out: &Finished) -> String {
    let line = line_with(out, "checksum ");
    assert!(line.ends_with(": match)"), "{line}");
    format!("0x{}", line.split(' ').nth(1).unwrap())
}

/// The golden window-agg cases the loopback test runs (the namespaces test runs the first two).
const WINDOW_AGG_CASES: [&str; 5] = ["lateness", "malformed", "session-bridging", "sliding-avg", "tumbling-count"];

/// Runs the four built-in jobs on `cluster` and compares each with its local-mode run;
/// `cases` are the window-agg golden cases.
fn built_in_jobs_match_local_mode(cluster: &Cluster, cases: &[&str]) {
    let dir = TempDir::new().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();

    let input = path("text.txt");
    write_text(Path::new(&input));
    local(&["run", "wordcount", "--input", &input, "--output", &path("local.tsv"), "-p", "2"]);
    cluster.submit_ok(&["wordcount", "--input", &input, "--output", &path("cluster.tsv")]);
    let expected = sorted_lines(Path::new(&path("local.tsv")));
    assert!(expected.len() > 400, "{} distinct words", expected.len());
    assert_eq!(sorted_lines(Path::new(&path("cluster.tsv"))), expected, "wordcount");

    let sum = ["--records", "200k", "--keys", "1000"];
    let one = local(&[&["run", "sum-by-key"], &sum[..], &["-p", "2"]].concat());
    let got = cluster.submit_ok(&[&["sum-by-key"], &sum[..]].concat());
    assert_eq!(got["checksum"], sum_by_key_checksum(&one), "sum-by-key");
    assert_eq!(got["keys"], "1000", "sum-by-key");

    for case in cases {
        let local_args = case_args(case, dir.path(), &format!("{case}-local"));
        let mut argv: Vec<&str> = vec!["run", "window-agg"];
        argv.extend(local_args.iter().map(String::as_str));
        argv.extend_from_slice(&["-p", "2", "--slots", "2"]);
        let one = local(&argv);
        let cluster_args = case_args(case, dir.path(), &format!("{case}-cluster"));
        let mut argv: Vec<&str> = vec!["window-agg"];
        argv.extend(cluster_args.iter().map(String::as_str));
        let got = cluster.submit_ok(&argv);
        let (local_files, cluster_files) =
            (written(dir.path(), &format!("{case}-local")), written(dir.path(), &format!("{case}-cluster")));
        assert!(local_files.contains_key("out.csv"), "{case}: {local_files:?}");
        assert_eq!(cluster_files, local_files, "{case}: the files of the cluster job and of the local run");
        let expected = std::fs::read_to_string(golden_dir().join(format!("{case}.expected.csv"))).unwrap();
        assert_eq!(cluster_files["out.csv"], expected, "{case}: the golden output");
        for (name, value) in window_agg_figures(&one) {
            assert_eq!(got.get(&name), Some(&value), "{case}: {name} in {got:?}");
        }
    }

    let q5 = ["--query", "q5", "--events", "100k"];
    let one = local(&[&["bench", "nexmark"], &q5[..], &["--checksum", "-p", "2"]].concat());
    // "output: 1234 records, checksum 0123456789abcdef"
    let line = line_with(&one, "output: ");
    let records = line.split(' ').nth(1).unwrap();
    let checksum = format!("0x{}", line.rsplit(' ').next().unwrap());
    let got = cluster.submit_ok(&[&["nexmark"], &q5[..]].concat());
    assert_eq!(got["output-records"], records, "q5: {line}");
    assert_eq!(got["output-checksum"], checksum, "q5: {line}");
    assert_ne!(records, "0", "q5 gave no output");
}

#[test]
fn built_in_jobs_on_a_cluster_of_processes_give_the_local_results() {
    let cluster = Cluster::start(Place::Here, "127.0.0.1", &[Place::Here, Place::Here]);
    built_in_jobs_match_local_mode(&cluster, &WINDOW_AGG_CASES);
    cluster.stop();
}

#[test]
fn window_agg_refuses_what_a_cluster_cannot_do_and_fails_on_malformed_rows() {
    let cluster = Cluster::start(Place::Here, "127.0.0.1", &[Place::Here, Place::Here]);
    let dir = TempDir::new().unwrap();
    let args = case_args("malformed", dir.path(), "fail");
    let with = |replace: &str, by: &str| -> Vec<String> {
        let at = args.iter().position(|a| a == replace).unwrap_or_else(|| panic!("no {replace} in {args:?}"));
        let mut a = args.clone();
        a[at + 1] = by.to_string();
        a
    };
    for (argv, message) in [
        (with("--output", "-"), "--output -: on a cluster the results are written by a TaskManager process"),
        (with("--input", "/dev/stdin"), "--input '/dev/stdin' is not a regular file"),
        (with("--key", "nope"), "--key: "),
    ] {
        let mut job = vec!["window-agg"];
        job.extend(argv.iter().map(String::as_str));
        let out = cluster.submit(false, &job);
        assert_status(&out, 1);
        assert!(out.stderr.contains("refused POST /v1/jobs") && out.stderr.contains(message), "{}", out.stderr);
    }

    let mut job = vec!["window-agg"];
    job.extend(args.iter().map(String::as_str));
    job.push("--fail-on-malformed");
    let out = cluster.submit(false, &job);
    assert_status(&out, 1);
    for needle in ["operator 'Sink: rejected rows'", "line 3: missing field 'amount'", "(--fail-on-malformed;"] {
        assert!(out.stderr.contains(needle), "{needle:?} in:\n{}", out.stderr);
    }
    assert!(!out.stderr.contains("line 4"), "only the first bad line is named:\n{}", out.stderr);
    assert_eq!(common::names(dir.path()), Vec::<String>::new(), "a failed job leaves no file behind");
    cluster.stop();
}

#[test]
fn built_in_jobs_across_two_network_namespaces_give_the_local_results() {
    if let Some(reason) = namespaces_refused() {
        println!("skipped: network namespaces are not permitted here: {reason}");
        return;
    }
    let ns = Namespaces::create("c", 232);
    let (a, b) = (Place::Netns(ns.a.clone()), Place::Netns(ns.b.clone()));
    let cluster = Cluster::start(a.clone(), &ns.ip_a, &[a, b]);
    let in_b = cluster.task_manager(cluster.tm_ids[1]);
    assert!(in_b.data_address.starts_with(&format!("{}:", ns.ip_b)), "TaskManager B: {in_b:?}");
    let (tx_before, rx_before) = ns.veth_bytes();
    built_in_jobs_match_local_mode(&cluster, &WINDOW_AGG_CASES[..2]);
    let (tx_after, rx_after) = ns.veth_bytes();
    let (sent, received) = (tx_after - tx_before, rx_after - rx_before);
    println!("veth {}: {sent} bytes sent, {received} bytes received during the jobs", ns.veth_a);
    assert!(sent > 100_000 && received > 100_000, "the exchanges crossed the veth: {sent} B out, {received} B in");
    let in_a = cluster.task_manager(cluster.tm_ids[0]);
    let plane = in_a.data_plane.expect("TaskManager A reports its data connections");
    assert_eq!(plane.peers.len(), 1, "{plane:?}");
    assert_eq!(plane.peers[0].peer, cluster.tm_ids[1].to_string(), "{plane:?}");
    cluster.stop();
}

/// The jobs that run on each TaskManager now (from the JobManager's view of their slots).
fn jobs_on(client: &RestClient, ids: &[TaskManagerId]) -> Vec<Vec<JobId>> {
    ids.iter()
        .map(|id| {
            let info = client.task_manager(*id).map(|t| t.slots).unwrap_or_default();
            let mut jobs: Vec<JobId> = info.into_iter().filter_map(|s| s.job).collect();
            jobs.sort();
            jobs.dedup();
            jobs
        })
        .collect()
}

#[test]
fn two_jobs_at_once_share_one_connection_per_task_manager_pair() {
    let cluster = Cluster::start(Place::Here, "127.0.0.1", &[Place::Here, Place::Here]);
    let jobs = [["--records", "30M", "--keys", "97"], ["--records", "20M", "--keys", "89"]];
    let expected: Vec<String> = jobs
        .iter()
        .map(|j| sum_by_key_checksum(&local(&[&["run", "sum-by-key"], &j[..], &["-p", "2"]].concat())))
        .collect();

    let client = (cluster.client())();
    let started: Vec<Running> = jobs
        .iter()
        .map(|j| {
            let mut args = vec![
                CORESTREAM,
                "submit",
                "--detached",
                "--jobmanager",
                &cluster.rest_url,
                "--secret-file",
                cluster.secret.to_str().unwrap(),
                "-p",
                "2",
                "sum-by-key",
            ];
            args.extend_from_slice(j);
            Place::Here.start(&args)
        })
        .collect();
    let ids: Vec<JobId> = started
        .into_iter()
        .map(|s| {
            let out = s.finish_within(HANG_LIMIT);
            assert_status(&out, 0);
            out.stdout.trim().parse().unwrap_or_else(|e| panic!("{e}: {:?}", out.stdout))
        })
        .collect();

    // Both jobs must be seen on both TaskManagers at the same moment.
    let deadline = Instant::now() + HANG_LIMIT;
    let mut together = false;
    while Instant::now() < deadline {
        let on = jobs_on(&client, &cluster.tm_ids);
        together |= on.iter().all(|jobs| ids.iter().all(|id| jobs.contains(id)));
        let ended = ids.iter().all(|id| client.job(*id).is_ok_and(|d| d.overview.state.is_terminal()));
        if ended {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(together, "the two jobs never ran on both TaskManagers at once");
    for (id, checksum) in ids.iter().zip(&expected) {
        let outcome = client.wait_for_result(*id, HANG_LIMIT).unwrap();
        assert_eq!(outcome.state, JobState::Finished, "{outcome:?}");
        println!("job {id}: {} ms on the cluster", outcome.duration_ms);
        let got = checksum_accumulator(&outcome.accumulators, "checksum");
        assert_eq!(&got, checksum, "job {id}");
        assert_eq!(outcome.parts.len(), 2, "job {id} ran on both TaskManagers: {:?}", outcome.parts);
        for part in &outcome.parts {
            assert_eq!(part.connections.len(), 1, "one link to the other TaskManager: {part:?}");
            assert!(part.connections[0].buffers_out > 0 && part.connections[0].buffers_in > 0, "{part:?}");
        }
    }

    // One connection between the pair, dialed by one and accepted by the other, still open.
    let (first, second) = (cluster.tm_ids[0], cluster.tm_ids[1]);
    cluster.eventually("the heartbeats carry the data-plane counters", move |c| {
        [first, second].iter().all(|id| c.task_manager(*id).is_ok_and(|t| t.data_plane.is_some_and(|d| d.open == 1)))
    });
    let planes: Vec<_> = cluster.tm_ids.iter().map(|id| cluster.task_manager(*id).data_plane.unwrap()).collect();
    for (plane, peer) in planes.iter().zip([second, first]) {
        assert_eq!((plane.dialed + plane.accepted, plane.open, plane.refused), (1, 1, 0), "{plane:?}");
        assert_eq!(plane.peers.len(), 1, "{plane:?}");
        assert_eq!(plane.peers[0].peer, peer.to_string(), "{plane:?}");
    }
    assert_eq!((planes[0].dialed, planes[0].accepted), (planes[1].accepted, planes[1].dialed), "{planes:?}");
    cluster.stop();
}

/// A checksum accumulator as `submit` prints it.
fn checksum_accumulator(accumulators: &BTreeMap<String, corestream::rpc::messages::Accumulator>, name: &str) -> String {
    match accumulators.get(name) {
        Some(corestream::rpc::messages::Accumulator::Checksum(n)) => format!("{n:#018x}"),
        other => panic!("accumulator {name}: {other:?}"),
    }
}
