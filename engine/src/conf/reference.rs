//! The reference of every key, rendered from the key table into `docs/CONFIGURATION.md`
//! between two marker lines. A test compares the committed file with the rendering, so the
//! documentation and the loader cannot drift apart.

use super::keys::{Flink, KEYS};
use super::settings::ClusterSettings;

/// The line before the generated tables in `docs/CONFIGURATION.md`.
pub const BEGIN_MARKER: &str = "<!-- BEGIN GENERATED KEY REFERENCE: do not edit; see engine/src/conf/reference.rs -->";
/// The line after them.
pub const END_MARKER: &str = "<!-- END GENERATED KEY REFERENCE -->";

fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// One Markdown table per section: key, type, default, Flink's key, description.
pub fn render() -> String {
    let defaults = ClusterSettings::default();
    let mut out = String::new();
    let mut section = "";
    for key in KEYS {
        if key.section != section {
            section = key.section;
            out.push_str(&format!("\n### {section}\n\n"));
            out.push_str("| Key | Type | Default | Flink | Description |\n");
            out.push_str("|---|---|---|---|---|\n");
        }
        let default = match key.kind.render(&defaults) {
            Some(v) => format!("`{v}`"),
            None => key.kind.unset().to_string(),
        };
        let flink = match key.flink {
            Flink::Same => "same".to_string(),
            Flink::Named(name) => format!("`{name}`"),
            Flink::Absent => "—".to_string(),
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            key.name,
            cell(&key.kind.type_doc()),
            cell(&default),
            cell(&flink),
            cell(key.description)
        ));
    }
    out
}

/// `document` with the text between the markers replaced by [`render`]; `None` if the
/// markers are missing or out of order.
pub fn splice(document: &str) -> Option<String> {
    let begin = document.find(BEGIN_MARKER)? + BEGIN_MARKER.len();
    let end = document.find(END_MARKER)?;
    (begin <= end).then(|| format!("{}\n{}\n{}", &document[..begin], render(), &document[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/CONFIGURATION.md");

    /// Fails when `docs/CONFIGURATION.md` does not hold the rendering of the key table;
    /// `CORESTREAM_BLESS=1` rewrites it instead.
    #[test]
    fn committed_reference_matches_the_key_table() {
        let committed = std::fs::read_to_string(DOC).unwrap_or_else(|e| panic!("cannot read {DOC}: {e}"));
        let expected = splice(&committed).unwrap_or_else(|| panic!("{DOC} lacks the marker lines of the reference"));
        if committed == expected {
            return;
        }
        if std::env::var_os("CORESTREAM_BLESS").is_some_and(|v| v == "1") {
            std::fs::write(DOC, &expected).unwrap();
            return;
        }
        panic!(
            "{DOC} is out of date with the key table in engine/src/conf/keys.rs; regenerate it with\n  \
             CORESTREAM_BLESS=1 cargo test --release -p corestream --lib conf::reference\n"
        );
    }

    #[test]
    fn every_key_is_in_the_rendering_once() {
        let text = render();
        for key in KEYS {
            assert_eq!(text.matches(&format!("| `{}` |", key.name)).count(), 1, "{}", key.name);
        }
    }

    #[test]
    fn splice_needs_both_markers_in_order() {
        assert!(splice("no markers").is_none());
        assert!(splice(&format!("{END_MARKER}\n{BEGIN_MARKER}")).is_none());
        let doc = format!("intro\n{BEGIN_MARKER}\nstale\n{END_MARKER}\nend\n");
        let spliced = splice(&doc).unwrap();
        assert!(spliced.starts_with("intro\n") && spliced.ends_with(&format!("{END_MARKER}\nend\n")));
        assert!(!spliced.contains("stale") && spliced.contains("`rest.port`"));
        assert_eq!(splice(&spliced).unwrap(), spliced, "splicing is idempotent");
    }
}
