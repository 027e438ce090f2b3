//! `mesh-schema [DIR]`: writes `DIR/<filter>.schema.json` (default `istio/schema`), the JSON
//! Schema of each filter's plugin JSON. `deploy/tests/schema.rs` fails when the committed
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
    for kind in Kind::ALL {
        let path = dir.join(schema::file_name(kind));
        if let Err(e) = fs::write(&path, schema::render(kind)) {
            eprintln!("mesh-schema: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
