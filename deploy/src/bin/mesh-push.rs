//! `mesh-push`: the demo's live updates, the way istiod pushes WasmPlugin changes (ECDS).
//!
//! - `mesh-push split --config envoy.yaml --dir DIR --out bootstrap.json`: the config with
//!   every wasm filter's config moved to a file in `DIR` that Envoy watches.
//! - `mesh-push config --dir DIR --filter ratelimit plugin.json`: pushes the plugin JSON in
//!   the file as that filter's next config (Envoy applies it, or refuses it and keeps the
//!   previous one: its log and `extension_config_discovery.*.config_fail` say so).

// Documents are serde_json values: `value["key"]` reads `Null` for what is missing.
#![allow(clippy::indexing_slicing)]

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mesh_deploy::{docs, ecds};

#[derive(Parser)]
#[command(
    version,
    about = "Live updates of the mesh filters' configs through ECDS files"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a bootstrap whose wasm filters take their configs from files in --dir.
    Split {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Push the plugin JSON in FILE as the filter's next config.
    Config {
        #[arg(long)]
        dir: PathBuf,
        /// `ratelimit` or `mesh.ratelimit`.
        #[arg(long)]
        filter: String,
        file: PathBuf,
    },
}

fn run(args: Args) -> Result<String, String> {
    match args.command {
        Command::Split { config, dir, out } => {
            let doc = docs::load(&config)?
                .into_iter()
                .next()
                .ok_or_else(|| format!("{}: empty", config.display()))?;
            let bootstrap = ecds::split(&doc.value, &dir)?;
            fs::write(&out, bootstrap.to_string())
                .map_err(|e| format!("{}: {e}", out.display()))?;
            Ok(format!(
                "wrote {} (configs in {})",
                out.display(),
                dir.display()
            ))
        }
        Command::Config { dir, filter, file } => {
            let name = if filter.starts_with("mesh.") {
                filter
            } else {
                format!("mesh.{filter}")
            };
            let json = fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let (version, mut typed_config) = ecds::pushed(&dir, &name)?;
            typed_config["config"]["configuration"]["value"] = serde_json::Value::String(json);
            ecds::push(&dir, &name, version + 1, &typed_config)?;
            Ok(format!(
                "pushed {} as version {} of {name}",
                file.display(),
                version + 1
            ))
        }
    }
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(said) => {
            println!("{said}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mesh-push: {e}");
            ExitCode::FAILURE
        }
    }
}
