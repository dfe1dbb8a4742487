//! An application outside this workspace gets the runtime the tests ran. `examples/embed/`
//! depends on `corestream` by path and on nothing else, with its own committed lock file. This
//! test resolves its dependency tree (glommio must be the vendored `corestream-glommio` from
//! `third_party/glommio`, and no crates.io `glommio` may appear), builds it, runs it — a job fed
//! by the host through a channel source, then the README's "Embedding" snippets verbatim — with
//! a watchdog, and checks that a type that is not a record is refused with the hint of `Data`.
//!
//! The example is built into the workspace's own target directory with the workspace's release
//! profile and lock-file versions, so the dependencies the workspace compiled are reused.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long the example may run: it takes well under a second when the runtime is sound; a
/// stalled slot (the failure of stock glommio) hangs it.
const RUN_LIMIT: Duration = Duration::from_secs(120);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the workspace").to_path_buf()
}

fn manifest() -> PathBuf {
    workspace_root().join("examples/embed/Cargo.toml")
}

/// The workspace's target directory (`CARGO_TARGET_TMPDIR` is its `tmp/`).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("the target tmp dir has a parent").to_path_buf()
}

/// The cargo that runs this test (cargo sets `CARGO` for tests), on the example's manifest.
fn cargo(args: &[&str]) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut cmd = Command::new(cargo);
    cmd.args(args)
        .arg("--manifest-path")
        .arg(manifest())
        .current_dir(workspace_root())
        .env("CARGO_TARGET_DIR", target_dir())
        .env("CARGO_TERM_COLOR", "never");
    cmd
}

fn run(mut cmd: Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The Rust code blocks under the README's "Embedding" heading.
fn readme_embedding_snippets() -> usize {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README.md");
    let section = readme.split("\n## ").find(|s| s.starts_with("Embedding\n")).expect("README has ## Embedding");
    section.lines().filter(|l| l.trim() == "```rust").count()
}

#[test]
fn application_outside_the_workspace_gets_vendored_glommio_and_runs_its_jobs() {
    let tree = run({
        let mut cmd = cargo(&["tree", "--locked", "--edges", "normal,build", "--prefix", "none"]);
        cmd.args(["--format", "{p}"]);
        cmd
    });
    let tree_out = text(&tree.stdout);
    assert!(tree.status.success(), "cargo tree failed:\n{}", text(&tree.stderr));
    let vendored = workspace_root().join("third_party/glommio");
    let glommio_lines: Vec<&str> = tree_out.lines().filter(|l| l.contains("glommio v")).collect();
    assert!(!glommio_lines.is_empty(), "no glommio in the example's dependency tree:\n{tree_out}");
    for line in &glommio_lines {
        assert!(
            line.starts_with("corestream-glommio v0.9.0 (") && line.contains(&*vendored.to_string_lossy()),
            "the example resolves glommio to `{line}`, not to the vendored {}",
            vendored.display()
        );
    }

    let started = Instant::now();
    let build = run(cargo(&["build", "--release", "--locked", "--bin", "corestream-embed-example"]));
    assert!(build.status.success(), "building the example failed:\n{}", text(&build.stderr));
    let built_in = started.elapsed();

    let binary = target_dir().join("release/corestream-embed-example");
    let mut child = Command::new(&binary)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
    let deadline = Instant::now() + RUN_LIMIT;
    while child.try_wait().expect("waiting for the example").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output of the killed example");
            panic!("the example hung for {RUN_LIMIT:?}; its output:\n{}\n{}", text(&out.stdout), text(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output of the example");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "the example failed ({}):\n{stdout}\n{}", out.status, text(&out.stderr));
    assert!(
        stdout.contains("channel job: 200000 readings of 50 sensors from the host, sums match\n"),
        "no checked channel-source job in:\n{stdout}"
    );
    let snippets_run =
        stdout.lines().filter(|l| l.starts_with("README snippet at line ") && l.ends_with(": ok")).count();
    assert_eq!(snippets_run, readme_embedding_snippets(), "README snippets run, in:\n{stdout}");
    assert!(stdout.ends_with("embed: all checks passed\n"), "unexpected end of output:\n{stdout}");
    eprintln!("example built in {built_in:?}");
}

#[test]
fn a_type_that_is_not_a_record_gets_the_data_hint() {
    let build = run(cargo(&["build", "--release", "--locked", "--example", "not_a_record"]));
    let stderr = text(&build.stderr);
    assert!(!build.status.success(), "compile_fail/not_a_record.rs compiled");
    assert!(
        stderr.contains("error[E0277]: `Reading` is not a corestream record (it does not implement `Data`)"),
        "the first error does not name the record:\n{stderr}"
    );
    assert!(
        stderr.contains("#[rkyv(crate = corestream::rkyv)]"),
        "the error does not show how to derive a record:\n{stderr}"
    );
}
