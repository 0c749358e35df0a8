//! Raw fe2o3-amqp baselines for the qpid backend: the same workloads written
//! directly on fe2o3-amqp against the same broker, measured in the same run.
//! They use fixed queue names (`novarpc_raw_*`), reused by every run, since
//! queues cannot be deleted over AMQP 1.0 on RabbitMQ 3.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::link::CreditMode;
use fe2o3_amqp::types::messaging::{Body, Data, Message, Outcome, Properties};
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::{Connection, Receiver, Sendable, Sender, Session};
use novarpc::TransportUrl;
use parking_lot::Mutex;
use tokio::sync::oneshot;

const CREDIT: u32 = 200;

/// How long a raw call waits for its reply, or a raw cast for its outcome,
/// before counting as an error.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A connection and session opened the way the driver does (TCP_NODELAY,
/// SASL PLAIN), so the baseline pays no Nagle delay either.
struct Opened {
    connection: fe2o3_amqp::connection::ConnectionHandle<()>,
    session: fe2o3_amqp::session::SessionHandle<()>,
}

async fn open(url: Option<&TransportUrl>, name: &str) -> Result<Opened> {
    let (username, password, hostname, port) = crate::raw::first_host(url);
    let stream = tokio::net::TcpStream::connect((hostname.as_str(), port))
        .await
        .with_context(|| format!("connecting to {hostname}:{port}"))?;
    stream.set_nodelay(true)?;
    let mut connection = Connection::builder()
        .container_id(format!(
            "novarpc-raw-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ))
        .sasl_profile(fe2o3_amqp::sasl_profile::SaslProfile::Plain { username, password })
        .open_with_stream(stream)
        .await
        .context("AMQP 1.0 open")?;
    let session = Session::begin(&mut connection).await?;
    Ok(Opened {
        connection,
        session,
    })
}

async fn receiver(session: &mut Opened, name: &str, address: &str) -> Result<Receiver> {
    Ok(Receiver::builder()
        .name(format!("{name}-{}", uuid::Uuid::new_v4().simple()))
        .source(address)
        .credit_mode(CreditMode::Manual)
        .auto_accept(false)
        .attach(&mut session.session)
        .await?)
}

async fn sender(session: &mut Opened, name: &str, address: &str) -> Result<Sender> {
    Ok(Sender::attach(
        &mut session.session,
        format!("{name}-{}", uuid::Uuid::new_v4().simple()),
        address,
    )
    .await?)
}

/// The next delivery, granting credit in whole windows as the qpid driver
/// does: RabbitMQ 3's plugin adds a flow's `link-credit` to transfers already
/// in flight, so fe2o3-amqp's `CreditMode::Auto` (topping up early) lets the
/// broker overrun the link, which fe2o3-amqp then detaches, stalling every
/// call of the baseline.
async fn next_delivery(
    receiver: &mut Receiver,
) -> Result<fe2o3_amqp::link::delivery::Delivery<Body<Value>>> {
    if receiver.credit() == 0 {
        receiver.set_credit(CREDIT).await?;
    }
    Ok(receiver.recv::<Body<Value>>().await?)
}

fn data_of(body: Body<Value>) -> Vec<u8> {
    match body {
        Body::Data(batch) => batch.into_iter().flat_map(|d| d.0.into_vec()).collect(),
        _ => Vec::new(),
    }
}

/// How long the baseline waits for the broker to answer its opening (TCP,
/// SASL, open, begin, attaches) or its closing (end, close).
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Ends the session and closes the connection, each bounded: fe2o3-amqp
/// waits for the broker's `end` and `close` with no limit of its own, and
/// once, in a report run, the baseline's opening or closing never finished
/// and the bench hung until its deadline. Dropping the handles then closes
/// the socket.
async fn close(mut opened: Opened) {
    if tokio::time::timeout(HANDSHAKE_TIMEOUT, opened.session.end())
        .await
        .is_err()
    {
        eprintln!("raw fe2o3-amqp baseline: the broker did not end a session within {HANDSHAKE_TIMEOUT:?}");
    }
    if tokio::time::timeout(HANDSHAKE_TIMEOUT, opened.connection.close())
        .await
        .is_err()
    {
        eprintln!("raw fe2o3-amqp baseline: the broker did not close a connection within {HANDSHAKE_TIMEOUT:?}");
    }
}

/// Callers waiting for replies; `None` once either link has failed, so calls
/// made or waiting then fail at once instead of waiting out the deadline.
type Pending = Arc<Mutex<Option<HashMap<String, oneshot::Sender<Vec<u8>>>>>>;

/// Ends the baseline's calls after a link failed, saying why on stderr.
fn fail_calls(pending: &Pending, link: &str, error: &anyhow::Error) {
    eprintln!("raw fe2o3-amqp baseline: the {link} link failed: {error:#}");
    pending.lock().take();
}

/// A hand-written request/response on fe2o3-amqp: pre-settled requests with
/// `reply-to` and `message-id` to a queue whose receiver accepts each and
/// answers pre-settled with `correlation-id`.
pub struct RawAmqp1Rpc {
    requests: tokio::sync::Mutex<Sender>,
    next_id: AtomicU64,
    pending: Pending,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    opened: Mutex<Vec<Opened>>,
}

const REQUESTS: &str = "/queue/novarpc_raw_requests";
const REPLIES: &str = "/queue/novarpc_raw_replies";
const CASTS: &str = "/queue/novarpc_raw_casts";

impl RawAmqp1Rpc {
    /// Connects and attaches, failing if the broker does not answer in time.
    pub async fn start(url: Option<&TransportUrl>) -> Result<Arc<RawAmqp1Rpc>> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, Self::open(url))
            .await
            .with_context(|| format!("the broker did not answer within {HANDSHAKE_TIMEOUT:?}"))?
    }

    async fn open(url: Option<&TransportUrl>) -> Result<Arc<RawAmqp1Rpc>> {
        let mut server = open(url, "server").await?;
        let mut client = open(url, "client").await?;
        let mut incoming = receiver(&mut server, "raw-requests", REQUESTS).await?;
        let mut answers = sender(&mut server, "raw-answers", REPLIES).await?;
        let mut replies = receiver(&mut client, "raw-replies", REPLIES).await?;
        let requests = sender(&mut client, "raw-client", REQUESTS).await?;
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let serving = pending.clone();
        // Requests left by an earlier, interrupted run are drained unanswered.
        let serve = tokio::spawn(async move {
            let ended = loop {
                let delivery = match next_delivery(&mut incoming).await {
                    Ok(delivery) => delivery,
                    Err(error) => break error,
                };
                let info = DeliveryInfo::from(&delivery);
                let message = delivery.into_message();
                let correlation = message
                    .properties
                    .as_ref()
                    .and_then(|p| p.message_id.clone());
                let _ = incoming.accept(info).await;
                let Some(correlation) = correlation else {
                    continue;
                };
                let reply = Message::builder()
                    .properties(Properties::builder().correlation_id(correlation).build())
                    .data(Data(data_of(message.body).into()))
                    .build();
                let sendable = Sendable::builder().message(reply).settled(true).build();
                if let Err(error) = answers.send_batchable(sendable).await {
                    break error.into();
                }
            };
            fail_calls(&serving, "request", &ended);
        });
        let waiting = pending.clone();
        let receive = tokio::spawn(async move {
            let ended = loop {
                let delivery = match next_delivery(&mut replies).await {
                    Ok(delivery) => delivery,
                    Err(error) => break error,
                };
                let info = DeliveryInfo::from(&delivery);
                let _ = replies.accept(info).await;
                let message = delivery.into_message();
                let id = match message.properties.and_then(|p| p.correlation_id) {
                    Some(fe2o3_amqp::types::messaging::MessageId::String(id)) => id,
                    _ => continue,
                };
                let waiter = waiting.lock().as_mut().and_then(|p| p.remove(&id));
                if let Some(tx) = waiter {
                    let _ = tx.send(data_of(message.body));
                }
            };
            fail_calls(&waiting, "reply", &ended);
        });
        Ok(Arc::new(RawAmqp1Rpc {
            requests: tokio::sync::Mutex::new(requests),
            next_id: AtomicU64::new(0),
            pending,
            tasks: vec![serve, receive],
            opened: Mutex::new(vec![server, client]),
        }))
    }

    pub async fn call(&self, body: &[u8]) -> bool {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed).to_string();
        let (tx, rx) = oneshot::channel();
        match self.pending.lock().as_mut() {
            Some(pending) => pending.insert(id.clone(), tx),
            None => return false,
        };
        let message = Message::builder()
            .properties(
                Properties::builder()
                    .message_id(id)
                    .reply_to(REPLIES)
                    .build(),
            )
            .data(Data(body.to_vec().into()))
            .build();
        let sendable = Sendable::builder().message(message).settled(true).build();
        // Bounded, as the qpid driver bounds its sends: now and then the
        // broker grants the sender no more credit, and the baseline stalled.
        let sent = tokio::time::timeout(CALL_TIMEOUT, async {
            self.requests.lock().await.send_batchable(sendable).await
        })
        .await;
        // Pre-settled messages can be lost (see the qpid driver's replies);
        // a lost one counts as an error rather than stalling the run.
        matches!(sent, Ok(Ok(_)))
            && matches!(tokio::time::timeout(CALL_TIMEOUT, rx).await, Ok(Ok(_)))
    }

    pub async fn close(&self) {
        for task in &self.tasks {
            task.abort();
        }
        let opened: Vec<Opened> = self.opened.lock().drain(..).collect();
        for opened in opened {
            close(opened).await;
        }
    }
}

/// Raw casts on fe2o3-amqp: sent unsettled (delivered on `accepted`) or
/// pre-settled to a queue with one accepting receiver; counts deliveries.
pub struct RawAmqp1Casts {
    sender: tokio::sync::Mutex<Sender>,
    confirms: bool,
    pub received: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    opened: Mutex<Vec<Opened>>,
}

impl RawAmqp1Casts {
    /// Connects and attaches, failing if the broker does not answer in time.
    pub async fn start(url: Option<&TransportUrl>, confirms: bool) -> Result<Arc<RawAmqp1Casts>> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, Self::open(url, confirms))
            .await
            .with_context(|| format!("the broker did not answer within {HANDSHAKE_TIMEOUT:?}"))?
    }

    async fn open(url: Option<&TransportUrl>, confirms: bool) -> Result<Arc<RawAmqp1Casts>> {
        let mut consumer = open(url, "cast-consumer").await?;
        let mut producer = open(url, "cast-producer").await?;
        let mut incoming = receiver(&mut consumer, "raw-casts", CASTS).await?;
        let sender = sender(&mut producer, "raw-caster", CASTS).await?;
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let task = tokio::spawn(async move {
            loop {
                match next_delivery(&mut incoming).await {
                    Ok(delivery) => {
                        let _ = incoming.accept(&delivery).await;
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        eprintln!("raw fe2o3-amqp baseline: the cast link failed: {error:#}");
                        break;
                    }
                }
            }
        });
        Ok(Arc::new(RawAmqp1Casts {
            sender: tokio::sync::Mutex::new(sender),
            confirms,
            received,
            task,
            opened: Mutex::new(vec![consumer, producer]),
        }))
    }

    pub async fn cast(&self, body: &[u8]) -> bool {
        let message = Message::builder()
            .header(fe2o3_amqp::types::messaging::Header {
                durable: true,
                ..Default::default()
            })
            .data(Data(body.to_vec().into()))
            .build();
        let sendable = Sendable::builder()
            .message(message)
            .settled(!self.confirms)
            .build();
        // Bounded as the qpid driver bounds them: now and then (about one
        // run in six here) credit or an outcome never came, and the
        // baseline stalled until the bench's deadline.
        let sent = tokio::time::timeout(CALL_TIMEOUT, async {
            self.sender.lock().await.send_batchable(sendable).await
        })
        .await;
        match sent {
            Ok(Ok(outcome)) if self.confirms => matches!(
                tokio::time::timeout(CALL_TIMEOUT, outcome).await,
                Ok(Ok(Outcome::Accepted(_)))
            ),
            Ok(Ok(_)) => true,
            _ => false,
        }
    }

    pub async fn close(&self) {
        self.task.abort();
        let opened: Vec<Opened> = self.opened.lock().drain(..).collect();
        for opened in opened {
            close(opened).await;
        }
    }
}
