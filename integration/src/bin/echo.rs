//! The demo upstream as a program: `echo <service> [listen address]`, default 127.0.0.1:0.
//! Prints `listening <address>` once bound; stops on Ctrl-C or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let service = args
        .next()
        .ok_or("usage: echo <service> [listen address]")?;
    let addr: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:0").parse()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        println!("listening {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        let stop = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        mesh_integration::echo::serve(&service, listener, stop).await
    })?;
    Ok(())
}
