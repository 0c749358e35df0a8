//! The driver contract: what a broker backend implements. Users never hold a
//! driver; they hold a [`crate::Transport`], the handle that wraps one and does,
//! once for every backend, what every driver would otherwise repeat: capability
//! checks before anything is sent, the closed state, deadlines, and encoding
//! the oslo envelope. A driver moves bytes, routes them and correlates replies.
//!
//! # Behaviour every driver must show
//! The conformance suite (`novarpc-testkit`) asserts these on every backend:
//! - **Casts to a target nobody serves** are accepted promptly and wait in the
//!   target's shared queue (`topic`, or `topic.server`) for its first server:
//!   the driver declares that queue as a server would, as oslo's notifier does
//!   for notifications. A **fanout** cast reaches the listeners of that moment;
//!   with none it is dropped (fanout queues belong to listeners).
//! - **Calls to a topic nobody serves** end in [`crate::ErrorKind::Timeout`] at
//!   their deadline: requests are not queued for later (they expire with the
//!   caller's timeout).
//! - **Deadlines**: a call's deadline runs from the moment `call` is invoked
//!   and covers connecting, reconnecting, attaching links and publishing; a
//!   cast's send is bounded by `send_timeout`. The handle enforces both by
//!   dropping the driver's future, so driver sends must be cancel-safe.
//! - **Failures are classified**: every error a driver returns has an
//!   [`crate::ErrorKind`]; drivers retry only temporary ones.
//! - **Capabilities are honest per instance**: what [`Driver::capabilities`]
//!   says is what this instance (its broker, its addressing profile) can do;
//!   the handle refuses the rest with `Unsupported` before sending.
//! - **Message bodies are never logged**, nor are credentials.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;

use crate::config::{CommonOptions, Config, ConfigError};
use crate::error::Result;
use crate::notify::Priority;
use crate::reply::ReplyRegistry;
use crate::target::Target;

/// What a transport can do. Operations it cannot do fail with
/// [`crate::ErrorKind::Unsupported`] before anything is sent.
///
/// Drivers build theirs from [`Capabilities::ALL`] with `..`, so a new
/// capability defaults to on and a driver switches off what it lacks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Request/response (`call`).
    pub call: bool,
    /// Streams of replies (`multicall`).
    pub multicall: bool,
    /// Fanout to every server of a topic.
    pub fanout: bool,
    /// Fanout to every listening process of one host
    /// ([`crate::RpcClient::fanout_cast_to_host`]). (Fanout to another
    /// broker, `fanout_cast_to_server`, needs [`Capabilities::fanout`] of
    /// that broker's transport.)
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
    /// [`crate::Transport::delete_target`] removes shared queues (or none
    /// persist): tools may make throw-away targets.
    pub removes_targets: bool,
    /// Operators' taps ([`crate::Transport::tap`]).
    pub taps: bool,
    /// RPC servers (consuming requests); false where the broker cannot
    /// serve a server's queues (a profile whose queues must exist first).
    pub serve: bool,
}

impl Capabilities {
    /// Every capability on: start from here and switch off what a backend lacks.
    pub const ALL: Capabilities = Capabilities {
        call: true,
        multicall: true,
        fanout: true,
        fanout_to_server: true,
        notifications: true,
        notification_pools: true,
        publisher_confirms: true,
        cross_process: true,
        redelivers: true,
        removes_targets: true,
        taps: true,
        serve: true,
    };
}

/// The acknowledgement half of a delivery, for brokers that want one.
#[async_trait]
pub trait Acknowledge: Send {
    /// The message was taken; the broker may forget it.
    async fn ack(self: Box<Self>);
    /// The message is unusable; the broker must not redeliver it.
    async fn reject(self: Box<Self>);
}

/// One message taken from a listener's queue. Its body is logged by size only.
pub struct Delivery {
    /// The raw message body (an oslo envelope, unless something else put
    /// garbage on the queue).
    pub body: Bytes,
    acknowledge: Option<Box<dyn Acknowledge>>,
    reply_to: Option<Box<str>>,
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
            reply_to: None,
        }
    }

    /// A delivery the broker wants acknowledged (or rejected).
    pub fn with_acknowledge(body: Bytes, acknowledge: Box<dyn Acknowledge>) -> Self {
        Delivery {
            body,
            acknowledge: Some(acknowledge),
            reply_to: None,
        }
    }

    /// The same delivery, whose replies go to `address` rather than to the
    /// envelope's `_reply_q`: an address the broker gave the message in
    /// transit (RabbitMQ's direct reply-to rewrites `amq.rabbitmq.reply-to`
    /// into the caller's channel), which the sender could not write into
    /// the envelope.
    pub fn with_reply_to(mut self, address: &str) -> Self {
        self.reply_to = Some(address.into());
        self
    }

    /// Takes out where replies go when the broker said so (see
    /// [`Delivery::with_reply_to`]); `None`: to the envelope's `_reply_q`.
    pub fn take_reply_to(&mut self) -> Option<Box<str>> {
        self.reply_to.take()
    }

    /// Tells the broker the message was taken.
    pub async fn ack(self) {
        if let Some(a) = self.acknowledge {
            a.ack().await;
        }
    }

    /// Tells the broker the message is unusable (not to be redelivered).
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

/// An encoded request on its way out.
#[derive(Clone, Debug)]
pub struct OutgoingRequest<'a> {
    /// The oslo envelope, encoded once by the core.
    pub body: Bytes,
    /// The method, for drivers whose wire has a subject.
    pub method: &'a str,
}

/// What a driver needs to route a call's request and its replies.
#[derive(Clone, Copy, Debug)]
pub struct CallInfo<'a> {
    /// The request's `_msg_id` (already inside the body).
    pub msg_id: &'a str,
    /// The reply address (already inside the body as `_reply_q`).
    pub reply_to: &'a str,
    /// When the call's timeout ends: the request may expire then.
    pub deadline: tokio::time::Instant,
}

impl CallInfo<'_> {
    /// What is left of the call's timeout (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.deadline
            .saturating_duration_since(tokio::time::Instant::now())
    }
}

/// The driver contract, modelled on oslo.messaging's driver API. Drivers are
/// wrapped in a [`crate::Transport`] and reached only through it.
///
/// Every send must be cancel-safe: the handle drops a send whose deadline
/// passed.
#[async_trait]
pub trait Driver: Send + Sync + fmt::Debug + 'static {
    /// The registered name of the backend (`memory`, `kombu`, ...).
    fn backend(&self) -> &'static str;

    /// What this instance can do (its broker and profile decide, not its type).
    fn capabilities(&self) -> Capabilities;

    /// The `[DEFAULT]` options this driver was built with.
    fn options(&self) -> &CommonOptions;

    /// Where replies to this process's calls go (its reply queue or node,
    /// declared and consumed on first use), for `_reply_q`. Once given, the
    /// address must not change: the handle asks only until it gets one.
    async fn reply_address(&self) -> Result<&str>;

    /// The registry that the reply consumer feeds; the handle registers
    /// each call's `msg_id` in it before sending.
    fn replies(&self) -> &std::sync::Arc<ReplyRegistry>;

    /// The driver's send slots (its broker's flow control: publishes or
    /// transfers awaiting their outcome), if it bounds them. The handle takes
    /// a slot before it encodes a message or registers a call's waiter and
    /// holds it until the driver's send returns, so a burst waiting for a
    /// busy broker holds only its arguments. Drivers do not take slots
    /// themselves. `None` (the default): sends are not bounded.
    fn send_slots(&self) -> Option<&tokio::sync::Semaphore> {
        None
    }

    /// Sends a request that expects no reply: a cast, a cast to
    /// `target.server`, or (with `target.fanout`) a fanout cast.
    async fn send(&self, target: &Target, request: OutgoingRequest<'_>) -> Result<()>;

    /// Sends a call's request; its replies reach [`Driver::replies`].
    async fn send_call(
        &self,
        target: &Target,
        request: OutgoingRequest<'_>,
        call: CallInfo<'_>,
    ) -> Result<()>;

    /// Sends an encoded reply to the reply address named by a request;
    /// `msg_id` is the request's, also inside `body` (drivers whose wire has a
    /// correlation field set it without parsing the body again). A reply
    /// whose caller is gone fails with `Undeliverable` (or is dropped).
    async fn send_reply(&self, reply_to: &str, msg_id: &str, body: Bytes) -> Result<()>;

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

    /// Consumes copies of the requests routed to `target` (see
    /// [`crate::Transport::tap`]). Only called when `capabilities().taps`.
    async fn tap(&self, _target: &Target) -> Result<Box<dyn Listener>> {
        Err(crate::Error::Unsupported {
            backend: self.backend(),
            operation: "tapping a topic",
        })
    }

    /// Removes the shared queues of `target` (see
    /// [`crate::Transport::delete_target`]).
    async fn delete_target(&self, _target: &Target) -> Result<()> {
        Ok(())
    }

    /// Closes connections and releases broker resources (reply queue, ...).
    /// The handle has already failed waiting callers with `Closed`.
    async fn close(&self) -> Result<()>;
}

// `Driver` must stay usable as `Arc<dyn Driver>`.
const _: Option<&dyn Driver> = None;
const _: Option<Box<dyn Listener>> = None;

/// Builds a driver from the configuration.
pub type ConnectFn = fn(Config) -> BoxFuture<'static, Result<std::sync::Arc<dyn Driver>>>;

/// How a driver registers itself: the registry in the `novarpc` crate picks one
/// by `rpc_backend` name, alias or transport URL scheme.
#[derive(Clone, Copy)]
pub struct DriverDescriptor {
    /// The backend's name (`rpc_backend = "kombu"`).
    pub name: &'static str,
    /// Other names `rpc_backend` may use.
    pub aliases: &'static [&'static str],
    /// Transport URL schemes that select this driver.
    pub url_schemes: &'static [&'static str],
    /// The TOML table holding the driver's options (`[kombu]`).
    pub config_section: &'static str,
    /// What a transport built from this configuration will be able to do
    /// (the options, such as an addressing profile, decide); no I/O.
    pub capabilities: fn(&Config) -> std::result::Result<Capabilities, ConfigError>,
    /// Parses and checks the driver's options; does no I/O.
    pub validate: fn(&Config) -> std::result::Result<(), ConfigError>,
    /// The driver's options with defaults filled in, as TOML, for operators
    /// (`novarpc check-config`). Holds no secrets.
    pub resolved_options: fn(&Config) -> std::result::Result<String, ConfigError>,
    /// Builds the driver (and connects, to fail fast on a bad broker).
    pub connect: ConnectFn,
}

impl fmt::Debug for DriverDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DriverDescriptor")
            .field("name", &self.name)
            .field("aliases", &self.aliases)
            .field("url_schemes", &self.url_schemes)
            .field("config_section", &self.config_section)
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
