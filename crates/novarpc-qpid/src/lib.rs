//! novarpc's qpid-like driver: Nova's RPC topology on AMQP 1.0 (fe2o3-amqp),
//! for any AMQP 1.0 broker: shared topic and server queues as anycast nodes,
//! fanout as multicast nodes, a reply node per process. How nodes are named
//! is a per-broker addressing profile (`rabbitmq3`, `rabbitmq4`, `activemq`,
//! or `generic` with configurable prefixes and capabilities).
//!
//! Registered as `rpc_backend = "qpid"` (alias `amqp1`); an `amqp://` or
//! `amqps://` transport URL selects it too. Options live in the `[qpid]` table.
//! The message mapping (which section holds the envelope, which properties
//! carry ids and addresses) is documented in `docs/amqp1-mapping.md`.

#![deny(missing_docs)]

mod addressing;
mod connection;
mod consumer;
mod management;
mod options;
mod sasl;
mod transport;

use std::sync::Arc;

use novarpc_core::driver::{Driver, DriverDescriptor};
use novarpc_core::{Classify, ErrorKind};

pub use addressing::{
    Addressing, AddressingProfile, Declaration, GenericAddressing, GenericReply, Node,
    QueueLifetime, ReplyNode,
};
pub use options::{QpidOptions, SaslMechanism};
pub use transport::QpidDriver;

const BACKEND: &str = "qpid";

/// The driver's registration.
pub const DESCRIPTOR: DriverDescriptor = DriverDescriptor {
    name: BACKEND,
    aliases: &["amqp1", "amqp"],
    url_schemes: &["amqp", "amqps", "qpid"],
    config_section: "qpid",
    capabilities: |config| {
        Ok(QpidOptions::from_config(config)?
            .addressing()
            .capabilities())
    },
    validate: |config| QpidOptions::from_config(config).map(|_| ()),
    resolved_options: |config| {
        let options = QpidOptions::from_config(config)?;
        Ok(toml::to_string(&options).unwrap_or_default())
    },
    connect: |config| {
        Box::pin(async move {
            let driver: Arc<dyn Driver> = Arc::new(QpidDriver::connect(&config).await?);
            Ok(driver)
        })
    },
};

/// What went wrong talking to an AMQP 1.0 broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QpidError {
    /// Connecting failed: TCP, TLS, SASL or the open handshake.
    #[error("cannot connect to {broker}: {reason}")]
    Connect {
        /// The broker, without credentials.
        broker: String,
        /// What failed.
        reason: String,
        /// Its classification.
        kind: ErrorKind,
    },
    /// The TLS setup (files, host name) failed.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// A session could not be begun or ended unexpectedly.
    #[error("session: {0}")]
    Session(String),
    /// The broker refused (or did not answer) a link attach.
    #[error("the broker refused a link to `{address}`: {reason}")]
    Attach {
        /// The node's address.
        address: String,
        /// The broker's reason.
        reason: String,
        /// Its classification.
        kind: ErrorKind,
    },
    /// Sending failed (link or connection lost, no credit or outcome).
    #[error("send failed: {0}")]
    Send(String),
    /// Receiving failed.
    #[error("receive failed: {0}")]
    Receive(String),
    /// The message exceeds the link's maximum size.
    #[error("message too large: {0}")]
    TooLarge(String),
    /// The broker rejected the message.
    #[error("the broker rejected the message sent to `{address}`: {reason}")]
    Rejected {
        /// The node's address.
        address: String,
        /// The broker's reason.
        reason: String,
    },
    /// The broker released the message: it may take it later.
    #[error("the broker released the message sent to `{address}` without delivering it")]
    Released {
        /// The node's address.
        address: String,
    },
    /// The broker could not deliver the message (modified outcome).
    #[error("the broker could not deliver the message sent to `{address}` (modified{})", if *undeliverable_here { ", undeliverable here" } else { "" })]
    Modified {
        /// The node's address.
        address: String,
        /// The broker will not take it again on this link.
        undeliverable_here: bool,
    },
    /// The broker's management node refused a request (declaring or
    /// deleting a queue or binding), or its link failed.
    #[error("the broker's management node: {request}: {}{reason}", status.map(|s| format!("status {s}: ")).unwrap_or_default())]
    Management {
        /// The request (`PUT /queues/NAME` ...).
        request: String,
        /// The HTTP status code answered, if any.
        status: Option<u16>,
        /// The broker's reason.
        reason: String,
        /// Its classification.
        kind: ErrorKind,
    },
    /// Retrying a temporary failure did not help.
    #[error("gave up after {attempts} attempts")]
    GaveUp {
        /// How many attempts were made.
        attempts: u32,
        /// The last attempt's error.
        #[source]
        last: Box<QpidError>,
    },
}

impl Classify for QpidError {
    fn kind(&self) -> ErrorKind {
        match self {
            QpidError::Connect { kind, .. }
            | QpidError::Attach { kind, .. }
            | QpidError::Management { kind, .. } => *kind,
            QpidError::Tls(_) => ErrorKind::Tls,
            QpidError::Session(_) | QpidError::Send(_) | QpidError::Receive(_) => {
                ErrorKind::Unreachable
            }
            QpidError::TooLarge(_) | QpidError::Rejected { .. } => ErrorKind::Undeliverable,
            QpidError::Released { .. } | QpidError::Modified { .. } => ErrorKind::Busy,
            QpidError::GaveUp { last, .. } => last.kind(),
        }
    }
}

/// The kind of a broker's error condition (on a refused attach or a closed
/// connection).
fn condition_kind(condition: &fe2o3_amqp::types::definitions::ErrorCondition) -> ErrorKind {
    use fe2o3_amqp::types::definitions::{AmqpError, ConnectionError, ErrorCondition};
    match condition {
        ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess) => ErrorKind::AccessRefused,
        ErrorCondition::AmqpError(AmqpError::NotFound) => ErrorKind::AccessRefused,
        ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded | AmqpError::ResourceLocked) => {
            ErrorKind::Busy
        }
        ErrorCondition::ConnectionError(
            ConnectionError::ConnectionForced | ConnectionError::Redirect,
        ) => ErrorKind::Unreachable,
        _ => ErrorKind::Protocol,
    }
}

/// The kind of a failed attach: a refusal is permanent, a lost session not.
fn attach_error_kind(remote_error: Option<&fe2o3_amqp::types::definitions::Error>) -> ErrorKind {
    match remote_error {
        Some(error) => condition_kind(&error.condition),
        None => ErrorKind::Unreachable,
    }
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
        self.kind().is_temporary()
    }
}

impl From<QpidError> for novarpc_core::Error {
    fn from(error: QpidError) -> Self {
        novarpc_core::Error::transport(BACKEND, error)
    }
}
