//! The handle users hold: [`Transport`] wraps a [`Driver`] and owns what every
//! backend shares.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::time::Instant;

use crate::broker::{Broker, BrokerResolver};
use crate::config::CommonOptions;
use crate::driver::{CallInfo, Capabilities, Driver, Listener, OutgoingRequest};
use crate::envelope::{self, CallHeader, TypedRequest};
use crate::error::{Error, Result};
use crate::notify::Priority;
use crate::reply::ReplyReceiver;
use crate::target::Target;

/// Encodes a request, its arguments serialized straight into the message;
/// arguments that are not keyword arguments (a JSON object) are refused.
fn encode_request<A: Serialize + ?Sized>(
    request: &TypedRequest<'_, A>,
    call: Option<CallHeader<'_>>,
) -> Result<Bytes> {
    envelope::encode_request_with(request, call).map_err(|error| match error {
        envelope::ArgsError::Serialize(error) => Error::Serialization(error),
        envelope::ArgsError::NotAnObject => {
            // Cold: serialized again only to say what they were.
            let text = serde_json::to_string(request.args).unwrap_or_default();
            Error::InvalidArguments {
                method: request.method.to_owned(),
                reason: format!(
                    "arguments are keyword arguments and must serialize to a JSON object, got `{}`",
                    truncate(&text, 40)
                ),
            }
        }
    })
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A connection to a message broker (or the in-process `memory` broker),
/// shared by the clients, servers, notifiers and listeners of a process.
///
/// Cheap to clone: clones share the driver and its connections.
/// [`Transport::cleanup`] closes it for every clone.
///
/// ```
/// # async fn demo() -> Result<(), novarpc_core::Error> {
/// use novarpc_core::{memory::MemoryDriver, CommonOptions, Transport};
/// let transport = Transport::new(MemoryDriver::new(CommonOptions::default()));
/// assert_eq!(transport.backend(), "memory");
/// assert!(transport.capabilities().fanout);
/// transport.cleanup().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    driver: Arc<dyn Driver>,
    backend: &'static str,
    capabilities: Capabilities,
    options: CommonOptions,
    closed: AtomicBool,
    resolver: Resolver,
    metrics: crate::metrics::Metrics,
    /// The driver's reply address once it has one: asked for once, not
    /// through a (boxed) driver future on every call.
    reply_address: std::sync::OnceLock<Arc<str>>,
    /// The one request for it under way: the calls made while the reply
    /// queue is being declared (a burst at start-up: thousands) wait on it,
    /// 16 bytes each, instead of each boxing a request of its own.
    reply_pending: parking_lot::Mutex<Option<PendingAddress>>,
}

/// A shared request for the driver's reply address.
type PendingAddress = futures::future::Shared<
    futures::future::BoxFuture<'static, std::result::Result<Arc<str>, Arc<Error>>>,
>;

/// How a transport reaches other brokers.
enum Resolver {
    None,
    /// Its own: [`Transport::cleanup`] closes it (and what it connected).
    Owned(Arc<dyn BrokerResolver>),
    /// Its maker's (a transport the resolver built for another broker):
    /// weak, so a resolver and the transports it caches are no cycle.
    Shared(Weak<dyn BrokerResolver>),
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("backend", &self.inner.backend)
            .field("driver", &self.inner.driver)
            .field("closed", &self.is_closed())
            .field("resolves_brokers", &self.has_resolver())
            .finish()
    }
}

impl Transport {
    /// Wraps a driver.
    pub fn new(driver: impl Driver) -> Self {
        Transport::from_driver(Arc::new(driver))
    }

    /// Wraps a shared driver (as the registry's connect functions build them).
    /// It cannot reach other brokers: see [`Transport::with_resolver`].
    pub fn from_driver(driver: Arc<dyn Driver>) -> Self {
        Transport::build(driver, Resolver::None)
    }

    /// Wraps a driver and the resolver its clients use to reach other
    /// brokers ([`crate::RpcClient::cast_to_server`], [`Transport::for_broker`]).
    /// The transport owns the resolver: [`Transport::cleanup`] closes it,
    /// and the transports it made, too. `novarpc::connect` builds transports
    /// this way.
    pub fn with_resolver(driver: Arc<dyn Driver>, resolver: Arc<dyn BrokerResolver>) -> Self {
        Transport::build(driver, Resolver::Owned(resolver))
    }

    /// Wraps a driver that `resolver` connected for another broker: it
    /// resolves brokers through its maker (holding it weakly), and its
    /// cleanup leaves the resolver open.
    pub fn with_shared_resolver(
        driver: Arc<dyn Driver>,
        resolver: Weak<dyn BrokerResolver>,
    ) -> Self {
        Transport::build(driver, Resolver::Shared(resolver))
    }

    fn build(driver: Arc<dyn Driver>, resolver: Resolver) -> Self {
        Transport {
            inner: Arc::new(Inner {
                metrics: crate::metrics::Metrics::new(driver.backend()),
                backend: driver.backend(),
                capabilities: driver.capabilities(),
                options: driver.options().clone(),
                reply_address: std::sync::OnceLock::new(),
                reply_pending: parking_lot::Mutex::new(None),
                driver,
                closed: AtomicBool::new(false),
                resolver,
            }),
        }
    }

    /// Whether this transport can reach other brokers (it has a
    /// [`BrokerResolver`]).
    pub fn has_resolver(&self) -> bool {
        !matches!(self.inner.resolver, Resolver::None)
    }

    /// The transport's metric handles.
    pub(crate) fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    /// The transport to another broker (a `[brokers.NAME]` table of the
    /// configuration, or a transport URL), from this transport's resolver:
    /// connected on first use and shared by the process after. For servers,
    /// notifiers and listeners in another cell; clients can also send
    /// through [`crate::RpcClient::broker`].
    ///
    /// Fails with `Config` if the transport has no resolver (one built with
    /// [`Transport::new`]) or the name is unknown, with `Closed` after
    /// [`Transport::cleanup`], and with the broker's classified error (such
    /// as `Unreachable`) if it cannot be reached. Not bounded here: callers
    /// bound it (clients do, by their send and call timeouts).
    ///
    /// Keep the returned transport while using it (servers, notifiers and
    /// notification listeners hold theirs; hold it yourself for a
    /// [`Transport::tap`]): the resolver may close a broker's transport that
    /// nobody else holds once it has been idle.
    pub async fn for_broker(&self, broker: &Broker) -> Result<Transport> {
        self.check_open()?;
        let resolver = match &self.inner.resolver {
            Resolver::None => {
                return Err(Error::NoBrokerResolver {
                    broker: broker.to_string(),
                })
            }
            Resolver::Owned(resolver) => resolver.clone(),
            Resolver::Shared(resolver) => resolver.upgrade().ok_or(Error::Closed)?,
        };
        resolver.transport_for(broker).await
    }

    /// The resolver this transport reaches other brokers with, if any (its
    /// `Debug` lists the brokers it holds, without credentials).
    pub fn resolver(&self) -> Option<Arc<dyn BrokerResolver>> {
        match &self.inner.resolver {
            Resolver::None => None,
            Resolver::Owned(resolver) => Some(resolver.clone()),
            Resolver::Shared(resolver) => resolver.upgrade(),
        }
    }

    /// How many handles (clones) of this transport exist, for caches that
    /// close only what nobody else holds.
    pub fn handle_count(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// The registered name of the backend (`memory`, `kombu`, `qpid`).
    pub fn backend(&self) -> &'static str {
        self.inner.backend
    }

    /// What this transport can do: its backend, broker and addressing profile
    /// decide. Everything else fails with `Unsupported` before sending.
    pub fn capabilities(&self) -> Capabilities {
        self.inner.capabilities
    }

    /// The `[DEFAULT]` options it was built with.
    pub fn options(&self) -> &CommonOptions {
        &self.inner.options
    }

    /// Whether [`Transport::cleanup`] was called (on this or any clone).
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// The driver behind the handle, for driver-specific tools and tests.
    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.inner.driver
    }

    fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    pub(crate) fn require(&self, available: bool, operation: &'static str) -> Result<()> {
        self.check_open()?;
        if available {
            Ok(())
        } else {
            Err(Error::Unsupported {
                backend: self.backend(),
                operation,
            })
        }
    }

    /// Checks a cast's target against the capabilities.
    pub(crate) fn check_cast(&self, target: &Target) -> Result<()> {
        let capabilities = self.capabilities();
        if target.fanout && target.server.is_some() {
            self.require(
                capabilities.fanout_to_server,
                "fanout to every process of one host",
            )
        } else if target.fanout {
            self.require(capabilities.fanout, "fanout")
        } else {
            self.check_open()
        }
    }

    /// A driver's failure once [`Transport::cleanup`] has run is reported as
    /// `Closed`: the operation failed because the transport was closed under
    /// it (its connection torn down mid-attach, say), whatever the driver saw.
    fn closed_or<T>(&self, result: Result<T>) -> Result<T> {
        match result {
            Err(error) if self.is_closed() && !matches!(error, Error::Closed) => {
                tracing::debug!(error = %crate::error_chain(&error), "failed as the transport closed");
                Err(Error::Closed)
            }
            other => other,
        }
    }

    /// Bounds a send by `send_timeout`.
    async fn bounded<T>(
        &self,
        operation: &'static str,
        target: &Target,
        send: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let timeout = self.options().send_timeout;
        match crate::deadline::within(timeout, send).await {
            Ok(result) => self.closed_or(result),
            Err(_) => Err(Error::SendTimeout {
                operation,
                target: target.to_string(),
                timeout,
            }),
        }
    }

    /// Encodes and sends a request that expects no reply.
    pub(crate) async fn cast<A: Serialize + ?Sized>(
        &self,
        target: &Target,
        request: &TypedRequest<'_, A>,
    ) -> Result<()> {
        self.check_cast(target)?;
        let operation = if target.fanout { "fanout cast" } else { "cast" };
        let send = async {
            let _slot = self.send_slot().await;
            let outgoing = OutgoingRequest {
                body: encode_request(request, None)?,
                method: request.method,
            };
            self.inner.driver.send(target, outgoing).await
        };
        self.bounded(operation, target, send).await
    }

    /// The driver's reply address (the slow path of a call, before the
    /// first answer): every caller waits on one shared request to the
    /// driver, and each gets its failure (same kind, same source); a call
    /// after a failure asks afresh.
    async fn reply_address(&self) -> Result<&str> {
        let pending = {
            use futures::FutureExt;
            let mut pending = self.inner.reply_pending.lock();
            if pending
                .as_ref()
                .is_some_and(|p| matches!(p.peek(), Some(Err(_))))
            {
                *pending = None;
            }
            pending
                .get_or_insert_with(|| {
                    let driver = self.inner.driver.clone();
                    async move {
                        match driver.reply_address().await {
                            Ok(address) => Ok(Arc::from(address)),
                            Err(error) => Err(Arc::new(error)),
                        }
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        let address = pending
            .await
            .map_err(|error| Error::shared(&error, self.backend()))?;
        self.inner.reply_pending.lock().take();
        Ok(self.inner.reply_address.get_or_init(|| address))
    }

    /// Waits for one of the driver's send slots, if it bounds them (see
    /// [`Driver::send_slots`]).
    async fn send_slot(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let slots = self.inner.driver.send_slots()?;
        // A free slot is taken without waiting (and `try_acquire` does not
        // overtake waiters: released slots go to them first). Only a wait is
        // boxed: every call in flight would otherwise carry the semaphore's
        // queue node in its state. A driver's semaphore is never closed
        // while the driver lives.
        match slots.try_acquire() {
            Ok(slot) => Some(slot),
            Err(_) => Box::pin(slots.acquire()).await.ok(),
        }
    }

    /// Encodes and sends a call's request, returning the receiver of its
    /// replies. Everything (connecting, declaring the reply queue, sending)
    /// happens before `deadline`, or the call times out.
    ///
    /// Not an `async fn`: it would keep its arguments twice in its state,
    /// which every call in flight holds.
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn start_call<'a, A: Serialize + ?Sized>(
        &'a self,
        target: &'a Target,
        request: &'a TypedRequest<'a, A>,
        deadline: Instant,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<ReplyReceiver>> + 'a {
        async move {
            self.require(self.capabilities().call, "call")?;
            let driver = &self.inner.driver;
            let send = async {
                let reply_to: &str = match self.inner.reply_address.get() {
                    Some(address) => address,
                    None => self.reply_address().await?,
                };
                // Before the request is encoded and its waiter registered:
                // calls waiting for a slot hold only their arguments.
                let _slot = self.send_slot().await;
                // Scoped, so that the id's buffer is not kept in the future's
                // state across the send (the receiver holds the id).
                let (body, receiver) = {
                    let mut id = [0u8; 32];
                    let msg_id = envelope::unique_id_buf(&mut id);
                    let header = CallHeader {
                        msg_id,
                        reply_q: reply_to,
                    };
                    let body = encode_request(request, Some(header))?;
                    (body, driver.replies().register(msg_id))
                };
                let call = CallInfo {
                    msg_id: receiver.msg_id(),
                    reply_to,
                    deadline,
                };
                let outgoing = OutgoingRequest {
                    body,
                    method: request.method,
                };
                driver.send_call(target, outgoing, call).await?;
                Ok(receiver)
            };
            match crate::deadline::within_at(deadline, send).await {
                Ok(result) => self.closed_or(result),
                Err(_) => Err(Error::Timeout {
                    method: request.method.to_owned(),
                    topic: target.to_string(),
                    timeout,
                }),
            }
        }
    }

    /// Sends an encoded reply (servers answer through their request's responder).
    pub(crate) async fn send_reply(&self, reply_to: &str, msg_id: &str, body: Bytes) -> Result<()> {
        self.check_open()?;
        let timeout = self.options().send_timeout;
        let send = async {
            let _slot = self.send_slot().await;
            self.inner.driver.send_reply(reply_to, msg_id, body).await
        };
        match crate::deadline::within(timeout, send).await {
            Ok(result) => result,
            Err(_) => Err(Error::SendTimeout {
                operation: "reply",
                target: reply_to.to_owned(),
                timeout,
            }),
        }
    }

    /// Sends an encoded notification.
    pub(crate) async fn send_notification(
        &self,
        target: &Target,
        priority: Priority,
        body: Bytes,
    ) -> Result<()> {
        self.require(self.capabilities().notifications, "notifications")?;
        let send = async {
            let _slot = self.send_slot().await;
            self.inner
                .driver
                .send_notification(target, priority, body)
                .await
        };
        self.bounded("notification", target, send).await
    }

    /// Consumes requests for a server's target.
    pub(crate) async fn listen(&self, target: &Target) -> Result<Box<dyn Listener>> {
        self.require(self.capabilities().serve, "serving RPC requests")?;
        self.inner.driver.listen(target).await
    }

    /// Consumes notifications.
    pub(crate) async fn listen_for_notifications(
        &self,
        targets: &[Target],
        priorities: &[Priority],
        pool: Option<&str>,
    ) -> Result<Box<dyn Listener>> {
        let capabilities = self.capabilities();
        self.require(capabilities.notifications, "notifications")?;
        if pool.is_some() {
            self.require(
                capabilities.notification_pools,
                "notification listener pools",
            )?;
        }
        self.inner
            .driver
            .listen_for_notifications(targets, priorities, pool)
            .await
    }

    /// Consumes copies of the requests routed to `target` (its topic, its
    /// servers and its fanout) without taking them from the servers: for
    /// operators' taps. Its queues are private and go away with the listener.
    pub async fn tap(&self, target: &Target) -> Result<Box<dyn Listener>> {
        self.require(self.capabilities().taps, "tapping a topic")?;
        target.validate()?;
        self.inner.driver.tap(target).await
    }

    /// Removes the shared queues of `target` (`topic`, and `topic.server` if
    /// it names a server), whose servers must be stopped: shared queues
    /// outlive their servers by design, so tools that make throw-away targets
    /// (health checks) remove them. A no-op where
    /// [`Capabilities::removes_targets`] is false.
    pub async fn delete_target(&self, target: &Target) -> Result<()> {
        self.check_open()?;
        if !self.capabilities().removes_targets {
            return Ok(());
        }
        self.inner.driver.delete_target(target).await
    }

    /// Closes the transport for every clone: callers waiting for replies
    /// fail with `Closed` at once, later operations fail with `Closed`, and the
    /// driver's connections and broker resources are released. Idempotent.
    /// A transport that owns a broker resolver closes it too, with every
    /// other broker's transport it connected.
    pub async fn cleanup(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.driver.replies().close_all();
        let closed = self.inner.driver.close().await;
        if let Resolver::Owned(resolver) = &self.inner.resolver {
            let brokers = resolver.close().await;
            closed?;
            return brokers;
        }
        closed
    }
}
