//! novarpc's kombu-like driver: AMQP 0-9-1 on lapin against RabbitMQ,
//! wire-compatible with oslo.messaging's rabbit driver (same exchanges, queues,
//! bindings, properties and envelope), so novarpc services and Python
//! oslo.messaging services call each other on one broker.
//!
//! Registered as `rpc_backend = "kombu"` (alias `rabbit`); a `rabbit://`
//! transport URL selects it too. Options live in the `[kombu]` table and accept
//! oslo's `[oslo_messaging_rabbit]` names.

#![deny(missing_docs)]

mod connection;
mod consumer;
mod options;
mod queue_manager;
mod sasl;
mod topology;
mod transport;

use std::sync::Arc;

use novarpc_core::driver::{Capabilities, Driver, DriverDescriptor};
use novarpc_core::{Classify, ErrorKind};

pub use options::{KombuOptions, LoginMethod};
pub use transport::KombuDriver;

const BACKEND: &str = "kombu";

/// What the driver can do on RabbitMQ.
pub const CAPABILITIES: Capabilities = Capabilities {
    // oslo's topology has no exchange for "every process of one host".
    fanout_to_server: false,
    ..Capabilities::ALL
};

/// The driver's registration.
pub const DESCRIPTOR: DriverDescriptor = DriverDescriptor {
    name: BACKEND,
    aliases: &["rabbit"],
    url_schemes: &["rabbit", "kombu"],
    config_section: "kombu",
    capabilities: |_| Ok(CAPABILITIES),
    validate: |config| KombuOptions::from_config(config).map(|_| ()),
    resolved_options: |config| {
        let options = KombuOptions::from_config(config)?;
        Ok(toml::to_string(&options).unwrap_or_default())
    },
    connect: |config| {
        Box::pin(async move {
            let driver: Arc<dyn Driver> = Arc::new(KombuDriver::connect(&config).await?);
            Ok(driver)
        })
    },
};

/// What went wrong talking to RabbitMQ.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KombuError {
    /// Connecting to a broker failed (TCP, TLS, authentication, virtual host).
    #[error("cannot connect to {broker}")]
    Connect {
        /// The broker, without credentials.
        broker: String,
        /// Whether the broker was reached over TLS.
        tls: bool,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// The broker does not offer the configured login method.
    #[error("{broker} does not offer the SASL mechanism {wanted}; it offers {}", offered.join(", "))]
    Mechanism {
        /// The broker, without credentials.
        broker: String,
        /// The configured `login_method`.
        wanted: String,
        /// What the broker's `connection.start` offered.
        offered: Vec<String>,
    },
    /// An AMQP operation failed.
    #[error("AMQP operation failed")]
    Amqp(#[source] lapin::Error),
    /// The TLS files could not be read.
    #[error("TLS setup")]
    Tls(#[source] novarpc_core::ConfigError),
    /// The broker returned a mandatory message: no queue is bound for it.
    #[error("no queue took the message on exchange `{exchange}` with routing key `{routing_key}`: is anything listening?")]
    Unroutable {
        /// The exchange published to.
        exchange: String,
        /// The routing key.
        routing_key: String,
    },
    /// The broker refused the message (nack).
    #[error("the broker refused the message (nack)")]
    Nacked,
    /// No confirmation came within `confirm_timeout`.
    #[error("no confirmation from the broker within {0:?}")]
    Unconfirmed(std::time::Duration),
    /// The channel pool failed.
    #[error("channel pool: {0}")]
    Pool(String),
    /// `use_queue_manager` could not read or write its counter in /dev/shm.
    #[error("queue manager counter")]
    QueueManager(#[source] std::io::Error),
    /// `ensure` gave up after retrying a temporary failure.
    #[error("gave up after {attempts} attempts")]
    GaveUp {
        /// How many attempts were made.
        attempts: u32,
        /// The last attempt's error.
        #[source]
        last: Box<KombuError>,
    },
}

/// lapin's error classified; `connecting` tells an authentication failure
/// (ACCESS_REFUSED on connection.start-ok) from a refused operation.
fn classify_lapin(error: &lapin::Error, connecting: bool, tls: bool) -> ErrorKind {
    use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
    use lapin::ErrorKind as L;
    match error.kind() {
        L::IOError(io) => {
            use std::io::ErrorKind as Io;
            match io.kind() {
                // rustls reports certificate and handshake failures as data errors.
                Io::InvalidData | Io::Other if connecting && tls => ErrorKind::Tls,
                _ => ErrorKind::Unreachable,
            }
        }
        L::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) if connecting => {
                ErrorKind::Authentication
            }
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => ErrorKind::AccessRefused,
            AMQPErrorKind::Soft(AMQPSoftError::NOROUTE | AMQPSoftError::NOCONSUMERS) => {
                ErrorKind::Undeliverable
            }
            AMQPErrorKind::Soft(AMQPSoftError::CONTENTTOOLARGE) => ErrorKind::Undeliverable,
            AMQPErrorKind::Soft(_) => ErrorKind::Protocol,
            // The broker is shutting down or an operator closed the connection.
            AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED) => ErrorKind::Unreachable,
            // Unknown virtual host, or no permission on it.
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED | AMQPHardError::INVALIDPATH) => {
                ErrorKind::AccessRefused
            }
            AMQPErrorKind::Hard(AMQPHardError::RESOURCEERROR) => ErrorKind::Busy,
            AMQPErrorKind::Hard(_) => ErrorKind::Protocol,
        },
        L::AuthProviderError(_) => ErrorKind::Authentication,
        L::ChannelsLimitReached => ErrorKind::Busy,
        L::ParsingError(_) | L::SerialisationError(_) | L::InvalidProtocolVersion(_) => {
            ErrorKind::Protocol
        }
        // A channel or connection that broke under us: reconnecting helps.
        _ => ErrorKind::Unreachable,
    }
}

impl Classify for KombuError {
    fn kind(&self) -> ErrorKind {
        match self {
            KombuError::Connect { source, tls, .. } => classify_lapin(source, true, *tls),
            KombuError::Amqp(error) => classify_lapin(error, false, false),
            KombuError::Tls(_) => ErrorKind::Tls,
            KombuError::Mechanism { .. } => ErrorKind::Authentication,
            KombuError::Unroutable { .. } => ErrorKind::Undeliverable,
            // Quorum queues nack while they elect a leader: try again.
            KombuError::Nacked | KombuError::Unconfirmed(_) => ErrorKind::Busy,
            KombuError::Pool(_) => ErrorKind::Unreachable,
            // The host's shared memory, not the broker: nothing to retry.
            KombuError::QueueManager(_) => ErrorKind::Config,
            KombuError::GaveUp { last, .. } => last.kind(),
        }
    }
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
