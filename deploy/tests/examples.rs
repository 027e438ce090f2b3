//! The plugin JSON the docs show is plugin JSON the filters take: every ```` ```json <filter> ````
//! block of README.md, and every ```` ```json ```` block of a filter's chapter of the book
//! (docs/<filter>.md), compiled by that filter's own code; every other chapter's by one of
//! the filters or the bundle (```` ```json shape ```` marks an illustration of a shape).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fs;

use mesh_deploy::filters::Kind;
use mesh_deploy::repo_root;

/// The fenced blocks of `text` whose info string starts with `json`: (info string, body).
fn json_blocks(text: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in text.lines() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, Some(info)) => open = Some((info.trim().to_owned(), String::new())),
            (None, None) => {}
        }
    }
    blocks.retain(|(info, _)| info.split_whitespace().next() == Some("json"));
    blocks
}

fn assert_taken(kind: Kind, json: &str, place: &str) {
    if let Err(e) = kind.configure(json.as_bytes()) {
        panic!("{place}: {} refuses\n{json}\n{e}", kind.name());
    }
}

#[test]
fn the_readme_shows_one_plugin_json_per_filter_and_each_is_taken() {
    let readme = fs::read_to_string(repo_root().join("README.md")).unwrap();
    let mut shown = Vec::new();
    for (info, json) in json_blocks(&readme) {
        let name = info.split_whitespace().nth(1).unwrap_or_else(|| {
            panic!("README.md: a ```json block names no filter (```json <filter>):\n{json}")
        });
        let kind = Kind::from_name(name).unwrap_or_else(|| panic!("README.md: no filter {name}"));
        assert_taken(kind, &json, "README.md");
        shown.push(kind);
    }
    assert_eq!(
        shown,
        Kind::ALL,
        "README.md: one plugin JSON per filter, in order"
    );
}

#[test]
fn every_plugin_json_of_a_filters_chapter_is_taken() {
    for kind in Kind::ALL {
        let file = format!("docs/{}.md", kind.name());
        let text = fs::read_to_string(repo_root().join(&file)).unwrap();
        let blocks = json_blocks(&text);
        assert!(!blocks.is_empty(), "{file} shows no plugin JSON");
        for (_, json) in blocks {
            assert_taken(kind, &json, &file);
        }
    }
}

#[test]
fn every_plugin_json_of_the_other_chapters_is_taken_by_a_filter_or_the_bundle() {
    let docs = repo_root().join("docs");
    let filter_chapters: Vec<String> = Kind::ALL
        .iter()
        .map(|k| format!("{}.md", k.name()))
        .collect();
    let mut checked = 0;
    for entry in fs::read_dir(&docs).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".md") || filter_chapters.contains(&name) {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap();
        for (info, json) in json_blocks(&text) {
            if info == "json shape" {
                continue;
            }
            let taken = Kind::ALL
                .iter()
                .any(|k| k.configure(json.as_bytes()).is_ok())
                || mesh_deploy::filters::configure_bundle(json.as_bytes()).is_ok();
            assert!(
                taken,
                "docs/{name}: no filter and not the bundle takes\n{json}"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 4,
        "the gRPC and bundle chapters' examples were not found"
    );
}

#[test]
fn json_blocks_are_found_by_their_info_string() {
    let text = "a\n```json canary\n{\"a\": 1}\n```\n```sh\nx\n```\n  ```json\n{}\n  ```\n";
    assert_eq!(
        json_blocks(text),
        [
            ("json canary".to_owned(), "{\"a\": 1}\n".to_owned()),
            ("json".to_owned(), "{}\n".to_owned())
        ]
    );
}
