//! The configuration reference (`docs/CONFIGURATION.md`) against the loader: every TOML and
//! shell example in it loads, and the error messages it quotes are the ones the loader gives.

use std::path::Path;

use corestream::conf::{ClusterSettings, ConfError, Role};

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/CONFIGURATION.md");

/// The bodies of the fenced blocks of one language.
fn blocks(doc: &str, language: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match &mut current {
            None if line.trim() == format!("```{language}") => current = Some(String::new()),
            Some(body) if line.trim() == "```" => {
                out.push(std::mem::take(body));
                current = None;
            }
            Some(body) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    out
}

fn doc() -> String {
    std::fs::read_to_string(DOC).unwrap_or_else(|e| panic!("cannot read {DOC}: {e}"))
}

#[test]
fn toml_examples_load() {
    let examples = blocks(&doc(), "toml");
    assert!(!examples.is_empty());
    for example in examples {
        let mut s = ClusterSettings::default();
        s.apply_toml_str(&example, Some(Path::new("example.toml"))).unwrap_or_else(|e| panic!("{e}\n{example}"));
        s.validate(Role::Client).unwrap();
        assert_ne!(s, ClusterSettings::default());
    }
}

#[test]
fn shell_examples_set_their_keys() {
    let mut vars = Vec::new();
    for block in blocks(&doc(), "sh") {
        for line in block.lines().filter(|l| l.starts_with("CORESTREAM_CONF_") && !l.contains("$(")) {
            let (name, value) = line.split_once('=').unwrap();
            vars.push((name.to_string(), value.trim_matches('"').to_string()));
        }
    }
    assert!(vars.len() >= 3, "{vars:?}");
    let s = ClusterSettings::load(None, vars, &[], Role::Client).unwrap();
    assert_eq!(s.rest.port, 8082);
    assert_eq!(s.taskmanager.number_of_task_slots, Some(4));
}

#[test]
fn quoted_errors_are_the_loaders() {
    let doc = doc();
    let quoted = blocks(&doc, "text");
    let errors = &quoted[0];
    let cases = [("rest.prot = 8082", 7), ("heartbeat.interval = 10", 9)];
    for ((line, at), expected) in cases.into_iter().zip(errors.lines()) {
        let text = format!("{}{line}\n", "# comment\n".repeat(at - 1));
        let mut s = ClusterSettings::default();
        let e = s.apply_toml_str(&text, Some(Path::new("/etc/corestream/corestream.toml"))).unwrap_err();
        assert_eq!(e.to_string(), expected);
    }
    let missing = quoted[1].trim().trim_end_matches("...").trim_end();
    let e = ClusterSettings::load(None, [("HOME", "/root")], &[], Role::JobManager).unwrap_err();
    assert!(matches!(e, ConfError::MissingSecret { .. }));
    assert!(e.to_string().starts_with(missing), "{e}\ndoes not start with\n{missing}");
}
