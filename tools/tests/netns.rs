//! Two TaskManagers in separate network namespaces, joined only by a veth pair, run
//! `sum-by-key` and `wordcount` with the results of one process: `corestream` (the JobManager)
//! runs in namespace A (`ip netns exec`) with its RPC port and TaskManager 0's data listener on
//! `--tm-bind 10.231.N.1:0`, and starts TaskManager 1 in namespace B (`--child-netns`, through
//! `ip netns exec`) bound to `--child-bind 10.231.N.2:0`; TaskManager 1 registers over the veth.
//! The veth's byte counters show that the exchange crossed it. Where network namespaces are not
//! permitted (not root, no `ip`, or `ip netns add` refused) the test prints `skipped: …` and
//! passes.
//!
//! Also the refusals of the placement options, which need no namespace.
//!
//! Every command runs in its own process group; a watchdog kills the whole group (the
//! TaskManager it started included) and fails the test after [`HANG_LIMIT`].

mod common;

use std::path::Path;
use std::time::Duration;

use common::group::{assert_status, line_with, sorted_lines, start_program, write_text, Finished};
use common::netns::{namespaces_refused, Namespaces};
use tempfile::TempDir;

const HANG_LIMIT: Duration = Duration::from_secs(30);
const CORESTREAM: &str = env!("CARGO_BIN_EXE_corestream");

/// `program args` in its own process group under the watchdog.
fn run(program: &str, args: &[&str]) -> Finished {
    start_program(program, args, &[]).finish_within(HANG_LIMIT)
}

fn corestream(args: &[&str]) -> Finished {
    run(CORESTREAM, args)
}

/// The exit status, and no process of the group left behind.
#[track_caller]
fn assert_clean_exit(out: &Finished, code: i32) {
    assert_status(out, code);
    assert!(!out.leftover, "a process outlived the run\n--- stderr\n{}", out.stderr);
}

/// What the tests here do across the namespaces: `--processes 2` with TaskManager 1 in B.
trait Across {
    fn corestream_across(&self, args: &[&str]) -> Finished;
    fn assert_crossed<'a>(&self, out: &'a Finished) -> &'a str;
}

impl Across for Namespaces {
    /// Runs `corestream args` in A (the JobManager and TaskManager 0), with TaskManager 1 in B.
    fn corestream_across(&self, args: &[&str]) -> Finished {
        let tm_bind = format!("{}:0", self.ip_a);
        let child_bind = format!("{}:0", self.ip_b);
        let mut argv = vec!["netns", "exec", &self.a, CORESTREAM];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["--processes", "2", "--tm-bind", &tm_bind, "--child-bind", &child_bind]);
        argv.extend_from_slice(&["--child-netns", &self.b]);
        run("ip", &argv)
    }

    /// Asserts that TaskManager 1 registered with its data address in B and that TaskManager 0
    /// exchanged data with it there; returns TaskManager 0's network line (its side of the
    /// connection, whose peer data address is in B).
    fn assert_crossed<'a>(&self, out: &'a Finished) -> &'a str {
        assert!(out.stderr.contains("TaskManager 1 started (pid "), "{}", out.stderr);
        let data = format!(") registered, data {}:", self.ip_b);
        let registered = out.stderr.lines().find(|l| l.contains(&data));
        let registered = registered.unwrap_or_else(|| panic!("TaskManager 1 is not on {}:\n{}", self.ip_b, out.stderr));
        assert!(registered.starts_with("corestream: TaskManager 1 (pid "), "{registered}");
        // "network: TaskManager <id> (host, pid N) <-> TaskManager <i> (IP:PORT): … buffers / … MB out, …"
        let peer_in_b = format!(" ({}:", self.ip_b);
        let network = out
            .stdout
            .lines()
            .filter(|l| l.starts_with("network: TaskManager "))
            .find(|l| {
                l.split(" <-> ")
                    .nth(1)
                    .is_some_and(|peer| peer.starts_with("TaskManager ") && peer.contains(&peer_in_b))
            })
            .unwrap_or_else(|| panic!("no connection to {} from A:\n{}", self.ip_b, out.stdout));
        println!("{network}");
        assert!(!network.contains("): 0 buffers / "), "{network}");
        network
    }
}

/// The MB figure after `label` in a network line: "… 287 buffers / 8.2 MB out, …".
fn megabytes(line: &str, label: &str) -> f64 {
    let before = line.split(&format!(" MB {label}")).next().unwrap();
    before.rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("no MB {label} in {line}"))
}

#[test]
fn two_task_managers_in_separate_namespaces_run_jobs_over_a_veth() {
    if let Some(reason) = namespaces_refused() {
        println!("skipped: network namespaces are not permitted here: {reason}");
        return;
    }
    let ns = Namespaces::create("", 231);

    let job = ["run", "sum-by-key", "--records", "1M", "--keys", "1000", "-p", "2"];
    let one = corestream(&job);
    assert_clean_exit(&one, 0);
    let (tx_before, rx_before) = ns.veth_bytes();
    let two = ns.corestream_across(&job);
    assert_clean_exit(&two, 0);
    let (tx_after, rx_after) = ns.veth_bytes();
    let network = ns.assert_crossed(&two);
    for prefix in ["sum-by-key:", "checksum"] {
        assert_eq!(line_with(&two, prefix), line_with(&one, prefix));
    }
    assert!(line_with(&two, "checksum").ends_with("match)"), "{}", two.stdout);
    assert!(line_with(&two, "sum-by-key:").contains("1000 keys"), "{}", two.stdout);
    let (sent, received) = ((tx_after - tx_before) as f64 / 1e6, (rx_after - rx_before) as f64 / 1e6);
    println!("veth {}: {sent:.1} MB sent, {received:.1} MB received during the sum-by-key run", ns.veth_a);
    assert!(sent >= megabytes(network, "out") - 0.1 && sent > 1.0, "veth sent {sent:.1} MB; {network}");
    assert!(received >= megabytes(network, "in") - 0.1 && received > 1.0, "veth received {received:.1} MB; {network}");

    let dir = TempDir::new().unwrap();
    let input = dir.path().join("text.txt");
    write_text(&input);
    let reference = dir.path().join("one.tsv");
    let output = dir.path().join("two.tsv");
    let wordcount = |out: &Path| -> Vec<String> {
        ["run", "wordcount", "--input", input.to_str().unwrap(), "--output", out.to_str().unwrap(), "-p", "2"]
            .map(String::from)
            .to_vec()
    };
    let one_args = wordcount(&reference);
    let one = corestream(&one_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_clean_exit(&one, 0);
    let two_args = wordcount(&output);
    let two = ns.corestream_across(&two_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_clean_exit(&two, 0);
    ns.assert_crossed(&two);
    let expected = sorted_lines(&reference);
    assert!(expected.len() > 300, "{} distinct words", expected.len());
    assert_eq!(sorted_lines(&output), expected);
    let figures = |out: &Finished| line_with(out, "wordcount:").split(" in ").next().unwrap().to_string();
    assert_eq!(figures(&two), figures(&one));
}

#[test]
fn placement_options_are_refused_when_wrong() {
    let job = ["run", "sum-by-key", "--records", "1k", "--keys", "10"];
    let refused = |extra: &[&str], code: i32, message: &str| {
        let args: Vec<&str> = job.iter().chain(extra).copied().collect();
        let out = corestream(&args);
        assert_clean_exit(&out, code);
        assert!(out.stderr.contains(message), "{}: expected {message:?} in\n{}", args.join(" "), out.stderr);
    };
    refused(&["--processes", "2", "--tm-bind", "nowhere"], 2, "'nowhere' is not an IP:PORT address");
    refused(&["--processes", "2", "--child-bind", "10.0.0.1"], 2, "'10.0.0.1' is not an IP:PORT address");
    refused(&["--processes", "2", "--tm-bind", "0.0.0.0:0"], 2, "'0.0.0.0:0' is the unspecified address");
    refused(&["--processes", "2", "--child-netns", "a/b"], 2, "'a/b' is not a network namespace name");
    refused(&["--processes", "2", "--child-netns=-x"], 2, "'-x' is not a network namespace name");
    refused(&["--processes", "2", "--child-netns="], 2, "the network namespace name is empty");
    refused(&["--child-bind", "127.0.0.1:0"], 2, "--child-bind: only for a job across TaskManager processes");
    refused(
        &["--processes", "1", "--tm-bind", "127.0.0.1:0", "--child-netns", "x"],
        2,
        "--tm-bind, --child-netns: only for a job across TaskManager processes; give --processes 2 or more (it is 1)",
    );
    let fixed_port = ["--processes", "3", "-p", "3", "--child-bind", "127.0.0.1:7000"];
    refused(&fixed_port, 2, "--child-bind 127.0.0.1:7000 has a fixed port");
    let unassigned = ["--processes", "2", "--tm-bind", "192.0.2.1:0"];
    refused(&unassigned, 1, "cannot bind the data address 192.0.2.1:0 (given by --tm-bind)");

    let out = corestream(&["bench", "keyed-sum", "--events", "1k", "--keys", "10", "--tm-bind", "127.0.0.1:0"]);
    assert_clean_exit(&out, 2);
    assert!(out.stderr.contains("--tm-bind: only for a job across TaskManager processes"), "{}", out.stderr);

    let missing = format!("cs-missing-{}", std::process::id());
    let args: Vec<&str> = job.iter().copied().chain(["--processes", "2", "--child-netns", &missing]).collect();
    let out = corestream(&args);
    assert_clean_exit(&out, 1);
    let ended = format!(" before it registered (started through `ip netns exec {missing}`)");
    assert!(out.stderr.contains("error: TaskManager 1 (pid ") && out.stderr.contains(&ended), "{}", out.stderr);
    assert!(!out.stdout.contains("checksum"), "no result without TaskManager 1:\n{}", out.stdout);
}
