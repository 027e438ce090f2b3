//! A test server on a thread of its own: the echo upstream's and the benchmark's.

use std::future::Future;
use std::net::SocketAddr;
use std::thread::JoinHandle;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A server on its own thread and single-threaded runtime; on drop its serving future is
/// told to end (the receiver it was given resolves) and the thread joined.
pub struct ServerThread {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Binds `addr`, then runs `serve(listener, stop)` on a thread named `name`; `serve`
    /// should end once `stop` resolves.
    pub fn start<Serve, Served>(
        name: String,
        addr: SocketAddr,
        serve: Serve,
    ) -> std::io::Result<Self>
    where
        Serve: FnOnce(TcpListener, oneshot::Receiver<()>) -> Served + Send + 'static,
        Served: Future<Output = ()>,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind(addr))?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || runtime.block_on(serve(listener, stopped)))?;
        Ok(Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
