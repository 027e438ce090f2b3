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

/// The layouts read without `oci`: every blob is named by its SHA-256 as coreutils'
/// `sha256sum` computes it, the tag's manifest is such a blob, and its one layer unpacked by
/// GNU tar is exactly the module's bytes.
#[test]
#[ignore = "needs dist/ from scripts/package.sh"]
fn each_layout_checks_out_with_sha256sum() {
    for name in filters::module_names() {
        let dist = repo_root().join("dist");
        let layout = dist.join("oci").join(name);
        let blob_path = |digest: &str| {
            let hex = digest.strip_prefix("sha256:").unwrap();
            let path = layout.join("blobs/sha256").join(hex);
            assert_eq!(
                run("sha256sum", &[&path])[..64],
                *hex.as_bytes(),
                "{}",
                path.display()
            );
            path
        };
        let blob = |digest: &str| fs::read(blob_path(digest)).unwrap();
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
        let tagged: Vec<&serde_json::Value> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| {
                m["annotations"]["org.opencontainers.image.ref.name"] == env!("CARGO_PKG_VERSION")
            })
            .collect();
        assert_eq!(tagged.len(), 1, "{name}: {index}");
        let manifest: serde_json::Value =
            serde_json::from_slice(&blob(tagged[0]["digest"].as_str().unwrap())).unwrap();
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1, "{name}: {manifest}");
        let module = fs::read(dist.join(format!("{name}.wasm"))).unwrap();
        let layer = blob_path(layers[0]["digest"].as_str().unwrap());
        let unpacked = run(
            "tar",
            &["-xzOf".as_ref(), layer.as_os_str(), "plugin.wasm".as_ref()],
        );
        assert!(
            unpacked == module,
            "{name}: the layer is not dist/{name}.wasm"
        );
        blob(manifest["config"]["digest"].as_str().unwrap());
    }
}

/// A command's standard output; it must succeed.
fn run<A: AsRef<std::ffi::OsStr>>(program: &str, args: &[A]) -> Vec<u8> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
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
