//! Core of novarpc: the [`Transport`] handle users hold and the [`Driver`]
//! contract every broker backend implements behind it, the routing [`Target`],
//! the oslo.messaging wire envelope, the RPC client and server (dispatch by
//! method, namespace and version), notifications, configuration types, the
//! classified [`Error`], the in-process `memory` driver, and the driver-agnostic
//! side of sending to other brokers ([`Broker`], [`BrokerResolver`]).
//!
//! Drivers move bytes, route them and correlate replies; everything above the
//! wire (capability checks, the closed state, deadlines, encoding,
//! dispatching, versioning, request context) lives here once.

#![deny(missing_docs)]

pub mod broker;
pub mod config;
mod deadline;
pub mod dedup;
pub mod driver;
pub mod envelope;
mod error;
pub mod memory;
pub mod metrics;
mod notify;
pub mod reply;
mod rpc_client;
mod rpc_server;
pub mod service;
mod shutdown;
mod target;
mod transport;

pub use broker::{Broker, BrokerResolver};
pub use config::{
    BrokerEntry, CommonOptions, Config, ConfigError, Password, TransportHost, TransportUrl,
};
pub use driver::{Capabilities, Driver};
pub use envelope::{Context, RemoteFailure};
pub use error::{error_chain, Classify, Error, ErrorKind, Result};
pub use notify::{Notification, NotificationListener, Notifier, Priority, UnknownPriority};
pub use rpc_client::{Replies, RpcClient};
pub use rpc_server::{Endpoint, EndpointError, RpcServer, RpcServerBuilder};
pub use service::{CallError, RemoteError, RpcStream, ServiceClient};
pub use shutdown::shutdown_signal;
pub use target::{Target, Version};
pub use transport::Transport;

/// Unique ids as oslo.messaging writes them: uuid4, 32 lower-case hex digits.
/// The maps looked up on every message (routes, methods, metric handles):
/// keys are names the process chose, so a fast seeded hash rather than
/// SipHash.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub(crate) fn new_uuid_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
