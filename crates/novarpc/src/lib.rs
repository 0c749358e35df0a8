//! novarpc: Nova-style RPC (`call`, `cast`, `fanout_cast`, `multicall`,
//! notifications) over pluggable message brokers, wire-compatible with
//! oslo.messaging. This is the crate services depend on: it re-exports the core
//! and owns the driver [`Registry`], which picks a backend by `rpc_backend` name,
//! alias or transport URL scheme.
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

#[cfg(feature = "logging")]
pub mod logging;
mod registry;

pub use novarpc_core::*;
pub use registry::Registry;

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
/// credentials, fails here with the classified error).
pub async fn connect(config: &Config) -> Result<Transport, Error> {
    Registry::builtin().connect(config).await
}

/// Compiles the README's Rust examples as doctests.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
