//! The driver contract. A driver routes bytes (the oslo envelope, encoded by
//! [`crate::envelope`]) to and from its broker and correlates replies; the core
//! does dispatching, versioning, serialization and context.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;

use crate::config::{CommonOptions, Config, ConfigError};
use crate::envelope::Request;
use crate::error::Result;
use crate::notify::Priority;
use crate::reply::ReplyReceiver;
use crate::target::Target;

/// What a backend can do. Operations it cannot do return [`crate::Error::Unsupported`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Request/response (`call`).
    pub call: bool,
    /// Streams of replies (`multicall`).
    pub multicall: bool,
    /// Fanout to every server of a topic.
    pub fanout: bool,
    /// Fanout to every listening process of one server (`fanout_cast_to_server`).
    pub fanout_to_server: bool,
    /// Notifications.
    pub notifications: bool,
    /// Notification listener pools (each pool gets every notification).
    pub notification_pools: bool,
    /// The broker confirms that it took each cast.
    pub publisher_confirms: bool,
    /// Messages can cross process boundaries.
    pub cross_process: bool,
    /// The broker may deliver a message twice (an acknowledgement lost with a
    /// connection): servers then drop repeats by the message's `_unique_id`.
    pub redelivers: bool,
    /// [`Transport::delete_target`] removes shared queues (or none persist):
    /// tools may make throw-away targets.
    pub removes_targets: bool,
}

/// The acknowledgement half of a delivery, for brokers that want one.
#[async_trait]
pub trait Acknowledge: Send {
    /// The message was taken; the broker may forget it.
    async fn ack(self: Box<Self>);
    /// The message is unusable; the broker must not redeliver it.
    async fn reject(self: Box<Self>);
}

/// One message taken from a listener's queue.
pub struct Delivery {
    pub body: Bytes,
    acknowledge: Option<Box<dyn Acknowledge>>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// A delivery that needs no acknowledgement.
    pub fn new(body: Bytes) -> Self {
        Delivery {
            body,
            acknowledge: None,
        }
    }

    pub fn with_acknowledge(body: Bytes, acknowledge: Box<dyn Acknowledge>) -> Self {
        Delivery {
            body,
            acknowledge: Some(acknowledge),
        }
    }

    pub async fn ack(self) {
        if let Some(a) = self.acknowledge {
            a.ack().await;
        }
    }

    pub async fn reject(self) {
        if let Some(a) = self.acknowledge {
            a.reject().await;
        }
    }
}

/// A consumer of one or more queues.
#[async_trait]
pub trait Listener: Send {
    /// The next message, or `None` once the listener is stopped or its transport
    /// is gone. Must be cancel-safe: a dropped `next` future loses no message.
    async fn next(&mut self) -> Option<Delivery>;

    /// Stops consuming. Messages the listener holds but has not handed out go
    /// back to their queues (or, for per-listener fanout queues, go with them).
    async fn stop(&mut self) -> Result<()>;
}

/// The driver contract, modelled on oslo.messaging's driver API.
#[async_trait]
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// The registered name of the backend (`memory`, `kombu`, ...).
    fn backend(&self) -> &'static str;

    fn capabilities(&self) -> Capabilities;

    /// The `[DEFAULT]` options this transport was built with.
    fn options(&self) -> &CommonOptions;

    /// Sends a request that expects no reply: a cast, a cast to
    /// `target.server`, or (with `target.fanout`) a fanout cast.
    async fn send(&self, target: &Target, request: &Request<'_>) -> Result<()>;

    /// Sends a request and returns the receiver of its replies. The driver adds
    /// the message id and reply queue and routes replies back by message id.
    async fn send_call(
        &self,
        target: &Target,
        request: &Request<'_>,
        timeout: Duration,
    ) -> Result<ReplyReceiver>;

    /// Sends an encoded reply to the reply queue named by a request;
    /// `msg_id` is the request's, also inside `body` (drivers whose wire
    /// has a correlation field set it without parsing the body again).
    async fn send_reply(&self, reply_q: &str, msg_id: &str, body: Bytes) -> Result<()>;

    /// Sends an encoded notification to `<topic>.<priority>`.
    async fn send_notification(
        &self,
        target: &Target,
        priority: Priority,
        body: Bytes,
    ) -> Result<()>;

    /// Consumes requests for `target`: the shared topic queue, the server's own
    /// queue and a fanout queue of this listener.
    async fn listen(&self, target: &Target) -> Result<Box<dyn Listener>>;

    /// Consumes notifications on `<topic>.<priority>` for every pair.
    async fn listen_for_notifications(
        &self,
        targets: &[Target],
        priorities: &[Priority],
        pool: Option<&str>,
    ) -> Result<Box<dyn Listener>>;

    /// Consumes copies of the requests routed to `target` (its topic, its
    /// servers and its fanout) without taking them from the servers: for
    /// operators' taps. Its queues are private and go away with the listener.
    async fn tap(&self, _target: &Target) -> Result<Box<dyn Listener>> {
        Err(crate::Error::Unsupported {
            backend: self.backend(),
            operation: "tapping a topic",
        })
    }

    /// Removes the shared queues of `target` (`topic`, and `topic.server` if
    /// it names a server), whose servers must be stopped: shared queues outlive
    /// their servers by design, so tools that make throw-away targets (health
    /// checks) remove them.
    async fn delete_target(&self, _target: &Target) -> Result<()> {
        Ok(())
    }

    /// Closes connections and releases broker resources (reply queue, ...).
    /// Waiting callers fail with [`crate::Error::Closed`].
    async fn cleanup(&self) -> Result<()>;
}

// `Transport` must stay usable as `Arc<dyn Transport>`.
const _: Option<&dyn Transport> = None;
const _: Option<Box<dyn Listener>> = None;

/// Builds a driver's transport from the configuration.
pub type ConnectFn = fn(Config) -> BoxFuture<'static, Result<Arc<dyn Transport>>>;

/// How a driver registers itself: the registry in the `novarpc` crate picks one
/// by `rpc_backend` name, alias or transport URL scheme.
#[derive(Clone, Copy)]
pub struct DriverDescriptor {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub url_schemes: &'static [&'static str],
    /// The TOML table holding the driver's options (`[kombu]`).
    pub config_section: &'static str,
    pub capabilities: Capabilities,
    /// Parses and checks the driver's options; does no I/O.
    pub validate: fn(&Config) -> std::result::Result<(), ConfigError>,
    /// The driver's options with defaults filled in, as TOML, for operators
    /// (`novarpc check-config`). Holds no secrets.
    pub resolved_options: fn(&Config) -> std::result::Result<String, ConfigError>,
    pub connect: ConnectFn,
}

impl fmt::Debug for DriverDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DriverDescriptor")
            .field("name", &self.name)
            .field("aliases", &self.aliases)
            .field("url_schemes", &self.url_schemes)
            .field("config_section", &self.config_section)
            .field("capabilities", &self.capabilities)
            .finish()
    }
}

impl DriverDescriptor {
    /// Whether `name` is this driver's name or one of its aliases.
    pub fn answers_to(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }
}
