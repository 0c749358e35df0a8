//! RabbitMQ 4's management node over AMQP 1.0: the `/management` address
//! its own AMQP 1.0 clients use to declare queues and bindings. Requests are
//! HTTP-like messages (`subject` is the method, `to` the path, the body an
//! amqp-value map) on a sender and a receiver attached as a pair; the
//! answer's `subject` is an HTTP status code and its `correlation-id` the
//! request's `message-id`.
//!
//! v2 addresses (`/queues/NAME`) declare nothing on attach, so this is how
//! the `rabbitmq4` profile makes the queues Nova's topology needs.
//!
//! RabbitMQ pairs the two links by **name** (both halves carry the same link
//! name and the property `paired`), and fe2o3-amqp 0.18 refuses two links of
//! one name on a session ("Link name is not unique"). So this module speaks
//! the few frames the pair needs itself, on a small connection of its own
//! (fe2o3-amqp's performative and message types do the encoding). Queues
//! declared here are therefore not exclusive to the consumer's connection:
//! private (reply and fanout) queues are durable and auto-delete (gone with
//! their last consumer, so with the process), with an expiry for one never
//! consumed.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fe2o3_amqp::types::definitions::{
    DeliveryTag, Fields, Handle, ReceiverSettleMode, Role, SenderSettleMode,
};
use fe2o3_amqp::types::messaging::message::__private::{Deserializable, Serializable};
use fe2o3_amqp::types::messaging::{Body, Message, MessageId, Properties, Source, Target};
use fe2o3_amqp::types::performatives::{
    Attach, Begin, ChannelMax, Close, Flow, MaxFrameSize, Open, Transfer,
};
use fe2o3_amqp::types::primitives::{Binary, OrderedMap, Symbol, Value};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslMechanisms, SaslOutcome};
use novarpc_amqp::BrokerAddress;
use novarpc_core::ErrorKind;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::addressing::{v2_segment, Declaration, QueueLifetime};
use crate::connection::BROKER_ANSWER;
use crate::options::{QpidOptions, SaslMechanism};
use crate::QpidError;

/// How long a private queue nobody ever consumed from lives (a process
/// that died between declaring and attaching).
const PRIVATE_QUEUE_EXPIRY_MS: i64 = 60_000;

/// The largest frame this client accepts (answers are small).
const MAX_FRAME: u32 = 1 << 20;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One frame as read: its type byte, channel and body.
struct Frame {
    kind: u8,
    body: Bytes,
}

/// What the broker sent on the management session.
enum Incoming {
    Begin(Begin),
    Attach(Attach),
    Flow(Flow),
    Transfer(Bytes),
    Close(Close),
    Other,
}

/// The management node's address.
const ADDRESS: &str = "/management";

/// A link pair to the management node, on a connection of its own.
pub(crate) struct Management {
    io: Box<dyn Io>,
    next_id: u64,
    /// Transfers sent (session `next-outgoing-id`, the sender's delivery
    /// count and delivery ids all advance together: one link sends).
    sent: u32,
    /// Credit the broker gave the sender, as of `sent`.
    credit: u32,
    /// Transfers received (the receiver's delivery count).
    received: u32,
    /// The broker's first transfer id (from its begin).
    first_incoming: u32,
}

fn text(value: &str) -> Value {
    Value::String(value.to_owned())
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    let mut map = OrderedMap::new();
    for (key, value) in entries {
        map.insert(text(key), value);
    }
    Value::Map(map)
}

/// The error for a management failure that is not an HTTP status (the
/// connection or a link failed, or the broker did not answer).
fn link_error(reason: impl std::fmt::Display) -> QpidError {
    QpidError::Management {
        request: "(management link)".into(),
        status: None,
        reason: reason.to_string(),
        kind: ErrorKind::Unreachable,
    }
}

/// The kind of an HTTP status the management node answered with.
fn status_kind(status: u16) -> ErrorKind {
    match status {
        401 | 403 => ErrorKind::AccessRefused,
        // Overloaded, or a queue leader being elected.
        500..=599 => ErrorKind::Busy,
        // 400 (bad request), 404 (no such exchange), 405 (an exclusive
        // queue of another connection), 409 (declared differently before).
        _ => ErrorKind::Protocol,
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, QpidError> {
    serde_amqp::to_vec(value).map_err(|e| link_error(format!("encoding a frame: {e}")))
}

impl Management {
    /// Connects to `host` (TLS and SASL as the driver's options say) and
    /// attaches the link pair.
    pub(crate) async fn open(
        host: &BrokerAddress,
        options: &QpidOptions,
        container_id: &str,
    ) -> Result<Management, QpidError> {
        tokio::time::timeout(BROKER_ANSWER, Self::open_now(host, options, container_id))
            .await
            .map_err(|_| {
                link_error(format!(
                    "no answer from {} within {BROKER_ANSWER:?}",
                    host.describe()
                ))
            })?
    }

    async fn open_now(
        host: &BrokerAddress,
        options: &QpidOptions,
        container_id: &str,
    ) -> Result<Management, QpidError> {
        let stream = tokio::net::TcpStream::connect((host.host.as_str(), host.port))
            .await
            .map_err(link_error)?;
        stream.set_nodelay(true).map_err(link_error)?;
        let io: Box<dyn Io> = if host.tls {
            let connector = crate::connection::tls_connector(options)?;
            let server_name =
                tokio_rustls::rustls::pki_types::ServerName::try_from(host.host.clone())
                    .map_err(|e| QpidError::Tls(format!("{}: {e}", host.host)))?;
            Box::new(
                connector
                    .connect(server_name, stream)
                    .await
                    .map_err(|e| QpidError::Tls(format!("{}: {e}", host.describe())))?,
            )
        } else {
            Box::new(stream)
        };
        let mut management = Management {
            io,
            next_id: 0,
            sent: 0,
            credit: 0,
            received: 0,
            first_incoming: 0,
        };
        management.authenticate(host, options).await?;
        management.begin(host, container_id).await?;
        Ok(management)
    }

    async fn header(&mut self, header: &[u8; 8]) -> Result<(), QpidError> {
        self.io.write_all(header).await.map_err(link_error)?;
        let mut answer = [0u8; 8];
        self.io.read_exact(&mut answer).await.map_err(link_error)?;
        if &answer != header {
            return Err(link_error(format!(
                "the broker answered protocol header {answer:?}"
            )));
        }
        Ok(())
    }

    async fn write_frame(&mut self, kind: u8, body: &[&[u8]]) -> Result<(), QpidError> {
        let size: usize = 8 + body.iter().map(|b| b.len()).sum::<usize>();
        let mut frame = BytesMut::with_capacity(size);
        frame.put_u32(size as u32);
        frame.put_u8(2); // doff: the header is two 4-byte words
        frame.put_u8(kind);
        frame.put_u16(0); // channel
        for part in body {
            frame.put_slice(part);
        }
        self.io.write_all(&frame).await.map_err(link_error)
    }

    async fn read_frame(&mut self) -> Result<Frame, QpidError> {
        let mut head = [0u8; 8];
        self.io.read_exact(&mut head).await.map_err(link_error)?;
        let size = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let doff = usize::from(head[4]) * 4;
        if size > MAX_FRAME || (size as usize) < doff || doff < 8 {
            return Err(link_error(format!("a malformed frame header {head:?}")));
        }
        let mut rest = vec![0u8; size as usize - 8];
        self.io.read_exact(&mut rest).await.map_err(link_error)?;
        let mut body = Bytes::from(rest);
        body.advance(doff - 8);
        Ok(Frame {
            kind: head[5],
            body,
        })
    }

    /// SASL: the mechanism the options name (PLAIN with the URL's
    /// credentials, or ANONYMOUS).
    async fn authenticate(
        &mut self,
        host: &BrokerAddress,
        options: &QpidOptions,
    ) -> Result<(), QpidError> {
        self.header(b"AMQP\x03\x01\x00\x00").await?;
        let offered = self.read_frame().await?;
        let _: SaslMechanisms = serde_amqp::from_slice(&offered.body)
            .map_err(|e| link_error(format!("SASL mechanisms: {e}")))?;
        let init = match options.sasl_mechanism {
            SaslMechanism::Plain => {
                let mut response = vec![0u8];
                response.extend_from_slice(host.username.as_bytes());
                response.push(0);
                response.extend_from_slice(host.password.expose().as_bytes());
                SaslInit {
                    mechanism: Symbol::from("PLAIN"),
                    initial_response: Some(Binary::from(response)),
                    hostname: None,
                }
            }
            SaslMechanism::Anonymous => SaslInit {
                mechanism: Symbol::from("ANONYMOUS"),
                initial_response: None,
                hostname: None,
            },
        };
        self.write_frame(1, &[&encode(&init)?]).await?;
        let outcome = self.read_frame().await?;
        let outcome: SaslOutcome = serde_amqp::from_slice(&outcome.body)
            .map_err(|e| link_error(format!("SASL outcome: {e}")))?;
        if !matches!(outcome.code, SaslCode::Ok) {
            return Err(QpidError::Management {
                request: "(management connection)".into(),
                status: None,
                reason: format!("SASL authentication failed ({:?})", outcome.code),
                kind: ErrorKind::Authentication,
            });
        }
        Ok(())
    }

    async fn performative<T: serde::Serialize>(&mut self, value: &T) -> Result<(), QpidError> {
        self.write_frame(0, &[&encode(value)?]).await
    }

    /// Reads one AMQP frame and says what it was.
    async fn incoming(&mut self) -> Result<Incoming, QpidError> {
        use fe2o3_amqp::types::performatives::Performative;
        let frame = self.read_frame().await?;
        if frame.kind != 0 || frame.body.is_empty() {
            // An empty frame is the broker's heartbeat.
            return Ok(Incoming::Other);
        }
        // The reader advances `rest` past the performative: what is left of
        // a transfer is its payload.
        let mut rest = frame.body;
        let performative: Performative = {
            let reader = serde_amqp::read::IoReader::new((&mut rest).reader());
            let mut deserializer = serde_amqp::de::Deserializer::new(reader);
            serde::Deserialize::deserialize(&mut deserializer)
                .map_err(|e| link_error(format!("decoding a frame: {e}")))?
        };
        Ok(match performative {
            Performative::Begin(begin) => Incoming::Begin(begin),
            Performative::Attach(attach) => Incoming::Attach(attach),
            Performative::Flow(flow) => Incoming::Flow(flow),
            Performative::Transfer(_) => Incoming::Transfer(rest),
            Performative::Close(close) => Incoming::Close(close),
            Performative::Detach(detach) => {
                return Err(link_error(format!(
                    "the broker detached the management link: {:?}",
                    detach.error
                )))
            }
            Performative::End(end) => {
                return Err(link_error(format!(
                    "the broker ended the management session: {:?}",
                    end.error
                )))
            }
            _ => Incoming::Other,
        })
    }

    fn closed(close: Close) -> QpidError {
        let kind = close
            .error
            .as_ref()
            .map(|e| crate::condition_kind(&e.condition))
            .unwrap_or(ErrorKind::Unreachable);
        QpidError::Management {
            request: "(management connection)".into(),
            status: None,
            reason: format!("the broker closed the connection: {:?}", close.error),
            kind,
        }
    }

    /// Open, begin, and the two attaches of the pair.
    async fn begin(&mut self, host: &BrokerAddress, container_id: &str) -> Result<(), QpidError> {
        self.header(b"AMQP\x00\x01\x00\x00").await?;
        // RabbitMQ picks the virtual host from the open frame's hostname.
        let hostname = host
            .virtual_host
            .as_ref()
            .filter(|v| !v.is_empty() && *v != "/")
            .map(|v| format!("vhost:{v}"));
        self.performative(&Open {
            container_id: format!("{container_id}-management"),
            hostname,
            max_frame_size: MaxFrameSize(MAX_FRAME),
            channel_max: ChannelMax(0),
            idle_time_out: None,
            outgoing_locales: None,
            incoming_locales: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        })
        .await?;
        self.performative(&Begin {
            remote_channel: None,
            next_outgoing_id: 0,
            incoming_window: 65_536,
            outgoing_window: 65_536,
            handle_max: Handle(1),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        })
        .await?;
        let name = crate::connection::link_name("management");
        let mut paired = Fields::new();
        paired.insert(Symbol::from("paired"), Value::Bool(true));
        let attach = |role: Role, handle: u32| Attach {
            name: name.clone(),
            handle: Handle(handle),
            initial_delivery_count: (role == Role::Sender).then_some(0),
            role,
            snd_settle_mode: SenderSettleMode::Settled,
            rcv_settle_mode: ReceiverSettleMode::First,
            source: Some(Box::new(Source::builder().address(ADDRESS).build())),
            target: Some(Box::new(Target::builder().address(ADDRESS).build().into())),
            unsettled: None,
            incomplete_unsettled: false,
            max_message_size: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: Some(paired.clone()),
        };
        self.performative(&attach(Role::Sender, 0)).await?;
        self.performative(&attach(Role::Receiver, 1)).await?;
        // Read the broker's open, begin and attaches until it gives the
        // sender credit.
        loop {
            match self.incoming().await? {
                Incoming::Begin(begin) => self.first_incoming = begin.next_outgoing_id,
                Incoming::Attach(attach) if attach.source.is_none() || attach.target.is_none() => {
                    // A refused attach comes with an empty terminus, then a detach.
                    return Err(link_error("the broker refused the management link pair"));
                }
                Incoming::Flow(flow) => {
                    self.take_flow(&flow);
                    if self.credit > 0 {
                        return Ok(());
                    }
                }
                Incoming::Close(close) => return Err(Self::closed(close)),
                _ => {}
            }
        }
    }

    /// The sender's credit from a flow for it.
    fn take_flow(&mut self, flow: &Flow) {
        if flow.handle == Some(Handle(0)) {
            let limit = flow
                .delivery_count
                .unwrap_or(0)
                .wrapping_add(flow.link_credit.unwrap_or(0));
            self.credit = limit.wrapping_sub(self.sent).min(u32::MAX / 2);
        }
    }

    /// One request; `Ok` only for a 2xx or 3xx answer.
    async fn request(&mut self, method: &str, path: String, body: Value) -> Result<(), QpidError> {
        self.next_id += 1;
        let id = self.next_id;
        let properties = Properties::builder()
            .message_id(id)
            .to(path.clone())
            .subject(method.to_owned())
            .reply_to("$me")
            .build();
        let message = Message::builder()
            .properties(properties)
            .value(body)
            .build();
        let request = format!("{method} {path}");
        let payload = encode(&Serializable(message))?;
        let answer = tokio::time::timeout(BROKER_ANSWER, self.exchange(id, payload))
            .await
            .map_err(|_| {
                link_error(format!("no answer to {request} within {BROKER_ANSWER:?}"))
            })??;
        let (subject, reason) = answer;
        match subject.parse::<u16>() {
            Ok(status) if (200..400).contains(&status) => Ok(()),
            Ok(status) => Err(QpidError::Management {
                request,
                status: Some(status),
                reason,
                kind: status_kind(status),
            }),
            Err(_) => Err(QpidError::Management {
                request,
                status: None,
                reason: format!("an answer without a status code (subject `{subject}`)"),
                kind: ErrorKind::Protocol,
            }),
        }
    }

    /// Sends one request and reads frames until its answer: the answer's
    /// subject (the status) and its body if that is a string (the reason).
    async fn exchange(&mut self, id: u64, payload: Vec<u8>) -> Result<(String, String), QpidError> {
        // One credit for the answer, counted from what was received.
        self.performative(&Flow {
            next_incoming_id: Some(self.first_incoming.wrapping_add(self.received)),
            incoming_window: 65_536,
            next_outgoing_id: self.sent,
            outgoing_window: 65_536,
            handle: Some(Handle(1)),
            delivery_count: Some(self.received),
            link_credit: Some(1),
            available: None,
            drain: false,
            echo: false,
            properties: None,
        })
        .await?;
        while self.credit == 0 {
            match self.incoming().await? {
                Incoming::Flow(flow) => self.take_flow(&flow),
                Incoming::Close(close) => return Err(Self::closed(close)),
                _ => {}
            }
        }
        let transfer = Transfer {
            handle: Handle(0),
            delivery_id: Some(self.sent),
            delivery_tag: Some(DeliveryTag::from(self.sent.to_be_bytes().to_vec())),
            message_format: Some(0),
            settled: Some(true),
            more: false,
            rcv_settle_mode: None,
            state: None,
            resume: false,
            aborted: false,
            batchable: false,
        };
        self.write_frame(0, &[&encode(&transfer)?, &payload])
            .await?;
        self.sent = self.sent.wrapping_add(1);
        self.credit -= 1;
        loop {
            match self.incoming().await? {
                Incoming::Flow(flow) => self.take_flow(&flow),
                Incoming::Close(close) => return Err(Self::closed(close)),
                Incoming::Begin(_) | Incoming::Attach(_) | Incoming::Other => {}
                Incoming::Transfer(payload) => {
                    self.received = self.received.wrapping_add(1);
                    let message: Deserializable<Message<Body<Value>>> =
                        serde_amqp::from_slice(&payload)
                            .map_err(|e| link_error(format!("decoding an answer: {e}")))?;
                    let message = message.0;
                    let properties = message.properties.unwrap_or_default();
                    if properties.correlation_id != Some(MessageId::Ulong(id)) {
                        // An answer to a request that timed out earlier.
                        continue;
                    }
                    let reason = match message.body {
                        Body::Value(v) => match v.0 {
                            Value::String(s) => s,
                            _ => String::new(),
                        },
                        _ => String::new(),
                    };
                    return Ok((properties.subject.unwrap_or_default(), reason));
                }
            }
        }
    }

    /// Declares a queue and its bindings (idempotent while the queue's
    /// properties do not change).
    pub(crate) async fn declare(
        &mut self,
        declaration: &Declaration,
        quorum: bool,
    ) -> Result<(), QpidError> {
        // RabbitMQ 4 deprecates transient non-exclusive queues, and this
        // connection is not the consumer's (exclusive is out): every queue
        // is durable; private ones go with their last consumer.
        let arguments = match declaration.lifetime {
            QueueLifetime::Shared if quorum => vec![("x-queue-type", text("quorum"))],
            QueueLifetime::Shared => Vec::new(),
            QueueLifetime::Private => vec![("x-expires", Value::Long(PRIVATE_QUEUE_EXPIRY_MS))],
        };
        let body = map(vec![
            ("durable", Value::Bool(true)),
            ("exclusive", Value::Bool(false)),
            (
                "auto_delete",
                Value::Bool(declaration.lifetime == QueueLifetime::Private),
            ),
            ("arguments", map(arguments)),
        ]);
        self.request(
            "PUT",
            format!("/queues/{}", v2_segment(&declaration.queue)),
            body,
        )
        .await?;
        for (exchange, key) in &declaration.bindings {
            let body = map(vec![
                ("source", text(exchange)),
                ("destination_queue", text(&declaration.queue)),
                ("binding_key", text(key)),
                ("arguments", map(Vec::new())),
            ]);
            self.request("POST", "/bindings".into(), body).await?;
        }
        Ok(())
    }

    /// Deletes a queue (a missing queue is not an error).
    pub(crate) async fn delete_queue(&mut self, queue: &str) -> Result<(), QpidError> {
        match self
            .request(
                "DELETE",
                format!("/queues/{}", v2_segment(queue)),
                Value::Null,
            )
            .await
        {
            Err(QpidError::Management {
                status: Some(404), ..
            }) => Ok(()),
            other => other,
        }
    }

    /// Closes the connection politely (the broker detaches the pair).
    pub(crate) async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.performative(&Close { error: None }).await;
            let _ = self.io.shutdown().await;
        })
        .await;
    }
}
