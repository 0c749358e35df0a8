//! novarpc's kombu-like driver: AMQP 0-9-1 on lapin against RabbitMQ,
//! wire-compatible with oslo.messaging's rabbit driver (same exchanges, queues,
//! bindings, properties and envelope), so novarpc services and Python
//! oslo.messaging services call each other on one broker.
//!
//! Registered as `rpc_backend = "kombu"` (alias `rabbit`); a `rabbit://`
//! transport URL selects it too. Options live in the `[kombu]` table and accept
//! oslo's `[oslo_messaging_rabbit]` names.

mod connection;
mod consumer;
mod options;
mod topology;
mod transport;

use std::sync::Arc;

use novarpc_core::transport::{Capabilities, DriverDescriptor, Transport};

pub use options::KombuOptions;
pub use transport::KombuTransport;

const BACKEND: &str = "kombu";

pub const CAPABILITIES: Capabilities = Capabilities {
    call: true,
    multicall: true,
    fanout: true,
    // oslo's topology has no exchange for "every process of one host".
    fanout_to_server: false,
    notifications: true,
    notification_pools: true,
    publisher_confirms: true,
    cross_process: true,
    redelivers: true,
    removes_targets: true,
};

/// The driver's registration.
pub const DESCRIPTOR: DriverDescriptor = DriverDescriptor {
    name: BACKEND,
    aliases: &["rabbit"],
    url_schemes: &["rabbit", "kombu"],
    config_section: "kombu",
    capabilities: CAPABILITIES,
    validate: |config| KombuOptions::from_config(config).map(|_| ()),
    resolved_options: |config| {
        let options = KombuOptions::from_config(config)?;
        Ok(toml::to_string(&options).unwrap_or_default())
    },
    connect: |config| {
        Box::pin(async move {
            let transport: Arc<dyn Transport> = Arc::new(KombuTransport::connect(&config).await?);
            Ok(transport)
        })
    },
};

/// What went wrong talking to RabbitMQ.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KombuError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, lapin::Error),
    #[error("AMQP error: {0}")]
    Amqp(lapin::Error),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("no queue took the message on exchange `{exchange}` with routing key `{routing_key}`: is anything listening?")]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("channel pool: {0}")]
    Pool(String),
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp {
        attempts: u32,
        last: Box<KombuError>,
    },
}

impl KombuError {
    fn from_pool(error: novarpc_amqp::pool::PoolError<KombuError>) -> Self {
        match error {
            novarpc_amqp::pool::PoolError::Backend(error) => error,
            other => KombuError::Pool(other.to_string()),
        }
    }
}

impl From<KombuError> for novarpc_core::Error {
    fn from(error: KombuError) -> Self {
        novarpc_core::Error::transport(BACKEND, error)
    }
}
