use std::future::Future;
use std::sync::Arc;

use novarpc_core::Classify;
use tokio::sync::Mutex;

use crate::ensure::{ensure, Exhausted, RetryPolicy};
use crate::failover::HostRing;

/// Opens a connection to one host.
pub trait Connector: Send + Sync + 'static {
    /// Where to connect: one host of the transport URL, with whatever the
    /// connector needs to reach it.
    type Host: Send + Sync + 'static;
    /// A live connection; cloning it must give a handle to the same
    /// connection, since [`Reconnector`] hands out clones to every caller.
    type Connection: Clone + Send + Sync + 'static;
    /// The connector's error; its classification decides whether connecting
    /// is tried again (an unreachable broker) or not (refused credentials).
    type Error: Classify;

    /// The driver's backend name, for metrics.
    const BACKEND: &'static str;

    /// Opens a connection to `host`; a single attempt ([`Reconnector`]
    /// does the retrying and failover).
    fn connect(
        &self,
        host: &Self::Host,
    ) -> impl Future<Output = Result<Self::Connection, Self::Error>> + Send;

    /// Whether a connection handed out earlier is still usable.
    fn is_usable(&self, connection: &Self::Connection) -> bool;

    /// A printable name of a host, without secrets.
    fn describe(&self, host: &Self::Host) -> String;
}

struct Current<C> {
    generation: u64,
    connection: Option<C>,
}

/// Holds one live connection and replaces it when it breaks: the next caller
/// after a failure reconnects, trying the hosts in turn with backoff, while
/// concurrent callers wait for that same attempt.
pub struct Reconnector<K: Connector> {
    connector: K,
    hosts: HostRing<K::Host>,
    policy: RetryPolicy,
    current: Mutex<Current<K::Connection>>,
}

impl<K: Connector> std::fmt::Debug for Reconnector<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hosts: Vec<String> = self
            .hosts
            .hosts()
            .iter()
            .map(|h| self.connector.describe(h))
            .collect();
        f.debug_struct("Reconnector")
            .field("hosts", &hosts)
            .field("policy", &self.policy)
            .finish()
    }
}

impl<K: Connector> Reconnector<K> {
    /// A reconnector that connects through `connector` to `hosts` with
    /// `policy`'s retries; it connects lazily, on the first [`Reconnector::get`].
    pub fn new(connector: K, hosts: HostRing<K::Host>, policy: RetryPolicy) -> Arc<Self> {
        Arc::new(Reconnector {
            connector,
            hosts,
            policy,
            current: Mutex::new(Current {
                generation: 0,
                connection: None,
            }),
        })
    }

    /// The connector it connects with.
    pub fn connector(&self) -> &K {
        &self.connector
    }

    /// The live connection and its generation, connecting (with retries and
    /// failover) if there is none.
    pub async fn get(&self) -> Result<(u64, K::Connection), Exhausted<K::Error>> {
        let mut current = self.current.lock().await;
        if let Some(connection) = &current.connection {
            if self.connector.is_usable(connection) {
                return Ok((current.generation, connection.clone()));
            }
            tracing::info!("connection lost; reconnecting");
            current.connection = None;
        }
        // Boxed: connecting (TCP, TLS, SASL, the protocol's handshake, with
        // retries) is a future of kilobytes, and unboxed it sat in every
        // future that awaits `get` (every send in flight, in both drivers)
        // although it runs only without a live connection.
        let connection = Box::pin(ensure(
            &self.policy,
            |_| {
                let host = self.hosts.next_host();
                async move {
                    let result = self.connector.connect(host).await;
                    if result.is_ok() {
                        tracing::info!(host = %self.connector.describe(host), "connected");
                    }
                    result
                }
            },
            |error, attempt| {
                let temporary = error.kind().is_temporary();
                tracing::debug!(
                    error = %novarpc_core::error_chain(error),
                    attempt,
                    temporary,
                    "cannot connect to the broker"
                );
                temporary
            },
        ))
        .await?;
        if current.generation > 0 {
            novarpc_core::metrics::record_reconnect(K::BACKEND);
        }
        current.generation += 1;
        current.connection = Some(connection.clone());
        Ok((current.generation, connection))
    }

    /// Nova's `reset`: marks the connection of `generation` broken, so the next
    /// `get` replaces it.
    pub async fn reset(&self, generation: u64) {
        let mut current = self.current.lock().await;
        if current.generation == generation {
            current.connection = None;
        }
    }

    /// Takes the connection out, for closing it.
    pub async fn take(&self) -> Option<K::Connection> {
        self.current.lock().await.connection.take()
    }

    /// The current connection without connecting.
    pub async fn peek(&self) -> Option<(u64, K::Connection)> {
        let current = self.current.lock().await;
        current.connection.clone().map(|c| (current.generation, c))
    }
}
