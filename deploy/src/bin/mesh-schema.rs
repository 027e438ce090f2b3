//! `mesh-schema [SCHEMA_DIR [DOCS_DIR]]`: writes `SCHEMA_DIR/<filter>.schema.json` (default
//! `istio/schema`), the JSON Schema of each filter's plugin JSON, and `bundle.schema.json` for
//! the bundle's; and the configuration reference rendered from them, `DOCS_DIR/<filter>.md`
//! and its index `DOCS_DIR/README.md` (default `docs/config`). Run from the repository root.
//! `deploy/tests/schema.rs` fails when the committed copies differ from what this writes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mesh_deploy::filters::Kind;
use mesh_deploy::{reference, schema};

fn write_all(dir: &Path, files: impl Iterator<Item = (String, String)>) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (name, text) in files {
        let path = dir.join(name);
        fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let schema_dir = PathBuf::from(args.next().unwrap_or_else(|| "istio/schema".into()));
    let docs_dir = PathBuf::from(args.next().unwrap_or_else(|| "docs/config".into()));
    let schemas = Kind::ALL
        .into_iter()
        .map(|kind| (schema::file_name(kind), schema::render(kind)))
        .chain([("bundle.schema.json".to_owned(), schema::render_bundle())]);
    let pages = Kind::ALL
        .into_iter()
        .map(|kind| (reference::file_name(kind), reference::page(kind)))
        .chain([(reference::INDEX.to_owned(), reference::index())]);
    match write_all(&schema_dir, schemas).and_then(|()| write_all(&docs_dir, pages)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-schema: {e}");
            ExitCode::FAILURE
        }
    }
}
