//! A WasmPlugin's `sha256` against the module this repository built (`--dist`): the module's
//! digest for `file://` and `http(s)://` urls, the image manifest's for `oci://`.

use std::fs;
use std::path::Path;

use crate::docs::Doc;
use crate::oci;

use super::{Lint, Severity};

/// The digest a WasmPlugin's `sha256` must have for the module this repository built.
pub fn expected_sha256(url: &str, module: &str, dist: &Path) -> Result<String, String> {
    if url.starts_with("oci://") || !url.contains("://") {
        let reference = url.trim_start_matches("oci://");
        // `name:tag`, `name@sha256:...` or `name:tag@sha256:...`: the layout holds the image
        // by tag (a registry's port sits before the last `/`).
        let name = reference
            .split_once('@')
            .map_or(reference, |(name, _)| name);
        let tag = name
            .rsplit('/')
            .next()
            .and_then(|last| last.split_once(':'))
            .map(|(_, tag)| tag);
        let layout = dist.join("oci").join(module);
        let pulled =
            oci::read_layout(&layout, tag).map_err(|e| format!("{e} (run scripts/package.sh)"))?;
        Ok(pulled.digest)
    } else {
        let file = dist.join(format!("{module}.wasm"));
        let bytes = fs::read(&file)
            .map_err(|e| format!("{}: {e} (run scripts/build.sh)", file.display()))?;
        Ok(oci::sha256_hex(&bytes))
    }
}

/// A WasmPlugin's `sha256`: present, the url's own digest if it pins one, and (with
/// `--dist`) the built module's.
pub(super) fn check(lint: &mut Lint<'_>, doc: &Doc, subject: &str, module: &str) {
    let spec = &doc.value["spec"];
    let url = spec["url"].as_str().unwrap_or_default();
    let sha = spec["sha256"].as_str().unwrap_or_default();
    let is_file = url.starts_with("file://");
    if let Some((_, pinned)) = url.split_once("@sha256:")
        && !sha.is_empty()
        && pinned != sha
    {
        lint.push(
            Severity::Error,
            &doc.file,
            subject,
            "spec.sha256",
            format!(
                "{sha} differs from the digest in the url ({pinned}): Istio refuses the plugin"
            ),
        );
    }
    if sha.is_empty() {
        let (severity, why) = if is_file {
            (
                Severity::Warning,
                "Istio does not check file:// modules, but a pinned digest says which build was linted",
            )
        } else {
            (
                Severity::Error,
                "Istio would run whatever the url serves now, not the module that was tested",
            )
        };
        lint.push(
            severity,
            &doc.file,
            subject,
            "spec.sha256",
            format!("missing: {why}"),
        );
        return;
    }
    let Some(dist) = &lint.options.dist else {
        return;
    };
    match expected_sha256(url, module, dist) {
        Ok(expected) if expected == sha => {}
        Ok(expected) => {
            let what = if url.starts_with("file://") || url.starts_with("http") {
                format!(
                    "the sha256 of {}",
                    dist.join(format!("{module}.wasm")).display()
                )
            } else {
                format!(
                    "the manifest digest of the image in {} (for oci:// urls Istio checks the \
                     image manifest's digest, not the module's)",
                    dist.join("oci").join(module).display()
                )
            };
            lint.push(
                Severity::Error,
                &doc.file,
                subject,
                "spec.sha256",
                format!("{sha} is not {what}: {expected}; run scripts/package.sh --pin"),
            );
        }
        Err(e) => lint.push(Severity::Error, &doc.file, subject, "spec.sha256", e),
    }
}
