//! The demo upstream as a program: `echo [--grpc] <service> [listen address]`, default
//! 127.0.0.1:0. Without `--grpc` an HTTP echo (`mesh_integration::echo`), with it the gRPC
//! service `mesh.test.Echo` over h2c (`mesh_integration::grpc`). Prints `listening <address>`
//! once bound; stops on Ctrl-C or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).peekable();
    let grpc = args.next_if(|arg| arg == "--grpc").is_some();
    let service = args
        .next()
        .ok_or("usage: echo [--grpc] <service> [listen address]")?;
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
        if grpc {
            mesh_integration::grpc::serve(&service, listener, stop).await
        } else {
            mesh_integration::echo::serve(&service, listener, stop).await
        }
    })?;
    Ok(())
}
