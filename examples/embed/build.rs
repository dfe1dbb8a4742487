//! Copies the Rust code blocks of the README's "Embedding" section, verbatim, into functions the
//! binary runs (`$OUT_DIR/readme_snippets.rs`), so a README that no longer compiles in an
//! application crate breaks this build.

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let readme = manifest_dir.join("../../README.md");
    println!("cargo:rerun-if-changed={}", readme.display());
    let text = std::fs::read_to_string(&readme).unwrap_or_else(|e| panic!("reading {}: {e}", readme.display()));

    let mut snippets: Vec<(usize, String)> = Vec::new();
    let mut in_section = false;
    let mut block: Option<(usize, String)> = None;
    for (index, line) in text.lines().enumerate() {
        if let Some((_, code)) = block.as_mut() {
            if line.trim_start().starts_with("```") {
                snippets.push(block.take().expect("inside a block"));
            } else {
                code.push_str(line);
                code.push('\n');
            }
            continue;
        }
        if line.starts_with("## ") {
            in_section = line.trim() == "## Embedding";
        } else if in_section && line.trim() == "```rust" {
            block = Some((index + 2, String::new()));
        }
    }
    assert!(block.is_none(), "README.md: a ```rust block under \"## Embedding\" is not closed");
    assert!(!snippets.is_empty(), "README.md has no ```rust block under \"## Embedding\"");

    let mut out = String::new();
    for (n, (line, code)) in snippets.iter().enumerate() {
        writeln!(out, "/// README.md line {line}, verbatim.").unwrap();
        writeln!(out, "fn readme_snippet_{n}() -> Result<(), Box<dyn std::error::Error>> {{").unwrap();
        out.push_str(code);
        writeln!(out, "    Ok(())\n}}\n").unwrap();
    }
    writeln!(out, "/// Each snippet with the README line it starts on.").unwrap();
    writeln!(out, "type Snippet = (usize, fn() -> Result<(), Box<dyn std::error::Error>>);").unwrap();
    writeln!(out, "const README_SNIPPETS: &[Snippet] = &[").unwrap();
    for (n, (line, _)) in snippets.iter().enumerate() {
        writeln!(out, "    ({line}, readme_snippet_{n}),").unwrap();
    }
    writeln!(out, "];").unwrap();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out_dir.join("readme_snippets.rs"), out).expect("writing readme_snippets.rs");
}
