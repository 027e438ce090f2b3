//! Every relative link in the docs resolves: README.md, ARCHITECTURE.md and every Markdown
//! file under docs/ and bench/. A link to a file must name one that exists; a link with an
//! anchor (`#section`, or `FILE.md#section`) must name a heading of that Markdown file, by
//! GitHub's rule for heading anchors. No network: web links are not followed.
//!
//! And ARCHITECTURE.md's code map names every source file, one line each, and no file that
//! is gone: it is updated with the code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use mesh_deploy::repo_root;

fn markdown_files() -> Vec<PathBuf> {
    let root = repo_root();
    let mut files = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    for dir in ["docs", "bench"] {
        let mut stack = vec![root.join(dir)];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "md") {
                    files.push(path);
                }
            }
        }
    }
    files
}

/// The targets of `[text](target)` links outside code spans and fenced blocks.
fn links(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Drop inline code spans: `[a](b)` inside backticks is an example, not a link.
        let plain: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, part)| part)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = plain.as_str();
        while let Some(start) = rest.find("](") {
            let after = &rest[start + 2..];
            let Some(end) = after.find(')') else {
                break;
            };
            found.push(after[..end].trim().to_owned());
            rest = &after[end..];
        }
    }
    found
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, punctuation but `-` and `_` gone.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(markdown: &Path) -> BTreeSet<String> {
    let text = fs::read_to_string(markdown).unwrap();
    let mut seen = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let base = anchor(line.trim_start_matches('#'));
        // A repeated heading gets -1, -2, ... on GitHub.
        let mut name = base.clone();
        let mut n = 0;
        while seen.contains(&name) {
            n += 1;
            name = format!("{base}-{n}");
        }
        seen.insert(name);
    }
    seen
}

#[test]
fn every_relative_link_resolves() {
    let mut broken = Vec::new();
    for file in markdown_files() {
        let text = fs::read_to_string(&file).unwrap();
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") || target.is_empty() {
                continue;
            }
            let (path, fragment) = target.split_once('#').unwrap_or((&target, ""));
            let linked = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            if !linked.exists() {
                broken.push(format!("{}: {target}: no such file", file.display()));
                continue;
            }
            if !fragment.is_empty()
                && linked.extension().is_some_and(|e| e == "md")
                && !anchors(&linked).contains(fragment)
            {
                broken.push(format!("{}: {target}: no such heading", file.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Every `.rs` and `.sh` file of the crates and scripts (not vendored code, not build output).
fn source_files() -> BTreeSet<String> {
    let root = repo_root();
    let mut found = BTreeSet::new();
    let mut stack: Vec<PathBuf> = ["shared", "filters", "deploy", "integration", "scripts"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !matches!(name.as_str(), "vendor" | "target") {
                    stack.push(path);
                }
            } else if name.ends_with(".rs") || name.ends_with(".sh") {
                let relative = path.strip_prefix(&root).unwrap();
                found.insert(relative.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    found
}

/// The files the code map lists: its lines `` - `path` — what it is ``.
fn code_map(architecture: &str) -> Vec<String> {
    let section = architecture
        .split("\n## ")
        .find(|s| s.starts_with("Code map\n"))
        .expect("ARCHITECTURE.md has a section \"## Code map\"");
    section
        .lines()
        .filter_map(|line| line.strip_prefix("- `"))
        .filter_map(|rest| rest.split_once('`'))
        .map(|(path, _)| path.to_owned())
        .collect()
}

#[test]
fn the_code_map_lists_every_source_file_once() {
    let text = fs::read_to_string(repo_root().join("ARCHITECTURE.md")).unwrap();
    let listed = code_map(&text);
    let unique: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        listed.len(),
        "a file listed twice in the code map"
    );
    let files = source_files();
    let missing: Vec<&String> = files.difference(&unique).collect();
    let gone: Vec<&String> = unique.difference(&files).collect();
    assert!(
        missing.is_empty() && gone.is_empty(),
        "ARCHITECTURE.md's code map: add a line for {missing:?}; remove {gone:?}"
    );
}

#[test]
fn anchors_follow_githubs_rule() {
    assert_eq!(
        anchor(" Bundle or separate modules"),
        "bundle-or-separate-modules"
    );
    assert_eq!(anchor("Trace IDs (`traceid`)"), "trace-ids-traceid");
    assert_eq!(
        anchor("The lint before deploy: `mesh-lint`"),
        "the-lint-before-deploy-mesh-lint"
    );
    assert_eq!(
        links("see [a](b.md#c) and `[x](y)` and [d](https://e)"),
        ["b.md#c", "https://e"]
    );
    assert_eq!(
        code_map("# A\n## Code map\n- `a.rs` — x\ntext `b.rs`\n## Next\n- `c.rs` — y\n"),
        ["a.rs"]
    );
}
