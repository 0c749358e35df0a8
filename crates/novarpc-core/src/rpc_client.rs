use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures::stream::{BoxStream, Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::time::Instant;
use tracing::Instrument;

use crate::broker::Broker;
use crate::envelope::{self, Context, Reply, TypedRequest, VersionRef, DISPATCHER_MODULE};
use crate::error::{Error, Result};
use crate::metrics::{Kind, Side};
use crate::notify::{Notifier, Priority};
use crate::reply::ReplyReceiver;
use crate::target::{Target, Version};
use crate::transport::Transport;

/// Sends requests to a [`Target`]: `call`, `cast`, `fanout_cast`,
/// `cast_to_server`, `fanout_cast_to_server`, `multicall` and `notify`.
///
/// Cheap to clone; [`RpcClient::prepare`] derives a client with another server,
/// timeout, version, namespace, fanout or broker, as oslo's `prepare()` does.
///
/// ```
/// # async fn demo() -> Result<(), novarpc_core::Error> {
/// use novarpc_core::{memory::MemoryDriver, Broker, CommonOptions, RpcClient, Target, Transport, Version};
/// let transport = Transport::new(MemoryDriver::new(CommonOptions::default()));
/// let client = RpcClient::new(transport, Target::new("compute"));
/// let to_host = client.prepare().server("host1").version(Version::new(1, 3));
/// assert_eq!(to_host.target().server.as_deref(), Some("host1"));
/// // Another cell's broker, resolved when a request is sent.
/// let in_cell1 = client.prepare().broker(Broker::named("cell1"));
/// assert_eq!(in_cell1.broker_ref(), Some(&Broker::named("cell1")));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RpcClient {
    transport: Transport,
    target: Target,
    timeout: Duration,
    version_cap: Option<Version>,
    /// Another broker requests go to, resolved through the transport.
    broker: Option<Broker>,
    /// Set by [`RpcClient::cleanup`]; shared with prepared copies.
    closed: Arc<AtomicBool>,
}

impl RpcClient {
    /// A client for `target`, with the transport's `rpc_response_timeout`.
    pub fn new(transport: Transport, target: Target) -> Self {
        let timeout = transport.options().rpc_response_timeout;
        RpcClient {
            transport,
            target,
            timeout,
            version_cap: None,
            broker: None,
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A copy to adjust with the builder methods below.
    pub fn prepare(&self) -> Self {
        self.clone()
    }

    /// Sends to one server (host) of the topic: its `topic.server` queue.
    pub fn server(mut self, server: impl Into<String>) -> Self {
        self.target.server = Some(server.into());
        self
    }

    /// Sends to every server of the topic (casts only).
    pub fn fanout(mut self, fanout: bool) -> Self {
        self.target.fanout = fanout;
        self
    }

    /// The API version requests claim (`Version::new(1, 3)`, or
    /// `"1.3".parse()?`).
    pub fn version(mut self, version: Version) -> Self {
        self.target.version = Some(version);
        self
    }

    /// The endpoint namespace requests are for.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.target.namespace = Some(namespace.into());
        self
    }

    /// Sends on this exchange instead of the control exchange.
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.target.exchange = Some(exchange.into());
        self
    }

    /// How long a call waits for its reply, counted from the call on.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Refuses to send messages of a version this cap does not allow.
    pub fn version_cap(mut self, cap: Version) -> Self {
        self.version_cap = Some(cap);
        self
    }

    /// Sends every request to another message broker (a Nova cell): a
    /// `[brokers.NAME]` table of the configuration or a transport URL. The
    /// broker's transport comes from the client's transport
    /// ([`Transport::for_broker`]), connected on first use and shared after;
    /// connecting counts against each request's timeout (the call's, or
    /// `send_timeout` for casts). Calls and multicalls work as on the
    /// client's own broker; `.server(host)` picks a host there.
    pub fn broker(mut self, broker: Broker) -> Self {
        self.broker = Some(broker);
        self
    }

    /// The broker set by [`RpcClient::broker`], if any.
    pub fn broker_ref(&self) -> Option<&Broker> {
        self.broker.as_ref()
    }

    /// A client on `broker`'s transport, connected now (within the client's
    /// timeout): for code that would rather fail here than at its first
    /// call. Otherwise it is [`RpcClient::broker`]; [`RpcClient::cleanup`]
    /// of either ends both.
    pub async fn via(&self, broker: &Broker) -> Result<RpcClient> {
        self.check_open()?;
        let transport = crate::deadline::within(self.timeout, self.transport.for_broker(broker))
            .await
            .map_err(|_| Error::ConnectTimeout {
                broker: broker.to_string(),
                timeout: self.timeout,
            })??;
        Ok(RpcClient {
            transport,
            broker: None,
            ..self.clone()
        })
    }

    /// The target requests go to.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The transport the client was made with (its own broker's; requests
    /// to another broker go through [`Transport::for_broker`]).
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The transport requests go out on: the client's own, or the one of
    /// the broker set by [`RpcClient::broker`].
    async fn sending_transport(&self) -> Result<std::borrow::Cow<'_, Transport>> {
        match &self.broker {
            None => Ok(std::borrow::Cow::Borrowed(&self.transport)),
            Some(broker) => self
                .transport
                .for_broker(broker)
                .await
                .map(std::borrow::Cow::Owned),
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Whether a message of `version` may be sent under the version cap.
    pub fn can_send_version(&self, version: Version) -> bool {
        self.version_cap.is_none_or(|cap| cap.can_handle(version))
    }

    /// `version`: what the request claims (the target's, or a typed
    /// method's).
    fn check_target(&self, target: &Target, version: Option<Version>) -> Result<()> {
        target.validate()?;
        if let (Some(cap), Some(version)) = (self.version_cap, version) {
            if !cap.can_handle(version) {
                return Err(Error::VersionCap {
                    version: version.to_string(),
                    cap: cap.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Invokes `method` and waits for its result, deserialized into `R`.
    ///
    /// (An `async fn` in all but name: written out, its future keeps
    /// neither its arguments nor a second copy of the call's, for each
    /// call in flight.)
    #[allow(clippy::manual_async_fn)]
    pub fn call<'a, R, A>(
        &'a self,
        context: &'a Context,
        method: &'a str,
        args: &'a A,
    ) -> impl std::future::Future<Output = Result<R>> + 'a
    where
        R: DeserializeOwned + 'a,
        A: Serialize + ?Sized,
    {
        // A combinator: an async block would hold the call's future twice,
        // as what it captured and as what it awaits.
        futures::FutureExt::map(
            self.call_answer_as(self.target.version, context, method, args),
            |answer| serde_json::from_str(answer?.json()).map_err(Error::Serialization),
        )
    }

    /// Like [`RpcClient::call`], returning the result's JSON text.
    pub async fn call_raw<A>(
        &self,
        context: &Context,
        method: &str,
        args: &A,
    ) -> Result<Box<RawValue>>
    where
        A: Serialize + ?Sized,
    {
        let answer = self
            .call_answer_as(self.target.version, context, method, args)
            .await?;
        Ok(answer.into_raw())
    }

    /// A call claiming `version` (typed clients: the method's), without
    /// deriving a client for it; its answer is decoded by the caller,
    /// straight from the reply.
    pub(crate) fn call_answer_as<'a, A>(
        &'a self,
        version: Option<Version>,
        context: &'a Context,
        method: &'a str,
        args: &'a A,
    ) -> impl std::future::Future<Output = Result<Answer>> + 'a
    where
        A: Serialize + ?Sized,
    {
        self.observed(
            Kind::Call,
            &self.target,
            version,
            method,
            context,
            move |started| {
                self.call_raw_unobserved(version, context, method, args, started + self.timeout)
            },
        )
    }

    /// Runs one request in an `rpc.client` span (kind, method, topic,
    /// server, fanout, namespace, version, trace_id), ends it with a debug
    /// line `request done` (outcome, duration) and records its metrics.
    /// The request is made from the instant it starts (a call's deadline
    /// counts from it).
    ///
    /// Not an `async fn`, and given a maker rather than the request's
    /// future: either would keep a second copy of that (large) future in
    /// this one's state, a kilobyte more for every call in flight. The maker
    /// and the future it makes share their place in [`Observed`].
    fn observed<'a, T, M, F>(
        &'a self,
        kind: Kind,
        target: &Target,
        version: Option<Version>,
        method: &'a str,
        context: &Context,
        request: M,
    ) -> tracing::instrument::Instrumented<Observed<'a, M, F>>
    where
        M: FnOnce(Instant) -> F + 'a,
        F: std::future::Future<Output = Result<T>> + 'a,
    {
        let span = tracing::debug_span!(
            "rpc.client",
            kind = kind.as_str(),
            method,
            topic = %target.topic,
            server = target.server.as_deref().unwrap_or(""),
            fanout = target.fanout,
            namespace = target.namespace.as_deref().unwrap_or(""),
            version = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        if !span.is_disabled() {
            span.record(
                "version",
                tracing::field::display(version.unwrap_or_default()),
            );
            if let Some(trace_id) = crate::service::trace_id(context) {
                span.record("trace_id", trace_id);
            }
        }
        Observed {
            stage: Stage::Made {
                maker: Some(request),
            },
            metrics: self.transport.metrics(),
            kind,
            method,
            started: None,
        }
        .instrument(span)
    }

    // Not `async fn`s (this one, `start_call`, `next_reply`): an async fn
    // keeps its arguments twice in its state, and these nest in every call
    // in flight.
    #[allow(clippy::manual_async_fn)]
    fn call_raw_unobserved<'a, A>(
        &'a self,
        version: Option<Version>,
        context: &'a Context,
        method: &'a str,
        args: &'a A,
        // From the call's start: connecting, declaring the reply queue and
        // publishing count against it too.
        deadline: Instant,
    ) -> impl std::future::Future<Output = Result<Answer>> + 'a
    where
        A: Serialize + ?Sized,
    {
        async move {
            let mut receiver = self
                .start_call(version, context, method, args, deadline)
                .await?;
            // A streaming endpoint answers a plain call with its last
            // element, as Nova's call did over multicall. Boxed: most calls
            // get one reply, and every call in flight holds this place.
            let mut last_item: Option<Box<Answer>> = None;
            loop {
                let reply = self.next_reply(&mut receiver, deadline, method).await?;
                if let Some(failure) = reply.failure() {
                    return Err(self.remote_error(failure, method, version));
                }
                if reply.ending() {
                    return Ok(match reply.seq() {
                        // The end of a stream: its last element is the result.
                        Some(_) => last_item.map_or(Answer(None), |item| *item),
                        None => last_item.map_or(Answer(Some(reply)), |item| *item),
                    });
                }
                last_item = Some(Box::new(Answer(Some(reply))));
            }
        }
    }

    /// Invokes a method that answers with a stream of replies; the stream ends
    /// after the final reply. `timeout` applies to the wait for each reply.
    pub async fn multicall<R, A>(
        &self,
        context: &Context,
        method: &str,
        args: &A,
    ) -> Result<Replies<R>>
    where
        R: DeserializeOwned + Send + 'static,
        A: Serialize + ?Sized,
    {
        self.multicall_as(self.target.version, context, method, args)
            .await
    }

    /// [`RpcClient::multicall`] claiming `version`.
    pub(crate) async fn multicall_as<R, A>(
        &self,
        version: Option<Version>,
        context: &Context,
        method: &str,
        args: &A,
    ) -> Result<Replies<R>>
    where
        R: DeserializeOwned + Send + 'static,
        A: Serialize + ?Sized,
    {
        let deadline = Instant::now() + self.timeout;
        let started = |_| self.start_call(version, context, method, args, deadline);
        let receiver = self
            .observed(
                Kind::Multicall,
                &self.target,
                version,
                method,
                context,
                started,
            )
            .await?;
        let state = MulticallState {
            client: self.clone(),
            version,
            receiver,
            first_deadline: Some(deadline),
            method: method.to_owned(),
            received_items: false,
            done: false,
        };
        let stream = futures::stream::unfold(state, |mut state| async move {
            if state.done {
                return None;
            }
            let item = state.next_item().await;
            item.map(|item| {
                let item = item.and_then(|answer| {
                    serde_json::from_str::<R>(answer.json()).map_err(Error::Serialization)
                });
                (item, state)
            })
        });
        Ok(Replies {
            inner: stream.boxed(),
        })
    }

    #[allow(clippy::manual_async_fn)] // see call_raw_unobserved
    fn start_call<'a, A>(
        &'a self,
        version: Option<Version>,
        context: &'a Context,
        method: &'a str,
        args: &'a A,
        deadline: Instant,
    ) -> impl std::future::Future<Output = Result<ReplyReceiver>> + 'a
    where
        A: Serialize + ?Sized,
    {
        // Made before the future: it holds the request, not its parts too.
        let request = self.request(context, method, args, version);
        async move {
            self.check_open()?;
            if self.target.fanout {
                return Err(Error::InvalidTarget("a call cannot be a fanout".into()));
            }
            self.check_target(&self.target, version)?;
            // Connecting to another broker counts against the call's deadline.
            let transport = crate::deadline::within_at(deadline, self.sending_transport())
                .await
                .map_err(|_| Error::Timeout {
                    method: request.method.to_owned(),
                    topic: self.target.to_string(),
                    timeout: self.timeout,
                })??;
            transport
                .start_call(&self.target, &request, deadline, self.timeout)
                .await
        }
    }

    #[allow(clippy::manual_async_fn)] // see call_raw_unobserved
    fn next_reply<'a>(
        &'a self,
        receiver: &'a mut ReplyReceiver,
        deadline: Instant,
        method: &'a str,
    ) -> impl std::future::Future<Output = Result<Reply>> + 'a {
        async move {
            loop {
                match tokio::time::timeout_at(deadline, receiver.recv()).await {
                    Err(_) => {
                        return Err(Error::Timeout {
                            method: method.to_owned(),
                            topic: self.target.to_string(),
                            timeout: self.timeout,
                        })
                    }
                    Ok(None) => return Err(Error::Closed),
                    Ok(Some(reply)) if reply.is_heartbeat() => continue,
                    Ok(Some(reply)) => return Ok(reply),
                }
            }
        }
    }

    fn remote_error(&self, failure: &str, method: &str, version: Option<Version>) -> Error {
        let failure = match envelope::decode_failure(failure) {
            Ok(failure) => failure,
            Err(error) => return error,
        };
        match (failure.class.as_str(), failure.module.as_str()) {
            ("NoSuchMethod", DISPATCHER_MODULE) => Error::NoSuchMethod {
                method: method.to_owned(),
            },
            ("UnsupportedVersion", DISPATCHER_MODULE) => Error::UnsupportedVersion {
                version: version.unwrap_or_default().to_string(),
                method: method.to_owned(),
            },
            _ => Error::Remote(Box::new(failure)),
        }
    }

    fn request<'a, A: ?Sized>(
        &'a self,
        context: &'a Context,
        method: &'a str,
        args: &'a A,
        version: Option<Version>,
    ) -> TypedRequest<'a, A> {
        TypedRequest {
            method,
            args,
            namespace: self.target.namespace.as_deref(),
            version: version.map(VersionRef::Number),
            context,
        }
    }

    async fn send(
        &self,
        target: &Target,
        context: &Context,
        method: &str,
        args: &(impl Serialize + ?Sized),
    ) -> Result<()> {
        self.send_as(target, self.target.version, context, method, args)
            .await
    }

    /// A cast to `target` claiming `version`.
    pub(crate) fn send_as<'a>(
        &'a self,
        target: &'a Target,
        version: Option<Version>,
        context: &'a Context,
        method: &'a str,
        args: &'a (impl Serialize + ?Sized),
    ) -> impl std::future::Future<Output = Result<()>> + 'a {
        self.observed(Kind::Cast, target, version, method, context, move |_| {
            self.send_unobserved(target, version, context, method, args)
        })
    }

    async fn send_unobserved(
        &self,
        target: &Target,
        version: Option<Version>,
        context: &Context,
        method: &str,
        args: &(impl Serialize + ?Sized),
    ) -> Result<()> {
        self.check_open()?;
        self.check_target(target, version)?;
        let Some(broker) = &self.broker else {
            return self
                .send_on(&self.transport, target, version, context, method, args)
                .await;
        };
        // Connecting to the other broker and sending share one bound.
        let timeout = self.transport.options().send_timeout;
        let send = async {
            let transport = self.transport.for_broker(broker).await?;
            self.send_on(&transport, target, version, context, method, args)
                .await
        };
        match crate::deadline::within(timeout, send).await {
            Ok(result) => result,
            Err(_) => Err(Error::SendTimeout {
                operation: if target.fanout { "fanout cast" } else { "cast" },
                target: format!("{target} at broker {broker}"),
                timeout,
            }),
        }
    }

    async fn send_on(
        &self,
        transport: &Transport,
        target: &Target,
        version: Option<Version>,
        context: &Context,
        method: &str,
        args: &(impl Serialize + ?Sized),
    ) -> Result<()> {
        // Refused before anything is serialized or sent.
        transport.check_cast(target)?;
        let request = self.request(context, method, args, version);
        transport.cast(target, &request).await
    }

    /// Invokes `method` without waiting for a result, on the client's target
    /// (one server of the topic, or the one named by `server`).
    pub async fn cast<A: Serialize + ?Sized>(
        &self,
        context: &Context,
        method: &str,
        args: &A,
    ) -> Result<()> {
        self.send(&self.target, context, method, args).await
    }

    /// Invokes `method` on every server listening on the topic.
    pub async fn fanout_cast<A: Serialize + ?Sized>(
        &self,
        context: &Context,
        method: &str,
        args: &A,
    ) -> Result<()> {
        self.send(&self.retarget(None, true), context, method, args)
            .await
    }

    /// The client's target, sent to `server` and/or as a fanout.
    fn retarget(&self, server: Option<&str>, fanout: bool) -> Target {
        Target {
            fanout,
            server: server.map(str::to_owned),
            ..self.target.clone()
        }
    }

    /// Invokes `method` on the host `host` of the topic only (its
    /// `topic.host` queue), without waiting: the same as
    /// `.server(host).cast(...)`.
    pub async fn cast_to_host<A: Serialize + ?Sized>(
        &self,
        context: &Context,
        host: &str,
        method: &str,
        args: &A,
    ) -> Result<()> {
        self.send(&self.retarget(Some(host), false), context, method, args)
            .await
    }

    /// Invokes `method` on every listening process of the host `host`
    /// (where a backend supports it; see
    /// [`crate::Capabilities::fanout_to_server`]).
    pub async fn fanout_cast_to_host<A: Serialize + ?Sized>(
        &self,
        context: &Context,
        host: &str,
        method: &str,
        args: &A,
    ) -> Result<()> {
        self.send(&self.retarget(Some(host), true), context, method, args)
            .await
    }

    /// Casts `method` to the client's target on another message broker, as
    /// Nova's `cast_to_server(server_params, ...)` did for cells: `broker`
    /// is a `[brokers.NAME]` table or a transport URL ([`Broker`]). One
    /// server of the topic there takes it (or the host of `.server(host)`).
    /// Connecting (on first use) and sending are bounded by `send_timeout`;
    /// a broker that is down fails with its classified error and holds up
    /// no send to other brokers.
    /// For a host of this broker, use [`RpcClient::cast_to_host`].
    pub async fn cast_to_server<A: Serialize + ?Sized>(
        &self,
        context: &Context,
        broker: impl Into<Broker>,
        method: &str,
        args: &A,
    ) -> Result<()> {
        self.prepare()
            .broker(broker.into())
            .send(&self.target, context, method, args)
            .await
    }

    /// Fanout-casts `method` to every server of the client's topic on another
    /// message broker (every compute host of a cell, and none of this
    /// broker's): Nova's `fanout_cast_to_server(server_params, ...)`.
    /// Supported wherever fanout is; bounded like [`RpcClient::cast_to_server`].
    /// For every listener of one host, use [`RpcClient::fanout_cast_to_host`].
    pub async fn fanout_cast_to_server<A: Serialize + ?Sized>(
        &self,
        context: &Context,
        broker: impl Into<Broker>,
        method: &str,
        args: &A,
    ) -> Result<()> {
        self.prepare()
            .broker(broker.into())
            .send(&self.retarget(None, true), context, method, args)
            .await
    }

    /// Sends a notification on `notifications.<priority>`, published by
    /// `<topic>.<server or host name>`.
    pub async fn notify<P: Serialize + ?Sized>(
        &self,
        context: &Context,
        priority: Priority,
        event_type: &str,
        payload: &P,
    ) -> Result<()> {
        self.check_open()?;
        let host = match &self.target.server {
            Some(server) => server.clone(),
            None => gethostname::gethostname().to_string_lossy().into_owned(),
        };
        let publisher_id = format!("{}.{host}", self.target.topic);
        let timeout = self.transport.options().send_timeout;
        let transport = crate::deadline::within(timeout, self.sending_transport())
            .await
            .map_err(|_| Error::SendTimeout {
                operation: "notification",
                target: format!("{publisher_id} at broker {}", self.broker_label()),
                timeout,
            })??;
        Notifier::new(transport.into_owned(), publisher_id)
            .notify(context, priority, event_type, payload)
            .await
    }

    fn broker_label(&self) -> String {
        self.broker
            .as_ref()
            .map(Broker::to_string)
            .unwrap_or_default()
    }

    /// Ends this client (and the copies [`RpcClient::prepare`] made of it):
    /// its later operations fail with `Closed`. The transport, and every other
    /// client on it, stays open; [`Transport::cleanup`] closes connections.
    pub async fn cleanup(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}

struct MulticallState {
    client: RpcClient,
    version: Option<Version>,
    receiver: ReplyReceiver,
    /// The first reply is due within the call's timeout from the call on;
    /// each later one within the timeout from the one before.
    first_deadline: Option<Instant>,
    method: String,
    received_items: bool,
    done: bool,
}

impl MulticallState {
    async fn next_item(&mut self) -> Option<Result<Answer>> {
        let deadline = self
            .first_deadline
            .take()
            .unwrap_or_else(|| Instant::now() + self.client.timeout);
        let reply = match self
            .client
            .next_reply(&mut self.receiver, deadline, &self.method)
            .await
        {
            Ok(reply) => reply,
            Err(error) => {
                self.done = true;
                return Some(Err(error));
            }
        };
        if let Some(failure) = reply.failure() {
            self.done = true;
            return Some(Err(self.client.remote_error(
                failure,
                &self.method,
                self.version,
            )));
        }
        if reply.ending() {
            self.done = true;
            // The end of a stream carries its element count; a unary endpoint
            // answers a multicall with one final result.
            if self.received_items || reply.seq().is_some() {
                return None;
            }
        } else {
            self.received_items = true;
        }
        Some(Ok(Answer(Some(reply))))
    }
}

/// The replies of a [`RpcClient::multicall`], in order; ends after the final reply.
pub struct Replies<R> {
    inner: BoxStream<'static, Result<R>>,
}

impl<R> std::fmt::Debug for Replies<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replies").finish_non_exhaustive()
    }
}

impl<R> Stream for Replies<R> {
    type Item = Result<R>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

/// The answer of a call (or a stream element): the reply that carries it,
/// read (and deserialized) straight from the reply's text; `None` stands for
/// JSON `null`.
pub(crate) struct Answer(Option<Reply>);

impl Answer {
    /// The answer's JSON text.
    pub(crate) fn json(&self) -> &str {
        self.0.as_ref().and_then(Reply::result).unwrap_or("null")
    }

    /// The answer as a raw value of its own.
    fn into_raw(self) -> Box<RawValue> {
        RawValue::from_string(self.json().to_owned()).expect("a reply's result is JSON")
    }
}

pin_project_lite::pin_project! {
    /// A client request with its metrics and `request done` line (see
    /// [`RpcClient::observed`]).
    pub(crate) struct Observed<'a, M, F> {
        #[pin]
        stage: Stage<M, F>,
        metrics: &'a crate::metrics::Metrics,
        kind: Kind,
        method: &'a str,
        started: Option<(Instant, crate::metrics::InFlight<'a>)>,
    }
}

pin_project_lite::pin_project! {
    /// The maker of a request's future until the first poll, then the
    /// future, in the same place.
    #[project = StageProj]
    enum Stage<M, F> {
        Made { maker: Option<M> },
        Running { #[pin] request: F },
    }
}

impl<T, M, F> std::future::Future for Observed<'_, M, F>
where
    M: FnOnce(Instant) -> F,
    F: std::future::Future<Output = Result<T>>,
{
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<T>> {
        let mut this = self.project();
        if let StageProj::Made { maker } = this.stage.as_mut().project() {
            let maker = maker
                .take()
                .expect("Observed polled after it made its request");
            let started = Instant::now();
            *this.started = Some((started, this.metrics.start(Side::Client)));
            this.stage.set(Stage::Running {
                request: maker(started),
            });
        }
        let StageProj::Running { request } = this.stage.project() else {
            unreachable!("a request's future is made at its first poll");
        };
        let result = std::task::ready!(request.poll(cx));
        // Taken, so that the in-flight gauge drops now.
        if let Some((started, _in_flight)) = this.started.take() {
            let elapsed = started.elapsed();
            let metrics = *this.metrics;
            let outcome = result
                .as_ref()
                .err()
                .map(|e| metrics.client_error(e.kind()));
            metrics.finish(Side::Client, *this.kind, this.method, elapsed, outcome);
            tracing::debug!(
                outcome = outcome.unwrap_or("ok"),
                duration_ms = elapsed.as_secs_f64() * 1e3,
                "request done"
            );
        }
        Poll::Ready(result)
    }
}
