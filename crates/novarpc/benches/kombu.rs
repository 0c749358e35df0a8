//! The kombu driver against raw lapin on the same RabbitMQ, in one run: calls
//! at 1, 16 and 128 in flight, and casts with publisher confirms (64 in flight).
//! The raw baseline is a hand-written lapin RPC: requests with `reply_to` and
//! `correlation_id` to a queue whose consumer acks and answers, one reply
//! queue per client; casts are confirmed publishes to an acking consumer.
//!
//! `cargo bench -p novarpc --bench kombu` (RabbitMQ on 127.0.0.1:5672, or
//! `NOVARPC_BENCH_AMQP_URL`; `-- --seconds N` per figure).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{drive, report, seconds, Figure};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use novarpc::{Context, Endpoint, EndpointError, RpcClient, RpcServer, Target};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

#[derive(Serialize, Deserialize)]
struct Echo {
    payload: String,
}

fn amqp_url() -> String {
    std::env::var("NOVARPC_BENCH_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A payload of about the size of novarpc's envelope around a small request.
fn payload() -> String {
    "x".repeat(200)
}

struct RawRpc {
    channel: Channel,
    queue: String,
    reply_queue: String,
    next_id: AtomicU64,
    pending: Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>,
    _connections: (Connection, Connection),
}

impl RawRpc {
    async fn start() -> lapin::Result<Arc<RawRpc>> {
        let server_conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
        let client_conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
        let queue = format!("rawbench_{}", uuid::Uuid::new_v4().simple());
        let server = server_conn.create_channel().await?;
        let auto_delete = QueueDeclareOptions {
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        server
            .queue_declare(queue.as_str().into(), auto_delete, FieldTable::default())
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
        let channel = client_conn.create_channel().await?;
        let reply_queue = format!("rawreply_{}", uuid::Uuid::new_v4().simple());
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
        let pending: Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>> = Arc::default();
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
        Ok(Arc::new(RawRpc {
            channel,
            queue,
            reply_queue,
            next_id: AtomicU64::new(0),
            pending,
            _connections: (server_conn, client_conn),
        }))
    }

    async fn call(&self, body: &[u8]) -> Vec<u8> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed).to_string();
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id.clone(), tx);
        self.channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default()
                    .with_reply_to(self.reply_queue.as_str().into())
                    .with_correlation_id(id.into()),
            )
            .await
            .expect("publish");
        rx.await.expect("reply")
    }
}

/// Raw confirmed casts: `in_flight` publishers awaiting confirms, one acking consumer.
async fn raw_casts(in_flight: usize, duration: Duration) -> lapin::Result<Figure> {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let queue = format!("rawcast_{}", uuid::Uuid::new_v4().simple());
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consumer_channel = conn.create_channel().await?;
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
    let body = payload().into_bytes();
    let start = Instant::now();
    let sent = drive(in_flight, duration, {
        let channel = channel.clone();
        let queue = queue.clone();
        let body = Arc::new(body);
        move |_| {
            let channel = channel.clone();
            let queue = queue.clone();
            let body = body.clone();
            async move {
                channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .expect("publish")
                    .await
                    .expect("confirm");
            }
        }
    })
    .await;
    let total = (sent.rate * duration.as_secs_f64()).round() as u64;
    while received.load(Ordering::Relaxed) < total {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = received.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    Ok(Figure {
        rate,
        latency: sent.latency,
    })
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let duration = seconds();
    let rabbit = amqp_url()
        .replacen("amqp://", "rabbit://", 1)
        .replace("/%2f", "/");
    for mandatory_replies in [true, false] {
        let text = format!(
            "[DEFAULT]\ntransport_url = \"{rabbit}\"\ncontrol_exchange = \"novarpc_bench\"\n[kombu]\nmandatory_replies = {mandatory_replies}\n"
        );
        let config = novarpc::Config::from_toml_str(&text, "<bench>").expect("config");
        let server_transport = novarpc::connect(&config)
            .await
            .expect("RabbitMQ on 127.0.0.1:5672 (rabbitmq-server -detached)");
        let client_transport = novarpc::connect(&config).await.expect("client transport");
        let topic = format!("bench_{}", uuid::Uuid::new_v4().simple());
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let endpoint = Endpoint::new()
            .method("echo", |_ctx, e: Echo| async move {
                Ok::<_, EndpointError>(e.payload)
            })
            .method("tick", move |_ctx, _: Echo| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, EndpointError>(())
                }
            });
        let server = RpcServer::builder(
            server_transport.clone(),
            Target::new(&topic).server("bench1"),
        )
        .endpoint(endpoint)
        .executor_size(256)
        .start()
        .await
        .expect("server");
        let client = RpcClient::new(client_transport.clone(), Target::new(&topic));
        let raw = RawRpc::start().await.expect("raw lapin");
        println!("kombu driver vs raw lapin, RabbitMQ at {}, {duration:?} per figure, mandatory_replies = {mandatory_replies}", rabbit);
        for in_flight in [1usize, 16, 128] {
            let raw_figure = drive(in_flight, duration, {
                let raw = raw.clone();
                let body = Arc::new(payload().into_bytes());
                move |_| {
                    let raw = raw.clone();
                    let body = body.clone();
                    async move {
                        raw.call(&body).await;
                    }
                }
            })
            .await;
            let ours = drive(in_flight, duration, {
                let client = client.clone();
                move |_| {
                    let client = client.clone();
                    async move {
                        let ctx = Context::new();
                        let _: String = client
                            .call(&ctx, "echo", &Echo { payload: payload() })
                            .await
                            .expect("call");
                    }
                }
            })
            .await;
            report(&format!("call, {in_flight} in flight"), &ours, &raw_figure);
        }
        if mandatory_replies {
            let raw_figure = raw_casts(64, duration).await.expect("raw casts");
            received.store(0, Ordering::Relaxed);
            let start = Instant::now();
            let sent = drive(64, duration, {
                let client = client.clone();
                move |_| {
                    let client = client.clone();
                    async move {
                        client
                            .cast(&Context::new(), "tick", &Echo { payload: payload() })
                            .await
                            .expect("cast");
                    }
                }
            })
            .await;
            let total = (sent.rate * duration.as_secs_f64()).round() as u64;
            while received.load(Ordering::Relaxed) < total {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let rate = received.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
            let ours = Figure {
                rate,
                latency: sent.latency,
            };
            report("cast, confirms, 64 in flight", &ours, &raw_figure);
        }
        server.stop().await.expect("stop");
        let _ = std::mem::ManuallyDrop::new(raw);
        client_transport.cleanup().await.expect("cleanup");
        server_transport.cleanup().await.expect("cleanup");
    }
}
