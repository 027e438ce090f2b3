//! `mesh-oci`: Wasm OCI images of the built filters, and pinning manifests to them.
//!
//! - `mesh-oci layout --dist dist`: for each `dist/<filter>.wasm` (and `dist/bundle.wasm`), the compat-variant image in
//!   the OCI image layout `dist/oci/<filter>`, tagged with the filter crate's version.
//! - `mesh-oci read DIR [--tag T]`: reads a layout back as Istio would; prints the manifest
//!   digest and the module's sha256.
//! - `mesh-oci pin --dist dist FILE...`: sets each WasmPlugin's `sha256` for its url.

#![allow(clippy::indexing_slicing)]

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mesh_deploy::filters;
use mesh_deploy::{oci, pin};

/// The image tag: the version the filter crates share.
const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Parser)]
#[command(
    version,
    about = "Wasm OCI images (Istio's compat variant) of the mesh filters"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write dist/oci/<filter> for every dist/<filter>.wasm.
    Layout {
        #[arg(long, default_value = "dist")]
        dist: PathBuf,
        #[arg(long, default_value = VERSION)]
        tag: String,
    },
    /// Read a layout back; print `<manifest digest> <module sha256> <tag>`.
    Read {
        dir: PathBuf,
        #[arg(long)]
        tag: Option<String>,
    },
    /// Pin the sha256 of every WasmPlugin in the files to the modules in --dist.
    Pin {
        #[arg(long, default_value = "dist")]
        dist: PathBuf,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn run(args: Args) -> Result<(), String> {
    match args.command {
        Command::Layout { dist, tag } => {
            for name in filters::module_names() {
                let module = dist.join(format!("{name}.wasm"));
                let wasm = fs::read(&module).map_err(|e| format!("{}: {e}", module.display()))?;
                let image = oci::image(&wasm, name)?;
                let dir = dist.join("oci").join(name);
                let digest = oci::write_layout(&dir, &image, &tag)?;
                println!(
                    "{}:{tag} sha256:{digest} (module sha256:{})",
                    dir.display(),
                    oci::sha256_hex(&wasm)
                );
            }
            Ok(())
        }
        Command::Read { dir, tag } => {
            let pulled = oci::read_layout(&dir, tag.as_deref())?;
            println!(
                "{} {} {}",
                pulled.digest,
                oci::sha256_hex(&pulled.wasm),
                pulled.tag
            );
            Ok(())
        }
        Command::Pin { dist, files } => {
            for file in files {
                let name = file.display().to_string();
                let text = fs::read_to_string(&file).map_err(|e| format!("{name}: {e}"))?;
                if let Some(pinned) = pin::pin_text(&name, &text, &dist)? {
                    fs::write(&file, pinned).map_err(|e| format!("{name}: {e}"))?;
                    println!("pinned {name}");
                }
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-oci: {e}");
            ExitCode::FAILURE
        }
    }
}
