//! novarpc's qpid-like driver: Nova's RPC topology on AMQP 1.0 (fe2o3-amqp),
//! for any AMQP 1.0 broker: shared topic and server queues as anycast nodes,
//! fanout as multicast nodes, a reply node per process. How nodes are named
//! is a per-broker addressing profile (`rabbitmq3`, `rabbitmq4`, `activemq`).
//!
//! Registered as `rpc_backend = "qpid"` (alias `amqp1`); an `amqp://` or
//! `amqps://` transport URL selects it too. Options live in the `[qpid]` table.
//! The message mapping (which section holds the envelope, which properties
//! carry ids and addresses) is documented in `docs/amqp1-mapping.md`.

mod addressing;
mod connection;
mod consumer;
mod options;
mod transport;

use std::sync::Arc;

use novarpc_core::transport::{Capabilities, DriverDescriptor, Transport};

pub use addressing::{AddressingProfile, Node, ReplyNode};
pub use options::{QpidOptions, SaslMechanism};
pub use transport::QpidTransport;

const BACKEND: &str = "qpid";

pub const CAPABILITIES: Capabilities = Capabilities {
    call: true,
    multicall: true,
    fanout: true,
    fanout_to_server: true,
    notifications: true,
    notification_pools: false,
    publisher_confirms: true,
    cross_process: true,
    redelivers: true,
    // RabbitMQ 3 cannot delete queues over AMQP 1.0.
    removes_targets: false,
};

/// The driver's registration.
pub const DESCRIPTOR: DriverDescriptor = DriverDescriptor {
    name: BACKEND,
    aliases: &["amqp1", "amqp"],
    url_schemes: &["amqp", "amqps", "qpid"],
    config_section: "qpid",
    capabilities: CAPABILITIES,
    validate: |config| QpidOptions::from_config(config).map(|_| ()),
    resolved_options: |config| {
        let options = QpidOptions::from_config(config)?;
        Ok(toml::to_string(&options).unwrap_or_default())
    },
    connect: |config| {
        Box::pin(async move {
            let transport: Arc<dyn Transport> = Arc::new(QpidTransport::connect(&config).await?);
            Ok(transport)
        })
    },
};

/// What went wrong talking to an AMQP 1.0 broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QpidError {
    #[error("cannot connect to {broker}: {reason}")]
    Connect { broker: String, reason: String },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("session: {0}")]
    Session(String),
    #[error("the broker refused a link to `{address}`: {reason}")]
    Attach { address: String, reason: String },
    #[error("send failed: {0}")]
    Send(String),
    #[error("receive failed: {0}")]
    Receive(String),
    #[error("message too large: {0}")]
    TooLarge(String),
    #[error("the broker rejected the message sent to `{address}`: {reason}")]
    Rejected { address: String, reason: String },
    #[error("the broker released the message sent to `{address}` without delivering it")]
    Released { address: String },
    #[error("the broker could not deliver the message sent to `{address}` (modified{})", if *undeliverable_here { ", undeliverable here" } else { "" })]
    Modified {
        address: String,
        undeliverable_here: bool,
    },
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp { attempts: u32, last: Box<QpidError> },
}

impl QpidError {
    /// The error for an outcome other than `accepted`.
    fn from_outcome(outcome: fe2o3_amqp::types::messaging::Outcome, address: &str) -> QpidError {
        use fe2o3_amqp::types::messaging::Outcome;
        let address = address.to_owned();
        match outcome {
            Outcome::Rejected(rejected) => QpidError::Rejected {
                address,
                reason: rejected
                    .error
                    .map(|e| format!("{:?}: {}", e.condition, e.description.unwrap_or_default()))
                    .unwrap_or_else(|| "no reason given".into()),
            },
            Outcome::Released(_) => QpidError::Released { address },
            Outcome::Modified(modified) => QpidError::Modified {
                address,
                undeliverable_here: modified.undeliverable_here.unwrap_or(false),
            },
            other => QpidError::Send(format!("unexpected outcome {other:?} from `{address}`")),
        }
    }

    /// Whether sending again may succeed.
    fn is_retryable(&self) -> bool {
        !matches!(
            self,
            QpidError::Rejected { .. } | QpidError::TooLarge(_) | QpidError::Tls(_)
        )
    }
}

impl From<QpidError> for novarpc_core::Error {
    fn from(error: QpidError) -> Self {
        novarpc_core::Error::transport(BACKEND, error)
    }
}
