//! What the HTTP client cannot do: hostile requests as raw bytes over TCP (header values
//! that are not UTF-8, repeated headers, oversized values), and Envoy's wasm health.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::mesh::Reply;

/// Longest response read back (the echo upstream returns what it received: a 60 KB header
/// comes back in the body).
const MAX_RESPONSE: usize = 4 << 20;

/// A request as bytes: `GET <path> HTTP/1.1`, `host`, then the headers exactly as given.
pub fn request(method: &str, path: &[u8], headers: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + headers.iter().map(|(_, v)| v.len()).sum::<usize>());
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\nhost: mesh.test\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Sends `request` on a new connection and reads one response (by `content-length`, chunked,
/// or until the server closes). Errors when the server closes without a response.
pub fn send(addr: SocketAddr, request: &[u8], timeout: Duration) -> io::Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(request)?;
    stream.flush()?;
    read_reply(&mut BufReader::new(stream))
}

/// Sends `requests` pipelined on one keep-alive connection (written by a thread of their own
/// while the replies are read) and reads a reply to each, in order: many requests in little
/// client time. Envoy answers pipelined HTTP/1.1 requests one after the other.
pub fn pipeline(
    addr: SocketAddr,
    requests: Vec<u8>,
    count: usize,
    timeout: Duration,
) -> io::Result<Vec<Reply>> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut writer = stream.try_clone()?;
    let written =
        std::thread::spawn(move || writer.write_all(&requests).and_then(|()| writer.flush()));
    let mut reader = BufReader::new(stream);
    let replies = (0..count).map(|_| read_reply(&mut reader)).collect();
    written
        .join()
        .map_err(|_| io::Error::other("writer panicked"))??;
    replies
}

/// `count` requests to `path`, each with its own value of `header` (`<prefix>-<i>`),
/// pipelined on `connections` connections at once: a flood of distinct keys in little client
/// time. The statuses, in no particular order.
pub fn flood_distinct_keys(
    addr: SocketAddr,
    path: &[u8],
    header: &str,
    prefix: &str,
    count: usize,
    connections: usize,
) -> io::Result<Vec<u16>> {
    std::thread::scope(|s| {
        let senders: Vec<_> = (0..connections)
            .map(|c| {
                s.spawn(move || {
                    let keys = (c..count).step_by(connections.max(1));
                    let sent = keys.len();
                    let requests: Vec<u8> = keys
                        .flat_map(|i| {
                            request(
                                "GET",
                                path,
                                &[(header, format!("{prefix}-{i}").into_bytes())],
                            )
                        })
                        .collect();
                    pipeline(addr, requests, sent, Duration::from_secs(60))
                })
            })
            .collect();
        let mut statuses = Vec::with_capacity(count);
        for sender in senders {
            let replies = sender
                .join()
                .map_err(|_| io::Error::other("sender panicked"))??;
            statuses.extend(replies.iter().map(|r| r.status));
        }
        Ok(statuses)
    })
}

/// One response off a connection.
fn read_reply(reader: &mut impl BufRead) -> io::Result<Reply> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no status line: {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut raw = Vec::new();
        reader.read_until(b'\n', &mut raw)?;
        let raw = raw.strip_suffix(b"\n").unwrap_or(&raw);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.is_empty() {
            break;
        }
        if let Some(colon) = raw.iter().position(|c| *c == b':') {
            let name = String::from_utf8_lossy(&raw[..colon]).to_ascii_lowercase();
            let value = raw[colon + 1..].trim_ascii().to_vec();
            headers.push((name, value));
        }
    }
    let mut reply = Reply {
        status,
        headers,
        body: Vec::new(),
    };
    let length = reply
        .header_bytes("content-length")
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<usize>().ok());
    let chunked = reply
        .header_bytes("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case(b"chunked"));
    if let Some(length) = length {
        let mut body = vec![0; length.min(MAX_RESPONSE)];
        reader.read_exact(&mut body)?;
        reply.body = body;
    } else if chunked {
        reply.body = read_chunked(reader)?;
    } else {
        reader
            .take(MAX_RESPONSE as u64)
            .read_to_end(&mut reply.body)?;
    }
    Ok(reply)
}

fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size)?;
        let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|e| io::Error::other(format!("chunk size: {e}")))?;
        if size == 0 || body.len() + size > MAX_RESPONSE {
            return Ok(body);
        }
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk)?;
        chunk.truncate(size);
        body.extend_from_slice(&chunk);
    }
}

/// Envoy's wasm VMs, from the admin `/stats` (`wasm.*`) and the log. Envoy 1.40 keeps no
/// counter of failed VMs: a VM that aborts shows in its log (`Function: ... failed`, with
/// the panic message logged just before at critical level) and, under `FAIL_RELOAD`, in the
/// plugin's `vm_reload*` counters and a higher `created`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WasmHealth {
    /// `wasm.envoy.wasm.runtime.v8.created`: VMs ever created (reloads add to it).
    pub created: u64,
    /// `wasm.envoy.wasm.runtime.v8.active`.
    pub active: u64,
    /// Every `wasm.<plugin>.vm_reload*` counter, summed.
    pub reloads: u64,
    /// Log lines that say a VM failed or a module panicked.
    pub failures: Vec<String>,
}

impl WasmHealth {
    pub fn read(stats: &str, log: &str) -> Self {
        let mut health = Self::default();
        for line in stats.lines() {
            let Some((name, value)) = line.rsplit_once(": ") else {
                continue;
            };
            let Ok(value) = value.trim().parse::<u64>() else {
                continue;
            };
            match name {
                "wasm.envoy.wasm.runtime.v8.created" => health.created = value,
                "wasm.envoy.wasm.runtime.v8.active" => health.active = value,
                _ if name.starts_with("wasm.") && name.contains(".vm_reload") => {
                    health.reloads += value;
                }
                _ => {}
            }
        }
        health.failures = log
            .lines()
            .filter(|line| is_vm_failure(line))
            .map(str::to_owned)
            .collect();
        health
    }
}

/// A log line that says a wasm VM failed or a module panicked (the native module: a panic
/// it caught, `mesh_bundle: panic in <hook>`).
pub fn is_vm_failure(line: &str) -> bool {
    (line.contains("[wasm]") && (line.contains("[critical]") || line.contains("[error]")))
        || line.contains("panicked at")
        || line.contains("mesh_bundle: panic in")
        || (line.contains("Function: ") && line.contains(" failed"))
        || line.contains("Wasm VM failed")
}
