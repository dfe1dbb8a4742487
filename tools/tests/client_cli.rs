//! `corestream submit`, `list`, `cancel`, `info`, `savepoint` and `stop` against a REST server started in the test
//! over a fake dispatcher (`tests/tests/support/fake_cluster.rs`): what each prints, job
//! arguments passed verbatim, the secret from a file or the environment, and the exit status —
//! 0, 1 for a failed or cancelled job and for the JobManager's refusals (named with its URL),
//! 2 for invalid arguments.

mod common;
#[path = "../../tests/tests/support/fake_cluster.rs"]
mod fake_cluster;

use std::ffi::OsStr;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use common::run_corestream_with_env;
use corestream::jobmanager::api::JobState;
use corestream::jobmanager::rest::{Authorizer, RestServer, RestSettings};
use corestream::rpc::ids::JobId;
use fake_cluster::FakeCluster;

const LIMIT: Duration = Duration::from_secs(60);
const SECRET_ENV: &str = "CORESTREAM_CONF_SECURITY_CLUSTER_SECRET";

fn start(secret: Option<&'static str>) -> (Arc<FakeCluster>, RestServer) {
    let authorizer: Option<Authorizer> = secret.map(|secret| {
        Arc::new(move |header: Option<&str>| match header {
            None => Err("missing".to_string()),
            Some(h) if h == format!("Bearer {secret}") => Ok(()),
            Some(_) => Err("wrong secret".to_string()),
        }) as Authorizer
    });
    let fake = Arc::new(FakeCluster::new());
    let settings = RestSettings { authorizer, ..RestSettings::default() };
    let server = RestServer::start("127.0.0.1:0", fake.clone(), settings).unwrap();
    (fake, server)
}

/// Runs `corestream ARGS --jobmanager URL`-style: `args` is split on spaces; the secret
/// variable is cleared unless `env` sets it.
fn cli(args: &str, env: &[(&str, &str)]) -> Output {
    let args: Vec<&str> = args.split_whitespace().collect();
    let mut vars: Vec<(&str, &OsStr)> = vec![(SECRET_ENV, OsStr::new(""))];
    vars.extend(env.iter().map(|(k, v)| (*k, OsStr::new(*v))));
    run_corestream_with_env(&args, &vars, LIMIT)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_exit(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "stdout:\n{}\nstderr:\n{}", stdout(o), stderr(o));
}

#[test]
fn submit_waits_and_prints_the_result() {
    let (_fake, server) = start(None);
    let url = server.url();
    let out = cli(&format!("submit --jobmanager {url} -p 3 sum-by-key --keys 10 --records 1k"), &[]);
    // `--records 1k` is not a number to the fake job: its arguments went through verbatim.
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains(&format!(
            "the JobManager at {url} refused POST /v1/jobs: sum-by-key: --records 1k: not a number"
        )),
        "{}",
        stderr(&out)
    );

    let out = cli(&format!("submit --jobmanager {url} -p 3 sum-by-key --keys 10 -p 4"), &[]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    let first = text.lines().next().unwrap();
    assert!(
        first.starts_with("Job ") && first.ends_with(&format!("(sum-by-key --keys 10 -p 4) submitted to {url}")),
        "{text}"
    );
    for line in [
        "FINISHED in 1.500 s",
        "Operators:\n  Source: sequence (parallelism 3): 0 records in, 1000 out\n  Keyed Reduce (parallelism 3): 1000 records in, 10 out",
        "Accumulators:\n  keys: [\"a\", \"b\"]\n  records: 1000\n  total: -12345678901234567890\n",
        "Warnings:\n  3 records skipped by Map\n",
        "Network:\n  tm 7a000000 -> tm 7b000000: 12 buffers, 384 KiB\n",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
    let id: JobId = first.split(' ').nth(1).unwrap().parse().unwrap();

    let out = cli(&format!("info --jobmanager {url} {id}"), &[]);
    assert_exit(&out, 0);
    let info = stdout(&out);
    for line in [
        format!("Job {id} (sum-by-key --keys 10 -p 4): FINISHED"),
        "attempt 1, parallelism 3".to_string(),
        "  0 Source: sequence -> Map\n      parallelism 3, records in 0, out 1000, backpressure 25%\n".to_string(),
        format!(
            "      TaskManager {}: 3 subtask(s): 0 (slot 0, FINISHED), 1 (slot 1, FINISHED), 2 (slot 2, FINISHED)",
            fake_cluster::tm_id()
        ),
        "Plan:\n  Source: sequence".to_string(),
    ] {
        assert!(info.contains(&line), "{line:?} missing from:\n{info}");
    }
}

#[test]
fn detached_list_cancel_and_failed_jobs() {
    let (fake, server) = start(None);
    let url = server.url();
    let out = cli(&format!("submit --detached --jobmanager {url} forever"), &[]);
    assert_exit(&out, 0);
    let id: JobId = stdout(&out).trim().parse().unwrap_or_else(|e| panic!("{e}: {:?}", stdout(&out)));
    assert_eq!(fake.state_of(id), Some(JobState::Running));

    let out = cli(&format!("list --jobmanager {url}"), &[]);
    assert_exit(&out, 0);
    let list = stdout(&out);
    assert!(list.starts_with("JOB ID"), "{list}");
    assert!(
        list.contains(&format!("{id}  RUNNING      forever  2023-11-14 22:13:20       1.500 s  4/4 running")),
        "{list}"
    );

    let out = cli(&format!("cancel --jobmanager {url} {id}"), &[]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), format!("Cancellation of job {id} requested at {url}\n"));
    assert_eq!(fake.state_of(id), Some(JobState::Cancelling));
    let out = cli(&format!("info --jobmanager {url} {id}"), &[]);
    assert!(stdout(&out).contains("CANCELLING"), "{}", stdout(&out));

    // A job cancelled while `submit` waits: exit 1.
    let waiting = {
        let url = url.clone();
        std::thread::spawn(move || cli(&format!("submit --jobmanager {url} forever"), &[]))
    };
    let second = loop {
        let running: Vec<JobId> = fake_jobs(&url).into_iter().filter(|j| *j != id).collect();
        if let Some(j) = running.first() {
            break *j;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_exit(&cli(&format!("cancel --jobmanager {url} {second}"), &[]), 0);
    let out = waiting.join().unwrap();
    assert_exit(&out, 1);
    assert!(stdout(&out).contains("CANCELLED"), "{}", stdout(&out));
    assert!(stderr(&out).contains(&format!("job {second} was cancelled")), "{}", stderr(&out));

    let out = cli(&format!("submit --jobmanager {url} fail"), &[]);
    assert_exit(&out, 1);
    assert!(
        stdout(&out).contains("FAILED") && stdout(&out).contains("Failure: the source failed: boom"),
        "{}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("failed: the source failed: boom"), "{}", stderr(&out));

    // Cancelling an ended job: the JobManager's conflict, exit 1.
    let out = cli(&format!("cancel --jobmanager {url} {second}"), &[]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("has already ended") && stderr(&out).contains("HTTP 409"), "{}", stderr(&out));
}

/// The ids of the server's jobs, through the library's client.
fn fake_jobs(url: &str) -> Vec<JobId> {
    corestream::client::RestClient::new(url, None).unwrap().jobs().unwrap().into_iter().map(|j| j.jid).collect()
}

#[test]
fn the_secret_comes_from_a_file_or_the_environment() {
    let (fake, server) = start(Some("s3cret"));
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    std::fs::write(&good, "s3cret\n").unwrap();
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "guess\n").unwrap();

    let out = cli(&format!("submit --detached --jobmanager {url} forever"), &[]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains(&format!("the JobManager at {url} refused POST /v1/jobs"))
            && stderr(&out).contains("HTTP 401"),
        "{}",
        stderr(&out)
    );
    let out = cli(&format!("submit --detached --jobmanager {url} --secret-file {} forever", bad.display()), &[]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("wrong secret"), "{}", stderr(&out));
    assert_eq!(fake.job_count(), 0);

    assert_exit(
        &cli(&format!("submit --detached --jobmanager {url} --secret-file {} forever", good.display()), &[]),
        0,
    );
    assert_exit(&cli(&format!("submit --detached --jobmanager {url} forever"), &[(SECRET_ENV, "s3cret")]), 0);
    // The file wins over the environment.
    let out = cli(
        &format!("submit --detached --jobmanager {url} --secret-file {} forever", bad.display()),
        &[(SECRET_ENV, "s3cret")],
    );
    assert_exit(&out, 1);
    assert_eq!(fake.job_count(), 2);
    // Reading needs no secret.
    assert_exit(&cli(&format!("list --jobmanager {url}"), &[]), 0);

    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let out = cli(&format!("submit --secret-file {} forever", empty.display()), &[]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("is empty"), "{}", stderr(&out));
}

#[test]
fn invalid_arguments_and_unreachable_jobmanagers() {
    for (args, needle) in [
        ("submit", "<JOB>"),
        ("submit -p 0 forever", "'0' must be between 1 and 128"),
        ("cancel 123", "'123' is not a valid job id"),
        ("info", "<ID>"),
        ("list --jobmanager https://jm:8081", "`https` is not supported"),
        ("submit --secret-file /nonexistent/secret forever", "cannot read the secret file /nonexistent/secret"),
    ] {
        let out = cli(args, &[]);
        assert_exit(&out, 2);
        assert!(stderr(&out).contains(needle), "{args}: {}", stderr(&out));
    }

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    for args in ["list", "submit forever", &format!("cancel {}", JobId::random())] {
        let out = cli(&format!("{args} --jobmanager 127.0.0.1:{port}"), &[]);
        assert_exit(&out, 1);
        assert!(
            stderr(&out).contains(&format!("cannot connect to the JobManager at http://127.0.0.1:{port}")),
            "{}",
            stderr(&out)
        );
    }

    let (_fake, server) = start(None);
    let out = cli(&format!("submit --jobmanager {} wordcount", server.url()), &[]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("unknown job type `wordcount`"), "{}", stderr(&out));
    let out = cli(&format!("info --jobmanager {} {}", server.url(), JobId::random()), &[]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("HTTP 404"), "{}", stderr(&out));
    assert_eq!(stdout(&cli(&format!("list --jobmanager {}", server.url()), &[])), "No jobs.\n");
}

#[test]
fn savepoint_and_stop_print_the_savepoint_and_refuse_bad_arguments() {
    let (fake, server) = start(None);
    let url = server.url();
    let out = cli(&format!("submit --detached --jobmanager {url} forever"), &[]);
    assert_exit(&out, 0);
    let id: JobId = stdout(&out).trim().parse().unwrap();

    let out = cli(&format!("savepoint --jobmanager {url} {id} /sp"), &[]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "/sp/savepoint-fake-1\n");
    assert!(stderr(&out).contains(&format!("savepoint of job {id} requested")), "{}", stderr(&out));
    assert_eq!(fake.state_of(id), Some(JobState::Running));

    let out = cli(&format!("savepoint --jobmanager {url} {id} relative/dir"), &[]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("relative/dir: give an absolute path"), "{}", stderr(&out));
    let out = cli(&format!("savepoint --jobmanager {url} {id}"), &[]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("no target directory") && stderr(&out).contains("HTTP 400"), "{}", stderr(&out));
    assert_exit(&cli(&format!("savepoint --jobmanager {url} not-a-job /sp"), &[]), 2);

    let out = cli(&format!("stop --jobmanager {url} {id} --savepoint /sp"), &[]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "/sp/savepoint-fake-2\n");
    assert!(stderr(&out).contains("--from-savepoint /sp/savepoint-fake-2"), "{}", stderr(&out));
    assert_eq!(fake.state_of(id), Some(JobState::Cancelled));
    let out = cli(&format!("stop --jobmanager {url} {id} --savepoint /sp"), &[]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("HTTP 409"), "{}", stderr(&out));
}
