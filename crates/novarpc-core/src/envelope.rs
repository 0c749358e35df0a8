//! The oslo.messaging 2.0 wire envelope, shared by every driver so the same bytes
//! cross every backend.
//!
//! A body is `{"oslo.version": "2.0", "oslo.message": "<JSON string>"}`: the real
//! message is JSON-encoded a second time. Requests carry `method`, `args`,
//! optional `namespace`/`version`, `_unique_id`, the request context flattened as
//! `_context_<key>`, and on calls `_msg_id`, `_reply_q` and `_timeout`. Replies
//! carry `result`, `failure` (a JSON string), `ending` and `_msg_id`.
//!
//! novarpc extends replies with `_seq` on multicall stream elements (their
//! position) and on the stream's final reply (the element count), so that an
//! element whose value is `null` is never mistaken for oslo's call-monitor
//! heartbeat (`ending: false`, no result), and the end of an empty stream is
//! not mistaken for a unary `null` result. oslo clients ignore the key.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::Error;
use crate::notify::Priority;

/// The request context: string keys, JSON values. It travels with every message
/// (as `_context_<key>`) and reaches the endpoint.
pub type Context = Map<String, Value>;

const ENVELOPE_VERSION: &str = "2.0";
const CONTEXT_PREFIX: &str = "_context_";

/// An outgoing request, borrowed from the caller so nothing is copied before encoding.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// Keyword arguments: a serialized JSON object.
    pub args: &'a RawValue,
    pub namespace: Option<&'a str>,
    pub version: Option<&'a str>,
    pub context: &'a Context,
}

/// What a driver adds to a request that expects a reply.
#[derive(Clone, Copy, Debug)]
pub struct CallHeader<'a> {
    pub msg_id: &'a str,
    pub reply_q: &'a str,
}

/// A request as a server receives it.
#[derive(Debug)]
pub struct IncomingRequest {
    pub method: String,
    pub args: Box<RawValue>,
    pub namespace: Option<String>,
    pub version: Option<String>,
    pub context: Context,
    /// Present on calls: the id replies must carry.
    pub msg_id: Option<String>,
    /// Present on calls: the queue replies go to.
    pub reply_q: Option<String>,
    pub unique_id: Option<String>,
}

/// A reply as a caller receives it.
#[derive(Debug)]
pub struct Reply {
    pub msg_id: String,
    pub result: Option<Box<RawValue>>,
    /// The oslo-serialized failure (a JSON document in a string).
    pub failure: Option<String>,
    pub ending: bool,
    /// novarpc multicall: the position of a stream element, or on the final
    /// reply of a stream the number of elements.
    pub seq: Option<u64>,
}

impl Reply {
    /// oslo's call-monitor heartbeat: not final, no result, not a stream element.
    pub fn is_heartbeat(&self) -> bool {
        !self.ending && self.seq.is_none() && self.failure.is_none()
    }
}

/// A remote failure in oslo's serialization: `{"class", "module", "message", "tb",
/// "args", "kwargs"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteFailure {
    pub class: String,
    #[serde(default)]
    pub module: String,
    #[serde(default)]
    pub message: String,
    /// Traceback lines, as Python's `traceback.format_exception` gives them.
    #[serde(default)]
    pub tb: Vec<String>,
    #[serde(default)]
    pub args: Vec<Value>,
    #[serde(default)]
    pub kwargs: Map<String, Value>,
}

impl RemoteFailure {
    pub fn new(
        class: impl Into<String>,
        module: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let message = message.into();
        RemoteFailure {
            class: class.into(),
            module: module.into(),
            args: vec![Value::String(message.clone())],
            message,
            tb: Vec::new(),
            kwargs: Map::new(),
        }
    }

    /// The traceback as one text.
    pub fn traceback(&self) -> String {
        self.tb.concat()
    }
}

impl fmt::Display for RemoteFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.message)
    }
}

/// The oslo dispatcher's module, which oslo clients expect on dispatch failures.
pub const DISPATCHER_MODULE: &str = "oslo_messaging.rpc.dispatcher";

/// A new id as oslo.messaging writes `_msg_id` and `_unique_id`: uuid4 as 32
/// lower-case hex digits.
pub fn new_unique_id() -> String {
    crate::new_uuid_hex()
}

/// A unique id (uuid4 hex) without allocating.
fn unique_id_buf(buf: &mut [u8; 32]) -> &str {
    uuid::Uuid::new_v4().simple().encode_lower(buf)
}

/// Serializes the inner message into a buffer sized for it up front.
fn to_inner_string<T: Serialize>(value: &T, size_hint: usize) -> String {
    let mut buf = Vec::with_capacity(size_hint + 192);
    serde_json::to_writer(&mut buf, value).expect("message serializes");
    // serde_json writes only valid UTF-8.
    String::from_utf8(buf).expect("JSON is UTF-8")
}

fn wrap(inner: &str) -> Bytes {
    #[derive(Serialize)]
    struct Outer<'a> {
        #[serde(rename = "oslo.version")]
        version: &'a str,
        #[serde(rename = "oslo.message")]
        message: &'a str,
    }
    let outer = Outer {
        version: ENVELOPE_VERSION,
        message: inner,
    };
    // Escaping adds a backslash per quote: leave room for it.
    let mut buf = Vec::with_capacity(inner.len() + inner.len() / 4 + 48);
    // Serializing a struct of two strings cannot fail.
    serde_json::to_writer(&mut buf, &outer).expect("envelope serializes");
    Bytes::from(buf)
}

/// Returns the inner message of an envelope (or the legacy un-enveloped body).
fn unwrap(body: &[u8]) -> Result<Inner<'_>, Error> {
    #[derive(Deserialize)]
    struct Outer {
        #[serde(rename = "oslo.version")]
        version: Option<String>,
        #[serde(rename = "oslo.message")]
        message: Option<String>,
    }
    let outer: Outer = serde_json::from_slice(body)
        .map_err(|e| Error::MalformedMessage(format!("body is not a JSON object: {e}")))?;
    match (outer.version, outer.message) {
        (Some(version), Some(message)) => {
            if version.split('.').next() != Some("2") {
                return Err(Error::MalformedMessage(format!(
                    "unsupported envelope version `{version}` (expected 2.x)"
                )));
            }
            Ok(Inner::Owned(message))
        }
        (None, None) => Ok(Inner::Legacy(body)),
        _ => Err(Error::MalformedMessage(
            "envelope needs both `oslo.version` and `oslo.message`".into(),
        )),
    }
}

enum Inner<'a> {
    Owned(String),
    Legacy(&'a [u8]),
}

impl Inner<'_> {
    fn parse<T: de::DeserializeOwned>(&self, what: &str) -> Result<T, Error> {
        let parsed = match self {
            Inner::Owned(s) => serde_json::from_str(s),
            Inner::Legacy(b) => serde_json::from_slice(b),
        };
        parsed.map_err(|e| Error::MalformedMessage(format!("invalid {what}: {e}")))
    }
}

fn serialize_context<M: SerializeMap>(map: &mut M, context: &Context) -> Result<(), M::Error> {
    let mut key = String::with_capacity(32);
    for (k, v) in context {
        key.clear();
        key.push_str(CONTEXT_PREFIX);
        key.push_str(k);
        map.serialize_entry(&key, v)?;
    }
    Ok(())
}

struct InnerRequest<'a> {
    request: &'a Request<'a>,
    call: Option<CallHeader<'a>>,
    unique_id: &'a str,
}

impl Serialize for InnerRequest<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let r = self.request;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("method", r.method)?;
        map.serialize_entry("args", r.args)?;
        if let Some(namespace) = r.namespace {
            map.serialize_entry("namespace", namespace)?;
        }
        if let Some(version) = r.version {
            map.serialize_entry("version", version)?;
        }
        if let Some(call) = &self.call {
            map.serialize_entry("_msg_id", call.msg_id)?;
            map.serialize_entry("_reply_q", call.reply_q)?;
            map.serialize_entry("_timeout", &())?;
        }
        map.serialize_entry("_unique_id", self.unique_id)?;
        serialize_context(&mut map, r.context)?;
        map.end()
    }
}

/// Encodes a request (a cast when `call` is `None`) in the oslo envelope.
pub fn encode_request(request: &Request<'_>, call: Option<CallHeader<'_>>) -> Bytes {
    let mut id = [0u8; 32];
    let inner = InnerRequest {
        request,
        call,
        unique_id: unique_id_buf(&mut id),
    };
    // Keys are strings and values are already JSON: this cannot fail.
    wrap(&to_inner_string(&inner, request.args.get().len()))
}

/// Decodes a request body; anything that is not an oslo request is
/// [`Error::MalformedMessage`].
pub fn decode_request(body: &[u8]) -> Result<IncomingRequest, Error> {
    unwrap(body)?.parse("request")
}

impl<'de> Deserialize<'de> for IncomingRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RequestVisitor;
        impl<'de> Visitor<'de> for RequestVisitor {
            type Value = IncomingRequest;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an oslo.messaging request object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut method = None;
                let mut args: Option<Box<RawValue>> = None;
                let mut request = IncomingRequest {
                    method: String::new(),
                    args: empty_object(),
                    namespace: None,
                    version: None,
                    context: Context::new(),
                    msg_id: None,
                    reply_q: None,
                    unique_id: None,
                };
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match &*key {
                        "method" => method = Some(map.next_value::<String>()?),
                        "args" => args = Some(map.next_value()?),
                        "namespace" => request.namespace = map.next_value()?,
                        "version" => request.version = map.next_value()?,
                        "_msg_id" => request.msg_id = map.next_value()?,
                        "_reply_q" => request.reply_q = map.next_value()?,
                        "_unique_id" => request.unique_id = map.next_value()?,
                        k if k.starts_with(CONTEXT_PREFIX) => {
                            let value: Value = map.next_value()?;
                            request
                                .context
                                .insert(k[CONTEXT_PREFIX.len()..].to_owned(), value);
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                request.method = method.ok_or_else(|| de::Error::missing_field("method"))?;
                if let Some(args) = args {
                    if !args.get().trim_start().starts_with('{') {
                        return Err(de::Error::custom("`args` must be an object"));
                    }
                    request.args = args;
                }
                Ok(request)
            }
        }
        deserializer.deserialize_map(RequestVisitor)
    }
}

fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".to_owned()).expect("valid JSON")
}

/// The JSON `null`, as a raw value.
pub fn null_value() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).expect("valid JSON")
}

/// What a reply says.
#[derive(Clone, Copy, Debug)]
pub enum ReplyBody<'a> {
    /// The final (or only) result of a call.
    Result(&'a RawValue),
    /// The call failed.
    Failure(&'a RemoteFailure),
    /// One element of a multicall stream.
    StreamItem { seq: u64, value: &'a RawValue },
    /// The end of a multicall stream of `count` elements.
    End { count: u64 },
    /// oslo's call-monitor heartbeat.
    Heartbeat,
}

struct InnerReply<'a> {
    msg_id: &'a str,
    body: ReplyBody<'a>,
    failure: Option<String>,
    unique_id: &'a str,
}

impl Serialize for InnerReply<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match self.body {
            ReplyBody::Result(value) | ReplyBody::StreamItem { value, .. } => {
                map.serialize_entry("result", value)?
            }
            _ => map.serialize_entry("result", &())?,
        }
        map.serialize_entry("failure", &self.failure)?;
        let ending = !matches!(
            self.body,
            ReplyBody::StreamItem { .. } | ReplyBody::Heartbeat
        );
        map.serialize_entry("ending", &ending)?;
        match self.body {
            ReplyBody::StreamItem { seq, .. } | ReplyBody::End { count: seq } => {
                map.serialize_entry("_seq", &seq)?
            }
            _ => {}
        }
        map.serialize_entry("_msg_id", self.msg_id)?;
        map.serialize_entry("_unique_id", self.unique_id)?;
        map.end()
    }
}

/// Encodes a reply to the call `msg_id`.
pub fn encode_reply(msg_id: &str, body: ReplyBody<'_>) -> Bytes {
    let failure = match body {
        ReplyBody::Failure(failure) => {
            Some(serde_json::to_string(failure).expect("failure serializes"))
        }
        _ => None,
    };
    let size_hint = match body {
        ReplyBody::Result(value) | ReplyBody::StreamItem { value, .. } => value.get().len(),
        _ => failure.as_ref().map_or(0, |f| f.len() * 5 / 4),
    };
    let mut id = [0u8; 32];
    let inner = InnerReply {
        msg_id,
        body,
        failure,
        unique_id: unique_id_buf(&mut id),
    };
    wrap(&to_inner_string(&inner, size_hint))
}

/// Decodes a reply body.
pub fn decode_reply(body: &[u8]) -> Result<Reply, Error> {
    #[derive(Deserialize)]
    struct Wire {
        #[serde(rename = "_msg_id")]
        msg_id: String,
        #[serde(default)]
        result: Option<Box<RawValue>>,
        #[serde(default)]
        failure: Option<String>,
        #[serde(default)]
        ending: bool,
        #[serde(rename = "_seq", default)]
        seq: Option<u64>,
    }
    let wire: Wire = unwrap(body)?.parse("reply")?;
    Ok(Reply {
        msg_id: wire.msg_id,
        result: wire.result,
        failure: wire.failure,
        ending: wire.ending,
        seq: wire.seq,
    })
}

/// Decodes the `failure` string of a reply.
pub fn decode_failure(failure: &str) -> Result<RemoteFailure, Error> {
    serde_json::from_str(failure)
        .map_err(|e| Error::MalformedMessage(format!("invalid failure in reply: {e}")))
}

/// An outgoing notification.
#[derive(Clone, Copy, Debug)]
pub struct OutgoingNotification<'a> {
    pub publisher_id: &'a str,
    pub event_type: &'a str,
    pub priority: Priority,
    pub payload: &'a RawValue,
    pub context: &'a Context,
}

struct InnerNotification<'a> {
    n: &'a OutgoingNotification<'a>,
    message_id: &'a str,
    timestamp: &'a str,
    unique_id: &'a str,
}

impl Serialize for InnerNotification<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("message_id", self.message_id)?;
        map.serialize_entry("publisher_id", self.n.publisher_id)?;
        map.serialize_entry("event_type", self.n.event_type)?;
        map.serialize_entry("priority", self.n.priority.wire_name())?;
        map.serialize_entry("payload", self.n.payload)?;
        map.serialize_entry("timestamp", self.timestamp)?;
        map.serialize_entry("_unique_id", self.unique_id)?;
        serialize_context(&mut map, self.n.context)?;
        map.end()
    }
}

/// Encodes a notification as oslo's notifier does (message format 2.0).
pub fn encode_notification(notification: &OutgoingNotification<'_>) -> Bytes {
    const FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]"
    );
    let timestamp = time::OffsetDateTime::now_utc()
        .format(FORMAT)
        .expect("timestamp formats");
    let message_id = uuid::Uuid::new_v4().hyphenated().to_string();
    let mut id = [0u8; 32];
    let inner = InnerNotification {
        n: notification,
        message_id: &message_id,
        timestamp: &timestamp,
        unique_id: unique_id_buf(&mut id),
    };
    wrap(&to_inner_string(&inner, notification.payload.get().len()))
}

/// A notification as a listener receives it.
#[derive(Clone, Debug, PartialEq)]
pub struct IncomingNotification {
    pub message_id: String,
    pub publisher_id: String,
    pub event_type: String,
    pub priority: Priority,
    pub payload: Value,
    pub timestamp: String,
    pub context: Context,
}

/// Decodes a notification body.
pub fn decode_notification(body: &[u8]) -> Result<IncomingNotification, Error> {
    let mut fields: Map<String, Value> = unwrap(body)?.parse("notification")?;
    let mut text = |key: &str| match fields.remove(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(Error::MalformedMessage(format!(
            "notification `{key}` must be a string, got {other}"
        ))),
        None => Err(Error::MalformedMessage(format!(
            "notification has no `{key}`"
        ))),
    };
    let message_id = text("message_id")?;
    let publisher_id = text("publisher_id")?;
    let event_type = text("event_type")?;
    let priority = text("priority")?;
    let priority = priority
        .parse()
        .map_err(|_| Error::MalformedMessage(format!("unknown priority `{priority}`")))?;
    let timestamp = text("timestamp").unwrap_or_default();
    let payload = fields.remove("payload").unwrap_or(Value::Null);
    let context = fields
        .into_iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(CONTEXT_PREFIX)
                .map(|stripped| (stripped.to_owned(), v))
        })
        .collect();
    Ok(IncomingNotification {
        message_id,
        publisher_id,
        event_type,
        priority,
        payload,
        timestamp,
        context,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn request_round_trips_with_context_and_call_header() {
        let mut context = Context::new();
        context.insert("user_id".into(), "u1".into());
        let args = raw(r#"{"value":{"x":1}}"#);
        let request = Request {
            method: "echo",
            args: &args,
            namespace: Some("ns1"),
            version: Some("1.2"),
            context: &context,
        };
        let body = encode_request(
            &request,
            Some(CallHeader {
                msg_id: "m1",
                reply_q: "reply_q1",
            }),
        );
        let outer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(outer["oslo.version"], "2.0");
        let inner: Value = serde_json::from_str(outer["oslo.message"].as_str().unwrap()).unwrap();
        assert_eq!(inner["_context_user_id"], "u1");
        assert_eq!(inner["_timeout"], Value::Null);
        assert_eq!(inner["_unique_id"].as_str().unwrap().len(), 32);

        let decoded = decode_request(&body).unwrap();
        assert_eq!(decoded.method, "echo");
        assert_eq!(decoded.args.get(), r#"{"value":{"x":1}}"#);
        assert_eq!(decoded.namespace.as_deref(), Some("ns1"));
        assert_eq!(decoded.version.as_deref(), Some("1.2"));
        assert_eq!(decoded.msg_id.as_deref(), Some("m1"));
        assert_eq!(decoded.reply_q.as_deref(), Some("reply_q1"));
        assert_eq!(decoded.context, context);
    }

    #[test]
    fn garbage_is_malformed() {
        for body in [
            &b"not json"[..],
            b"[1,2]",
            b"{\"oslo.version\": \"2.0\"}",
            b"{\"oslo.version\": \"3.0\", \"oslo.message\": \"{}\"}",
            b"{\"oslo.version\": \"2.0\", \"oslo.message\": \"{\\\"args\\\": {}}\"}",
            b"{\"oslo.version\": \"2.0\", \"oslo.message\": \"{\\\"method\\\": \\\"m\\\", \\\"args\\\": [1]}\"}",
            b"{\"foo\": 1}",
        ] {
            assert!(
                matches!(decode_request(body), Err(Error::MalformedMessage(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn replies_distinguish_stream_items_from_heartbeats() {
        let null = null_value();
        let item = decode_reply(&encode_reply(
            "m",
            ReplyBody::StreamItem {
                seq: 0,
                value: &null,
            },
        ))
        .unwrap();
        assert!(!item.ending && !item.is_heartbeat() && item.seq == Some(0));
        let heartbeat = decode_reply(&encode_reply("m", ReplyBody::Heartbeat)).unwrap();
        assert!(heartbeat.is_heartbeat());
        let failure = RemoteFailure::new("ValueError", "builtins", "boom");
        let reply = decode_reply(&encode_reply("m", ReplyBody::Failure(&failure))).unwrap();
        assert!(reply.ending);
        assert_eq!(decode_failure(&reply.failure.unwrap()).unwrap(), failure);
    }

    #[test]
    fn notification_round_trips() {
        let payload = raw(r#"{"instance":"i-1"}"#);
        let context = Context::new();
        let body = encode_notification(&OutgoingNotification {
            publisher_id: "compute.host1",
            event_type: "compute.instance.create.end",
            priority: Priority::Info,
            payload: &payload,
            context: &context,
        });
        let n = decode_notification(&body).unwrap();
        assert_eq!(n.priority, Priority::Info);
        assert_eq!(n.payload["instance"], "i-1");
        assert_eq!(n.timestamp.len(), "2026-01-01 00:00:00.000000".len());
    }
}
