use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use lapin::options::BasicPublishOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation};
use novarpc_amqp::pool::{self, Pool};
use novarpc_amqp::{ensure, ReplyRegistry, RetryPolicy};
use novarpc_core::driver::{CallInfo, Capabilities, Driver, Listener, OutgoingRequest};
use novarpc_core::envelope;
use novarpc_core::{Classify, CommonOptions, Config, Error, Priority, Result, Target};
use parking_lot::Mutex;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::connection::{broker_hosts, Broker, ChannelManager, KombuConnector, PooledChannel};
use crate::consumer::{Announce, ConsumerSet, KombuListener};
use crate::options::KombuOptions;
use crate::queue_manager::QueueManager;
use crate::topology::{is_direct_reply_address, Exchange, QueueSpec, DIRECT_REPLY_TO};
use crate::{KombuError, BACKEND, CAPABILITIES};

struct Declared {
    generation: u64,
    names: HashSet<String>,
}

struct Shared {
    common: CommonOptions,
    options: KombuOptions,
    /// `options`' retry policy, computed once (not per publish).
    retry: RetryPolicy,
    broker: Arc<Broker>,
    /// Channels in confirm mode, for publishes that wait for the broker.
    publishers: Pool<ChannelManager>,
    unconfirmed_publishers: Pool<ChannelManager>,
    /// Publishes under way (the handle takes a slot before it encodes): a
    /// burst of thousands of sends waits as small futures, not as encoded
    /// messages, waiters and publish state.
    publish_slots: tokio::sync::Semaphore,
    /// Exchanges and notification queues declared on the current connection.
    declared: Mutex<Declared>,
    reply_queue: OnceCell<String>,
    /// Names reply and fanout queues when `use_queue_manager` is on.
    queue_manager: Option<QueueManager>,
    reply_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// With `direct_reply_to`: the channel that consumes the replies, on
    /// which calls' requests go out (announced by the reply consumer).
    direct: Option<tokio::sync::watch::Sender<Option<PooledChannel>>>,
    replies: Arc<ReplyRegistry>,
    shutdown: CancellationToken,
    closed: AtomicBool,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The kombu-like driver: AMQP 0-9-1 on lapin, with oslo.messaging's
/// rabbit topology and envelope. Wrap it in a [`novarpc_core::Transport`].
#[derive(Clone)]
pub struct KombuDriver {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for KombuDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KombuDriver")
            .field("broker", &self.shared.broker)
            .field("control_exchange", &self.shared.common.control_exchange)
            .finish_non_exhaustive()
    }
}

/// The direct reply-to consumer's current channel, once it has a working one.
async fn direct_channel(
    announced: &tokio::sync::watch::Sender<Option<PooledChannel>>,
) -> std::result::Result<PooledChannel, KombuError> {
    // The consumer announces a new channel when it resumes after a reconnect;
    // the call's deadline bounds the wait.
    let mut current = announced.subscribe();
    loop {
        let channel = current
            .wait_for(|c| c.as_ref().is_some_and(|c| c.channel.status().connected()))
            .await
            .map_err(|_| KombuError::Pool("the transport is closed".into()))?
            .clone()
            .expect("checked by wait_for");
        if !channel.is_retired() {
            return Ok(channel);
        }
        // A channel the broker nacked a publish on (or did not confirm it in
        // time) is retired, as pooled ones are: closed, so that its consumer
        // starts again on a new one.
        let taken = announced.send_if_modified(|c| {
            let retired = c.as_ref().is_some_and(PooledChannel::is_retired);
            if retired {
                *c = None;
            }
            retired
        });
        if taken {
            channel.close_retired();
        }
    }
}

/// Properties oslo.messaging puts on every message.
fn properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_delivery_mode(2)
        .with_priority(0)
        .with_headers(FieldTable::default())
}

/// One message to publish, and how hard to try.
struct Publish<'a> {
    exchange: &'a Exchange,
    routing_key: &'a str,
    body: &'a [u8],
    properties: BasicProperties,
    /// Ask the broker to return the message if no queue takes it.
    mandatory: bool,
    /// A queue to declare (and bind) before the first publish on a connection.
    declare_queue: Option<&'a QueueSpec>,
    confirm: Confirm,
    policy: RetryPolicy,
    /// Stop retrying after this instant (a call's timeout).
    give_up_at: Option<Instant>,
    /// Retry a returned message too (a reply whose caller may be
    /// reconnecting, as oslo's `missing_consumer_retry_timeout`).
    retry_unroutable: bool,
    /// Publish on the direct reply-to channel (a call's request) rather
    /// than on a pooled one.
    direct: bool,
}

/// The channel a publish goes out on.
enum Lease {
    Pooled(pool::Object<ChannelManager>),
    /// The direct reply-to consumer's channel (shared, not pooled).
    Direct(PooledChannel),
}

impl std::ops::Deref for Lease {
    type Target = PooledChannel;

    fn deref(&self) -> &PooledChannel {
        match self {
            Lease::Pooled(channel) => channel,
            Lease::Direct(channel) => channel,
        }
    }
}

/// How a publish is confirmed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Confirm {
    /// Wait for the broker's confirmation (casts, notifications).
    Wait,
    /// Hand the frame over and return (calls: the reply is the confirmation).
    Skip,
}

impl KombuDriver {
    /// Builds the driver; connects lazily, on first use.
    pub fn new(config: &Config) -> std::result::Result<Self, novarpc_core::ConfigError> {
        let options = KombuOptions::from_config(config)?;
        let common = config.common().clone();
        let hosts = broker_hosts(common.transport_url.as_ref(), &options);
        let ring = novarpc_amqp::HostRing::new(hosts, options.failover_strategy);
        let broker = Broker::new(
            KombuConnector::new(options.clone(), &common, "rpc"),
            ring,
            options.retry_policy(),
        );
        let publishers = pool::build(
            ChannelManager {
                broker: broker.clone(),
                confirms: options.publisher_confirms
                    || options.mandatory_replies
                    || options.quorum_queues,
            },
            options.channel_pool_size,
        );
        // Calls (and unconfirmed casts) go out on channels without confirm
        // mode: nothing waits for those confirms, and each would cost a
        // pending promise here and an ack from the broker.
        let unconfirmed_publishers = pool::build(
            ChannelManager {
                broker: broker.clone(),
                confirms: false,
            },
            options.channel_pool_size,
        );
        let queue_manager = options.use_queue_manager.then(|| {
            QueueManager::new(
                &options.hostname_or_default(),
                &options.processname_or_default(),
            )
        });
        let direct = options
            .direct_reply_to
            .then(|| tokio::sync::watch::channel(None).0);
        Ok(KombuDriver {
            shared: Arc::new(Shared {
                common,
                publish_slots: tokio::sync::Semaphore::new(options.channel_pool_size * 32),
                retry: options.retry_policy(),
                options,
                broker,
                publishers,
                unconfirmed_publishers,
                declared: Mutex::new(Declared {
                    generation: 0,
                    names: HashSet::new(),
                }),
                reply_queue: OnceCell::new(),
                queue_manager,
                reply_task: Mutex::new(None),
                direct,
                replies: ReplyRegistry::new(),
                shutdown: CancellationToken::new(),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// Connects now (rather than on first use), to fail fast on a bad broker.
    pub async fn connect(config: &Config) -> Result<Self> {
        let transport = KombuDriver::new(config)?;
        transport
            .shared
            .broker
            .get()
            .await
            .map_err(|e| Error::from(e.last_error))?;
        Ok(transport)
    }

    fn check_open(&self) -> Result<()> {
        if self.shared.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn control_exchange<'a>(&'a self, target: &'a Target) -> &'a str {
        target.exchange_or(&self.shared.common.control_exchange)
    }

    /// The publisher side of impl_kombu (`topic_send`, `fanout_send`,
    /// `direct_send`, `notify_send`) wrapped in `ensure`: each failure is
    /// logged, a broken channel or connection is replaced, and after the
    /// configured retries the last error is returned.
    async fn publish(&self, publish: Publish<'_>) -> std::result::Result<(), KombuError> {
        let Publish {
            exchange,
            mandatory,
            routing_key,
            body,
            properties,
            declare_queue,
            confirm,
            policy,
            give_up_at,
            retry_unroutable,
            direct,
        } = publish;
        let shared = &self.shared;
        ensure(
            &policy,
            |_| {
                let properties = properties.clone();
                async move {
                    let pool = match confirm {
                        Confirm::Wait => &shared.publishers,
                        Confirm::Skip => &shared.unconfirmed_publishers,
                    };
                    let channel = match (direct, &shared.direct) {
                        (true, Some(announced)) => Lease::Direct(direct_channel(announced).await?),
                        _ => Lease::Pooled(pool.get().await.map_err(KombuError::from_pool)?),
                    };
                    let published = async {
                        self.declare_for_publish(&channel, exchange, declare_queue).await?;
                        channel
                            .channel
                            .basic_publish(
                                exchange.name().into(),
                                routing_key.into(),
                                BasicPublishOptions {
                                    mandatory,
                                    ..BasicPublishOptions::default()
                                },
                                body,
                                properties,
                            )
                            .await
                    }
                    .await;
                    let pending = match published {
                        Ok(pending) => pending,
                        Err(error) => {
                            // A channel error closes the channel: drop it from the
                            // pool (a direct reply-to channel is replaced by its
                            // consumer).
                            if let Lease::Pooled(channel) = channel {
                                let _ = pool::Object::take(channel);
                            }
                            return Err(KombuError::Amqp(error));
                        }
                    };
                    // Give the channel back before waiting: many publishes share a
                    // channel while their confirmations are outstanding.
                    let retired = channel.retired.clone();
                    drop(channel);
                    if confirm == Confirm::Skip {
                        return Ok(());
                    }
                    let patience = Duration::from_secs_f64(shared.options.confirm_timeout);
                    let Ok(confirmed) = tokio::time::timeout(patience, pending).await else {
                        // Retire the channel and send again on another.
                        retired.store(true, std::sync::atomic::Ordering::Release);
                        return Err(KombuError::Unconfirmed(patience));
                    };
                    match confirmed {
                        Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => Ok(()),
                        Ok(Confirmation::Ack(Some(_))) => Err(KombuError::Unroutable {
                            exchange: exchange.name().to_owned(),
                            routing_key: routing_key.to_owned(),
                        }),
                        Ok(Confirmation::Nack(_)) => {
                            // Retire the channel: the next publish takes another.
                            retired.store(true, std::sync::atomic::Ordering::Release);
                            Err(KombuError::Nacked)
                        }
                        Err(error) => Err(KombuError::Amqp(error)),
                    }
                }
            },
            |error, attempt| {
                // Only what may pass is retried: a refused login, a missing
                // permission or a returned message fail at once.
                let retryable = error.kind().is_temporary()
                    || (retry_unroutable && matches!(error, KombuError::Unroutable { .. }));
                let retry = retryable && give_up_at.is_none_or(|at| Instant::now() < at);
                tracing::debug!(error = %novarpc_core::error_chain(error), attempt, exchange = exchange.name(), routing_key, retry, "publish failed");
                retry
            },
        )
        .await
        .map_err(|exhausted| {
            if exhausted.attempts <= 1 {
                exhausted.last_error
            } else {
                KombuError::GaveUp {
                    attempts: exhausted.attempts,
                    last: Box::new(exhausted.last_error),
                }
            }
        })
    }

    async fn declare_for_publish(
        &self,
        channel: &crate::connection::PooledChannel,
        exchange: &Exchange,
        queue: Option<&QueueSpec>,
    ) -> lapin::Result<()> {
        if *exchange == Exchange::Default {
            return Ok(());
        }
        // Queues declared for publishing also declare their exchange, so one
        // set of names covers both.
        let name = queue.map_or(exchange.name(), |q| q.name.as_str());
        {
            let mut declared = self.shared.declared.lock();
            if declared.generation != channel.generation {
                declared.generation = channel.generation;
                declared.names.clear();
            }
            if declared.names.contains(name) {
                return Ok(());
            }
        }
        match queue {
            Some(queue) => {
                queue
                    .declare(&channel.channel, &channel.connection, &self.shared.options)
                    .await?
            }
            None => {
                exchange
                    .declare(&channel.connection, &self.shared.options)
                    .await?
            }
        }
        let mut declared = self.shared.declared.lock();
        if declared.generation == channel.generation {
            declared.names.insert(name.to_owned());
        }
        Ok(())
    }

    fn cast_policy(&self) -> RetryPolicy {
        self.shared.retry
    }

    /// The per-process reply queue, declared and consumed on first use.
    async fn reply_queue(&self) -> Result<&str> {
        // The handle asks once at a time (calls made meanwhile share its
        // request), so the declaring future is not held by many callers.
        self.shared
            .reply_queue
            .get_or_try_init(|| self.declare_reply_queue())
            .await
            .map(String::as_str)
    }

    async fn declare_reply_queue(&self) -> Result<String> {
        let shared = &self.shared;
        let (name, consumers) = match &shared.direct {
            Some(announce) => {
                let consumers = ConsumerSet::direct_reply_to(
                    shared.broker.clone(),
                    shared.options.clone(),
                    shared.shutdown.clone(),
                    Announce {
                        channel: announce.clone(),
                        confirms: shared.options.quorum_queues,
                    },
                )
                .await;
                (DIRECT_REPLY_TO.to_owned(), consumers)
            }
            None => {
                let name = format!("reply_{}", self.unique_name()?);
                let consumers = ConsumerSet::declare_consumers(
                    shared.broker.clone(),
                    shared.options.clone(),
                    vec![QueueSpec::direct_consumer(name.clone(), &shared.options)],
                    true,
                    shared.shutdown.clone(),
                )
                .await;
                (name, consumers)
            }
        };
        let mut consumers = consumers.map_err(|e| Error::transport(BACKEND, e))?;
        let replies = shared.replies.clone();
        let task = tokio::spawn(async move {
            while let Some(delivery) = consumers.next().await {
                replies.deliver_body(&delivery.data);
            }
            let _ = consumers.stop().await;
        });
        *shared.reply_task.lock() = Some(task);
        Ok(name)
    }

    /// What tells a process's reply or fanout queue apart: a uuid, or with
    /// the queue manager the next `<hostname>:<processname>:<n>`.
    fn unique_name(&self) -> Result<String> {
        match &self.shared.queue_manager {
            None => Ok(envelope::new_unique_id()),
            Some(manager) => manager
                .next_name()
                .map_err(|error| Error::transport(BACKEND, KombuError::QueueManager(error))),
        }
    }

    fn listen_spec(&self, target: &Target) -> Result<Vec<QueueSpec>> {
        let options = &self.shared.options;
        let exchange = self.control_exchange(target);
        let topic = &target.topic;
        let mut queues = vec![QueueSpec::topic_consumer(topic, exchange, topic, options)];
        if let Some(server) = &target.server {
            let name = format!("{topic}.{server}");
            queues.push(QueueSpec::topic_consumer(&name, exchange, &name, options));
        }
        queues.push(QueueSpec::fanout_consumer(
            target,
            &self.unique_name()?,
            options,
        ));
        Ok(queues)
    }
}

#[async_trait]
impl Driver for KombuDriver {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn options(&self) -> &CommonOptions {
        &self.shared.common
    }

    async fn reply_address(&self) -> Result<&str> {
        self.reply_queue().await
    }

    fn replies(&self) -> &Arc<ReplyRegistry> {
        &self.shared.replies
    }

    fn send_slots(&self) -> Option<&tokio::sync::Semaphore> {
        Some(&self.shared.publish_slots)
    }

    async fn send(&self, target: &Target, request: OutgoingRequest<'_>) -> Result<()> {
        self.check_open()?;
        let options = &self.shared.options;
        let exchange_name = self.control_exchange(target);
        let (exchange, routing_key, queue) = if target.fanout {
            (
                Exchange::Fanout(target.fanout_exchange()),
                String::new(),
                None,
            )
        } else {
            let key = target.routing_key().into_owned();
            // A cast waits in its target's queue for the first server: declare
            // it as a server would (same name, bindings and arguments).
            let queue = QueueSpec::topic_consumer(&key, exchange_name, &key, options);
            (Exchange::Topic(exchange_name.to_owned()), key, Some(queue))
        };
        let confirm = if options.publisher_confirms {
            Confirm::Wait
        } else {
            Confirm::Skip
        };
        // Returns are only reported with confirms on.
        let mandatory = !target.fanout && options.mandatory_casts && confirm == Confirm::Wait;
        self.publish(Publish {
            exchange: &exchange,
            mandatory,
            routing_key: &routing_key,
            body: &request.body,
            properties: properties(),
            declare_queue: queue.as_ref(),
            confirm,
            policy: self.cast_policy(),
            give_up_at: None,
            retry_unroutable: false,
            direct: false,
        })
        .await
        .map_err(|e| Error::transport(BACKEND, e))
    }

    async fn send_call(
        &self,
        target: &Target,
        request: OutgoingRequest<'_>,
        call: CallInfo<'_>,
    ) -> Result<()> {
        self.check_open()?;
        let routing_key = target.routing_key();
        let exchange = Exchange::Topic(self.control_exchange(target).to_owned());
        let expiration = call.remaining().as_millis().max(1).to_string();
        let give_up_at = call.deadline.into_std();
        let direct = self.shared.direct.is_some();
        let mut properties = properties().with_expiration(expiration.into());
        if direct {
            // The broker rewrites it into this channel's reply address.
            properties = properties.with_reply_to(DIRECT_REPLY_TO.into());
        }
        self.publish(Publish {
            exchange: &exchange,
            routing_key: &routing_key,
            body: &request.body,
            mandatory: false,
            properties,
            declare_queue: None,
            // On quorum queues a publish can be lost in a leader election:
            // confirm calls there, so a lost request is sent again within
            // the call's deadline instead of timing out.
            confirm: if self.shared.options.quorum_queues {
                Confirm::Wait
            } else {
                Confirm::Skip
            },
            policy: self.cast_policy(),
            give_up_at: Some(give_up_at),
            retry_unroutable: false,
            direct,
        })
        .await
        .map_err(|e| Error::transport(BACKEND, e))
    }

    async fn send_reply(&self, reply_q: &str, _msg_id: &str, body: Bytes) -> Result<()> {
        self.check_open()?;
        let timeout = Duration::from_secs_f64(self.shared.options.missing_consumer_retry_timeout);
        // A missing reply queue may come back (its caller reconnecting): keep
        // trying for `missing_consumer_retry_timeout`, as oslo does.
        let policy = RetryPolicy {
            interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(2),
            max_retries: None,
        };
        let confirm =
            if self.shared.options.mandatory_replies || self.shared.options.publisher_confirms {
                Confirm::Wait
            } else {
                Confirm::Skip
            };
        // RabbitMQ returns a mandatory message to a direct reply-to address
        // as unroutable although it delivered it (the caller's channel is no
        // queue); a reply to a caller that went away is dropped by the broker.
        let direct = is_direct_reply_address(reply_q);
        self.publish(Publish {
            exchange: &Exchange::Default,
            mandatory: self.shared.options.mandatory_replies && confirm == Confirm::Wait && !direct,
            routing_key: reply_q,
            body: &body,
            properties: properties(),
            declare_queue: None,
            confirm,
            policy,
            give_up_at: Some(Instant::now() + timeout),
            retry_unroutable: true,
            direct: false,
        })
        .await
        .map_err(|e| Error::transport(BACKEND, e))
    }

    async fn send_notification(
        &self,
        target: &Target,
        priority: Priority,
        body: Bytes,
    ) -> Result<()> {
        self.check_open()?;
        let exchange_name = self.control_exchange(target);
        let key = target.notification_key(priority);
        // Like oslo's notifier, declare the queue so notifications wait for a listener.
        let queue = QueueSpec::topic_consumer(&key, exchange_name, &key, &self.shared.options);
        let confirm = if self.shared.options.publisher_confirms {
            Confirm::Wait
        } else {
            Confirm::Skip
        };
        self.publish(Publish {
            exchange: &Exchange::Topic(exchange_name.to_owned()),
            mandatory: false,
            routing_key: &key,
            body: &body,
            properties: properties(),
            declare_queue: Some(&queue),
            confirm,
            policy: self.cast_policy(),
            give_up_at: None,
            retry_unroutable: false,
            direct: false,
        })
        .await
        .map_err(|e| Error::transport(BACKEND, e))
    }

    async fn listen(&self, target: &Target) -> Result<Box<dyn Listener>> {
        self.check_open()?;
        let consumers = ConsumerSet::declare_consumers(
            self.shared.broker.clone(),
            self.shared.options.clone(),
            self.listen_spec(target)?,
            false,
            self.shared.shutdown.child_token(),
        )
        .await?;
        Ok(Box::new(KombuListener { consumers }))
    }

    async fn listen_for_notifications(
        &self,
        targets: &[Target],
        priorities: &[Priority],
        pool: Option<&str>,
    ) -> Result<Box<dyn Listener>> {
        self.check_open()?;
        let options = &self.shared.options;
        let mut queues: Vec<QueueSpec> = Vec::new();
        for target in targets {
            let exchange = self.control_exchange(target);
            for priority in priorities {
                let key = target.notification_key(*priority);
                let name = pool.unwrap_or(&key);
                let spec = QueueSpec::topic_consumer(name, exchange, &key, options);
                match queues.iter_mut().find(|q| q.name == name) {
                    Some(existing) => existing.bindings.extend(spec.bindings),
                    None => queues.push(spec),
                }
            }
        }
        let consumers = ConsumerSet::declare_consumers(
            self.shared.broker.clone(),
            options.clone(),
            queues,
            false,
            self.shared.shutdown.child_token(),
        )
        .await?;
        Ok(Box::new(KombuListener { consumers }))
    }

    async fn tap(&self, target: &Target) -> Result<Box<dyn Listener>> {
        self.check_open()?;
        let exchange = self.control_exchange(target);
        let queue = QueueSpec::tap(target, exchange, &envelope::new_unique_id());
        let consumers = ConsumerSet::declare_consumers(
            self.shared.broker.clone(),
            self.shared.options.clone(),
            vec![queue],
            false,
            self.shared.shutdown.child_token(),
        )
        .await?;
        Ok(Box::new(KombuListener { consumers }))
    }

    async fn delete_target(&self, target: &Target) -> Result<()> {
        self.check_open()?;
        let channel = self
            .shared
            .publishers
            .get()
            .await
            .map_err(KombuError::from_pool)?;
        let mut names = vec![target.topic.clone()];
        if target.server.is_some() {
            names.push(target.routing_key().into_owned());
        }
        for name in names {
            channel
                .channel
                .queue_delete(
                    name.as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await
                .map_err(KombuError::Amqp)?;
        }
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.shared.shutdown.cancel();
        self.shared.replies.close_all();
        let task = self.shared.reply_task.lock().take();
        if let Some(task) = task {
            // The reply consumer deletes its queue on the way out.
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        // Closing the connection closes its channels; dropping pooled channels
        // first would race their own close against it.
        if let Some(connection) = self.shared.broker.take().await {
            if let Err(error) = connection.close(200, "cleanup".into()).await {
                tracing::debug!(%error, "closing the connection");
            }
        }
        self.shared.publishers.close();
        self.shared.unconfirmed_publishers.close();
        Ok(())
    }
}
