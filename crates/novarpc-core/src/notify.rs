use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::driver::Listener;
use crate::envelope::{self, Context, OutgoingNotification};
use crate::error::{Error, Result};
use crate::target::Target;
use crate::transport::Transport;

/// A notification as a listener receives it.
pub type Notification = envelope::IncomingNotification;

/// Notification priorities, as oslo.messaging names them. Each has its own
/// queue (`<topic>.<priority>`), so listeners pick the ones they want.
///
/// ```
/// use novarpc_core::Priority;
///
/// let priority: Priority = "warning".parse()?;
/// assert_eq!(priority, Priority::Warn);
/// assert_eq!(priority.wire_name(), "WARN");
/// assert_eq!(priority.routing_name(), "warn");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    /// Records for auditing (who did what).
    Audit,
    /// Detail for troubleshooting.
    Debug,
    /// Normal events: an instance was created, a volume attached.
    Info,
    /// Something unexpected that did not make an operation fail.
    Warn,
    /// An operation failed.
    Error,
    /// A failure that needs an operator now.
    Critical,
    /// Metering samples (as Ceilometer consumes them).
    Sample,
}

impl Priority {
    /// Every priority, in order of the enum: for listeners that want them all.
    pub const ALL: [Priority; 7] = [
        Priority::Audit,
        Priority::Debug,
        Priority::Info,
        Priority::Warn,
        Priority::Error,
        Priority::Critical,
        Priority::Sample,
    ];

    /// The upper-case name written in the message (`INFO`).
    pub fn wire_name(self) -> &'static str {
        match self {
            Priority::Audit => "AUDIT",
            Priority::Debug => "DEBUG",
            Priority::Info => "INFO",
            Priority::Warn => "WARN",
            Priority::Error => "ERROR",
            Priority::Critical => "CRITICAL",
            Priority::Sample => "SAMPLE",
        }
    }

    /// The lower-case name used in routing keys (`notifications.info`).
    pub fn routing_name(self) -> &'static str {
        match self {
            Priority::Audit => "audit",
            Priority::Debug => "debug",
            Priority::Info => "info",
            Priority::Warn => "warn",
            Priority::Error => "error",
            Priority::Critical => "critical",
            Priority::Sample => "sample",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.routing_name())
    }
}

/// The priority name was not one of audit, debug, info, warn, error, critical, sample.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown notification priority `{0}` (expected audit, debug, info, warn, error, critical or sample)")]
pub struct UnknownPriority(pub String);

impl FromStr for Priority {
    type Err = UnknownPriority;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        if lower == "warning" {
            return Ok(Priority::Warn);
        }
        Priority::ALL
            .into_iter()
            .find(|p| p.routing_name() == lower)
            .ok_or_else(|| UnknownPriority(s.to_owned()))
    }
}

/// Sends notifications to `<topic>.<priority>` on the control exchange
/// (topic `notifications` unless told otherwise).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), novarpc_core::Error> {
/// use novarpc_core::{memory::MemoryDriver, CommonOptions, Context, Notifier, Transport};
///
/// let transport = Transport::new(MemoryDriver::new(CommonOptions::default()));
/// let notifier = Notifier::new(transport, "compute.host1").topics(["notifications", "audit"]);
/// let payload = serde_json::json!({"instance_id": "i-1"});
/// notifier
///     .info(&Context::new(), "compute.instance.create.end", &payload)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Notifier {
    transport: Transport,
    publisher_id: String,
    topics: Vec<Target>,
}

impl Notifier {
    /// A notifier publishing as `publisher_id` (oslo: `service.host`) on
    /// the `notifications` topic.
    pub fn new(transport: Transport, publisher_id: impl Into<String>) -> Self {
        Notifier {
            transport,
            publisher_id: publisher_id.into(),
            topics: vec![Target::new("notifications")],
        }
    }

    /// Sends to these topics instead of `notifications`.
    pub fn topics<I, S>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.topics = topics.into_iter().map(Target::new).collect();
        self
    }

    /// Sends on `exchange` instead of the control exchange.
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        let exchange = exchange.into();
        for target in &mut self.topics {
            target.exchange = Some(exchange.clone());
        }
        self
    }

    /// Who the notifications say they come from.
    pub fn publisher_id(&self) -> &str {
        &self.publisher_id
    }

    /// Sends one notification to every topic of this notifier.
    pub async fn notify<P: Serialize + ?Sized>(
        &self,
        context: &Context,
        priority: Priority,
        event_type: &str,
        payload: &P,
    ) -> Result<()> {
        let payload = serde_json::value::to_raw_value(payload).map_err(Error::Serialization)?;
        let body = envelope::encode_notification(&OutgoingNotification {
            publisher_id: &self.publisher_id,
            event_type,
            priority,
            payload: &payload,
            context,
        });
        for target in &self.topics {
            self.transport
                .send_notification(target, priority, body.clone())
                .await?;
        }
        Ok(())
    }

    /// Sends a notification of priority `AUDIT`.
    pub async fn audit<P: Serialize + ?Sized>(
        &self,
        context: &Context,
        event_type: &str,
        payload: &P,
    ) -> Result<()> {
        self.notify(context, Priority::Audit, event_type, payload)
            .await
    }

    /// Sends a notification of priority `DEBUG`.
    pub async fn debug<P: Serialize + ?Sized>(
        &self,
        context: &Context,
        event_type: &str,
        payload: &P,
    ) -> Result<()> {
        self.notify(context, Priority::Debug, event_type, payload)
            .await
    }

    /// Sends a notification of priority `INFO`.
    pub async fn info<P: Serialize + ?Sized>(
        &self,
        context: &Context,
        event_type: &str,
        payload: &P,
    ) -> Result<()> {
        self.notify(context, Priority::Info, event_type, payload)
            .await
    }

    /// Sends a notification of priority `WARN`.
    pub async fn warn<P: Serialize + ?Sized>(
        &self,
        context: &Context,
        event_type: &str,
        payload: &P,
    ) -> Result<()> {
        self.notify(context, Priority::Warn, event_type, payload)
            .await
    }

    /// Sends a notification of priority `ERROR`.
    pub async fn error<P: Serialize + ?Sized>(
        &self,
        context: &Context,
        event_type: &str,
        payload: &P,
    ) -> Result<()> {
        self.notify(context, Priority::Error, event_type, payload)
            .await
    }

    /// Sends a notification of priority `CRITICAL`.
    pub async fn critical<P: Serialize + ?Sized>(
        &self,
        context: &Context,
        event_type: &str,
        payload: &P,
    ) -> Result<()> {
        self.notify(context, Priority::Critical, event_type, payload)
            .await
    }

    /// Sends a notification of priority `SAMPLE`.
    pub async fn sample<P: Serialize + ?Sized>(
        &self,
        context: &Context,
        event_type: &str,
        payload: &P,
    ) -> Result<()> {
        self.notify(context, Priority::Sample, event_type, payload)
            .await
    }
}

/// Receives notifications of the given priorities on the given topics.
///
/// Malformed messages are rejected and logged; `next` goes on to the next one.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), novarpc_core::Error> {
/// use novarpc_core::{
///     memory::MemoryDriver, CommonOptions, Context, NotificationListener, Notifier, Priority,
///     Target, Transport,
/// };
///
/// let transport = Transport::new(MemoryDriver::new(CommonOptions::default()));
/// let mut listener = NotificationListener::start(
///     &transport,
///     &[Target::new("notifications")],
///     &[Priority::Info, Priority::Error],
///     None,
/// )
/// .await?;
///
/// let notifier = Notifier::new(transport, "compute.host1");
/// let payload = serde_json::json!({"instance_id": "i-1"});
/// notifier.info(&Context::new(), "compute.instance.create.end", &payload).await?;
///
/// let notification = listener.next().await.expect("listening");
/// assert_eq!(notification.event_type, "compute.instance.create.end");
/// assert_eq!(notification.priority, Priority::Info);
/// listener.stop().await?;
/// # Ok(()) }
/// ```
pub struct NotificationListener {
    listener: Box<dyn Listener>,
    /// Held so that a broker cache does not close another broker's
    /// transport under its listener.
    _transport: Transport,
}

impl fmt::Debug for NotificationListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotificationListener")
            .finish_non_exhaustive()
    }
}

impl NotificationListener {
    /// Listens on `<topic>.<priority>` for each target and priority. With a
    /// `pool`, listeners of the same pool share the messages (one queue per pool);
    /// without one, all listeners share the `<topic>.<priority>` queue.
    pub async fn start(
        transport: &Transport,
        targets: &[Target],
        priorities: &[Priority],
        pool: Option<&str>,
    ) -> Result<Self> {
        for target in targets {
            target.validate()?;
        }
        if targets.is_empty() || priorities.is_empty() {
            return Err(Error::InvalidTarget(
                "a notification listener needs at least one topic and one priority".into(),
            ));
        }
        let listener = transport
            .listen_for_notifications(targets, priorities, pool)
            .await?;
        Ok(NotificationListener {
            listener,
            _transport: transport.clone(),
        })
    }

    /// The next notification, or `None` once stopped.
    pub async fn next(&mut self) -> Option<Notification> {
        loop {
            let delivery = self.listener.next().await?;
            match envelope::decode_notification(&delivery.body) {
                Ok(notification) => {
                    delivery.ack().await;
                    return Some(notification);
                }
                Err(error) => {
                    tracing::warn!(%error, "rejecting a malformed notification");
                    delivery.reject().await;
                }
            }
        }
    }

    /// Stops consuming; notifications not yet taken stay queued.
    pub async fn stop(mut self) -> Result<()> {
        self.listener.stop().await
    }

    /// The notifications as a [`Stream`](futures::Stream), for
    /// `StreamExt` combinators (`filter`, `map`, `take`, ...); it ends when
    /// the listener stops consuming.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), novarpc_core::Error> {
    /// use futures::StreamExt;
    /// use novarpc_core::{
    ///     memory::MemoryDriver, CommonOptions, Context, NotificationListener, Notifier,
    ///     Priority, Target, Transport,
    /// };
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Created {
    ///     instance_id: String,
    /// }
    ///
    /// let transport = Transport::new(MemoryDriver::new(CommonOptions::default()));
    /// let listener = NotificationListener::start(
    ///     &transport, &[Target::new("notifications")], &[Priority::Info], None,
    /// )
    /// .await?;
    /// let notifier = Notifier::new(transport, "compute.host1");
    /// let payload = serde_json::json!({"instance_id": "i-1"});
    /// notifier.info(&Context::new(), "compute.instance.create.end", &payload).await?;
    ///
    /// let mut created = listener
    ///     .into_stream()
    ///     .filter(|n| std::future::ready(n.event_type == "compute.instance.create.end"))
    ///     .map(|n| n.payload_as::<Created>());
    /// assert_eq!(created.next().await.unwrap()?.instance_id, "i-1");
    /// # Ok(()) }
    /// ```
    pub fn into_stream(self) -> futures::stream::BoxStream<'static, Notification> {
        use futures::StreamExt;
        futures::stream::unfold(self, |mut listener| async move {
            let notification = listener.next().await?;
            Some((notification, listener))
        })
        .boxed()
    }
}

impl envelope::IncomingNotification {
    /// The payload deserialized into `P`.
    pub fn payload_as<P: serde::de::DeserializeOwned>(&self) -> Result<P> {
        P::deserialize(&self.payload).map_err(Error::Serialization)
    }
}
