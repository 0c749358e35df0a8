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

pub use novarpc_core::{
    error_chain, Broker, BrokerEntry, BrokerResolver, Capabilities, CommonOptions, Config,
    ConfigError, Context, Endpoint, EndpointError, Error, ErrorKind, Notification,
    NotificationListener, Notifier, Password, Priority, RemoteFailure, Replies, Result, RpcClient,
    RpcServer, RpcServerBuilder, Target, Transport, TransportHost, TransportUrl, UnknownPriority,
    Version,
};
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
