//! Raw-client baselines: the same workload written directly against the
//! client library, with no framework, measured in the same run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use novarpc::TransportUrl;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

/// The first host of a transport URL as (user, password, host, port), with
/// RabbitMQ's defaults where it says nothing.
pub fn first_host(url: Option<&TransportUrl>) -> (String, String, String, u16) {
    let host = url.and_then(|u| u.hosts.first());
    let user = host
        .and_then(|h| h.username.clone())
        .unwrap_or_else(|| "guest".into());
    let password = host
        .and_then(|h| h.password.as_ref().map(|p| p.expose().to_owned()))
        .unwrap_or_else(|| "guest".into());
    let hostname = host
        .map(|h| h.hostname.clone())
        .unwrap_or_else(|| "127.0.0.1".into());
    let port = host.and_then(|h| h.port).unwrap_or(5672);
    (user, password, hostname, port)
}

/// The AMQP 0-9-1 URI of the first host of a transport URL.
pub fn amqp_uri(url: Option<&TransportUrl>) -> String {
    let (user, password, hostname, port) = first_host(url);
    let vhost = url
        .and_then(|u| u.virtual_host.clone())
        .unwrap_or_else(|| "/".into());
    let vhost = vhost.replace('%', "%25").replace('/', "%2f");
    format!("amqp://{user}:{password}@{hostname}:{port}/{vhost}")
}

/// A channel hop each way with nothing encoded: the floor for the memory backend.
pub struct RawChannelEcho {
    tx: mpsc::Sender<(Vec<u8>, oneshot::Sender<Vec<u8>>)>,
}

impl RawChannelEcho {
    pub fn start() -> Self {
        let (tx, mut rx) = mpsc::channel::<(Vec<u8>, oneshot::Sender<Vec<u8>>)>(1024);
        tokio::spawn(async move {
            while let Some((request, reply)) = rx.recv().await {
                tokio::spawn(async move {
                    let _ = reply.send(request);
                });
            }
        });
        RawChannelEcho { tx }
    }

    pub async fn call(&self, body: Vec<u8>) -> bool {
        let (tx, rx) = oneshot::channel();
        self.tx.send((body, tx)).await.is_ok() && rx.await.is_ok()
    }
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>;

/// A hand-written lapin RPC: requests with `reply_to` and `correlation_id` to
/// a queue whose consumer acks and answers; one reply queue per client.
pub struct RawLapinRpc {
    channel: Channel,
    queue: String,
    reply_queue: String,
    next_id: AtomicU64,
    pending: Pending,
    server_connection: Connection,
    client_connection: Connection,
}

impl RawLapinRpc {
    pub async fn start(uri: &str) -> lapin::Result<Arc<RawLapinRpc>> {
        let server_connection = Connection::connect(uri, ConnectionProperties::default()).await?;
        let client_connection = Connection::connect(uri, ConnectionProperties::default()).await?;
        let queue = format!("novarpc_raw_{}", uuid::Uuid::new_v4().simple());
        let server = server_connection.create_channel().await?;
        // Exclusive to the consumer's connection: RabbitMQ 4 may deny
        // transient non-exclusive queues.
        let transient = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        server
            .queue_declare(queue.as_str().into(), transient, FieldTable::default())
            .await?;
        let mut requests = server
            .basic_consume(
                queue.as_str().into(),
                "raw-server".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = requests.next().await {
                let reply_to = delivery.properties.reply_to().clone().unwrap_or_default();
                let correlation = delivery
                    .properties
                    .correlation_id()
                    .clone()
                    .unwrap_or_default();
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                let _ = server
                    .basic_publish(
                        "".into(),
                        reply_to.as_str().into(),
                        BasicPublishOptions::default(),
                        &delivery.data,
                        BasicProperties::default().with_correlation_id(correlation),
                    )
                    .await;
            }
        });
        let channel = client_connection.create_channel().await?;
        let reply_queue = format!("novarpc_rawreply_{}", uuid::Uuid::new_v4().simple());
        channel
            .queue_declare(
                reply_queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let mut replies = channel
            .basic_consume(
                reply_queue.as_str().into(),
                "raw-client".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let pending: Pending = Arc::default();
        let waiting = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = replies.next().await {
                let id = delivery
                    .properties
                    .correlation_id()
                    .clone()
                    .unwrap_or_default();
                if let Some(tx) = waiting.lock().remove(id.as_str()) {
                    let _ = tx.send(delivery.data);
                }
            }
        });
        Ok(Arc::new(RawLapinRpc {
            channel,
            queue,
            reply_queue,
            next_id: AtomicU64::new(0),
            pending,
            server_connection,
            client_connection,
        }))
    }

    pub async fn call(&self, body: &[u8]) -> bool {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed).to_string();
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id.clone(), tx);
        let published = self
            .channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default()
                    .with_reply_to(self.reply_queue.as_str().into())
                    .with_correlation_id(id.into()),
            )
            .await;
        published.is_ok() && rx.await.is_ok()
    }

    pub async fn close(&self) {
        let _ = self.client_connection.close(200, "done".into()).await;
        let _ = self.server_connection.close(200, "done".into()).await;
    }
}

/// Raw casts: publishes (optionally confirmed) to a queue with one acking
/// consumer; counts deliveries in `received`.
pub struct RawLapinCasts {
    connection: Connection,
    channel: Channel,
    queue: String,
    confirms: bool,
    pub received: Arc<AtomicU64>,
}

impl RawLapinCasts {
    pub async fn start(uri: &str, confirms: bool) -> lapin::Result<Arc<RawLapinCasts>> {
        let connection = Connection::connect(uri, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        if confirms {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
        }
        let queue = format!("novarpc_rawcast_{}", uuid::Uuid::new_v4().simple());
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let consumer_channel = connection.create_channel().await?;
        let mut consumer = consumer_channel
            .basic_consume(
                queue.as_str().into(),
                "raw-cast".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(Arc::new(RawLapinCasts {
            connection,
            channel,
            queue,
            confirms,
            received,
        }))
    }

    pub async fn cast(&self, body: &[u8]) -> bool {
        let published = self
            .channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await;
        match published {
            Ok(confirm) if self.confirms => confirm.await.is_ok_and(|c| c.is_ack()),
            Ok(_) => true,
            Err(_) => false,
        }
    }

    pub async fn close(&self) {
        let _ = self
            .channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = self.connection.close(200, "done".into()).await;
    }
}
