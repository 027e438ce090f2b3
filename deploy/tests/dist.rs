//! The built artefacts (run by scripts/test.sh after scripts/package.sh; `--ignored` because
//! `cargo test` alone has no dist/): each OCI layout read back holds exactly dist/<f>.wasm,
//! and every WasmPlugin in istio/ is pinned to it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fs;

use mesh_deploy::filters;
use mesh_deploy::lint::{Options, lint_paths};
use mesh_deploy::{oci, repo_root};

#[test]
#[ignore = "needs dist/ from scripts/package.sh"]
fn each_image_holds_the_built_module() {
    for name in filters::module_names() {
        let dist = repo_root().join("dist");
        let module = fs::read(dist.join(format!("{name}.wasm"))).unwrap();
        let pulled = oci::read_layout(
            &dist.join("oci").join(name),
            Some(env!("CARGO_PKG_VERSION")),
        )
        .unwrap();
        assert_eq!(
            oci::sha256_hex(&pulled.wasm),
            oci::sha256_hex(&module),
            "{name}"
        );
        assert_eq!(pulled.manifest.layers.len(), 1);
        assert_eq!(pulled.manifest.layers[0].media_type, oci::LAYER);
        // Reproducible: the same module gives the same image.
        assert_eq!(oci::image(&module, name).unwrap().digest(), pulled.digest);
    }
}

#[test]
#[ignore = "needs dist/ from scripts/package.sh"]
fn istio_manifests_are_pinned_to_the_built_images() {
    let found = lint_paths(
        &[repo_root().join("istio")],
        &Options {
            dist: Some(repo_root().join("dist")),
        },
    )
    .unwrap();
    assert_eq!(found, vec![], "run scripts/package.sh --pin");
}
