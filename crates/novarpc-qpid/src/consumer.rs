//! Receivers: the links of a listener, rebuilt after a broker restart, and
//! the acknowledgement of what they hand out.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::link::{CreditMode, ReceiverDisposer};
use fe2o3_amqp::types::messaging::{Body, Source, TerminusExpiryPolicy};
use fe2o3_amqp::types::primitives::{Symbol, Value};
use fe2o3_amqp::Receiver;
use novarpc_core::driver::{Acknowledge, Delivery, Listener};
use novarpc_core::Result;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::addressing::Node;
use crate::connection::{durability, link_name, Broker, BROKER_ANSWER};
use crate::QpidError;

/// What a receiver link attaches to.
#[derive(Clone, Debug)]
pub(crate) enum ReceiveFrom {
    /// A shared queue (`durable`: survives a broker restart).
    Queue { node: Node, durable: bool },
    /// A copy of every message sent to the node; the broker removes the
    /// receiver's private queue when the link closes.
    Multicast { node: Node },
    /// A node the broker creates and names for this link.
    Dynamic,
}

impl ReceiveFrom {
    fn build(&self) -> Source {
        match self {
            ReceiveFrom::Queue { node, durable } => with_capability(
                Source::builder()
                    .address(node.address.clone())
                    .durable(durability(*durable)),
                node,
            ),
            ReceiveFrom::Multicast { node } => with_capability(
                Source::builder()
                    .address(node.address.clone())
                    .expiry_policy(TerminusExpiryPolicy::LinkDetach),
                node,
            ),
            ReceiveFrom::Dynamic => Source::builder()
                .dynamic(true)
                .expiry_policy(TerminusExpiryPolicy::LinkDetach)
                .build(),
        }
    }

    /// The queue to declare before attaching, if the broker needs one.
    fn declaration(&self) -> Option<&crate::addressing::Declaration> {
        match self {
            ReceiveFrom::Queue { node, .. } | ReceiveFrom::Multicast { node } => {
                node.declare.as_ref()
            }
            ReceiveFrom::Dynamic => None,
        }
    }

    fn describe(&self) -> &str {
        match self {
            ReceiveFrom::Queue { node, .. } | ReceiveFrom::Multicast { node } => &node.address,
            ReceiveFrom::Dynamic => "(dynamic node)",
        }
    }
}

fn with_capability(builder: fe2o3_amqp::types::messaging::SourceBuilder, node: &Node) -> Source {
    match &node.capability {
        Some(capability) => builder
            .capabilities(vec![Symbol::from(capability.as_str())])
            .build(),
        None => builder.build(),
    }
}

/// The envelope bytes of a message: one or more Data sections (what novarpc
/// sends), or an amqp-value string or binary (what some clients send).
pub(crate) fn body_bytes(body: Body<Value>) -> Option<Bytes> {
    match body {
        Body::Data(batch) => {
            let mut sections = batch.into_iter();
            let first = sections.next()?;
            let mut bytes = first.0.into_vec();
            for more in sections {
                bytes.extend_from_slice(&more.0);
            }
            Some(Bytes::from(bytes))
        }
        Body::Value(value) => match value.0 {
            Value::String(text) => Some(Bytes::from(text)),
            Value::Binary(binary) => Some(Bytes::from(binary.into_vec())),
            _ => None,
        },
        _ => None,
    }
}

/// A rejection, for the task that owns the receiver (fe2o3-amqp's
/// `ReceiverDisposer` can accept from anywhere, but not reject).
struct Reject(DeliveryInfo);

struct QpidAcknowledge {
    disposer: ReceiverDisposer,
    info: DeliveryInfo,
    reject: mpsc::UnboundedSender<Reject>,
}

#[async_trait]
impl Acknowledge for QpidAcknowledge {
    async fn ack(self: Box<Self>) {
        // If the link is gone, the broker gives the message to another receiver.
        if let Err(error) = self.disposer.accept(self.info).await {
            tracing::debug!(%error, "accepting a delivery");
        }
    }

    async fn reject(self: Box<Self>) {
        let _ = self.reject.send(Reject(self.info));
    }
}

/// How deliveries reach their consumer.
#[derive(Clone)]
pub(crate) enum Sink {
    /// Handed out through a listener, which accepts or rejects each.
    Listener(mpsc::Sender<Delivery>),
    /// Accepted at once and passed to a function (the reply receiver).
    Accept(Arc<dyn Fn(Bytes) + Send + Sync>),
}

/// A set of receiver links on their own session, kept alive by a task that
/// rebuilds them after a connection failure.
pub(crate) struct ReceiverSet {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ReceiverSet {
    /// Attaches receivers on `sources`; returns once they are attached (or
    /// with the first attach's error), and the addresses the broker gave
    /// (for dynamic nodes).
    pub(crate) async fn start(
        broker: Arc<Broker>,
        sources: Vec<ReceiveFrom>,
        sink: Sink,
        credit: u32,
        stop: CancellationToken,
    ) -> std::result::Result<(Self, Vec<String>), QpidError> {
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(run(broker, sources, sink, credit, stop.clone(), ready_tx));
        match ready_rx.await {
            Ok(Ok(addresses)) => Ok((
                ReceiverSet {
                    stop,
                    task: Some(task),
                },
                addresses,
            )),
            Ok(Err(error)) => {
                stop.cancel();
                let _ = task.await;
                Err(error)
            }
            Err(_) => Err(QpidError::Session("receiver task ended".into())),
        }
    }

    /// Detaches the links (closing them, so the broker deletes private
    /// queues) and ends the session.
    pub(crate) async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for ReceiverSet {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Why a round of receiving ended.
enum Ended {
    Stopped,
    Failed(QpidError),
}

async fn run(
    broker: Arc<Broker>,
    sources: Vec<ReceiveFrom>,
    sink: Sink,
    credit: u32,
    stop: CancellationToken,
    ready: oneshot::Sender<std::result::Result<Vec<String>, QpidError>>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(200);
    loop {
        let connection = tokio::select! {
            _ = stop.cancelled() => return,
            got = broker.get() => got,
        };
        let (generation, connection) = match connection {
            Ok(c) => c,
            Err(exhausted) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(exhausted.last_error));
                    return;
                }
                tracing::debug!(error = %novarpc_core::error_chain(&exhausted.last_error), "receivers cannot reconnect yet; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        let ended = receive_round(&connection, &sources, &sink, credit, &stop, &mut ready).await;
        match ended {
            Ended::Stopped => return,
            Ended::Failed(error) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(error));
                    return;
                }
                tracing::warn!(error = %novarpc_core::error_chain(&error), "receivers lost their link; reattaching");
                connection.mark_broken();
                broker.reset(generation).await;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn receive_round(
    connection: &crate::connection::AmqpConnection,
    sources: &[ReceiveFrom],
    sink: &Sink,
    credit: u32,
    stop: &CancellationToken,
    ready: &mut Option<oneshot::Sender<std::result::Result<Vec<String>, QpidError>>>,
) -> Ended {
    let mut session = match connection.begin_session().await {
        Ok(s) => s,
        Err(e) => return Ended::Failed(e),
    };
    // Declared on every round: private queues went with the last connection.
    for declaration in sources.iter().filter_map(ReceiveFrom::declaration) {
        if let Err(error) = connection.declare(declaration).await {
            let _ = session.end().await;
            return Ended::Failed(error);
        }
    }
    let mut receivers = Vec::with_capacity(sources.len());
    let mut addresses = Vec::with_capacity(sources.len());
    for source in sources {
        let attached = tokio::time::timeout(
            BROKER_ANSWER,
            Receiver::builder()
                .name(link_name("receiver"))
                .source(source.build())
                .credit_mode(CreditMode::Manual)
                .auto_accept(false)
                .attach(&mut session),
        )
        .await
        .unwrap_or_else(|_| Err(fe2o3_amqp::link::ReceiverAttachError::IllegalState));
        match attached {
            Ok(receiver) => {
                let address = receiver
                    .source()
                    .as_ref()
                    .and_then(|s| s.address.clone())
                    .unwrap_or_default();
                addresses.push(address);
                receivers.push(receiver);
            }
            Err(error) => {
                let remote = match &error {
                    fe2o3_amqp::link::ReceiverAttachError::RemoteClosedWithError(e) => Some(e),
                    _ => None,
                };
                let error = QpidError::Attach {
                    address: source.describe().to_owned(),
                    reason: error.to_string(),
                    kind: crate::attach_error_kind(remote),
                };
                for receiver in receivers {
                    let _ = receiver.close().await;
                }
                let _ = session.end().await;
                return Ended::Failed(error);
            }
        }
    }
    if let Some(ready) = ready.take() {
        let _ = ready.send(Ok(addresses));
    }
    let round = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for receiver in receivers {
        tasks.spawn(receive(
            receiver,
            sink.clone(),
            credit,
            stop.clone(),
            round.clone(),
        ));
    }
    let mut failure = None;
    while let Some(result) = tasks.join_next().await {
        if let Ok(Err(error)) = result {
            // One link failed: take the others down too and rebuild the set.
            round.cancel();
            failure.get_or_insert(error);
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), session.end()).await;
    match failure {
        Some(error) if !stop.is_cancelled() => Ended::Failed(error),
        _ => Ended::Stopped,
    }
}

/// Credit is granted in whole windows, each once the previous one is used
/// up: RabbitMQ 3's plugin takes a flow's `link-credit` as new credit on top
/// of transfers already in flight, so topping up earlier (fe2o3-amqp's
/// `CreditMode::Auto`) lets the broker overrun the link, which fe2o3-amqp
/// then detaches ("more message transfers than currently allowed").
/// Unsettled messages stay bounded: the window, plus what waits in the
/// listener's queue (as long again), plus what its handlers hold.
async fn receive(
    mut receiver: Receiver,
    sink: Sink,
    credit: u32,
    stop: CancellationToken,
    round: CancellationToken,
) -> std::result::Result<(), QpidError> {
    let (reject_tx, mut reject_rx) = mpsc::unbounded_channel();
    let disposer = receiver.disposer();
    if let Err(error) = receiver.set_credit(credit).await {
        return Err(QpidError::Receive(error.to_string()));
    }
    let result = loop {
        if receiver.credit() == 0 {
            if let Err(error) = receiver.set_credit(credit).await {
                break Err(QpidError::Receive(error.to_string()));
            }
        }
        let delivery = tokio::select! {
            biased;
            _ = stop.cancelled() => break Ok(()),
            _ = round.cancelled() => break Ok(()),
            Some(Reject(info)) = reject_rx.recv() => {
                if let Err(error) = receiver.reject(info, None).await {
                    tracing::debug!(%error, "rejecting a delivery");
                }
                continue;
            }
            delivery = receiver.recv::<Body<Value>>() => delivery,
        };
        let delivery = match delivery {
            Ok(delivery) => delivery,
            Err(error) => break Err(QpidError::Receive(error.to_string())),
        };
        let info = DeliveryInfo::from(&delivery);
        let Some(body) = body_bytes(delivery.into_body()) else {
            tracing::warn!(
                link = receiver.name(),
                "rejecting a message whose body is neither Data nor a string"
            );
            let _ = receiver.reject(info, None).await;
            continue;
        };
        match &sink {
            Sink::Accept(deliver) => {
                let _ = receiver.accept(info).await;
                deliver(body);
            }
            Sink::Listener(tx) => {
                let delivery = Delivery::with_acknowledge(
                    body,
                    Box::new(QpidAcknowledge {
                        disposer: disposer.clone(),
                        info,
                        reject: reject_tx.clone(),
                    }),
                );
                tokio::select! {
                    _ = stop.cancelled() => break Ok(()),
                    sent = tx.send(delivery) => if sent.is_err() { break Ok(()) },
                }
            }
        }
    };
    // Messages handed out after this are no longer accepted on this link;
    // the broker requeues what the link held unsettled.
    if result.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), receiver.close()).await;
    }
    result
}

/// A listener: receivers feeding one queue of deliveries.
pub(crate) struct QpidListener {
    pub(crate) deliveries: mpsc::Receiver<Delivery>,
    pub(crate) receivers: ReceiverSet,
}

#[async_trait]
impl Listener for QpidListener {
    async fn next(&mut self) -> Option<Delivery> {
        self.deliveries.recv().await
    }

    async fn stop(&mut self) -> Result<()> {
        self.receivers.stop().await;
        self.deliveries.close();
        Ok(())
    }
}
