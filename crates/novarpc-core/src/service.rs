//! Typed services: the runtime side of the `#[novarpc::service]` attribute
//! and of the `novarpc::RemoteError` derive.
//!
//! The attribute turns a trait of async methods into a typed client (a
//! newtype around [`ServiceClient`]) and a server-side registration (an
//! [`Endpoint`](crate::Endpoint) built from an implementation of the trait).
//! What every generated client would repeat lives here once: the version a
//! message claims, the version cap, and turning remote failures into the
//! method's own error type ([`RemoteError`]) or, for classes it does not
//! know, [`Error::Remote`].

use std::fmt;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::broker::Broker;
use crate::envelope::{Context, RemoteFailure};
use crate::error::{Error, ErrorKind};
use crate::rpc_client::RpcClient;
use crate::target::Version;

/// The stream of typed items a streaming (multicall) method yields, on the
/// server and on the client.
pub type RpcStream<T, E> = BoxStream<'static, Result<T, E>>;

/// An error type that travels as an oslo failure: a class (and module), a
/// message and keyword arguments. Derive it with `#[derive(novarpc::RemoteError)]`:
/// each variant is an exception class, its named fields the keyword
/// arguments, its `Display` the message.
///
/// ```
/// use novarpc_core::{RemoteError, RemoteFailure};
///
/// #[derive(Debug, PartialEq)]
/// struct NotFound(String);
///
/// impl RemoteError for NotFound {
///     fn into_failure(self) -> RemoteFailure {
///         let mut failure = RemoteFailure::new("NotFound", "myapp.exception", "not found");
///         failure.kwargs.insert("id".into(), self.0.into());
///         failure
///     }
///     fn from_failure(failure: Box<RemoteFailure>) -> Result<Self, Box<RemoteFailure>> {
///         match (failure.class.as_str(), failure.kwargs.get("id")) {
///             ("NotFound", Some(serde_json::Value::String(id))) => Ok(NotFound(id.clone())),
///             _ => Err(failure),
///         }
///     }
/// }
///
/// let failure = NotFound("i-1".into()).into_failure();
/// assert_eq!(NotFound::from_failure(Box::new(failure)), Ok(NotFound("i-1".into())));
/// ```
pub trait RemoteError: Sized {
    /// The failure as it goes on the wire.
    fn into_failure(self) -> RemoteFailure;

    /// The error a failure stands for, or the failure back when its class is
    /// not one of this type's.
    fn from_failure(failure: Box<RemoteFailure>) -> Result<Self, Box<RemoteFailure>>;
}

/// What a typed client's call returns on failure: the method's own error
/// (decoded from the remote failure) or any other novarpc error (timeouts,
/// version caps, remote failures of classes the error type does not know).
///
/// It is a `std::error::Error` whenever `E` displays, so `?` works into
/// `anyhow::Error` or `Box<dyn Error>` for any method.
#[derive(Debug)]
pub enum CallError<E> {
    /// The remote method failed with one of its error type's classes.
    Service(E),
    /// Anything else.
    Rpc(Error),
}

impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Service(error) => error.fmt(f),
            CallError::Rpc(error) => error.fmt(f),
        }
    }
}

impl<E: fmt::Display + fmt::Debug> std::error::Error for CallError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // The remote side's causes did not travel.
            CallError::Service(_) => None,
            CallError::Rpc(error) => error.source(),
        }
    }
}

impl<E> From<Error> for CallError<E> {
    fn from(error: Error) -> Self {
        CallError::Rpc(error)
    }
}

impl<E> CallError<E> {
    /// The kind of failure: [`ErrorKind::Remote`] for the method's own errors.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CallError::Service(_) => ErrorKind::Remote,
            CallError::Rpc(error) => error.kind(),
        }
    }

    /// The method's own error, if it is one.
    pub fn service(self) -> Option<E> {
        match self {
            CallError::Service(error) => Some(error),
            CallError::Rpc(_) => None,
        }
    }

    /// Whether trying again later may succeed (never for the method's own errors).
    pub fn is_temporary(&self) -> bool {
        match self {
            CallError::Service(_) => false,
            CallError::Rpc(error) => error.is_temporary(),
        }
    }

    fn from_error(
        error: Error,
        decode: fn(Box<RemoteFailure>) -> Result<E, Box<RemoteFailure>>,
    ) -> Self {
        match error {
            Error::Remote(failure) => match decode(failure) {
                Ok(error) => CallError::Service(error),
                Err(failure) => CallError::Rpc(Error::Remote(failure)),
            },
            other => CallError::Rpc(other),
        }
    }
}

/// The client a `#[novarpc::service]` trait's generated client wraps: an
/// [`RpcClient`] on the service's namespace, with the version each message
/// claims chosen per method (the version the method appeared in, unless
/// [`ServiceClient::version`] pins one), refused before sending when the
/// version cap forbids it, as Nova's rpcapi classes do by hand. Each request
/// carries a W3C [`TRACEPARENT`] in its context, continuing the caller's
/// trace (a context received by a server method, passed on) or starting one.
#[derive(Clone, Debug)]
pub struct ServiceClient {
    client: RpcClient,
    version: Option<Version>,
}

impl ServiceClient {
    /// Wraps `client`, sending to `namespace` (the default namespace if `None`).
    pub fn new(client: RpcClient, namespace: Option<&str>) -> Self {
        let client = match namespace {
            Some(namespace) => client.namespace(namespace),
            None => client,
        };
        ServiceClient {
            client,
            version: None,
        }
    }

    /// The underlying untyped client.
    pub fn rpc_client(&self) -> &RpcClient {
        &self.client
    }

    /// Sends to one server (host) of the topic.
    pub fn server(mut self, server: impl Into<String>) -> Self {
        self.client = self.client.server(server);
        self
    }

    /// Casts go to every server of the topic (calls refuse a fanout target).
    pub fn fanout(mut self, fanout: bool) -> Self {
        self.client = self.client.fanout(fanout);
        self
    }

    /// How long a call waits for its reply (a stream: for each reply).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.client = self.client.timeout(timeout);
        self
    }

    /// Every message claims `version` instead of its method's own.
    pub fn version(mut self, version: Version) -> Self {
        self.version = Some(version);
        self
    }

    /// Refuses (with [`Error::VersionCap`], before sending) messages of a
    /// version above `cap`: methods newer than the peers that must read them.
    pub fn version_cap(mut self, cap: Version) -> Self {
        self.client = self.client.version_cap(cap);
        self
    }

    /// Sends every request to another message broker (a Nova cell).
    pub fn broker(mut self, broker: Broker) -> Self {
        self.client = self.client.broker(broker);
        self
    }

    /// Whether a message of `version` may be sent under the version cap: for
    /// falling back to an older form of a call, as Nova's rpcapi does.
    pub fn can_send_version(&self, version: Version) -> bool {
        self.client.can_send_version(version)
    }

    /// The version a method's requests claim: the pinned one, or the
    /// version the method exists from.
    fn claim(&self, since: Version) -> Option<Version> {
        Some(self.version.unwrap_or(since))
    }

    /// Calls `method` (which exists from version `since`) and decodes its
    /// failures with `decode`.
    pub async fn call<R, E, A>(
        &self,
        context: &Context,
        method: &str,
        since: Version,
        args: &A,
        decode: fn(Box<RemoteFailure>) -> Result<E, Box<RemoteFailure>>,
    ) -> Result<R, CallError<E>>
    where
        R: DeserializeOwned,
        A: Serialize + ?Sized,
    {
        let answer = self
            .client
            .call_answer_as(self.claim(since), &traced_context(context), method, args)
            .await
            .map_err(|error| CallError::from_error(error, decode))?;
        serde_json::from_str(answer.json()).map_err(|e| CallError::Rpc(Error::Serialization(e)))
    }

    /// Casts `method` (to every server when the client is a fanout).
    pub async fn cast<A>(
        &self,
        context: &Context,
        method: &str,
        since: Version,
        args: &A,
    ) -> Result<(), Error>
    where
        A: Serialize + ?Sized,
    {
        self.client
            .send_as(
                self.client.target(),
                self.claim(since),
                &traced_context(context),
                method,
                args,
            )
            .await
    }

    /// Invokes a streaming method; its elements arrive as they are sent.
    pub async fn multicall<R, E, A>(
        &self,
        context: &Context,
        method: &str,
        since: Version,
        args: &A,
        decode: fn(Box<RemoteFailure>) -> Result<E, Box<RemoteFailure>>,
    ) -> Result<RpcStream<R, CallError<E>>, CallError<E>>
    where
        R: DeserializeOwned + Send + 'static,
        E: Send + 'static,
        A: Serialize + ?Sized,
    {
        let replies = self
            .client
            .multicall_as::<R, A>(self.claim(since), &traced_context(context), method, args)
            .await
            .map_err(|error| CallError::from_error(error, decode))?;
        Ok(replies
            .map(move |item| item.map_err(|error| CallError::from_error(error, decode)))
            .boxed())
    }
}

/// The request-context key of the W3C trace context
/// (`00-<trace id>-<parent id>-<flags>`): oslo peers pass context keys they
/// do not know through untouched, so a trace crosses Python services too.
pub const TRACEPARENT: &str = "traceparent";

/// The trace id of a context's `traceparent`, if it has a valid one.
///
/// ```
/// use novarpc_core::service::{trace_id, TRACEPARENT};
///
/// let mut ctx = novarpc_core::Context::new();
/// assert_eq!(trace_id(&ctx), None);
/// ctx.insert(
///     TRACEPARENT.into(),
///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
/// );
/// assert_eq!(trace_id(&ctx), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
/// ```
pub fn trace_id(context: &Context) -> Option<&str> {
    let traceparent = context.get(TRACEPARENT)?.as_str()?;
    let mut parts = traceparent.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && hex(flags, 2);
    valid.then_some(trace)
}

/// The context a request carries: the caller's, with a `traceparent` that
/// continues the caller's trace (same trace id, a new parent id) or starts
/// one. `tracestate` and every other key pass unchanged.
fn traced_context(context: &Context) -> Context {
    let parent_id = &crate::new_uuid_hex()[..16];
    let (trace_id, flags) = match trace_id(context) {
        Some(trace) => {
            let flags = context[TRACEPARENT]
                .as_str()
                .map_or("01", |t| &t[t.len() - 2..]);
            (trace.to_owned(), flags.to_owned())
        }
        None => (crate::new_uuid_hex(), "01".to_owned()),
    };
    let mut context = context.clone();
    context.insert(
        TRACEPARENT.to_owned(),
        format!("00-{trace_id}-{parent_id}-{flags}").into(),
    );
    context
}

impl fmt::Display for ServiceClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.client.target())
    }
}

/// What the macros' generated code uses; not an API.
#[doc(hidden)]
pub mod __private {
    use std::marker::PhantomData;

    use super::RemoteError;
    use crate::envelope::RemoteFailure;
    use crate::rpc_server::EndpointError;

    pub use futures;
    pub use serde;
    pub use serde_json;

    /// Picks, by autoref, how a method's error type converts: a
    /// [`RemoteError`] keeps its class and keyword arguments, anything
    /// `Into<EndpointError>` (std errors) converts as that does, anything
    /// that boxes into a std error (`anyhow::Error`) becomes a
    /// `RuntimeError`.
    pub struct Tag<E>(PhantomData<E>);

    impl<E> Tag<E> {
        pub const fn new() -> Self {
            Tag(PhantomData)
        }
    }

    impl<E> Default for Tag<E> {
        fn default() -> Self {
            Tag::new()
        }
    }

    pub trait EncodeTyped<E> {
        fn encode(&self, error: E) -> EndpointError;
    }

    impl<E: RemoteError> EncodeTyped<E> for &&Tag<E> {
        fn encode(&self, error: E) -> EndpointError {
            EndpointError::from_failure(error.into_failure())
        }
    }

    pub trait EncodeInto<E> {
        fn encode(&self, error: E) -> EndpointError;
    }

    impl<E: Into<EndpointError>> EncodeInto<E> for &Tag<E> {
        fn encode(&self, error: E) -> EndpointError {
            error.into()
        }
    }

    pub trait EncodeBoxed<E> {
        fn encode(&self, error: E) -> EndpointError;
    }

    impl<E: Into<Box<dyn std::error::Error + Send + Sync>>> EncodeBoxed<E> for Tag<E> {
        fn encode(&self, error: E) -> EndpointError {
            EndpointError::from_boxed(error.into())
        }
    }

    pub trait DecodeTyped<E> {
        fn decode(&self, failure: Box<RemoteFailure>) -> Result<E, Box<RemoteFailure>>;
    }

    impl<E: RemoteError> DecodeTyped<E> for &Tag<E> {
        fn decode(&self, failure: Box<RemoteFailure>) -> Result<E, Box<RemoteFailure>> {
            E::from_failure(failure)
        }
    }

    pub trait DecodeUntyped<E> {
        fn decode(&self, failure: Box<RemoteFailure>) -> Result<E, Box<RemoteFailure>>;
    }

    impl<E> DecodeUntyped<E> for Tag<E> {
        fn decode(&self, failure: Box<RemoteFailure>) -> Result<E, Box<RemoteFailure>> {
            Err(failure)
        }
    }

    /// The version a method declares, checked at compile time by the macro.
    pub const fn version(major: u32, minor: u32) -> crate::Version {
        crate::Version::new(major, minor)
    }
}
