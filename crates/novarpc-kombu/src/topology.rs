//! oslo.messaging's rabbit topology: which exchanges and queues exist for a
//! target, with the flags and arguments oslo gives them. Named after Nova's
//! `impl_kombu`: topic, fanout and direct consumers.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};

use novarpc_core::Target;

use crate::options::KombuOptions;

/// An exchange to publish to or bind from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Exchange {
    /// The default exchange (`""`): routes by queue name.
    Default,
    /// The control exchange: a topic exchange.
    Topic(String),
    /// `<topic>_fanout`.
    Fanout(String),
}

impl Exchange {
    pub(crate) fn name(&self) -> &str {
        match self {
            Exchange::Default => "",
            Exchange::Topic(name) | Exchange::Fanout(name) => name,
        }
    }

    /// Declares the exchange as oslo would, on a channel of its own: when it
    /// exists with the other durability (a deployment that turned on quorum
    /// or durable queues after its services first declared a transient
    /// control exchange, or services sharing one with different settings),
    /// the broker refuses with PRECONDITION_FAILED and closes the channel.
    /// oslo.messaging then declares it non-durable and carries on; this
    /// takes the exchange as it is (a passive declare), which covers both
    /// directions, and says so at warn.
    pub(crate) async fn declare(
        &self,
        connection: &Connection,
        options: &KombuOptions,
    ) -> lapin::Result<()> {
        let (kind, durable, auto_delete) = match self {
            Exchange::Default => return Ok(()),
            // Quorum queues make oslo's whole topology durable, exchange too.
            Exchange::Topic(_) => (
                ExchangeKind::Topic,
                options.durable_queues || options.quorum_queues,
                options.auto_delete,
            ),
            // oslo makes it durable with transient quorum queues.
            Exchange::Fanout(_) => (ExchangeKind::Fanout, options.transient_quorum_queue, true),
        };
        let channel = connection.create_channel().await?;
        let declared = channel
            .exchange_declare(
                self.name().into(),
                kind.clone(),
                ExchangeDeclareOptions {
                    durable,
                    auto_delete,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(()) => {
                close_quietly(channel);
                Ok(())
            }
            Err(error) if durability_mismatch(&error) => {
                tracing::warn!(
                    exchange = self.name(),
                    wanted_durable = durable,
                    "the exchange exists with the other durability; using it as it is, as oslo.messaging does"
                );
                let channel = connection.create_channel().await?;
                channel
                    .exchange_declare(
                        self.name().into(),
                        kind,
                        ExchangeDeclareOptions {
                            passive: true,
                            ..ExchangeDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                close_quietly(channel);
                Ok(())
            }
            Err(error) => Err(error),
        }
    }
}

/// Whether the broker refused a declaration because the entity exists with
/// the other `durable` flag (`PRECONDITION_FAILED - inequivalent arg
/// 'durable'`, the text oslo.messaging matches too).
fn durability_mismatch(error: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => {
            matches!(
                amqp.kind(),
                AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
            ) && amqp
                .get_message()
                .as_str()
                .contains("inequivalent arg 'durable'")
        }
        _ => false,
    }
}

/// Closes a channel used for one declaration without waiting for the broker.
fn close_quietly(channel: Channel) {
    tokio::spawn(async move {
        let _ = channel.close(200, "declared".into()).await;
    });
}

/// RabbitMQ's direct reply-to pseudo-queue; the broker rewrites a request's
/// `reply_to` property of this name into the caller's channel's address,
/// `amq.rabbitmq.reply-to.<token>`.
pub(crate) const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Whether `address` is a caller's direct reply-to address, as the broker
/// rewrote it (`amq.rabbitmq.reply-to.<token>`).
pub(crate) fn is_direct_reply_address(address: &str) -> bool {
    address
        .strip_prefix(DIRECT_REPLY_TO)
        .is_some_and(|rest| rest.starts_with('.'))
}

/// A queue with its bindings.
#[derive(Clone, Debug)]
pub(crate) struct QueueSpec {
    pub(crate) name: String,
    pub(crate) durable: bool,
    pub(crate) auto_delete: bool,
    /// Only the declaring connection may use it (operators' taps).
    pub(crate) exclusive: bool,
    pub(crate) arguments: FieldTable,
    pub(crate) bindings: Vec<(Exchange, String)>,
    /// Deleted when its listener stops (per-process fanout and reply queues,
    /// unless a queue manager names them).
    pub(crate) transient: bool,
    /// Arguments of `basic.consume` (`x-stream-offset` on streams).
    pub(crate) consumer_arguments: FieldTable,
    /// A broker's pseudo-queue (direct reply-to): consumed, never declared.
    pub(crate) pseudo: bool,
}

/// oslo's quorum queue arguments (`_get_queue_arguments`).
fn quorum_arguments(arguments: &mut FieldTable, options: &KombuOptions) {
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    if options.quorum_delivery_limit > 0 {
        arguments.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(options.quorum_delivery_limit.min(i32::MAX as u32) as i32),
        );
    }
    if options.quorum_max_memory_length > 0 {
        arguments.insert(
            "x-max-in-memory-length".into(),
            AMQPValue::LongInt(options.quorum_max_memory_length.min(i32::MAX as u32) as i32),
        );
    }
    if options.quorum_max_memory_bytes > 0 {
        arguments.insert(
            "x-max-in-memory-bytes".into(),
            AMQPValue::LongLongInt(options.quorum_max_memory_bytes.min(i64::MAX as u64) as i64),
        );
    }
}

impl QueueSpec {
    /// impl_kombu's TopicConsumer: a shared queue (`topic`, `topic.server`,
    /// `notifications.info`) bound to the control exchange with `routing_key`.
    pub(crate) fn topic_consumer(
        name: &str,
        exchange: &str,
        routing_key: &str,
        options: &KombuOptions,
    ) -> Self {
        let mut arguments = FieldTable::default();
        let mut durable = options.durable_queues;
        if options.quorum_queues {
            durable = true;
            quorum_arguments(&mut arguments, options);
        }
        QueueSpec {
            name: name.to_owned(),
            durable,
            auto_delete: options.auto_delete,
            exclusive: false,
            arguments,
            bindings: vec![(Exchange::Topic(exchange.to_owned()), routing_key.to_owned())],
            transient: false,
            consumer_arguments: FieldTable::default(),
            pseudo: false,
        }
    }

    /// A per-process queue that expires when unused (`x-expires`), as a
    /// quorum queue with `transient_quorum_queue`.
    fn expiring(name: String, bindings: Vec<(Exchange, String)>, options: &KombuOptions) -> Self {
        let mut arguments = FieldTable::default();
        if options.transient_quorum_queue {
            quorum_arguments(&mut arguments, options);
        }
        if options.transient_queues_ttl > 0 {
            arguments.insert(
                "x-expires".into(),
                AMQPValue::LongInt(options.transient_ttl_ms().min(i32::MAX as u32) as i32),
            );
        }
        QueueSpec {
            name,
            durable: options.transient_quorum_queue,
            auto_delete: false,
            exclusive: false,
            arguments,
            bindings,
            // A queue manager's names come back after a restart: such queues
            // are reused, and left to expire, as oslo leaves them.
            transient: !options.use_queue_manager,
            consumer_arguments: FieldTable::default(),
            pseudo: false,
        }
    }

    /// impl_kombu's FanoutConsumer: `<topic>_fanout_<uuid>`, bound to
    /// `<topic>_fanout` with key `<topic>`; with `stream_fanout`, the one
    /// stream `<topic>_fanout` every listener of the topic reads from.
    pub(crate) fn fanout_consumer(target: &Target, unique: &str, options: &KombuOptions) -> Self {
        let exchange = target.fanout_exchange();
        let bindings = vec![(Exchange::Fanout(exchange.clone()), target.topic.clone())];
        if options.stream_fanout {
            let mut arguments = FieldTable::default();
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("stream".into()),
            );
            if options.transient_queues_ttl > 0 {
                arguments.insert(
                    "x-max-age".into(),
                    AMQPValue::LongString(format!("{}s", options.transient_queues_ttl).into()),
                );
            }
            let mut consumer_arguments = FieldTable::default();
            // Only what is published from now on (a new listener does not
            // replay the stream's history).
            consumer_arguments.insert(
                "x-stream-offset".into(),
                AMQPValue::LongString("next".into()),
            );
            return QueueSpec {
                name: exchange,
                durable: true,
                auto_delete: false,
                exclusive: false,
                arguments,
                bindings,
                // Shared by every listener of the topic: it outlives each.
                transient: false,
                consumer_arguments,
                pseudo: false,
            };
        }
        QueueSpec::expiring(format!("{exchange}_{unique}"), bindings, options)
    }

    /// impl_kombu's DirectConsumer: `reply_<uuid>`, on the default exchange only.
    pub(crate) fn direct_consumer(name: String, options: &KombuOptions) -> Self {
        QueueSpec::expiring(name, Vec::new(), options)
    }

    /// RabbitMQ's direct reply-to pseudo-queue, `amq.rabbitmq.reply-to`: it
    /// always exists, and is consumed without acknowledgements on the
    /// channel that publishes the requests.
    pub(crate) fn direct_reply_to() -> Self {
        QueueSpec {
            name: DIRECT_REPLY_TO.to_owned(),
            durable: false,
            auto_delete: false,
            exclusive: false,
            arguments: FieldTable::default(),
            bindings: Vec::new(),
            transient: false,
            consumer_arguments: FieldTable::default(),
            pseudo: true,
        }
    }

    /// A private copy of everything routed to `target`: bound to `topic` and
    /// `topic.*` (or `topic.server`), and to the topic's fanout exchange.
    pub(crate) fn tap(target: &Target, exchange: &str, unique: &str) -> Self {
        let topic_exchange = Exchange::Topic(exchange.to_owned());
        let mut bindings = match &target.server {
            Some(_) => vec![(topic_exchange, target.routing_key().into_owned())],
            None => vec![
                (topic_exchange.clone(), target.topic.clone()),
                (topic_exchange, format!("{}.*", target.topic)),
            ],
        };
        bindings.push((
            Exchange::Fanout(target.fanout_exchange()),
            target.topic.clone(),
        ));
        QueueSpec {
            name: format!("novarpc_tap_{unique}"),
            durable: false,
            auto_delete: true,
            exclusive: true,
            arguments: FieldTable::default(),
            bindings,
            transient: true,
            consumer_arguments: FieldTable::default(),
            pseudo: false,
        }
    }

    /// Declares the queue on `channel` and its exchanges (each on a channel
    /// of its own, see `Exchange::declare`), then binds it.
    pub(crate) async fn declare(
        &self,
        channel: &Channel,
        connection: &Connection,
        options: &KombuOptions,
    ) -> lapin::Result<()> {
        if self.pseudo {
            return Ok(());
        }
        channel
            .queue_declare(
                self.name.as_str().into(),
                QueueDeclareOptions {
                    durable: self.durable,
                    auto_delete: self.auto_delete,
                    exclusive: self.exclusive,
                    ..QueueDeclareOptions::default()
                },
                self.arguments.clone(),
            )
            .await?;
        for (exchange, routing_key) in &self.bindings {
            exchange.declare(connection, options).await?;
            channel
                .queue_bind(
                    self.name.as_str().into(),
                    exchange.name().into(),
                    routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }
}
