//! Consumers that heal themselves: on a lost connection or channel they
//! reconnect (failing over across hosts), re-declare their queues and resume.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{SelectAll, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, QueueDeleteOptions,
};
use lapin::{Channel, Consumer};
use novarpc_core::driver::{Acknowledge, Delivery, Listener};
use tokio_util::sync::CancellationToken;

use crate::connection::{Broker, PooledChannel};
use crate::options::KombuOptions;
use crate::topology::{is_direct_reply_address, QueueSpec};
use crate::KombuError;

/// What a consumer yields: a delivery, or the error that ended its channel.
type Consumed = lapin::Result<lapin::message::Delivery>;

/// A consumer whose end shows up as a `None` item: `SelectAll` alone ends
/// only when every stream has ended, so one consumer the broker cancelled
/// (its queue deleted, say) would drop out of the set unnoticed while the
/// others went on, and its queue would never be declared again.
type Watched = futures::stream::Chain<
    futures::stream::Map<Consumer, fn(Consumed) -> Option<Consumed>>,
    futures::stream::Once<std::future::Ready<Option<Consumed>>>,
>;

fn watched(consumer: Consumer) -> Watched {
    consumer
        .map(Some as fn(Consumed) -> Option<Consumed>)
        .chain(futures::stream::once(std::future::ready(None)))
}

struct Active {
    generation: u64,
    channel: Channel,
    consumers: SelectAll<Watched>,
    tags: Vec<String>,
}

/// Consumes a set of queues on one channel.
pub(crate) struct ConsumerSet {
    broker: Arc<Broker>,
    options: KombuOptions,
    queues: Vec<QueueSpec>,
    no_ack: bool,
    active: Option<Active>,
    shutdown: CancellationToken,
    announce: Option<Announce>,
}

/// Where a direct reply-to consumer shows publishers its channel: the
/// requests must go out on the channel that consumes the replies, and it
/// changes with each reconnect (`None` while there is none).
pub(crate) struct Announce {
    pub(crate) channel: tokio::sync::watch::Sender<Option<PooledChannel>>,
    /// Put the channel in confirm mode (calls are confirmed on quorum queues).
    pub(crate) confirms: bool,
}

impl ConsumerSet {
    /// impl_kombu's `declare_consumer` for a set of queues: declares them and
    /// starts consuming, so that messages published after this returns reach
    /// the set.
    pub(crate) async fn declare_consumers(
        broker: Arc<Broker>,
        options: KombuOptions,
        queues: Vec<QueueSpec>,
        no_ack: bool,
        shutdown: CancellationToken,
    ) -> Result<Self, KombuError> {
        ConsumerSet::start(broker, options, queues, no_ack, shutdown, None).await
    }

    /// Consumes RabbitMQ's direct reply-to pseudo-queue (without
    /// acknowledgements, as it requires), showing each channel it consumes
    /// on in `announce`.
    pub(crate) async fn direct_reply_to(
        broker: Arc<Broker>,
        options: KombuOptions,
        shutdown: CancellationToken,
        announce: Announce,
    ) -> Result<Self, KombuError> {
        let queues = vec![QueueSpec::direct_reply_to()];
        ConsumerSet::start(broker, options, queues, true, shutdown, Some(announce)).await
    }

    async fn start(
        broker: Arc<Broker>,
        options: KombuOptions,
        queues: Vec<QueueSpec>,
        no_ack: bool,
        shutdown: CancellationToken,
        announce: Option<Announce>,
    ) -> Result<Self, KombuError> {
        let mut set = ConsumerSet {
            broker,
            options,
            queues,
            no_ack,
            active: None,
            shutdown,
            announce,
        };
        set.active = Some(set.consume().await?);
        Ok(set)
    }

    fn announce(&self, channel: Option<PooledChannel>) {
        if let Some(announce) = &self.announce {
            announce.channel.send_replace(channel);
        }
    }

    async fn consume(&self) -> Result<Active, KombuError> {
        let (generation, connection) = self.broker.get().await.map_err(|e| e.last_error)?;
        let result = async {
            let channel = connection.create_channel().await?;
            if self.announce.as_ref().is_some_and(|a| a.confirms) {
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
            }
            if self.options.prefetch_count > 0 && !self.no_ack {
                channel
                    .basic_qos(self.options.prefetch_count, BasicQosOptions::default())
                    .await?;
            }
            let mut consumers = SelectAll::new();
            let mut tags = Vec::new();
            for queue in &self.queues {
                queue.declare(&channel, &connection, &self.options).await?;
                let tag = format!("novarpc-{}", &queue.name);
                let consumer = channel
                    .basic_consume(
                        queue.name.as_str().into(),
                        tag.as_str().into(),
                        BasicConsumeOptions {
                            no_ack: self.no_ack,
                            ..BasicConsumeOptions::default()
                        },
                        queue.consumer_arguments.clone(),
                    )
                    .await?;
                tags.push(consumer.tag().to_string());
                consumers.push(watched(consumer));
            }
            Ok::<_, lapin::Error>(Active {
                generation,
                channel,
                consumers,
                tags,
            })
        }
        .await;
        match result {
            Ok(active) => {
                self.announce(Some(PooledChannel {
                    channel: active.channel.clone(),
                    generation,
                    connection,
                    retired: Arc::default(),
                }));
                Ok(active)
            }
            Err(error) => {
                if !connection.status().connected() {
                    self.broker.reset(generation).await;
                }
                Err(KombuError::Amqp(error))
            }
        }
    }

    /// The next delivery; reconnects as long as it takes. `None` once shut down.
    /// The next delivery, with the channel it came on (to settle it on).
    pub(crate) async fn next_on_channel(&mut self) -> Option<(lapin::message::Delivery, Channel)> {
        let delivery = self.next().await?;
        let channel = self.active.as_ref()?.channel.clone();
        Some((delivery, channel))
    }

    pub(crate) async fn next(&mut self) -> Option<lapin::message::Delivery> {
        let mut delays = self
            .options
            .retry_policy()
            .with_unlimited_retries()
            .delays();
        loop {
            if self.shutdown.is_cancelled() {
                return None;
            }
            let Some(active) = self.active.as_mut() else {
                let attempt = tokio::select! {
                    _ = self.shutdown.cancelled() => return None,
                    attempt = self.consume() => attempt,
                };
                match attempt {
                    Ok(active) => {
                        tracing::info!(queues = ?self.queue_names(), "consuming again after a reconnect");
                        self.active = Some(active);
                    }
                    Err(error) => {
                        let delay = delays.next().unwrap_or(std::time::Duration::from_secs(1));
                        tracing::debug!(error = %novarpc_core::error_chain(&error), ?delay, "cannot resume consuming; retrying");
                        tokio::select! {
                            _ = self.shutdown.cancelled() => return None,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
                continue;
            };
            let next = tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                next = active.consumers.next() => next,
            };
            match next {
                Some(Some(Ok(delivery))) => return Some(delivery),
                Some(Some(Err(error))) => {
                    let generation = active.generation;
                    self.active = None;
                    self.announce(None);
                    tracing::warn!(error = %novarpc_core::error_chain(&error), queues = ?self.queue_names(), "consumer failed; reconnecting");
                    self.broker.reset(generation).await;
                }
                Some(None) | None => {
                    tracing::warn!(queues = ?self.queue_names(), "a consumer ended (cancelled by the broker, or its channel retired); declaring and consuming again");
                    if let Some(ended) = self.active.take() {
                        // The set's other consumers may still be running on
                        // that channel: closing it hands what they hold back
                        // to the broker before they start again on a new one.
                        // Bounded: a broker that never answers the close
                        // must not keep the listener from starting again.
                        if ended.channel.status().connected() {
                            let _ = tokio::time::timeout(
                                std::time::Duration::from_secs(5),
                                ended.channel.close(200, "a consumer was cancelled".into()),
                            )
                            .await;
                        }
                    }
                    self.announce(None);
                }
            }
        }
    }

    fn queue_names(&self) -> Vec<&str> {
        self.queues.iter().map(|q| q.name.as_str()).collect()
    }

    /// Cancels the consumers, deletes transient queues and closes the channel;
    /// unacknowledged messages go back to their queues.
    pub(crate) async fn stop(&mut self) -> Result<(), KombuError> {
        self.announce(None);
        let Some(active) = self.active.take() else {
            return Ok(());
        };
        for tag in &active.tags {
            if let Err(error) = active
                .channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await
            {
                tracing::debug!(%error, "cancelling a consumer");
            }
        }
        for queue in self.queues.iter().filter(|q| q.transient) {
            if let Err(error) = active
                .channel
                .queue_delete(queue.name.as_str().into(), QueueDeleteOptions::default())
                .await
            {
                tracing::debug!(%error, queue = %queue.name, "deleting a transient queue");
            }
        }
        let closed = active.channel.close(200, "listener stopped".into()).await;
        if let Err(error) = closed {
            tracing::debug!(%error, "closing a consumer channel");
        }
        Ok(())
    }
}

/// Settles a delivery on the channel it came from. Sent on that channel
/// directly: lapin's `Acker` passes each acknowledgement to its internal
/// task, which spawns a task to send it (~5,000 instructions and two
/// hand-offs per request). The channel is never reused after a reconnect
/// (novarpc opens a new one), so a delivery tag never reaches the wrong one;
/// on a closed channel the send fails, and the broker requeues the message.
struct LapinAcknowledge {
    channel: Channel,
    delivery_tag: u64,
}

#[async_trait]
impl Acknowledge for LapinAcknowledge {
    async fn ack(self: Box<Self>) {
        // lapin queues the acknowledgement for its connection when the
        // future is first polled; waiting for it to be written would hold
        // every request back by a round trip through lapin's I/O thread. An
        // acknowledgement that is lost with its channel means a redelivery,
        // which servers drop by its `_unique_id`, as when one fails here.
        let ack = self
            .channel
            .basic_ack(self.delivery_tag, BasicAckOptions::default());
        if let Some(Err(error)) = futures::FutureExt::now_or_never(ack) {
            tracing::warn!(%error, "cannot acknowledge a message (it will be redelivered)");
        }
    }

    async fn reject(self: Box<Self>) {
        let options = BasicRejectOptions { requeue: false };
        if let Err(error) = self.channel.basic_reject(self.delivery_tag, options).await {
            tracing::warn!(%error, "cannot reject a message");
        }
    }
}

/// A server's or notification listener's consumers.
pub(crate) struct KombuListener {
    pub(crate) consumers: ConsumerSet,
}

#[async_trait]
impl Listener for KombuListener {
    async fn next(&mut self) -> Option<Delivery> {
        let (mut delivery, channel) = self.consumers.next_on_channel().await?;
        let body = Bytes::from(std::mem::take(&mut delivery.data));
        let settled = Delivery::with_acknowledge(
            body,
            Box::new(LapinAcknowledge {
                channel,
                delivery_tag: delivery.delivery_tag,
            }),
        );
        // A direct reply-to caller's address, as the broker rewrote it.
        let reply_to = delivery
            .properties
            .reply_to()
            .as_ref()
            .map(|address| address.as_str())
            .filter(|address| is_direct_reply_address(address));
        Some(match reply_to {
            Some(address) => settled.with_reply_to(address),
            None => settled,
        })
    }

    async fn stop(&mut self) -> novarpc_core::Result<()> {
        self.consumers.stop().await.map_err(Into::into)
    }
}
