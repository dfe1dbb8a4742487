//! Serving the router over TCP with bounded connections: at most
//! [`ConnectionLimits::max_connections`] at once (the rest wait in the listen backlog), each an
//! HTTP/1.1 connection whose request heads are limited in size and in the time they take to
//! arrive, which also closes keep-alive connections left idle. [`RestServer`] runs it on
//! threads of its own, for a process without a tokio runtime of its own and for tests.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::pin;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use super::{router, ConnectionLimits, RestSettings};
use crate::jobmanager::api::ClusterApi;

/// Serves `router` on `listener` until `shutdown` completes; then stops accepting, lets the
/// requests in flight finish for [`ConnectionLimits::shutdown_grace`] and drops what is left.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let max_connections = limits.max_connections.max(1);
    let (closing, closing_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    let address = listener.local_addr()?;
    tracing::info!(%address, "REST API listening");
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(ended) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = ended {
                    tracing::error!(error = %e, "a REST connection task failed");
                }
            }
            accepted = listener.accept(), if connections.len() < max_connections => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(stream, peer, router.clone(), limits, closing_rx.clone()));
                }
                Err(e) => {
                    // Out of descriptors or memory, or a connection reset before it was taken:
                    // wait a little rather than spin on the error.
                    tracing::warn!(%address, error = %e, "accepting a REST connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    // Nobody may be listening any more (every connection ended): nothing to tell then.
    let _ = closing.send(true);
    let drained =
        tokio::time::timeout(limits.shutdown_grace, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(%address, left = connections.len(), "REST connections still busy after the shutdown grace; dropping them");
        connections.abort_all();
    }
    tracing::info!(%address, "REST API stopped");
    Ok(())
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    mut closing: watch::Receiver<bool>,
) {
    // Responses are written whole; without it a small response waits for the peer's delayed ACK.
    let _ = stream.set_nodelay(true);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    let mut connection = pin!(builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router)));
    let mut shutting_down = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "REST connection ended with an error");
                }
                return;
            }
            _ = closing.changed(), if !shutting_down => {
                shutting_down = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// The REST API served on a tokio runtime of its own (thread `cs-rest`, two workers), until
/// [`RestServer::shutdown`] or drop.
pub struct RestServer {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl RestServer {
    /// Binds `address` (port 0 picks a free one) and serves [`router`]`(api, settings)` on it.
    pub fn start(address: impl ToSocketAddrs, api: Arc<dyn ClusterApi>, settings: RestSettings) -> io::Result<Self> {
        let std_listener = std::net::TcpListener::bind(address)?;
        std_listener.set_nonblocking(true)?;
        let bound = std_listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cs-rest-worker")
            .enable_io()
            .enable_time()
            .build()?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(std_listener)?
        };
        let limits = settings.connections;
        let app = router(api, settings);
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("cs-rest".into()).spawn(move || {
            runtime.block_on(serve(listener, app, limits, async {
                // A dropped sender stops the server as well.
                let _ = stopped.await;
            }))
        })?;
        Ok(Self { address: bound, stop: Some(stop), thread: Some(thread) })
    }

    /// The address it serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// `http://<address>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Stops accepting, lets requests in flight finish (within the shutdown grace) and returns
    /// once the server's threads have ended.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(JoinHandle::join) {
            None => Ok(()),
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the REST server's thread panicked")),
        }
    }
}

impl Drop for RestServer {
    fn drop(&mut self) {
        if let Err(e) = self.stop_and_join() {
            tracing::warn!(address = %self.address, error = %e, "the REST server ended with an error");
        }
    }
}

impl std::fmt::Debug for RestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestServer").field("address", &self.address).finish()
    }
}
