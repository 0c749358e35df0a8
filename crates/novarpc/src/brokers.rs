//! The per-process cache of other brokers' transports: what
//! `cast_to_server`, `fanout_cast_to_server` and `RpcClient::broker` send
//! through (Nova cells).
//!
//! One entry per broker (a `[brokers.NAME]` table, or a transport URL with
//! its credentials). The first use connects, and concurrent first uses of
//! one broker wait for that one connection (per-key single flight); no lock
//! is held while connecting, so a broker that is down or slow delays only
//! the sends to it. Later uses share the transport. Transports nobody else
//! holds are closed after `broker_idle_timeout` unused, or when the cache
//! grows past `broker_cache_size` (least recently used first); a failed
//! connection is not cached, so the next send tries again. Closing the main
//! transport closes them all.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use novarpc_core::broker::BrokerResolver;
use novarpc_core::{error_chain, Broker, Config, ConfigError, Error, Transport, TransportUrl};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::Registry;

/// The cache `novarpc::connect` attaches to the transports it builds.
pub(crate) struct BrokerCache {
    registry: Registry,
    config: Config,
    max_size: usize,
    idle_timeout: Duration,
    state: Mutex<State>,
    this: Weak<BrokerCache>,
}

#[derive(Default)]
struct State {
    /// By key: the broker's name, or its URL with credentials (never shown).
    entries: HashMap<String, Entry>,
    closed: bool,
    sweeper_started: bool,
    /// Said once while the cache is over its bound.
    warned_over_bound: bool,
}

struct Entry {
    /// The broker without secrets, for logs and `Debug`.
    label: String,
    cell: Arc<OnceCell<Transport>>,
    last_used: Instant,
}

impl Entry {
    /// Whether only the cache holds it (no send in flight, no server,
    /// client or connection attempt using it).
    fn unshared(&self) -> bool {
        Arc::strong_count(&self.cell) == 1 && self.cell.get().is_none_or(|t| t.handle_count() == 1)
    }
}

impl fmt::Debug for BrokerCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut labels: Vec<String> = match self.state.try_lock() {
            Ok(state) => state.entries.values().map(|e| e.label.clone()).collect(),
            Err(_) => vec!["<busy>".to_owned()],
        };
        labels.sort();
        f.debug_struct("BrokerCache")
            .field("brokers", &labels)
            .field("max_size", &self.max_size)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

/// The cache key of a URL: every field, credentials included. Kept in
/// memory only; never logged or shown.
fn url_key(url: &TransportUrl) -> String {
    let mut key = format!("url:{}://", url.scheme);
    for host in &url.hosts {
        key.push_str(&format!(
            "{:?}:{:?}@{:?}:{:?},",
            host.username,
            host.password.as_ref().map(|p| p.expose()),
            host.hostname,
            host.port
        ));
    }
    key.push_str(&format!("/{:?}?{:?}", url.virtual_host, url.query));
    key
}

impl BrokerCache {
    /// A cache building transports for `config`'s brokers from `registry`.
    pub(crate) fn new(registry: Registry, config: Config) -> Arc<BrokerCache> {
        let common = config.common();
        let (max_size, idle_timeout) = (common.broker_cache_size, common.broker_idle_timeout);
        Arc::new_cyclic(|this| BrokerCache {
            registry,
            config,
            max_size: max_size.max(1),
            idle_timeout,
            state: Mutex::new(State::default()),
            this: this.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The key, the label and the configuration of a broker; no I/O.
    fn describe(&self, broker: &Broker) -> Result<(String, String, Config), Error> {
        match broker {
            Broker::Named(name) => Ok((
                format!("name:{name}"),
                name.clone(),
                self.config.for_broker(name)?,
            )),
            Broker::Url(url) => {
                if self.registry.by_scheme(&url.scheme).is_none() {
                    return Err(ConfigError::InvalidUrl {
                        url: url.to_string(),
                        reason: format!(
                            "no backend handles the scheme `{}`; known schemes: {}",
                            url.scheme,
                            self.registry.schemes().join(", ")
                        ),
                    }
                    .into());
                }
                Ok((
                    url_key(url),
                    url.to_string(),
                    self.config.for_url(url.clone()),
                ))
            }
            other => Err(Error::NoBrokerResolver {
                broker: other.to_string(),
            }),
        }
    }

    async fn get(&self, broker: &Broker) -> Result<Transport, Error> {
        let (key, label, config) = self.describe(broker)?;
        // A transport found closed (its user cleaned it up) is forgotten and
        // connected again; twice in a row means the cache is closing.
        for _ in 0..2 {
            let (cell, victims) = {
                let mut state = self.lock();
                if state.closed {
                    return Err(Error::Closed);
                }
                let now = Instant::now();
                let mut victims = self.take_idle(&mut state, now);
                let entry = state.entries.entry(key.clone()).or_insert_with(|| Entry {
                    label: label.clone(),
                    cell: Arc::new(OnceCell::new()),
                    last_used: now,
                });
                entry.last_used = now;
                let cell = entry.cell.clone();
                victims.extend(self.take_over_bound(&mut state, &key));
                if !state.sweeper_started {
                    state.sweeper_started = self.start_sweeper();
                }
                (cell, victims)
            };
            close_later(victims, "evicted");
            // Per-key single flight: concurrent first uses wait for one
            // connection; other brokers' sends are not held up.
            let transport = cell
                .get_or_try_init(|| self.connect(config.clone(), &label))
                .await?
                .clone();
            let closing = {
                let mut state = self.lock();
                if !state.closed
                    && transport.is_closed()
                    && state
                        .entries
                        .get(&key)
                        .is_some_and(|e| Arc::ptr_eq(&e.cell, &cell))
                {
                    state.entries.remove(&key);
                }
                state.closed
            };
            if closing {
                let _ = transport.cleanup().await;
                return Err(Error::Closed);
            }
            if !transport.is_closed() {
                return Ok(transport);
            }
        }
        Err(Error::Closed)
    }

    async fn connect(&self, config: Config, label: &str) -> Result<Transport, Error> {
        let descriptor = self.registry.resolve(&config)?;
        (descriptor.validate)(&config)?;
        let started = Instant::now();
        match (descriptor.connect)(config).await {
            Ok(driver) => {
                tracing::info!(
                    broker = %label,
                    backend = descriptor.name,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "connected to another broker"
                );
                let this: Weak<dyn BrokerResolver> = self.this.clone();
                Ok(Transport::with_shared_resolver(driver, this))
            }
            Err(error) => {
                // The send that asked fails with it: its caller reports it.
                tracing::debug!(
                    broker = %label,
                    backend = descriptor.name,
                    error = %error_chain(&error),
                    "cannot connect to another broker"
                );
                Err(error)
            }
        }
    }

    /// Removes what went unused for the idle timeout (or was cleaned up by
    /// its user) and nobody else holds; returns the transports to close.
    fn take_idle(&self, state: &mut State, now: Instant) -> Vec<(String, Transport)> {
        let idle_timeout = self.idle_timeout;
        let stale: Vec<String> = state
            .entries
            .iter()
            .filter(|(_, e)| {
                let closed = e.cell.get().is_some_and(Transport::is_closed);
                closed || (e.unshared() && now.duration_since(e.last_used) >= idle_timeout)
            })
            .map(|(k, _)| k.clone())
            .collect();
        stale
            .into_iter()
            .filter_map(|k| state.entries.remove(&k))
            .filter_map(|e| e.cell.get().cloned().map(|t| (e.label, t)))
            .collect()
    }

    /// Least recently used first, removes unshared entries until the cache
    /// is within its bound (sparing `keep`); returns the transports to close.
    fn take_over_bound(&self, state: &mut State, keep: &str) -> Vec<(String, Transport)> {
        let mut victims = Vec::new();
        while state.entries.len() > self.max_size {
            let oldest = state
                .entries
                .iter()
                .filter(|(k, e)| k.as_str() != keep && e.unshared())
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            let Some(key) = oldest else {
                if !state.warned_over_bound {
                    state.warned_over_bound = true;
                    tracing::warn!(
                        brokers = state.entries.len(),
                        broker_cache_size = self.max_size,
                        "broker cache over its bound: every cached broker is in use"
                    );
                }
                return victims;
            };
            if let Some(entry) = state.entries.remove(&key) {
                if let Some(transport) = entry.cell.get() {
                    victims.push((entry.label, transport.clone()));
                }
            }
        }
        state.warned_over_bound = false;
        victims
    }

    /// Closes idle brokers in the background, for those no send touches
    /// again. Returns false without a tokio runtime (sends still sweep).
    fn start_sweeper(&self) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let cache = self.this.clone();
        let period =
            (self.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(30));
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                // Holds the cache only while sweeping: dropping the main
                // transport ends this task.
                let Some(cache) = cache.upgrade() else { break };
                let idle = {
                    let mut state = cache.lock();
                    if state.closed {
                        break;
                    }
                    cache.take_idle(&mut state, Instant::now())
                };
                drop(cache);
                close_all(idle, "idle").await;
            }
        });
        true
    }

    async fn close_all_entries(&self) {
        let transports: Vec<(String, Transport)> = {
            let mut state = self.lock();
            state.closed = true;
            state
                .entries
                .drain()
                .filter_map(|(_, e)| e.cell.get().cloned().map(|t| (e.label, t)))
                .collect()
        };
        close_all(transports, "closing").await;
    }
}

async fn close_all(transports: Vec<(String, Transport)>, why: &'static str) {
    for (label, transport) in transports {
        if transport.is_closed() {
            continue;
        }
        match transport.cleanup().await {
            Ok(()) => {
                tracing::info!(broker = %label, reason = why, "closed another broker's transport")
            }
            Err(error) => tracing::warn!(
                broker = %label,
                reason = why,
                error = %error_chain(&error),
                "closing another broker's transport failed"
            ),
        }
    }
}

fn close_later(transports: Vec<(String, Transport)>, why: &'static str) {
    if transports.is_empty() {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(close_all(transports, why));
        }
        // No runtime to close them on: dropping them releases what their
        // drivers hold.
        Err(_) => drop(transports),
    }
}

impl BrokerResolver for BrokerCache {
    fn transport_for<'a>(&'a self, broker: &'a Broker) -> BoxFuture<'a, Result<Transport, Error>> {
        Box::pin(self.get(broker))
    }

    fn close(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            self.close_all_entries().await;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use novarpc_core::driver::{ConnectFn, Driver, DriverDescriptor};
    use novarpc_core::memory::{MemoryDriver, CAPABILITIES};
    use novarpc_core::{ErrorKind, Result};

    use super::*;

    fn descriptor(
        name: &'static str,
        schemes: &'static [&'static str],
        connect: ConnectFn,
    ) -> DriverDescriptor {
        DriverDescriptor {
            name,
            aliases: &[],
            url_schemes: schemes,
            config_section: name,
            capabilities: |_| Ok(CAPABILITIES),
            validate: |_| Ok(()),
            resolved_options: |_| Ok(String::new()),
            connect,
        }
    }

    fn memory_driver(config: &Config) -> Arc<dyn Driver> {
        Arc::new(MemoryDriver::from_config(config).expect("memory options"))
    }

    static SLOW_CONNECTS: AtomicUsize = AtomicUsize::new(0);
    fn slow(config: Config) -> BoxFuture<'static, Result<Arc<dyn Driver>>> {
        Box::pin(async move {
            SLOW_CONNECTS.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(memory_driver(&config))
        })
    }

    fn plain(config: Config) -> BoxFuture<'static, Result<Arc<dyn Driver>>> {
        Box::pin(async move { Ok(memory_driver(&config)) })
    }

    static IDLE_CONNECTS: AtomicUsize = AtomicUsize::new(0);
    fn idle(config: Config) -> BoxFuture<'static, Result<Arc<dyn Driver>>> {
        Box::pin(async move {
            IDLE_CONNECTS.fetch_add(1, Ordering::SeqCst);
            Ok(memory_driver(&config))
        })
    }

    fn hang(_: Config) -> BoxFuture<'static, Result<Arc<dyn Driver>>> {
        Box::pin(std::future::pending())
    }

    fn refuse(_: Config) -> BoxFuture<'static, Result<Arc<dyn Driver>>> {
        Box::pin(async {
            Err(Error::transport_of_kind(
                "refuse",
                ErrorKind::Unreachable,
                "connection refused",
            ))
        })
    }

    fn registry() -> Registry {
        let mut registry = Registry::builtin();
        registry
            .register(descriptor("slow", &["slow"], slow))
            .unwrap();
        registry
            .register(descriptor("plain", &["plain"], plain))
            .unwrap();
        registry
            .register(descriptor("idle", &["idle"], idle))
            .unwrap();
        registry
            .register(descriptor("hang", &["hang"], hang))
            .unwrap();
        registry
            .register(descriptor("refuse", &["refuse"], refuse))
            .unwrap();
        registry
    }

    async fn connect(extra: &str) -> Transport {
        let id = next_id();
        let text = format!(
            "[DEFAULT]\ntransport_url = \"memory://home_{id}\"\n{extra}\n\n[brokers.cell1]\ntransport_url = \"memory://cell1_{id}\"\n"
        );
        let config = Config::from_toml_str(&text, "cache.toml").unwrap();
        registry().connect(&config).await.unwrap()
    }

    fn next_id() -> usize {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::SeqCst)
    }

    fn cached(transport: &Transport) -> String {
        format!("{:?}", transport.resolver().expect("a resolver"))
    }

    #[tokio::test]
    async fn one_transport_per_broker_shared_by_its_users() {
        let transport = connect("").await;
        let cell1 = Broker::named("cell1");
        let a = transport.for_broker(&cell1).await.unwrap();
        let b = transport.for_broker(&cell1).await.unwrap();
        assert!(Arc::ptr_eq(a.driver(), b.driver()));
        // The same broker by URL is another entry (its own options).
        let by_url = transport
            .for_broker(&Broker::url("plain://u:pw@h/").unwrap())
            .await
            .unwrap();
        assert!(!Arc::ptr_eq(a.driver(), by_url.driver()));
        // Transports of other brokers resolve through the same cache.
        let back = a.for_broker(&cell1).await.unwrap();
        assert!(Arc::ptr_eq(a.driver(), back.driver()));
        transport.cleanup().await.unwrap();
        assert!(a.is_closed() && by_url.is_closed());
        let after = transport.for_broker(&cell1).await.unwrap_err();
        assert_eq!(after.kind(), ErrorKind::Closed);
        assert_eq!(
            a.for_broker(&cell1).await.unwrap_err().kind(),
            ErrorKind::Closed
        );
    }

    #[tokio::test]
    async fn concurrent_first_uses_connect_once() {
        let transport = connect("").await;
        let broker = Broker::url("slow://h1/").unwrap();
        let before = SLOW_CONNECTS.load(Ordering::SeqCst);
        let uses = (0..8).map(|_| transport.for_broker(&broker));
        let transports = futures::future::try_join_all(uses).await.unwrap();
        assert_eq!(SLOW_CONNECTS.load(Ordering::SeqCst) - before, 1);
        assert!(transports
            .iter()
            .all(|t| Arc::ptr_eq(t.driver(), transports[0].driver())));
        transport.cleanup().await.unwrap();
    }

    #[tokio::test]
    async fn a_hung_broker_holds_up_no_other() {
        let transport = connect("").await;
        let hung = tokio::spawn({
            let transport = transport.clone();
            async move {
                transport
                    .for_broker(&Broker::url("hang://h/").unwrap())
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let cell1 = tokio::time::timeout(
            Duration::from_secs(2),
            transport.for_broker(&Broker::named("cell1")),
        )
        .await
        .expect("cell1 was held up by the hung broker");
        assert!(cell1.is_ok());
        assert!(!hung.is_finished());
        hung.abort();
        transport.cleanup().await.unwrap();
    }

    #[tokio::test]
    async fn failures_are_classified_not_cached_and_redacted() {
        let transport = connect("").await;
        let refused = Broker::url("refuse://nova:s3cret@h/").unwrap();
        for _ in 0..2 {
            let error = transport.for_broker(&refused).await.unwrap_err();
            assert_eq!(error.kind(), ErrorKind::Unreachable);
        }
        let shown = cached(&transport);
        assert!(shown.contains("refuse://nova:***@h/"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
        let unknown = transport
            .for_broker(&Broker::named("cell9"))
            .await
            .unwrap_err();
        assert_eq!(unknown.kind(), ErrorKind::Config);
        assert!(unknown.to_string().contains("cell1"), "{unknown}");
        let scheme = transport
            .for_broker(&Broker::url("gopher://u:s3cret@h/").unwrap())
            .await
            .unwrap_err();
        assert_eq!(scheme.kind(), ErrorKind::Config);
        assert!(!scheme.to_string().contains("s3cret"), "{scheme}");
        transport.cleanup().await.unwrap();
        // Without a resolver.
        let plain = Transport::new(MemoryDriver::new(Default::default()));
        let error = plain.for_broker(&Broker::named("cell1")).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Config);
    }

    #[tokio::test]
    async fn least_recently_used_unshared_brokers_are_closed_over_the_bound() {
        let transport = connect("broker_cache_size = 2").await;
        let held = transport
            .for_broker(&Broker::url("plain://held/").unwrap())
            .await
            .unwrap();
        for host in ["a", "b", "c"] {
            let t = transport
                .for_broker(&Broker::url(&format!("plain://{host}/")).unwrap())
                .await
                .unwrap();
            drop(t);
        }
        // `held` is in use and stays; of a, b, c only the newest fits.
        let shown = cached(&transport);
        assert!(
            shown.contains("plain://held/") && shown.contains("plain://c/"),
            "{shown}"
        );
        assert!(
            !shown.contains("plain://a/") && !shown.contains("plain://b/"),
            "{shown}"
        );
        assert!(!held.is_closed());
        // In use by all: the cache grows past its bound rather than break them.
        let more: Vec<Transport> = futures::future::try_join_all(["x", "y"].map(|h| {
            let transport = transport.clone();
            async move {
                transport
                    .for_broker(&Broker::url(&format!("plain://{h}/")).unwrap())
                    .await
            }
        }))
        .await
        .unwrap();
        assert!(more.iter().all(|t| !t.is_closed()) && !held.is_closed());
        transport.cleanup().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn idle_brokers_close_and_reconnect_on_next_use() {
        let transport = connect("broker_idle_timeout = 10").await;
        let broker = Broker::url("idle://h/").unwrap();
        let before = IDLE_CONNECTS.load(Ordering::SeqCst);
        let first = transport.for_broker(&broker).await.unwrap();
        // In use: never closed, however long.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!first.is_closed());
        assert!(cached(&transport).contains("idle://h/"));
        drop(first);
        // Unused now: the sweeper closes it and forgets it.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!cached(&transport).contains("idle://h/"));
        let again = transport.for_broker(&broker).await.unwrap();
        assert!(!again.is_closed());
        assert_eq!(IDLE_CONNECTS.load(Ordering::SeqCst) - before, 2);
        transport.cleanup().await.unwrap();
    }

    #[tokio::test]
    async fn a_transport_its_user_cleaned_up_is_replaced() {
        let transport = connect("").await;
        let cell1 = Broker::named("cell1");
        let first = transport.for_broker(&cell1).await.unwrap();
        first.cleanup().await.unwrap();
        let second = transport.for_broker(&cell1).await.unwrap();
        assert!(!second.is_closed());
        assert!(!Arc::ptr_eq(first.driver(), second.driver()));
        transport.cleanup().await.unwrap();
    }
}
