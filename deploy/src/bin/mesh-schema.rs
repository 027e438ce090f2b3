//! `mesh-schema [DIR]`: writes `DIR/<filter>.schema.json` (default `istio/schema`), the JSON
//! Schema of each filter's plugin JSON, and `bundle.schema.json` for the bundle's. `deploy/tests/schema.rs` fails when the committed
//! copies differ from what this writes.

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;

use mesh_deploy::filters::Kind;
use mesh_deploy::schema;

fn main() -> ExitCode {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "istio/schema".into()),
    );
    if let Err(e) = fs::create_dir_all(&dir) {
        eprintln!("mesh-schema: {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let files = Kind::ALL
        .into_iter()
        .map(|kind| (schema::file_name(kind), schema::render(kind)))
        .chain([("bundle.schema.json".to_owned(), schema::render_bundle())]);
    for (name, text) in files {
        let path = dir.join(name);
        if let Err(e) = fs::write(&path, text) {
            eprintln!("mesh-schema: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
