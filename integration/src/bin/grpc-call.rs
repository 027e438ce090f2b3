//! The demo's gRPC client (`grpcurl` is not packaged in Debian): calls `mesh.test.Echo`
//! over h2c and prints what came back.
//!
//! ```text
//! grpc-call <host:port> say [message] [options]    unary: prints the status and, on OK, the
//!                                                  metadata the service received
//! grpc-call <host:port> count <n> [options]        server streaming: prints each message
//! options:
//!   -H name:value     send this metadata (repeatable)
//!   --fail CODE       the service answers with this status (a name, UNAVAILABLE, or number)
//!   --repeat N        make N calls on one connection; print one status line each, then a
//!                     tally (`10 OK, 5 RESOURCE_EXHAUSTED`)
//! ```
//!
//! A status other than OK is a result, not an error: the exit code is 0 once every call ran.
//! On a status other than OK the response metadata follow (`x-circuit-state`,
//! `grpc-retry-pushback-ms`, ...).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;

use mesh_integration::grpc::{CountRequest, GrpcClient, GrpcError, SayRequest};
use mesh_policy::grpc::Code;

const USAGE: &str = "usage: grpc-call <host:port> (say [message] | count <n>) \
                     [-H name:value]... [--fail CODE] [--repeat N]";

enum Method {
    Say(String),
    Count(u32),
}

struct Call {
    addr: SocketAddr,
    method: Method,
    metadata: Vec<(String, String)>,
    fail_code: i32,
    repeat: u32,
}

fn main() -> ExitCode {
    let call = match parse(std::env::args().skip(1).collect()) {
        Ok(call) => call,
        Err(message) => {
            eprintln!("grpc-call: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let client = match GrpcClient::connect(call.addr) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("grpc-call: {e}");
            return ExitCode::FAILURE;
        }
    };
    let metadata: Vec<(&str, &str)> = call
        .metadata
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let mut tally: BTreeMap<&'static str, u32> = BTreeMap::new();
    for _ in 0..call.repeat {
        let status = match &call.method {
            Method::Say(message) => {
                let request = SayRequest {
                    fail_code: call.fail_code,
                    ..SayRequest::new(message)
                };
                match client.say(request, &metadata) {
                    Ok(reply) if call.repeat == 1 => {
                        println!("OK from {}: {}", reply.server, reply.message);
                        println!("metadata the service received:");
                        for pair in &reply.metadata {
                            println!("  {}: {}", pair.name, pair.value);
                        }
                        Ok(())
                    }
                    Ok(_) => Ok(()),
                    Err(error) => Err(error),
                }
            }
            Method::Count(count) => {
                let request = CountRequest {
                    fail_code: call.fail_code,
                    ..CountRequest::new(*count)
                };
                let (messages, outcome) = match client.count(request, &metadata) {
                    Ok(messages) => (messages, Ok(())),
                    Err((messages, error)) => (messages, Err(error)),
                };
                if call.repeat == 1 {
                    for n in messages {
                        println!("message n={n}");
                    }
                }
                outcome
            }
        };
        let name = match &status {
            Ok(()) => "OK",
            Err(error) => code_name(error),
        };
        *tally.entry(name).or_default() += 1;
        match status {
            Ok(()) if matches!(call.method, Method::Say(_)) && call.repeat == 1 => {}
            Ok(()) => println!("OK"),
            Err(error) if call.repeat == 1 => print_error(&error, true),
            Err(error) => print_error(&error, false),
        }
    }
    if call.repeat > 1 {
        let tally: Vec<String> = tally
            .iter()
            .map(|(name, count)| format!("{count} {name}"))
            .collect();
        println!("{}", tally.join(", "));
    }
    ExitCode::SUCCESS
}

fn code_name(error: &GrpcError) -> &'static str {
    u32::try_from(error.code)
        .ok()
        .and_then(|code| Code::NAMES.get(code as usize).copied())
        .unwrap_or("UNKNOWN")
}

/// The status line and, with `metadata`, the response metadata under it.
fn print_error(error: &GrpcError, metadata: bool) {
    println!("{} ({}): {}", code_name(error), error.code, error.message);
    for (name, value) in error.metadata.iter().filter(|_| metadata) {
        println!("  {name}: {value}");
    }
}

fn parse(args: Vec<String>) -> Result<Call, String> {
    let mut args = args.into_iter();
    let addr = args
        .next()
        .ok_or("no address")?
        .parse()
        .map_err(|e| format!("address: {e}"))?;
    let method = args.next().ok_or("no method")?;
    let mut rest: Vec<String> = args.collect();
    // The positional argument after the method, if it is not an option.
    let positional = match rest.first() {
        Some(first) if !first.starts_with('-') => Some(rest.remove(0)),
        _ => None,
    };
    let method = match method.as_str() {
        "say" => Method::Say(positional.unwrap_or_else(|| "hello".to_owned())),
        "count" => Method::Count(
            positional
                .ok_or("count needs <n>")?
                .parse()
                .map_err(|e| format!("count: {e}"))?,
        ),
        other => return Err(format!("unknown method {other:?} (say, count)")),
    };
    let mut call = Call {
        addr,
        method,
        metadata: Vec::new(),
        fail_code: 0,
        repeat: 1,
    };
    let mut rest = rest.into_iter();
    while let Some(option) = rest.next() {
        let value = rest.next().ok_or(format!("{option} needs a value"))?;
        match option.as_str() {
            "-H" => {
                let (name, value) = value
                    .split_once(':')
                    .ok_or(format!("-H {value:?}: expected name:value"))?;
                call.metadata
                    .push((name.trim().to_owned(), value.trim().to_owned()));
            }
            "--fail" => {
                call.fail_code = match Code::NAMES.iter().position(|name| *name == value) {
                    Some(code) => i32::try_from(code).map_err(|e| e.to_string())?,
                    None => value
                        .parse()
                        .map_err(|_| format!("--fail {value:?}: a gRPC status name or number"))?,
                }
            }
            "--repeat" => {
                call.repeat = value
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or(format!("--repeat {value:?}: a count above 0"))?;
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(call)
}
