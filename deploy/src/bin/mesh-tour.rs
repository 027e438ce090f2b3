//! `mesh-tour`: the README's two-minute tour against a running demo (`mesh_deploy::tour`).
//!
//! - `mesh-tour print --envoy-port P --admin-port A --bin DIR`: the tour's comments and
//!   commands for a demo on those ports (scripts/run-local.sh prints it as its usage).
//! - `mesh-tour check --envoy-port P --admin-port A --bin DIR`: runs every command with bash,
//!   in order, and fails on the first whose output lacks a line the README shows.

use std::fs;
use std::process::{Command, ExitCode};

use clap::{Parser, ValueEnum};
use mesh_deploy::{repo_root, tour};

#[derive(Clone, Copy, ValueEnum)]
enum Action {
    Print,
    Check,
}

#[derive(Parser)]
#[command(version, about = "The README's tour: print it, or run and check it")]
struct Args {
    action: Action,
    #[arg(long, default_value_t = 10000)]
    envoy_port: u16,
    #[arg(long, default_value_t = 9901)]
    admin_port: u16,
    /// Where grpc-call is (the README says target/debug).
    #[arg(long, default_value = tour::BIN_DIR)]
    bin: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let readme = repo_root().join("README.md");
    let examples = match fs::read_to_string(&readme)
        .map_err(|e| format!("{}: {e}", readme.display()))
        .and_then(|text| tour::examples(&text))
    {
        Ok(examples) => examples,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local =
        |command: &str| tour::localize(command, args.envoy_port, args.admin_port, &args.bin);
    for example in &examples {
        let command = local(&example.command);
        match args.action {
            Action::Print => {
                for line in &example.comment {
                    println!("  # {line}");
                }
                println!("  {command}");
            }
            Action::Check => {
                let output = match Command::new("bash").arg("-c").arg(&command).output() {
                    Ok(output) => output,
                    Err(e) => {
                        eprintln!("error: bash: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                let stdout = String::from_utf8_lossy(&output.stdout);
                let missing = tour::missing(&example.expected, &stdout);
                if !output.status.success() || !missing.is_empty() {
                    eprintln!(
                        "error: the README's tour: `{command}` ({}) lacks:\n  {}\noutput:\n{stdout}{}",
                        output.status,
                        missing.join("\n  "),
                        String::from_utf8_lossy(&output.stderr)
                    );
                    return ExitCode::FAILURE;
                }
                println!("ok: {command}");
            }
        }
    }
    ExitCode::SUCCESS
}
