use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, Stream, StreamExt};
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::dedup::DedupCache;
use crate::driver::{Delivery, Listener};
use crate::envelope::{
    self, Context, IncomingRequest, RemoteFailure, ReplyBody, DISPATCHER_MODULE,
};
use crate::error::{Error, Result};
use crate::metrics::{Kind, Side};
use crate::target::{Target, Version};
use crate::transport::Transport;

/// A failure of an endpoint method, sent to the caller as a remote error.
///
/// Any `std::error::Error` converts into one (its type name becomes the class),
/// so handlers can use `?`.
///
/// ```
/// use novarpc_core::EndpointError;
///
/// let failure = EndpointError::new("InstanceNotFound", "no instance i-1")
///     .module("nova.exception")
///     .into_failure();
/// assert_eq!(failure.class, "InstanceNotFound");
/// assert_eq!(failure.module, "nova.exception");
///
/// let parse: EndpointError = "x".parse::<u32>().unwrap_err().into();
/// assert_eq!(parse.into_failure().class, "ParseIntError");
/// ```
#[derive(Clone, Debug)]
pub struct EndpointError {
    failure: Box<RemoteFailure>,
}

impl EndpointError {
    /// A failure of class `class` (as a caller will see it) with `message`.
    pub fn new(class: impl Into<String>, message: impl Into<String>) -> Self {
        EndpointError {
            failure: Box::new(RemoteFailure::new(class, "novarpc", message)),
        }
    }

    /// The module part of the class name, for oslo clients' `allowed_remote_exmods`.
    pub fn module(mut self, module: impl Into<String>) -> Self {
        self.failure.module = module.into();
        self
    }

    /// Traceback lines sent along with the failure.
    pub fn traceback(mut self, lines: Vec<String>) -> Self {
        self.failure.tb = lines;
        self
    }

    /// The failure as it goes on the wire (class, module, message, traceback).
    pub fn into_failure(self) -> RemoteFailure {
        *self.failure
    }

    /// An endpoint error carrying `failure` as it is (class, module, message,
    /// traceback and keyword arguments), as typed errors produce it.
    pub fn from_failure(failure: RemoteFailure) -> Self {
        EndpointError {
            failure: Box::new(failure),
        }
    }

    /// An error whose type is unknown (`anyhow::Error`, a boxed error): a
    /// `RuntimeError` of module `builtins`, which oslo peers rebuild as
    /// Python's own, with the whole chain as message and traceback.
    ///
    /// ```
    /// use novarpc_core::EndpointError;
    ///
    /// let boxed: Box<dyn std::error::Error + Send + Sync> = "disk full".into();
    /// let failure = EndpointError::from_boxed(boxed).into_failure();
    /// assert_eq!((failure.class.as_str(), failure.module.as_str()), ("RuntimeError", "builtins"));
    /// assert_eq!(failure.message, "disk full");
    /// ```
    pub fn from_boxed(error: Box<dyn std::error::Error + Send + Sync>) -> Self {
        let message = crate::error::error_chain(&*error);
        let mut lines = vec![format!("RuntimeError: {error}\n")];
        let mut source = error.source();
        while let Some(cause) = source {
            lines.push(format!("Caused by: {cause}\n"));
            source = cause.source();
        }
        EndpointError::new("RuntimeError", message)
            .module("builtins")
            .traceback(lines)
    }
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.failure.fmt(f)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for EndpointError {
    fn from(error: E) -> Self {
        let full = std::any::type_name::<E>();
        let class = full.split('<').next().unwrap_or(full);
        let class = class.rsplit("::").next().unwrap_or(class);
        let mut lines = vec![format!("{class}: {error}\n")];
        let mut source = error.source();
        while let Some(cause) = source {
            lines.push(format!("Caused by: {cause}\n"));
            source = cause.source();
        }
        EndpointError::new(class, error.to_string()).traceback(lines)
    }
}

type Outcome = std::result::Result<Box<RawValue>, Box<RemoteFailure>>;

/// A method's result, serialized only once its reply is written (straight
/// into that reply): a cast's result is never serialized.
trait ResultValue: Send {
    /// The final reply to `msg_id` carrying this value.
    fn encode_reply(&self, msg_id: &str) -> serde_json::Result<bytes::Bytes>;
}

impl<T: Serialize + Send> ResultValue for T {
    fn encode_reply(&self, msg_id: &str) -> serde_json::Result<bytes::Bytes> {
        envelope::encode_result_reply(msg_id, self)
    }
}

enum Response {
    Single(std::result::Result<Box<dyn ResultValue>, Box<RemoteFailure>>),
    Stream(BoxStream<'static, Outcome>),
}

/// An endpoint method: the request's context and its arguments' JSON text.
type Handler = Arc<dyn Fn(Context, &str) -> BoxFuture<'static, Response> + Send + Sync>;

fn bad_arguments(method: &str, error: serde_json::Error) -> Box<RemoteFailure> {
    Box::new(RemoteFailure::new(
        "TypeError",
        "builtins",
        format!("{method}() got invalid arguments: {error}"),
    ))
}

fn encode_result<R: Serialize>(value: &R) -> Outcome {
    serde_json::value::to_raw_value(value).map_err(|e| {
        Box::new(RemoteFailure::new(
            "SerializationError",
            "novarpc",
            format!("cannot serialize the result: {e}"),
        ))
    })
}

/// A set of methods served under one namespace and version, like an oslo
/// endpoint object.
///
/// Methods take the request [`Context`] and their keyword arguments
/// deserialized into a type of their choice, and return a result that
/// serializes (or an error that becomes an [`EndpointError`]).
///
/// ```
/// use novarpc_core::{Context, Endpoint, EndpointError, Version};
///
/// #[derive(serde::Deserialize)]
/// struct Boot {
///     name: String,
/// }
///
/// let endpoint = Endpoint::new()
///     .namespace("compute")
///     .version(Version::new(1, 2))
///     .method("boot", |_ctx: Context, args: Boot| async move {
///         Ok::<_, EndpointError>(format!("booted {}", args.name))
///     })
///     .stream_method("list", |_ctx: Context, _args: serde_json::Value| {
///         futures::stream::iter(["i-1", "i-2"].map(Ok::<_, EndpointError>))
///     });
/// assert!(format!("{endpoint:?}").contains("boot"));
/// ```
pub struct Endpoint {
    namespace: Option<String>,
    version: Version,
    methods: crate::FastMap<String, Handler>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut methods: Vec<_> = self.methods.keys().collect();
        methods.sort();
        f.debug_struct("Endpoint")
            .field("namespace", &self.namespace)
            .field("version", &self.version)
            .field("methods", &methods)
            .finish()
    }
}

impl Default for Endpoint {
    fn default() -> Self {
        Endpoint::new()
    }
}

impl Endpoint {
    /// An endpoint in the default namespace, version 1.0.
    pub fn new() -> Self {
        Endpoint {
            namespace: None,
            version: Version::default(),
            methods: crate::FastMap::default(),
        }
    }

    /// Serves requests addressed to `namespace` (see [`Target::namespace`])
    /// instead of the default namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// The API version this endpoint implements; it handles requests of the same
    /// major version and a minor version up to this one.
    pub fn version(mut self, version: Version) -> Self {
        self.version = version;
        self
    }

    /// Registers an async method taking typed keyword arguments. Names starting
    /// with `_` are never dispatched (oslo's rule for private methods).
    pub fn method<A, R, E, F, Fut>(mut self, name: &str, handler: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        E: Into<EndpointError> + Send + 'static,
        F: Fn(Context, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<R, E>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let method = name.to_owned();
        let erased: Handler = Arc::new(move |context, args: &str| {
            let args = match serde_json::from_str::<A>(args) {
                Ok(args) => args,
                Err(e) => {
                    let failure = bad_arguments(&method, e);
                    return futures::future::ready(Response::Single(Err(failure))).boxed();
                }
            };
            let fut = handler(context, args);
            async move {
                Response::Single(match fut.await {
                    Ok(value) => Ok(Box::new(value) as Box<dyn ResultValue>),
                    Err(e) => Err(e.into().failure),
                })
            }
            .boxed()
        });
        self.methods.insert(name.to_owned(), erased);
        self
    }

    /// Registers a method whose result is a stream of values, for `multicall`.
    /// A plain `call` of it gets the last value.
    pub fn stream_method<A, R, E, F, S>(mut self, name: &str, handler: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        E: Into<EndpointError> + Send + 'static,
        F: Fn(Context, A) -> S + Send + Sync + 'static,
        S: Stream<Item = std::result::Result<R, E>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let method = name.to_owned();
        let erased: Handler = Arc::new(move |context, args: &str| {
            let response = match serde_json::from_str::<A>(args) {
                Ok(args) => Response::Stream(
                    handler(context, args)
                        .map(|item| match item {
                            Ok(value) => encode_result(&value),
                            Err(e) => Err(e.into().failure),
                        })
                        .boxed(),
                ),
                Err(e) => Response::Single(Err(bad_arguments(&method, e))),
            };
            futures::future::ready(response).boxed()
        });
        self.methods.insert(name.to_owned(), erased);
        self
    }
}

struct Dispatcher {
    endpoints: Vec<Endpoint>,
}

impl Dispatcher {
    /// oslo's dispatch rule: the first endpoint whose namespace matches and whose
    /// version can handle the request's, and that has the method.
    fn find(&self, request: &IncomingRequest) -> std::result::Result<&Handler, Box<RemoteFailure>> {
        let no_such_method = || {
            Box::new(RemoteFailure::new(
                "NoSuchMethod",
                DISPATCHER_MODULE,
                format!("Endpoint does not support RPC method {}", request.method()),
            ))
        };
        let unsupported = |version: &str| {
            Box::new(RemoteFailure::new(
                "UnsupportedVersion",
                DISPATCHER_MODULE,
                format!(
                    "Endpoint does not support RPC version {version}. Attempted method: {}",
                    request.method()
                ),
            ))
        };
        if request.method().starts_with('_') {
            return Err(no_such_method());
        }
        let version_text = request.version().unwrap_or("1.0");
        let version: Version = version_text
            .parse()
            .map_err(|_| unsupported(version_text))?;
        let mut found_compatible = false;
        for endpoint in &self.endpoints {
            if endpoint.namespace.as_deref() != request.namespace()
                || !endpoint.version.can_handle(version)
            {
                continue;
            }
            if let Some(handler) = endpoint.methods.get(request.method()) {
                return Ok(handler);
            }
            found_compatible = true;
        }
        Err(if found_compatible {
            no_such_method()
        } else {
            unsupported(version_text)
        })
    }
}

/// Configures and starts an [`RpcServer`]; made by [`RpcServer::builder`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), novarpc_core::Error> {
/// use std::time::Duration;
/// use novarpc_core::{
///     memory::MemoryDriver, CommonOptions, Endpoint, RpcServer, Target, Transport,
/// };
///
/// let transport = Transport::new(MemoryDriver::new(CommonOptions::default()));
/// let server = RpcServer::builder(transport, Target::new("compute").server("host1"))
///     .endpoint(Endpoint::new())
///     .executor_size(8)
///     .handler_timeout(Duration::from_secs(30))
///     .grace_period(Duration::from_secs(5))
///     .start()
///     .await?;
/// server.stop().await?;
/// # Ok(()) }
/// ```
pub struct RpcServerBuilder {
    transport: Transport,
    target: Target,
    endpoints: Vec<Endpoint>,
    executor_size: usize,
    handler_timeout: Option<Duration>,
    grace_period: Duration,
}

impl fmt::Debug for RpcServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcServerBuilder")
            .field("target", &self.target)
            .field("endpoints", &self.endpoints)
            .field("executor_size", &self.executor_size)
            .field("handler_timeout", &self.handler_timeout)
            .field("grace_period", &self.grace_period)
            .finish()
    }
}

impl RpcServerBuilder {
    /// Adds an endpoint; requests go to the first one whose namespace and
    /// version match (oslo's rule).
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoints.push(endpoint);
        self
    }

    /// How many requests run at once (default: `executor_thread_pool_size`).
    pub fn executor_size(mut self, size: usize) -> Self {
        self.executor_size = size.max(1);
        self
    }

    /// Fails a request whose handler has not finished after `timeout` (a
    /// stream: after `timeout` in all): the caller gets a `MessagingTimeout`
    /// failure and the handler is dropped. Off by default.
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = Some(timeout);
        self
    }

    /// How long [`RpcServer::stop`] waits for requests in flight before it
    /// abandons them (default 30 s).
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace_period = grace;
        self
    }

    /// Starts consuming. The server needs a topic and a server name, as oslo's does.
    pub async fn start(self) -> Result<RpcServer> {
        self.target.validate()?;
        if self.target.server.is_none() {
            return Err(Error::InvalidTarget(
                "an RPC server needs a server (host) name in its target".into(),
            ));
        }
        let listener = self.transport.listen(&self.target).await?;
        let shared_cross_process = self.transport.capabilities().cross_process;
        let backend = self.transport.backend();
        let seen = self
            .transport
            .capabilities()
            .redelivers
            .then(|| DedupCache::new(1024, std::time::Duration::from_secs(300)));
        let shared = Arc::new(Shared {
            target: self.target.clone(),
            transport: self.transport,
            dispatcher: Dispatcher {
                endpoints: self.endpoints,
            },
            seen,
            handler_timeout: self.handler_timeout,
        });
        let token = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            shared,
            Executor {
                slots: Arc::new(Semaphore::new(self.executor_size)),
                size: self.executor_size,
            },
            token.clone(),
            self.grace_period,
        ));
        tracing::debug!(target_ = %self.target, "rpc server started");
        if !shared_cross_process {
            tracing::info!(
                target_ = %self.target,
                backend = backend,
                "this backend serves this process only: other processes cannot reach the server"
            );
        }
        Ok(RpcServer {
            target: self.target,
            token,
            task: Some(task),
        })
    }
}

struct Shared {
    /// For the per-request span.
    target: Target,
    transport: Transport,
    dispatcher: Dispatcher,
    /// Recent `_unique_id`s, when the broker may redeliver.
    seen: Option<DedupCache>,
    handler_timeout: Option<Duration>,
}

struct Executor {
    slots: Arc<Semaphore>,
    size: usize,
}

/// Serves endpoints on a target until stopped. Dropping it stops it too (in
/// the background); [`RpcServer::stop`] waits for in-flight requests.
///
/// Up to `executor_thread_pool_size` requests are handled at once. A request
/// is first polled by the server's own loop, and becomes a task of its own
/// (run on any worker) when it has to wait: a method that answers without
/// waiting costs no task, but one that computes for long without an
/// `.await` holds the next request back meanwhile, as it would hold a
/// worker thread; such work belongs in `tokio::task::spawn_blocking`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), novarpc_core::Error> {
/// use novarpc_core::{
///     memory::MemoryDriver, CommonOptions, Context, Endpoint, EndpointError, RpcClient,
///     RpcServer, Target, Transport,
/// };
///
/// #[derive(serde::Deserialize)]
/// struct Add {
///     a: i64,
///     b: i64,
/// }
///
/// let transport = Transport::new(MemoryDriver::new(CommonOptions::default()));
/// let endpoint = Endpoint::new().method("add", |_ctx: Context, args: Add| async move {
///     Ok::<_, EndpointError>(args.a + args.b)
/// });
/// let server = RpcServer::builder(transport.clone(), Target::new("calc").server("host1"))
///     .endpoint(endpoint)
///     .start()
///     .await?;
///
/// let client = RpcClient::new(transport, Target::new("calc"));
/// let sum: i64 = client
///     .call(&Context::new(), "add", &serde_json::json!({"a": 2, "b": 3}))
///     .await?;
/// assert_eq!(sum, 5);
/// server.stop().await?;
/// # Ok(()) }
/// ```
pub struct RpcServer {
    target: Target,
    token: CancellationToken,
    task: Option<JoinHandle<Result<()>>>,
}

impl fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcServer")
            .field("target", &self.target)
            .field("stopped", &self.token.is_cancelled())
            .finish()
    }
}

impl RpcServer {
    /// A builder for a server on `target`, which must name a server (host).
    pub fn builder(transport: Transport, target: Target) -> RpcServerBuilder {
        let executor_size = transport.options().executor_thread_pool_size;
        RpcServerBuilder {
            transport,
            target,
            endpoints: Vec::new(),
            executor_size,
            handler_timeout: None,
            grace_period: Duration::from_secs(30),
        }
    }

    /// The target it serves.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Stops taking messages (those not yet taken stay queued for other
    /// servers), waits for the requests in flight up to the grace period,
    /// abandons (and logs) those still running, then returns.
    pub async fn stop(mut self) -> Result<()> {
        self.token.cancel();
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn serve(
    mut listener: Box<dyn Listener>,
    shared: Arc<Shared>,
    executor: Executor,
    token: CancellationToken,
    grace: Duration,
) -> Result<()> {
    let in_flight = TaskTracker::new();
    // Cancelled when the grace period is over: handlers still running then
    // are dropped.
    let abandon = CancellationToken::new();
    // Made once: a stop future made per request registered and removed a
    // waiter under the token's lock each time.
    let stopped = token.cancelled();
    tokio::pin!(stopped);
    let mut saturated = false;
    loop {
        let permit = match executor.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                saturated = false;
                permit
            }
            Err(_) => {
                if !saturated {
                    saturated = true;
                    tracing::warn!(
                        executor_size = executor.size,
                        "every executor slot is busy: requests wait in the queue until a handler finishes"
                    );
                }
                tokio::select! {
                    biased;
                    _ = &mut stopped => break,
                    permit = executor.slots.clone().acquire_owned() => permit.expect("semaphore is never closed"),
                }
            }
        };
        // The stop is checked first at every turn (a listener with a backlog
        // is ready every time), and polled only while waiting: a delivery's
        // wake-up then costs one poll of the listener alone.
        if token.is_cancelled() {
            break;
        }
        let delivery = tokio::select! {
            biased;
            delivery = listener.next() => match delivery {
                Some(delivery) => delivery,
                None => break,
            },
            _ = &mut stopped => break,
        };
        let shared = shared.clone();
        let span = request_span(&shared.target);
        let recorder = span.clone();
        // Only the request's own future is boxed (the span stays beside it):
        // building the span around it first meant moving it once more.
        let mut request = Box::pin(async move {
            let _in_flight = shared.transport.metrics().start(Side::Server);
            let started = std::time::Instant::now();
            // Dropped with the request if the grace period ends first.
            let _done = RequestDone(started);
            process(delivery, &shared, &recorder, started).await;
            drop(permit);
        })
        .instrument(span);
        // A handler that answers without waiting (and a reply the broker
        // takes at once, as the in-process one does) finishes in its first
        // poll: that runs here, and only a request that waits becomes a task
        // of its own (polled on any worker), saving a task per request. A
        // panic there ends that request, never the loop (as it would end
        // only its task). Only such a task can outlast the grace period, so
        // only it watches for the end of it.
        match futures::poll!(AssertUnwindSafe(&mut request).catch_unwind()) {
            std::task::Poll::Pending => {
                let abandon = abandon.clone();
                let span = request.span().clone();
                in_flight.spawn(async move {
                    tokio::select! {
                        biased;
                        _ = request => {}
                        _ = abandon.cancelled() => {
                            span.record("outcome", "abandoned");
                        }
                    }
                });
            }
            std::task::Poll::Ready(Ok(())) => {}
            std::task::Poll::Ready(Err(panic)) => {
                let _ = panic_failure(panic);
            }
        }
    }
    let stopped = listener.stop().await;
    in_flight.close();
    if tokio::time::timeout(grace, in_flight.wait()).await.is_err() {
        tracing::warn!(
            abandoned = in_flight.len(),
            grace_secs = grace.as_secs_f64(),
            "stopping: abandoning requests still running after the grace period"
        );
        abandon.cancel();
        in_flight.wait().await;
    }
    stopped
}

/// Logs a request's end when dropped: when it finished, or when the grace
/// period ended first and it was abandoned.
struct RequestDone(std::time::Instant);

impl Drop for RequestDone {
    fn drop(&mut self) {
        tracing::debug!(
            duration_ms = self.0.elapsed().as_secs_f64() * 1e3,
            "request done"
        );
    }
}

/// Handles one request in `span` (its fields recorded as they are known),
/// received at `started`.
async fn process(
    mut delivery: Delivery,
    shared: &Shared,
    span: &tracing::Span,
    started: std::time::Instant,
) {
    let mut request = match envelope::decode_request(&delivery.body) {
        Ok(request) => request,
        Err(error) => {
            tracing::warn!(%error, body_len = delivery.body.len(), "rejecting a malformed request");
            delivery.reject().await;
            return;
        }
    };
    let broker_reply_to = delivery.take_reply_to();
    delivery.ack().await;
    if let (Some(seen), Some(unique_id)) = (&shared.seen, request.unique_id()) {
        if seen.is_duplicate(unique_id) {
            tracing::info!(method = %request.method(), %unique_id, "dropping a redelivered duplicate");
            return;
        }
    }
    record_request(span, &request);
    let context = request.take_context();
    let request = &request;
    // A call's replies go where the broker said (direct reply-to), else to
    // its `_reply_q`.
    let reply_to = request
        .msg_id()
        .zip(broker_reply_to.as_deref().or(request.reply_q()));
    let response = match shared.dispatcher.find(request) {
        Ok(handler) => {
            let call = AssertUnwindSafe(handler(context, request.args())).catch_unwind();
            let outcome = match shared.handler_timeout {
                // From the handler's start, its first poll included.
                Some(limit) => {
                    crate::deadline::within_at(tokio::time::Instant::now() + limit, call)
                        .await
                        .map_err(|_| handler_timed_out(request.method(), limit))
                }
                None => Ok(call.await),
            };
            match outcome {
                Ok(Ok(response)) => response,
                Ok(Err(panic)) => Response::Single(Err(panic_failure(panic))),
                Err(failure) => Response::Single(Err(failure)),
            }
        }
        Err(failure) => Response::Single(Err(failure)),
    };
    // A call's result is serialized into its reply here, so that a value
    // that cannot be serialized (or whose serialization panics) is answered
    // and counted as a failure.
    let mut encoded = None;
    let response = match (response, reply_to) {
        (Response::Single(Ok(value)), Some((msg_id, _))) => {
            match std::panic::catch_unwind(AssertUnwindSafe(|| value.encode_reply(msg_id))) {
                Ok(Ok(bytes)) => {
                    encoded = Some(bytes);
                    Response::Single(Ok(value))
                }
                Ok(Err(e)) => Response::Single(Err(Box::new(RemoteFailure::new(
                    "SerializationError",
                    "novarpc",
                    format!("cannot serialize the result: {e}"),
                )))),
                Err(panic) => Response::Single(Err(panic_failure(panic))),
            }
        }
        (response, _) => response,
    };
    let method = request.method();
    // Recorded when the request is done with (reply sent or cast handled).
    let _finished = Finished {
        metrics: shared.transport.metrics(),
        kind: if reply_to.is_some() {
            Kind::Call
        } else {
            Kind::Cast
        },
        method,
        started,
        failed: matches!(response, Response::Single(Err(_))),
    };
    // A disabled span would still look its field up by name.
    let outcome = |outcome: &str| {
        if !span.is_disabled() {
            span.record("outcome", outcome);
        }
    };
    match &response {
        Response::Single(Ok(_)) => outcome("ok"),
        Response::Single(Err(failure)) => {
            outcome(failure.class.as_str());
            // Once per failed call, as oslo logs every dispatch exception
            // (casts are logged below).
            if reply_to.is_some() {
                tracing::warn!(%method, %failure, "call failed");
            }
        }
        Response::Stream(_) => outcome("stream"),
    }
    let Some((msg_id, reply_q)) = reply_to else {
        match response {
            Response::Single(Err(failure)) => {
                tracing::warn!(method = %method, %failure, "cast failed")
            }
            Response::Single(Ok(_)) => {}
            Response::Stream(mut stream) => {
                while let Some(item) = stream.next().await {
                    if let Err(failure) = item {
                        tracing::warn!(method = %method, %failure, "cast failed");
                        break;
                    }
                }
            }
        }
        return;
    };
    let send = |bytes: bytes::Bytes| {
        let transport = &shared.transport;
        async move {
            let reply_bytes = bytes.len();
            if let Err(error) = transport.send_reply(reply_q, msg_id, bytes).await {
                transport.metrics().reply_failed(error.kind());
                // Once, by size: never the body.
                tracing::warn!(
                    error = %crate::error::error_chain(&error),
                    reply_q = %reply_q,
                    method = %method,
                    reply_bytes,
                    "could not send a reply"
                );
            }
        }
    };
    let reply = |body: ReplyBody<'_>| send(envelope::encode_reply(msg_id, body));
    match response {
        Response::Single(Ok(_)) => {
            if let Some(bytes) = encoded {
                send(bytes).await
            }
        }
        Response::Single(Err(failure)) => reply(ReplyBody::Failure(&failure)).await,
        Response::Stream(mut stream) => {
            let mut seq = 0;
            let deadline = shared
                .handler_timeout
                .map(|limit| (tokio::time::Instant::now() + limit, limit));
            loop {
                let next = AssertUnwindSafe(stream.next()).catch_unwind();
                let next = match deadline {
                    Some((at, limit)) => match tokio::time::timeout_at(at, next).await {
                        Ok(next) => next,
                        Err(_) => {
                            break reply(ReplyBody::Failure(&handler_timed_out(method, limit)))
                                .await
                        }
                    },
                    None => next.await,
                };
                match next {
                    Ok(Some(Ok(value))) => {
                        reply(ReplyBody::StreamItem { seq, value: &value }).await;
                        seq += 1;
                    }
                    Ok(Some(Err(failure))) => break reply(ReplyBody::Failure(&failure)).await,
                    Ok(None) => break reply(ReplyBody::End { count: seq }).await,
                    Err(panic) => break reply(ReplyBody::Failure(&panic_failure(panic))).await,
                }
            }
        }
    }
}

/// Records a handled request's metrics when dropped.
struct Finished<'a> {
    metrics: &'a crate::metrics::Metrics,
    kind: Kind,
    method: &'a str,
    started: std::time::Instant,
    failed: bool,
}

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.metrics.finish(
            Side::Server,
            self.kind,
            self.method,
            self.started.elapsed(),
            self.failed.then_some("failed"),
        );
    }
}

fn handler_timed_out(method: &str, limit: Duration) -> Box<RemoteFailure> {
    tracing::warn!(%method, limit_secs = limit.as_secs_f64(), "a handler did not finish within the handler timeout");
    Box::new(RemoteFailure::new(
        "MessagingTimeout",
        "oslo_messaging.exceptions",
        format!("{method}() did not finish within {limit:?} on the server"),
    ))
}

fn panic_failure(panic: Box<dyn std::any::Any + Send>) -> Box<RemoteFailure> {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "the handler panicked".to_owned());
    tracing::error!(%message, "an endpoint method panicked");
    Box::new(RemoteFailure::new("Panic", "novarpc", message))
}

/// The span every request runs in: its fields are filled in once the
/// request is decoded, and `outcome` when it is answered.
fn request_span(target: &Target) -> tracing::Span {
    tracing::debug_span!(
        "rpc.server",
        topic = %target.topic,
        server = target.server.as_deref().unwrap_or(""),
        method = tracing::field::Empty,
        namespace = tracing::field::Empty,
        version = tracing::field::Empty,
        msg_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        outcome = tracing::field::Empty,
    )
}

fn record_request(span: &tracing::Span, request: &IncomingRequest) {
    if span.is_disabled() {
        return;
    }
    span.record("method", request.method());
    if let Some(namespace) = request.namespace() {
        span.record("namespace", namespace);
    }
    span.record("version", request.version().unwrap_or("1.0"));
    if let Some(msg_id) = request.msg_id() {
        span.record("msg_id", msg_id);
    }
    if let Some(trace_id) = crate::service::trace_id(request.context()) {
        span.record("trace_id", trace_id);
    }
}
