//! Helpers shared by novarpc's AMQP drivers (Nova's `amqp.py`): `ensure` (run
//! an operation, call an error callback on failure, reconnect with exponential
//! backoff and jitter, fail over across hosts), a reconnecting connection
//! holder, channel pools on deadpool, and the broker hosts and retry
//! timings both drivers read from their configuration.
//!
//! The reply-callback registry, the oslo envelope and the de-duplication cache
//! live in `novarpc-core` (the memory driver and the server's dispatch path use
//! them too) and are re-exported here, so a driver finds everything
//! AMQP-shaped in one place.

#![deny(missing_docs)]

mod broker;
mod ensure;
mod failover;
pub mod pool;
mod reconnect;

pub use broker::{broker_addresses, seconds, BrokerAddress};
pub use ensure::{ensure, Exhausted, RetryPolicy};
pub use failover::{FailoverStrategy, HostRing};
pub use novarpc_core::dedup::DedupCache;
pub use novarpc_core::envelope;
pub use novarpc_core::reply::{ReplyReceiver, ReplyRegistry};
pub use reconnect::{Connector, Reconnector};
