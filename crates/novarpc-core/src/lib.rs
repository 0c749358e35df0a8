//! Core of novarpc: the [`Transport`] trait every broker driver implements, the
//! routing [`Target`], the oslo.messaging wire envelope, the RPC client and server
//! (dispatch by method, namespace and version), notifications, configuration types
//! and the in-process `memory` driver.
//!
//! Drivers own routing and reply correlation; everything above the wire
//! (dispatching, versioning, serialization, request context) lives here once.

pub mod config;
pub mod dedup;
pub mod envelope;
mod error;
pub mod memory;
mod notify;
pub mod reply;
mod rpc_client;
mod rpc_server;
mod target;
pub mod transport;

pub use config::{CommonOptions, Config, ConfigError, Password, TransportHost, TransportUrl};
pub use envelope::{Context, RemoteFailure};
pub use error::{Error, Result};
pub use notify::{Notification, NotificationListener, Notifier, Priority};
pub use rpc_client::{Replies, RpcClient};
pub use rpc_server::{Endpoint, EndpointError, RpcServer, RpcServerBuilder};
pub use target::{Target, Version};
pub use transport::{Acknowledge, Capabilities, Delivery, DriverDescriptor, Listener, Transport};

/// Unique ids as oslo.messaging writes them: uuid4, 32 lower-case hex digits.
pub(crate) fn new_uuid_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
