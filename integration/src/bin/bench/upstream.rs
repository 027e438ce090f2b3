//! The fixed fast upstream every variant's requests go to.

use std::net::SocketAddr;

use mesh_integration::server_thread::ServerThread;

use crate::Error;

/// `200 ok` for every request; `/smoke` also lists the request header names it received in
/// `x-seen`, so a run can prove what the filters added.
///
/// A canned HTTP/1.1 responder rather than axum: the upstream shares two CPUs with Envoy and
/// wrk, so the less it costs the less it disturbs Envoy's numbers. It serves what the
/// benchmark sends (GET, no body, keep-alive) and nothing else.
pub struct Upstream {
    pub addr: SocketAddr,
    _server: ServerThread,
}

const OK_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";

/// The answer to one request head (`GET ... HTTP/1.1` up to the blank line).
fn upstream_response(head: &[u8]) -> Vec<u8> {
    if !head.starts_with(b"GET /smoke") {
        return OK_RESPONSE.to_vec();
    }
    let names: Vec<String> = String::from_utf8_lossy(head)
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, _)| name.trim().to_ascii_lowercase())
        .collect();
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-seen: {}\r\ncontent-length: 2\r\n\r\nok",
        names.join(",")
    )
    .into_bytes()
}

/// Answers every request head on one connection until the peer closes it.
async fn serve_connection(socket: tokio::net::TcpStream) -> std::io::Result<()> {
    use std::io::ErrorKind::WouldBlock;
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    loop {
        socket.readable().await?;
        let read = match socket.try_read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == WouldBlock => continue,
            Err(e) => return Err(e),
        };
        buffer.extend_from_slice(chunk.get(..read).unwrap_or_default());
        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buffer.drain(..end + 4).collect();
            out.extend_from_slice(&upstream_response(&head));
        }
        let mut written = 0;
        while written < out.len() {
            socket.writable().await?;
            match socket.try_write(out.get(written..).unwrap_or_default()) {
                Ok(n) => written += n,
                Err(e) if e.kind() == WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        out.clear();
        if buffer.len() > 64 * 1024 {
            return Ok(()); // not what the benchmark sends
        }
    }
}

impl Upstream {
    pub fn start() -> Result<Self, Error> {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let server = ServerThread::start(
            "bench-upstream".into(),
            addr,
            |listener, mut stop| async move {
                loop {
                    tokio::select! {
                        _ = &mut stop => break,
                        accepted = listener.accept() => match accepted {
                            Ok((socket, _)) => {
                                let _ = socket.set_nodelay(true);
                                tokio::spawn(async move {
                                    let _ = serve_connection(socket).await;
                                });
                            }
                            Err(err) => {
                                eprintln!("bench upstream: {err}");
                                break;
                            }
                        },
                    }
                }
            },
        )?;
        Ok(Self {
            addr: server.addr,
            _server: server,
        })
    }
}
