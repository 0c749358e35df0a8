//! Serving until the process is asked to stop (SIGTERM, SIGINT).

use std::future::Future;

use crate::error::Result;
use crate::rpc_server::RpcServer;

/// Waits for SIGTERM or SIGINT (Ctrl-C; on non-Unix systems Ctrl-C only) and
/// says which arrived: for processes that stop several servers and
/// listeners on one signal. If no signal handler can be installed it logs
/// that once and never returns, as a process without one would run on.
pub async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => return "SIGTERM",
                    interrupted = tokio::signal::ctrl_c() => if interrupted.is_ok() {
                        return "SIGINT";
                    },
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot handle SIGTERM: stopping on SIGINT only");
            }
        }
    }
    match tokio::signal::ctrl_c().await {
        Ok(()) => "SIGINT",
        Err(error) => {
            tracing::error!(%error, "cannot handle SIGINT: serving until the process is killed");
            std::future::pending().await
        }
    }
}

impl RpcServer {
    /// Serves until the process gets SIGTERM or SIGINT, then stops
    /// gracefully: takes no more requests, lets those in flight finish
    /// within the grace period ([`crate::RpcServerBuilder::grace_period`]),
    /// and returns. For a service whose only job is this server.
    pub async fn serve_until_signal(self) -> Result<()> {
        self.serve_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes (a signal, a channel, a deadline),
    /// then stops as [`RpcServer::stop`] does; `shutdown`'s output is logged
    /// as the reason.
    pub async fn serve_until<F>(self, shutdown: F) -> Result<()>
    where
        F: Future,
        F::Output: std::fmt::Debug,
    {
        let reason = shutdown.await;
        tracing::info!(target_ = %self.target(), ?reason, "stopping the rpc server");
        self.stop().await
    }
}
