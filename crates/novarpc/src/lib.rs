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

mod registry;

use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

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

/// A validated configuration: `[DEFAULT]` is resolved, the backend it selects is
/// known, and every driver table parses.
#[derive(Clone, Debug)]
pub struct Config {
    inner: novarpc_core::Config,
}

impl Config {
    /// Reads and validates a TOML file (with `NOVARPC_*` environment overrides)
    /// against the built-in drivers.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        Config::validated(novarpc_core::Config::from_file(path)?, &Registry::builtin())
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Config::validated(
            novarpc_core::Config::from_toml_str(text, origin)?,
            &Registry::builtin(),
        )
    }

    /// Validates a core configuration against `registry`.
    pub fn validated(
        inner: novarpc_core::Config,
        registry: &Registry,
    ) -> Result<Config, ConfigError> {
        registry.validate(&inner)?;
        Ok(Config { inner })
    }

    /// The embedded default: the `memory` backend.
    pub fn memory() -> Config {
        Config {
            inner: novarpc_core::Config::default(),
        }
    }

    pub fn into_inner(self) -> novarpc_core::Config {
        self.inner
    }
}

impl Deref for Config {
    type Target = novarpc_core::Config;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

/// Builds the transport the configuration selects, from the built-in drivers.
pub async fn connect(config: &Config) -> Result<Arc<dyn Transport>, Error> {
    Registry::builtin().connect(config).await
}

/// Compiles the README's Rust examples as doctests.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
