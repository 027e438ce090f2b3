//! `mesh-lint [--dist DIR] [--deny-warnings] PATH...`: checks WasmPlugins, VirtualServices,
//! other Istio manifests and Envoy configs before they are deployed. Exit 1 on an error (or
//! a warning with `--deny-warnings`), 2 when the input cannot be read.

#![allow(clippy::indexing_slicing)]
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mesh_deploy::lint::{Options, Severity, lint_paths};

#[derive(Parser)]
#[command(
    version,
    about = "Lint Istio WasmPlugins, VirtualServices and Envoy configs for the mesh filters"
)]
struct Args {
    /// Files or directories (walked for .yaml, .yml, .json).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Built modules (dist/<filter>.wasm, dist/oci/<filter>): check each sha256 against them.
    #[arg(long)]
    dist: Option<PathBuf>,
    /// Fail on warnings too.
    #[arg(long)]
    deny_warnings: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let findings = match lint_paths(&args.paths, &Options { dist: args.dist }) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("mesh-lint: {e}");
            return ExitCode::from(2);
        }
    };
    for finding in &findings {
        println!("{finding}");
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = findings.len() - errors;
    eprintln!("mesh-lint: {errors} errors, {warnings} warnings");
    if errors > 0 || (args.deny_warnings && warnings > 0) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
