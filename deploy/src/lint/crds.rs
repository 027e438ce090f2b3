//! Manifests against Istio's CRD schemas (vendored, [`crate::crd`]): every violation with its
//! field path and the schema's message.

use crate::crd::Crds;
use crate::docs::Doc;

use super::{Lint, Severity};

/// The vendored CRDs, read once per process; a finding when they cannot be read.
pub(super) fn vendored(lint: &mut Lint<'_>) -> Option<&'static Crds> {
    static CRDS: std::sync::OnceLock<Result<Crds, String>> = std::sync::OnceLock::new();
    match CRDS.get_or_init(Crds::vendored) {
        Ok(crds) => Some(crds),
        Err(e) => {
            lint.push(Severity::Error, "istio/crds", "CRDs", "", e.clone());
            None
        }
    }
}

/// One document against the CRD of its kind.
pub(super) fn check(lint: &mut Lint<'_>, crds: &Crds, doc: &Doc, subject: &str) {
    if let Some(violations) = crds.validate(&doc.value) {
        for v in violations {
            lint.push(Severity::Error, &doc.file, subject, &v.path, v.message);
        }
    }
}
