//! Pins each WasmPlugin's `sha256` to the module built in `dist/`, editing the YAML text in
//! place (comments and layout stay): the line `sha256: ...` of the document is rewritten, or
//! added under `url:`.

use std::path::Path;

use crate::docs;
use crate::filters;
use crate::lint::expected_sha256;

/// The text with every WasmPlugin of ours pinned; `None` when nothing changes.
pub fn pin_text(file: &str, text: &str, dist: &Path) -> Result<Option<String>, String> {
    let mut out = Vec::new();
    let mut changed = false;
    for chunk in split_documents(text) {
        let mut lines: Vec<String> = chunk.iter().map(|l| (*l).to_owned()).collect();
        let joined = chunk.concat();
        let parsed = docs::parse(file, &joined)?;
        if let [doc] = parsed.as_slice()
            && doc.value["kind"] == "WasmPlugin"
            && let Some(url) = doc.value["spec"]["url"].as_str()
            && let Some(module) = module_of(url)
        {
            let sha = expected_sha256(url, module, dist)?;
            let sha_line = lines
                .iter()
                .position(|l| l.trim_start().starts_with("sha256:"));
            let url_line = lines
                .iter()
                .position(|l| l.trim_start().starts_with("url:"));
            match (sha_line, url_line) {
                (Some(i), _) => {
                    let indent = indent_of(&lines[i]);
                    let new = format!("{indent}sha256: {sha}\n");
                    if lines[i] != new {
                        lines[i] = new;
                        changed = true;
                    }
                }
                (None, Some(i)) => {
                    let indent = indent_of(&lines[i]);
                    lines.insert(i + 1, format!("{indent}sha256: {sha}\n"));
                    changed = true;
                }
                (None, None) => return Err(format!("{file}: a WasmPlugin without a url line")),
            }
        }
        out.extend(lines);
    }
    Ok(changed.then(|| out.concat()))
}

/// The module of ours a url names (a filter or the bundle).
fn module_of(url: &str) -> Option<&'static str> {
    let last = url.rsplit('/').next()?;
    let stem = last.split(['@', ':']).next()?;
    let stem = stem.strip_suffix(".wasm").unwrap_or(stem);
    filters::module_names().find(|m| *m == stem)
}

fn indent_of(line: &str) -> &str {
    &line[..line.len() - line.trim_start().len()]
}

/// Lines (with their newlines) grouped by `---` separators; a separator starts a group.
fn split_documents(text: &str) -> Vec<Vec<&str>> {
    let mut docs: Vec<Vec<&str>> = vec![Vec::new()];
    for line in text.split_inclusive('\n') {
        if line.trim_end() == "---"
            && let Some(last) = docs.last()
            && !last.is_empty()
        {
            docs.push(Vec::new());
        }
        if let Some(last) = docs.last_mut() {
            last.push(line);
        }
    }
    docs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci;

    #[test]
    fn pins_oci_by_manifest_digest_and_https_by_module_digest() {
        let dist = tempfile::tempdir().unwrap();
        let wasm = b"\0asm\x01\0\0\0 module".to_vec();
        std::fs::write(dist.path().join("canary.wasm"), &wasm).unwrap();
        let image = oci::image(&wasm, "canary").unwrap();
        oci::write_layout(&dist.path().join("oci/canary"), &image, "0.1.0").unwrap();
        let text = "# c\napiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: a}\nspec:\n  url: oci://r.example/m/canary:0.1.0\n  sha256: 00\n---\nkind: WasmPlugin\nmetadata: {name: b}\nspec:\n  url: https://r.example/canary.wasm  # x\n  phase: AUTHZ\n";
        let pinned = pin_text("t.yaml", text, dist.path()).unwrap().unwrap();
        assert!(
            pinned.contains(&format!("  sha256: {}\n---\n", image.digest())),
            "{pinned}"
        );
        assert!(
            pinned.contains(&format!(
                "canary.wasm  # x\n  sha256: {}\n  phase",
                oci::sha256_hex(&wasm)
            )),
            "{pinned}"
        );
        assert!(pinned.starts_with("# c\n"));
        assert_eq!(pin_text("t.yaml", &pinned, dist.path()).unwrap(), None);
    }
}
