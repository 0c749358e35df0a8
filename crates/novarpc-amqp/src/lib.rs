//! Helpers shared by novarpc's AMQP drivers (Nova's `amqp.py`): `ensure` (run
//! an operation, call an error callback on failure, reconnect with exponential
//! backoff and jitter, fail over across hosts), a reconnecting connection
//! holder, channel/link pools on deadpool, and a de-duplication cache on the
//! oslo `_unique_id`.
//!
//! The reply-callback registry and the oslo envelope live in `novarpc-core`
//! (the memory driver uses them too) and are re-exported here, so a driver finds
//! everything AMQP-shaped in one place.

mod dedup;
mod ensure;
mod failover;
pub mod pool;
mod reconnect;

pub use dedup::DedupCache;
pub use ensure::{ensure, Exhausted, RetryPolicy};
pub use failover::{FailoverStrategy, HostRing};
pub use novarpc_core::envelope;
pub use novarpc_core::reply::{ReplyReceiver, ReplyRegistry};
pub use reconnect::{Connector, Reconnector};
