//! novarpc: Nova-style RPC (`call`, `cast`, `fanout_cast`, `cast_to_server`,
//! `fanout_cast_to_server`, `multicall`, notifications) over pluggable
//! message brokers, wire-compatible with
//! oslo.messaging. This is the crate services depend on: it re-exports what
//! services use from the core and owns the driver [`Registry`], which picks a
//! backend by `rpc_backend` name, alias or transport URL scheme.
//!
//! ```no_run
//! # async fn demo() -> Result<(), novarpc::Error> {
//! let config = novarpc::Config::from_file("config/novarpc.toml")?;
//! let transport = novarpc::connect(&config).await?;
//! let client = novarpc::RpcClient::new(transport, novarpc::Target::new("compute"));
//! let ctx = novarpc::Context::new();
//! let output: String = client
//!     .call(&ctx, "get_console_output", &serde_json::json!({"instance": "i-1"}))
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! The top level holds what services use; [`memory`] is the in-process
//! backend for their unit tests. Driver authors find the driver contract, the
//! wire envelope and the reply registry in [`driver`].

#![deny(missing_docs)]

mod brokers;
#[cfg(feature = "logging")]
pub mod logging;
mod registry;

/// Stream combinators for multicall replies and streaming methods.
pub use futures::{Stream, StreamExt};
pub use novarpc_core::{
    error_chain, shutdown_signal, Broker, BrokerEntry, BrokerResolver, CallError, Capabilities,
    CommonOptions, Config, ConfigError, Context, Endpoint, EndpointError, Error, ErrorKind,
    Notification, NotificationListener, Notifier, Password, Priority, RemoteFailure, Replies,
    Result, RpcClient, RpcServer, RpcServerBuilder, RpcStream, ServiceClient, Target, Transport,
    TransportHost, TransportUrl, UnknownPriority, Version,
};

/// Typed services: a trait of async methods becomes a typed client and an
/// [`Endpoint`].
///
/// The attribute takes the service's `namespace` (optional) and API
/// `version` (default `"1.0"`). Each method takes `&self` and the request
/// context (`ctx: &Context`), then its arguments, which travel as oslo
/// keyword arguments named after the parameters, so an oslo.messaging peer
/// calls or serves the same method unchanged. Methods are:
///
/// - calls: `async fn name(&self, ctx: &Context, ...) -> Result<T, E>`;
/// - casts: the same with `#[rpc(cast)]` (the client does not wait, and
///   casts to every server on a `.fanout(true)` client);
/// - streams (multicall): `#[rpc(stream)] fn name(&self, ctx: &Context, ...)
///   -> RpcStream<T, E>`; a plain `call` from a peer gets the last element.
///
/// `#[rpc(since = "1.2")]` says from which version a method exists: the
/// client sends it as that version (unless `.version(v)` pins one) and
/// refuses it, before sending, under a lower `.version_cap(cap)`, as Nova's
/// rpcapi classes do; `can_send_version` lets a caller fall back.
/// `#[rpc(name = "...")]` sends another name than the Rust one.
///
/// The error type `E` of a method may derive [`RemoteError`] (the client
/// then gets its variants back as [`CallError::Service`]); [`EndpointError`],
/// any `std::error::Error` and `anyhow::Error` work too, and reach the
/// client as [`Error::Remote`].
///
/// It generates, next to the trait (whose methods become `Send` futures, so
/// implementations may write `async fn`):
///
/// - `into_endpoint(self) -> Endpoint`, a provided method of the trait, to
///   serve an implementation with [`RpcServer::builder`];
/// - `<Trait>Client`, the typed client, with oslo's `prepare()`-style
///   `server`, `fanout`, `timeout`, `version`, `version_cap` and `broker`.
///
/// ```
/// use novarpc::{CallError, Context, RpcServer, RpcStream, StreamExt, Target, Version};
///
/// #[derive(Debug, thiserror::Error, novarpc::RemoteError)]
/// #[remote(module = "nova.exception")]
/// pub enum ComputeError {
///     #[error("Instance {instance_id} could not be found.")]
///     InstanceNotFound { instance_id: String },
/// }
///
/// /// A compute host.
/// #[novarpc::service(namespace = "compute", version = "1.2")]
/// pub trait Compute {
///     /// The instance's console.
///     async fn console(&self, ctx: &Context, instance_id: String) -> Result<String, ComputeError>;
///     /// Free RAM, from version 1.1.
///     #[rpc(since = "1.1")]
///     async fn free_ram(&self, ctx: &Context) -> Result<u64, novarpc::EndpointError>;
///     /// Reboots without waiting.
///     #[rpc(cast)]
///     async fn reboot(&self, ctx: &Context, instance_id: String) -> Result<(), ComputeError>;
///     /// Migration progress, from version 1.2.
///     #[rpc(stream, since = "1.2")]
///     fn migrate(&self, ctx: &Context, instance_id: String) -> RpcStream<u32, ComputeError>;
/// }
///
/// struct Host;
///
/// impl Compute for Host {
///     async fn console(&self, _: &Context, instance_id: String) -> Result<String, ComputeError> {
///         match instance_id.as_str() {
///             "i-1" => Ok("login:".into()),
///             _ => Err(ComputeError::InstanceNotFound { instance_id }),
///         }
///     }
///     async fn free_ram(&self, _: &Context) -> Result<u64, novarpc::EndpointError> {
///         Ok(2048)
///     }
///     async fn reboot(&self, _: &Context, _: String) -> Result<(), ComputeError> {
///         Ok(())
///     }
///     fn migrate(&self, _: &Context, _: String) -> RpcStream<u32, ComputeError> {
///         futures::stream::iter([Ok(50), Ok(100)]).boxed()
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let transport = novarpc::Transport::new(novarpc::memory::MemoryDriver::new(Default::default()));
/// let server = RpcServer::builder(transport.clone(), Target::new("compute").server("host1"))
///     .endpoint(Host.into_endpoint())
///     .start()
///     .await?;
/// let client = ComputeClient::new(transport, Target::new("compute"));
/// let ctx = Context::new();
/// assert_eq!(client.console(&ctx, "i-1".into()).await?, "login:");
/// assert!(matches!(
///     client.console(&ctx, "i-9".into()).await,
///     Err(CallError::Service(ComputeError::InstanceNotFound { .. }))
/// ));
/// assert_eq!(client.free_ram(&ctx).await?, 2048);
/// client.reboot(&ctx, "i-1".into()).await?;
/// let steps: Vec<u32> = client.migrate(&ctx, "i-1".into()).await?
///     .map(|step| step.unwrap())
///     .collect()
///     .await;
/// assert_eq!(steps, [50, 100]);
/// // A peer capped at 1.1 is not sent what appeared in 1.2.
/// let old = client.prepare().version_cap(Version::new(1, 1));
/// assert_eq!(old.migrate(&ctx, "i-1".into()).await.err().unwrap().kind(), novarpc::ErrorKind::VersionCap);
/// server.stop().await?;
/// # Ok(()) }
/// ```
pub use novarpc_macros::service;

pub use novarpc_core::RemoteError;
/// Derives [`RemoteError`] for an error enum: each variant is an oslo
/// exception class (the variant's name, or `#[remote(class = "...")]`) of a
/// module (`#[remote(module = "...")]` on the enum or the variant; default
/// `novarpc`), its named fields the exception's keyword arguments, its
/// `Display` the message. Fields must serialize and deserialize; a failure
/// whose class (and module, when it names one) matches a variant and whose
/// keyword arguments deserialize into its fields becomes that variant, any
/// other stays [`Error::Remote`].
pub use novarpc_macros::RemoteError;

/// W3C trace context in the request context: the `traceparent` key and the
/// trace id it carries.
pub use novarpc_core::service::{trace_id, TRACEPARENT};

#[doc(hidden)]
pub use novarpc_core::service::__private;
pub use registry::Registry;

pub use novarpc_core::{config, memory};

/// What a broker backend implements and uses: the [`driver::Driver`]
/// contract, deliveries and listeners, the oslo wire [`driver::envelope`],
/// reply correlation ([`driver::reply`]), de-duplication of redeliveries
/// ([`driver::dedup`]) and error classification ([`driver::Classify`]).
/// Services do not need it.
pub mod driver {
    pub use novarpc_core::driver::{
        Acknowledge, CallInfo, Capabilities, ConnectFn, Delivery, Driver, DriverDescriptor,
        Listener, OutgoingRequest,
    };
    pub use novarpc_core::{dedup, envelope, reply, Classify};
}

/// The kombu-like AMQP 0-9-1 driver (feature `kombu`).
#[cfg(feature = "kombu")]
pub use novarpc_kombu as kombu;
/// The qpid-like AMQP 1.0 driver (feature `qpid`).
#[cfg(feature = "qpid")]
pub use novarpc_qpid as qpid;
/// Re-exported so services can build arguments with `novarpc::serde_json::json!`.
pub use serde_json;

/// Checks `config` against the built-in drivers without connecting: the
/// backend it selects exists and every driver table parses. [`connect`] does
/// this too; tools call it to report problems early.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    Registry::builtin().validate(config).map(|_| ())
}

/// Builds the transport the configuration selects, from the built-in drivers,
/// and connects it (a broker that cannot be reached, or refuses the
/// credentials, fails here with the classified error). The transport reaches
/// other brokers (the `[brokers.NAME]` tables, or transport URLs) through a
/// per-process cache: connected on first use, shared, closed after
/// `broker_idle_timeout` unused and by [`Transport::cleanup`].
pub async fn connect(config: &Config) -> Result<Transport, Error> {
    Registry::builtin().connect(config).await
}

/// Compiles the README's Rust examples as doctests.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
