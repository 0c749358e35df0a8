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
use std::io;

use bytes::Bytes;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::ser::CharEscape;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::Error;
use crate::notify::Priority;

mod escaped;

/// The request context: string keys, JSON values. It travels with every message
/// (as `_context_<key>`) and reaches the endpoint.
pub type Context = Map<String, Value>;

const ENVELOPE_VERSION: &str = "2.0";
const CONTEXT_PREFIX: &str = "_context_";

/// An outgoing request, borrowed from the caller so nothing is copied before encoding.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The endpoint method to invoke (`method`).
    pub method: &'a str,
    /// Keyword arguments: a serialized JSON object.
    pub args: &'a RawValue,
    /// The target's namespace (`namespace`), which selects the endpoints that
    /// may handle it; omitted from the message when `None`.
    pub namespace: Option<&'a str>,
    /// The API version the caller requires (`version`), checked against the
    /// endpoint's; omitted from the message when `None`.
    pub version: Option<&'a str>,
    /// The request context, written as `_context_<key>` entries.
    pub context: &'a Context,
}

impl<'a> Request<'a> {
    fn typed(&self) -> TypedRequest<'a, RawValue> {
        TypedRequest {
            method: self.method,
            args: self.args,
            namespace: self.namespace,
            version: self.version.map(VersionRef::Text),
            context: self.context,
        }
    }
}

/// A request's `version`: text as given, or a version written out when the
/// request is encoded (so a call's future holds 8 bytes, not a buffer).
#[derive(Clone, Copy, Debug)]
pub(crate) enum VersionRef<'a> {
    Text(&'a str),
    Number(crate::target::Version),
}

impl VersionRef<'_> {
    /// Calls `f` with the version's text.
    fn with_text<R>(self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            VersionRef::Text(text) => f(text),
            VersionRef::Number(version) => f(version.text().as_str()),
        }
    }
}

/// A [`Request`] whose arguments are the caller's value, serialized straight
/// into the message.
pub(crate) struct TypedRequest<'a, A: ?Sized> {
    pub(crate) method: &'a str,
    pub(crate) args: &'a A,
    pub(crate) namespace: Option<&'a str>,
    pub(crate) version: Option<VersionRef<'a>>,
    pub(crate) context: &'a Context,
}

/// What a driver adds to a request that expects a reply.
#[derive(Clone, Copy, Debug)]
pub struct CallHeader<'a> {
    /// The call's id (`_msg_id`), which every reply carries so the caller can
    /// correlate it.
    pub msg_id: &'a str,
    /// The queue the server sends replies to (`_reply_q`).
    pub reply_q: &'a str,
}

/// A string of a received message: where it is in the inner message's text,
/// or, when it had escapes (so its value differs from its bytes), its own copy.
#[derive(Clone, Debug)]
enum Field {
    At(usize, usize),
    Owned(Box<str>),
}

impl Field {
    /// `value`, found in `text` when it was borrowed from it.
    fn of(text: &str, value: StrRef<'_>) -> Field {
        match value.0 {
            std::borrow::Cow::Borrowed(value) => Field::within(text, value),
            std::borrow::Cow::Owned(value) => Field::Owned(value.into_boxed_str()),
        }
    }

    /// Where `value`, a slice of `text`, is in it (a copy if it is not one).
    fn within(text: &str, value: &str) -> Field {
        let start = (value.as_ptr() as usize).wrapping_sub(text.as_ptr() as usize);
        let end = start.wrapping_add(value.len());
        match text.get(start..end) {
            Some(found) if std::ptr::eq(found.as_ptr(), value.as_ptr()) => Field::At(start, end),
            _ => Field::Owned(value.into()),
        }
    }

    fn get<'a>(&'a self, text: &'a str) -> &'a str {
        match self {
            Field::At(start, end) => &text[*start..*end],
            Field::Owned(value) => value,
        }
    }
}

/// A request as a server receives it. It holds the decoded inner message
/// once; its strings are read from it, not copied out.
pub struct IncomingRequest {
    text: String,
    method: Field,
    args: Option<Field>,
    namespace: Option<Field>,
    version: Option<Field>,
    msg_id: Option<Field>,
    reply_q: Option<Field>,
    unique_id: Option<Field>,
    context: Context,
}

impl IncomingRequest {
    /// The endpoint method to invoke.
    pub fn method(&self) -> &str {
        self.method.get(&self.text)
    }

    /// The keyword arguments, as JSON text: always an object (`{}` when the
    /// message had none).
    pub fn args(&self) -> &str {
        self.args.as_ref().map_or("{}", |args| args.get(&self.text))
    }

    /// The target namespace, if the caller set one.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_ref().map(|f| f.get(&self.text))
    }

    /// The API version the caller requires, if it set one.
    pub fn version(&self) -> Option<&str> {
        self.version.as_ref().map(|f| f.get(&self.text))
    }

    /// Present on calls: the id replies must carry.
    pub fn msg_id(&self) -> Option<&str> {
        self.msg_id.as_ref().map(|f| f.get(&self.text))
    }

    /// Present on calls: the queue replies go to.
    pub fn reply_q(&self) -> Option<&str> {
        self.reply_q.as_ref().map(|f| f.get(&self.text))
    }

    /// The message's `_unique_id`, by which servers drop redelivered
    /// duplicates; `None` if the sender wrote none.
    pub fn unique_id(&self) -> Option<&str> {
        self.unique_id.as_ref().map(|f| f.get(&self.text))
    }

    /// The request context, rebuilt from the `_context_<key>` entries.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// Takes the request context out (leaving it empty), for the endpoint.
    pub fn take_context(&mut self) -> Context {
        std::mem::take(&mut self.context)
    }
}

// By hand: the arguments and context are the message's contents, which are
// never logged.
impl fmt::Debug for IncomingRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingRequest")
            .field("method", &self.method())
            .field("namespace", &self.namespace())
            .field("version", &self.version())
            .field("msg_id", &self.msg_id())
            .field("reply_q", &self.reply_q())
            .field("unique_id", &self.unique_id())
            .field("args_len", &self.args().len())
            .field("context_keys", &self.context.len())
            .finish()
    }
}

/// A reply as a caller receives it. Like [`IncomingRequest`], it holds the
/// decoded inner message once and reads its parts from it.
pub struct Reply {
    text: String,
    msg_id: Field,
    result: Option<Field>,
    failure: Option<Field>,
    ending: bool,
    seq: Option<u64>,
}

impl Reply {
    /// The id of the call this reply answers (`_msg_id`).
    pub fn msg_id(&self) -> &str {
        self.msg_id.get(&self.text)
    }

    /// The returned value (or a stream element) as JSON text; `None` when
    /// the reply has no `result` (a failure, a heartbeat, or a JSON `null`
    /// result).
    pub fn result(&self) -> Option<&str> {
        self.result.as_ref().map(|f| f.get(&self.text))
    }

    /// The oslo-serialized failure (a JSON document in a string); see
    /// [`decode_failure`].
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_ref().map(|f| f.get(&self.text))
    }

    /// Whether this is the call's last reply; `false` on multicall stream
    /// elements and heartbeats.
    pub fn ending(&self) -> bool {
        self.ending
    }

    /// novarpc multicall: the position of a stream element, or on the final
    /// reply of a stream the number of elements.
    pub fn seq(&self) -> Option<u64> {
        self.seq
    }

    /// oslo's call-monitor heartbeat: not final, no result, not a stream element.
    pub fn is_heartbeat(&self) -> bool {
        !self.ending && self.seq.is_none() && self.failure.is_none()
    }
}

// By hand: the result is the message's contents, which are never logged.
impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply")
            .field("msg_id", &self.msg_id())
            .field("result_len", &self.result().map(str::len))
            .field("failed", &self.failure.is_some())
            .field("ending", &self.ending)
            .field("seq", &self.seq)
            .finish()
    }
}

/// A remote failure in oslo's serialization: `{"class", "module", "message", "tb",
/// "args", "kwargs"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteFailure {
    /// The exception's class name (e.g. `NoSuchMethod`).
    pub class: String,
    /// The Python module that defines the class, so oslo clients can rebuild
    /// the exception; empty if the sender gave none.
    #[serde(default)]
    pub module: String,
    /// The human-readable error message.
    #[serde(default)]
    pub message: String,
    /// Traceback lines, as Python's `traceback.format_exception` gives them.
    #[serde(default)]
    pub tb: Vec<String>,
    /// The exception's positional arguments (by [`RemoteFailure::new`], the message).
    #[serde(default)]
    pub args: Vec<Value>,
    /// The exception's keyword arguments.
    #[serde(default)]
    pub kwargs: Map<String, Value>,
}

impl RemoteFailure {
    /// A failure of exception `class` from `module` with `message`, which is
    /// also its only positional argument (as a Python exception's `args`); no
    /// traceback or keyword arguments.
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
pub(crate) fn unique_id_buf(buf: &mut [u8; 32]) -> &str {
    uuid::Uuid::new_v4().simple().encode_lower(buf)
}

/// The envelope's opening, up to the `oslo.message` string's first byte, as
/// novarpc writes it (serde_json's compact form, the bytes novarpc has always sent).
const PREFIX: &[u8] = br#"{"oslo.version":"2.0","oslo.message":""#;
/// The same opening as oslo.messaging writes it (Python's `json.dumps` spacing).
const PREFIX_SPACED: &[u8] = br#"{"oslo.version": "2.0", "oslo.message": ""#;
/// The end of the `oslo.message` string and of the envelope.
const SUFFIX: &[u8] = b"\"}";

/// A compact JSON formatter whose output is already escaped as the contents
/// of a JSON string: the inner message is written once, straight into the
/// envelope's `oslo.message` string, instead of being serialized and then
/// escaped by a second pass. The bytes are the same as that of the two passes
/// (checked against them in the tests).
struct Escaped;

impl serde_json::ser::Formatter for Escaped {
    fn begin_string<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b"\\\"")
    }

    fn end_string<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b"\\\"")
    }

    // String fragments hold no quote, backslash or control character (serde_json
    // splits those off as escapes), so the default write is already escaped.

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        // The inner escape `\x` escaped again: its backslash becomes `\\`, a
        // quote `\"`.
        let escaped: &[u8] = match escape {
            CharEscape::Quote => b"\\\\\\\"",
            CharEscape::ReverseSolidus => b"\\\\\\\\",
            CharEscape::Solidus => b"\\\\/",
            CharEscape::Backspace => b"\\\\b",
            CharEscape::FormFeed => b"\\\\f",
            CharEscape::LineFeed => b"\\\\n",
            CharEscape::CarriageReturn => b"\\\\r",
            CharEscape::Tab => b"\\\\t",
            CharEscape::AsciiControl(byte) => {
                writer.write_all(b"\\")?;
                return writer.write_all(&unicode_escape(byte));
            }
        };
        writer.write_all(escaped)
    }

    fn write_raw_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        escape_into(writer, fragment.as_bytes())
    }
}

const HEX_DIGITS: [u8; 16] = *b"0123456789abcdef";

/// `\u00xx`, serde_json's escape of a control character without a short one.
fn unicode_escape(byte: u8) -> [u8; 6] {
    [
        b'\\',
        b'u',
        b'0',
        b'0',
        HEX_DIGITS[usize::from(byte >> 4)],
        HEX_DIGITS[usize::from(byte & 0xf)],
    ]
}

/// The high bit of each byte of `word` (little-endian) that a JSON string
/// cannot hold as it is, exact up to and including the lowest one flagged.
fn special_bytes(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    zero_byte(word ^ (ONES * u64::from(b'"')))
        | zero_byte(word ^ (ONES * u64::from(b'\\')))
        | (word.wrapping_sub(ONES * 0x20) & !word & HIGHS)
}

/// The position of the first byte that a JSON string cannot hold as it is: a
/// quote, a backslash or a control character. Eight bytes at a time (the
/// runs between escapes in an inner message are short, too short for
/// memchr's vector loops to pay off): in each word, the lowest byte flagged
/// by the has-zero-byte and has-byte-less-than tricks is exact (false
/// positives only appear above a true one).
fn find_special(bytes: &[u8]) -> Option<usize> {
    let mut chunks = bytes.chunks_exact(8);
    for (i, chunk) in chunks.by_ref().enumerate() {
        let found = special_bytes(u64::from_le_bytes(chunk.try_into().expect("eight bytes")));
        if found != 0 {
            return Some(i * 8 + (found.trailing_zeros() / 8) as usize);
        }
    }
    let rest = chunks.remainder();
    rest.iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|at| bytes.len() - rest.len() + at)
}

/// Writes `bytes` escaped as the contents of a JSON string, as serde_json
/// escapes strings: `\"`, `\\`, the short escapes of `\b \t \n \f \r`, and
/// `\u00xx` for the other control characters.
fn escape_into<W: ?Sized + io::Write>(writer: &mut W, mut bytes: &[u8]) -> io::Result<()> {
    loop {
        let stop = find_special(bytes).unwrap_or(bytes.len());
        writer.write_all(&bytes[..stop])?;
        let Some(&byte) = bytes.get(stop) else {
            return Ok(());
        };
        let short = match byte {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x09 => b't',
            0x0a => b'n',
            0x0c => b'f',
            0x0d => b'r',
            _ => 0,
        };
        if short != 0 {
            writer.write_all(&[b'\\', short])?;
        } else {
            writer.write_all(&unicode_escape(byte))?;
        }
        bytes = &bytes[stop + 1..];
    }
}

thread_local! {
    /// Each thread's buffer for writing envelopes. A message is written here
    /// and then copied once into an allocation of its exact size, which
    /// `Bytes` takes over as it is: no growing buffer, no unused capacity
    /// kept by messages waiting in queues, and no separate `Bytes` header
    /// (which a buffer with spare capacity costs).
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A thread keeps a scratch buffer up to this size (larger messages get one
/// of their own).
const SCRATCH_KEPT: usize = 64 * 1024;

/// An envelope being written: the prefix, then the inner message escaped as
/// it is serialized, then [`SUFFIX`].
struct Body {
    buf: Vec<u8>,
}

impl Body {
    /// A body with room for an inner message of about `inner_len` bytes.
    fn with_capacity(inner_len: usize) -> Self {
        // Taken, not borrowed: a value whose serialization writes another
        // envelope gets a buffer of its own.
        let mut buf = SCRATCH.try_with(std::cell::Cell::take).unwrap_or_default();
        buf.clear();
        // Escaping adds a backslash per quote: leave room for it.
        buf.reserve(PREFIX.len() + inner_len + inner_len / 4 + 256);
        buf.extend_from_slice(PREFIX);
        Body { buf }
    }

    /// Appends bytes that are already escaped (constant keys and punctuation).
    fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Appends a JSON value, escaped.
    fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> serde_json::Result<()> {
        value.serialize(escaped::Esc { out: &mut self.buf })
    }

    /// Appends a JSON string, escaped (as [`Body::value`] writes it).
    fn string(&mut self, value: &str) {
        escaped::write_str(&mut self.buf, value);
    }

    fn finish(mut self) -> Bytes {
        self.buf.extend_from_slice(SUFFIX);
        Bytes::copy_from_slice(&self.buf)
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if self.buf.capacity() <= SCRATCH_KEPT {
            let buf = std::mem::take(&mut self.buf);
            let _ = SCRATCH.try_with(|scratch| scratch.set(buf));
        }
    }
}

/// Encodes `inner` in the envelope in one pass.
fn enveloped<T: Serialize + ?Sized>(inner: &T, inner_len: usize) -> serde_json::Result<Bytes> {
    if cfg!(feature = "envelope-fast-path") {
        enveloped_fast(inner, inner_len)
    } else {
        reference::enveloped(inner, inner_len)
    }
}

fn enveloped_fast<T: Serialize + ?Sized>(inner: &T, inner_len: usize) -> serde_json::Result<Bytes> {
    let mut body = Body::with_capacity(inner_len);
    body.value(inner)?;
    Ok(body.finish())
}

/// Returns the inner message of an envelope (or the legacy un-enveloped body).
fn unwrap(body: &[u8]) -> Result<Inner<'_>, Error> {
    if cfg!(feature = "envelope-fast-path") {
        if let Some(inner) = unwrap_fast(body) {
            return Ok(Inner::Owned(inner));
        }
    }
    reference::unwrap(body)
}

/// The fast path of [`unwrap`]: a body that starts with the envelope prefix
/// (as novarpc or oslo.messaging write it) and ends right after the
/// `oslo.message` string, whose contents are unescaped in one pass. `None` for
/// anything else (other key orders or spacing, `\u` escapes, invalid escapes,
/// raw control characters, invalid UTF-8, trailing keys or bytes), which
/// serde_json then decodes, or rejects, as it always has.
fn unwrap_fast(body: &[u8]) -> Option<String> {
    let rest = body
        .strip_prefix(PREFIX)
        .or_else(|| body.strip_prefix(PREFIX_SPACED))?;
    // Escapes come every few bytes (every key and string of the inner
    // message is quoted), so runs are moved eight bytes at a time rather
    // than through a memcpy call per run: each word is stored whole and the
    // output advances by the bytes before the first special one. Unescaping
    // only shrinks, so it works in place, on a copy of the string.
    let mut out = rest.to_vec();
    let (mut at, mut len) = (0, 0);
    let end = loop {
        while let Some(chunk) = rest.get(at..at + 8) {
            let word: [u8; 8] = chunk.try_into().expect("eight bytes");
            out[len..len + 8].copy_from_slice(&word);
            let found = special_bytes(u64::from_le_bytes(word));
            if found != 0 {
                let run = (found.trailing_zeros() / 8) as usize;
                at += run;
                len += run;
                break;
            }
            at += 8;
            len += 8;
        }
        let byte = *rest.get(at)?;
        match byte {
            b'"' => break at + 1,
            b'\\' => {}
            // A raw control character: invalid JSON, which serde_json reports.
            _ if byte < 0x20 => return None,
            // The last few bytes, short of a word.
            _ => {
                out[len] = byte;
                at += 1;
                len += 1;
                continue;
            }
        }
        out[len] = match *rest.get(at + 1)? {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            // `\uXXXX` (never written by serde_json or oslo's `json.dumps`
            // for an inner message) and invalid escapes: serde_json decides.
            _ => return None,
        };
        at += 2;
        len += 1;
    };
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let mut tail = rest[end..].iter();
    let close = tail.by_ref().find(|b| !is_space(b))?;
    if *close != b'}' || !tail.all(is_space) {
        return None;
    }
    out.truncate(len);
    // An escape only adds ASCII, so the inner message is valid UTF-8 exactly
    // when the string's raw bytes are.
    String::from_utf8(out).ok()
}

/// The envelope by serde_json alone, in two passes: the encoding novarpc
/// always had, the decoding of anything the fast path leaves, and the
/// reference the fast path is checked against.
mod reference {
    use super::*;

    pub(super) fn enveloped<T: Serialize + ?Sized>(
        inner: &T,
        inner_len: usize,
    ) -> serde_json::Result<Bytes> {
        let mut buf = Vec::with_capacity(inner_len + 192);
        serde_json::to_writer(&mut buf, inner)?;
        // serde_json writes only valid UTF-8.
        let inner = String::from_utf8(buf).expect("JSON is UTF-8");
        Ok(wrap(&inner))
    }

    /// A request as [`super::write_request`] writes it.
    pub(super) fn request<A: Serialize + ?Sized>(
        request: &TypedRequest<'_, A>,
        call: Option<CallHeader<'_>>,
        unique_id: &str,
    ) -> serde_json::Result<(Bytes, bool)> {
        let args = serde_json::value::to_raw_value(request.args)?;
        let is_object = args.get().starts_with('{');
        let raw = TypedRequest {
            method: request.method,
            args: &*args,
            namespace: request.namespace,
            version: request.version,
            context: request.context,
        };
        let inner = InnerRequest {
            request: &raw,
            call,
            unique_id,
        };
        Ok((enveloped(&inner, args.get().len())?, is_object))
    }

    pub(super) fn wrap(inner: &str) -> Bytes {
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
        let mut buf = Vec::with_capacity(inner.len() + inner.len() / 4 + 48);
        // Serializing a struct of two strings cannot fail.
        serde_json::to_writer(&mut buf, &outer).expect("envelope serializes");
        Bytes::from(buf)
    }

    pub(super) fn unwrap(body: &[u8]) -> Result<Inner<'_>, Error> {
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
}

enum Inner<'a> {
    Owned(String),
    Legacy(&'a [u8]),
}

impl Inner<'_> {
    /// The inner message's text, owned (a legacy body is copied).
    fn into_text(self, what: &str) -> Result<String, Error> {
        match self {
            Inner::Owned(text) => Ok(text),
            Inner::Legacy(body) => String::from_utf8(body.to_vec())
                .map_err(|e| Error::MalformedMessage(format!("invalid {what}: {e}"))),
        }
    }

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
    request: &'a TypedRequest<'a, RawValue>,
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
            version.with_text(|version| map.serialize_entry("version", version))?;
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

/// Why a request's arguments could not be encoded.
#[derive(Debug)]
pub(crate) enum ArgsError {
    /// They do not serialize.
    Serialize(serde_json::Error),
    /// They serialize to something other than a JSON object.
    NotAnObject,
}

/// Encodes a request (a cast when `call` is `None`) in the oslo envelope.
pub fn encode_request(request: &Request<'_>, call: Option<CallHeader<'_>>) -> Bytes {
    // A raw value is JSON and keys are strings: this cannot fail.
    encode_any_request(&request.typed(), call)
        .expect("a raw request serializes")
        .0
}

/// Encodes a request, its arguments serialized straight into the message;
/// they must serialize to a JSON object.
pub(crate) fn encode_request_with<A: Serialize + ?Sized>(
    request: &TypedRequest<'_, A>,
    call: Option<CallHeader<'_>>,
) -> Result<Bytes, ArgsError> {
    match encode_any_request(request, call) {
        Ok((body, true)) => Ok(body),
        Ok((_, false)) => Err(ArgsError::NotAnObject),
        Err(error) => Err(ArgsError::Serialize(error)),
    }
}

/// Encodes a request; says whether its arguments were a JSON object.
fn encode_any_request<A: Serialize + ?Sized>(
    request: &TypedRequest<'_, A>,
    call: Option<CallHeader<'_>>,
) -> serde_json::Result<(Bytes, bool)> {
    let mut id = [0u8; 32];
    let unique_id = unique_id_buf(&mut id);
    if cfg!(feature = "envelope-fast-path") {
        write_request(request, call, unique_id)
    } else {
        reference::request(request, call, unique_id)
    }
}

/// The fast path of [`encode_any_request`].
fn write_request<A: Serialize + ?Sized>(
    request: &TypedRequest<'_, A>,
    call: Option<CallHeader<'_>>,
    unique_id: &str,
) -> serde_json::Result<(Bytes, bool)> {
    // The keys and order of `InnerRequest`, written by hand so the arguments
    // can be checked where they land.
    let mut body = Body::with_capacity(256 + 64 * request.context.len());
    body.raw(b"{\\\"method\\\":");
    body.string(request.method);
    body.raw(b",\\\"args\\\":");
    let args_at = body.buf.len();
    body.value(request.args)?;
    let is_object = body.buf.get(args_at) == Some(&b'{');
    if let Some(namespace) = request.namespace {
        body.raw(b",\\\"namespace\\\":");
        body.string(namespace);
    }
    if let Some(version) = request.version {
        body.raw(b",\\\"version\\\":");
        version.with_text(|version| body.string(version));
    }
    if let Some(call) = &call {
        body.raw(b",\\\"_msg_id\\\":");
        body.string(call.msg_id);
        body.raw(b",\\\"_reply_q\\\":");
        body.string(call.reply_q);
        body.raw(b",\\\"_timeout\\\":null");
    }
    body.raw(b",\\\"_unique_id\\\":");
    body.string(unique_id);
    write_context(&mut body, request.context)?;
    body.raw(b"}");
    Ok((body.finish(), is_object))
}

/// Appends the context's `_context_<key>` entries (after at least one entry).
fn write_context(body: &mut Body, context: &Context) -> serde_json::Result<()> {
    let mut key = String::new();
    for (k, v) in context {
        key.clear();
        key.push_str(CONTEXT_PREFIX);
        key.push_str(k);
        body.raw(b",");
        body.value(&key)?;
        body.raw(b":");
        body.value(v)?;
    }
    Ok(())
}

/// Decodes a request body; anything that is not an oslo request is
/// [`Error::MalformedMessage`].
pub fn decode_request(body: &[u8]) -> Result<IncomingRequest, Error> {
    let text = unwrap(body)?.into_text("request")?;
    let fast = if cfg!(feature = "envelope-fast-path") {
        parse_request_fast(&text)
    } else {
        None
    };
    let parts: RequestParts<'_> = match fast {
        Some(parts) => parts,
        None => parse_text(&text, "request")?,
    };
    let field = |value| Field::of(&text, value);
    let optional = |value: Option<StrRef<'_>>| value.map(|v| Field::of(&text, v));
    let method = field(parts.method);
    let args = parts.args.map(|args| Field::within(&text, args.get()));
    let namespace = optional(parts.namespace);
    let version = optional(parts.version);
    let msg_id = optional(parts.msg_id);
    let reply_q = optional(parts.reply_q);
    let unique_id = optional(parts.unique_id);
    Ok(IncomingRequest {
        method,
        args,
        namespace,
        version,
        msg_id,
        reply_q,
        unique_id,
        context: parts.context,
        text,
    })
}

/// The fast path of a request's parsing: an object whose keys and strings
/// have no escapes, scanned by hand; values other than strings and `null`
/// (the arguments, context entries, unknown keys) are each read by
/// serde_json as raw JSON. `None` for anything else (escapes, other types,
/// a missing method, arguments that are not an object, invalid JSON,
/// trailing bytes), which serde_json then parses, or rejects, as before.
/// Later duplicate keys win, as they do there. (serde_json's map visitor was
/// the largest part of a memory call's decoding.)
fn parse_request_fast(text: &str) -> Option<RequestParts<'_>> {
    let mut scan = Scan { text, at: 0 };
    let mut parts = RequestParts {
        method: StrRef("".into()),
        args: None,
        namespace: None,
        version: None,
        msg_id: None,
        reply_q: None,
        unique_id: None,
        context: Context::new(),
    };
    let mut method = None;
    scan.expect(b'{')?;
    if scan.peek()? != b'}' {
        loop {
            let key = scan.string()?;
            scan.expect(b':')?;
            match key {
                "method" => method = Some(scan.string()?),
                "args" => parts.args = Some(scan.raw()?),
                "namespace" => parts.namespace = scan.optional_string()?,
                "version" => parts.version = scan.optional_string()?,
                "_msg_id" => parts.msg_id = scan.optional_string()?,
                "_reply_q" => parts.reply_q = scan.optional_string()?,
                "_unique_id" => parts.unique_id = scan.optional_string()?,
                _ => {
                    let raw = scan.raw()?;
                    if let Some(name) = key.strip_prefix(CONTEXT_PREFIX) {
                        let value = serde_json::from_str(raw.get()).ok()?;
                        parts.context.insert(name.to_owned(), value);
                    }
                }
            }
            match scan.next_byte()? {
                b',' => continue,
                b'}' => break,
                _ => return None,
            }
        }
    } else {
        scan.at += 1;
    }
    if scan.peek().is_some() {
        return None;
    }
    if parts.args.is_some_and(|args| !args.get().starts_with('{')) {
        return None;
    }
    parts.method = StrRef(method?.into());
    Some(parts)
}

/// A cursor over a message's JSON text, for [`parse_request_fast`].
struct Scan<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scan<'a> {
    /// The next byte that is not JSON whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        let bytes = self.text.as_bytes();
        while let Some(&byte) = bytes.get(self.at) {
            if !matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(byte);
            }
            self.at += 1;
        }
        None
    }

    fn next_byte(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next_byte()? == byte).then_some(())
    }

    /// A string without escapes or control characters.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        let len = find_special(&self.text.as_bytes()[start..])?;
        if self.text.as_bytes()[start + len] != b'"' {
            return None;
        }
        self.at = start + len + 1;
        self.text.get(start..start + len)
    }

    /// `null`, or a string without escapes.
    fn optional_string(&mut self) -> Option<Option<StrRef<'a>>> {
        if self.peek()? == b'n' {
            let rest = &self.text.as_bytes()[self.at..];
            if !rest.starts_with(b"null") {
                return None;
            }
            self.at += 4;
            return Some(None);
        }
        Some(Some(StrRef(self.string()?.into())))
    }

    /// `true` or `false`.
    fn boolean(&mut self) -> Option<bool> {
        self.peek()?;
        let rest = &self.text.as_bytes()[self.at..];
        let (value, len) = if rest.starts_with(b"true") {
            (true, 4)
        } else if rest.starts_with(b"false") {
            (false, 5)
        } else {
            return None;
        };
        self.at += len;
        Some(value)
    }

    /// `null`, or an integer of digits alone (no sign, fraction or
    /// exponent, no leading zero) that fits a `u64`.
    fn optional_integer(&mut self) -> Option<Option<u64>> {
        if self.peek()? == b'n' {
            let rest = &self.text.as_bytes()[self.at..];
            if !rest.starts_with(b"null") {
                return None;
            }
            self.at += 4;
            return Some(None);
        }
        let rest = &self.text.as_bytes()[self.at..];
        let len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let follows = rest.get(len).copied();
        if len == 0 || (len > 1 && rest[0] == b'0') || matches!(follows, Some(b'.' | b'e' | b'E')) {
            return None;
        }
        let value = self.text[self.at..self.at + len].parse().ok()?;
        self.at += len;
        Some(Some(value))
    }

    /// Any JSON value, as serde_json reads it, left as its text.
    fn raw(&mut self) -> Option<&'a RawValue> {
        let rest = &self.text[self.at..];
        let mut de = serde_json::Deserializer::from_str(rest);
        let raw = <&RawValue>::deserialize(&mut de).ok()?;
        let end = raw.get().as_ptr() as usize - rest.as_ptr() as usize + raw.get().len();
        self.at += end;
        Some(raw)
    }
}

/// Parses the inner message's text, naming what it should have been.
fn parse_text<'a, T: Deserialize<'a>>(text: &'a str, what: &str) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|e| Error::MalformedMessage(format!("invalid {what}: {e}")))
}

/// A request's parts, borrowed from its text where they have no escapes.
struct RequestParts<'de> {
    method: StrRef<'de>,
    args: Option<&'de RawValue>,
    namespace: Option<StrRef<'de>>,
    version: Option<StrRef<'de>>,
    msg_id: Option<StrRef<'de>>,
    reply_q: Option<StrRef<'de>>,
    unique_id: Option<StrRef<'de>>,
    context: Context,
}

impl<'de> Deserialize<'de> for RequestParts<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RequestVisitor;
        impl<'de> Visitor<'de> for RequestVisitor {
            type Value = RequestParts<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an oslo.messaging request object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut method = None;
                let mut args: Option<&'de RawValue> = None;
                let (mut namespace, mut version) = (None, None);
                let (mut msg_id, mut reply_q, mut unique_id) = (None, None, None);
                let mut context = Context::new();
                while let Some(StrRef(key)) = map.next_key()? {
                    match &*key {
                        "method" => method = Some(map.next_value::<StrRef<'de>>()?),
                        "args" => args = Some(map.next_value()?),
                        "namespace" => namespace = map.next_value()?,
                        "version" => version = map.next_value()?,
                        "_msg_id" => msg_id = map.next_value()?,
                        "_reply_q" => reply_q = map.next_value()?,
                        "_unique_id" => unique_id = map.next_value()?,
                        k if k.starts_with(CONTEXT_PREFIX) => {
                            let value: Value = map.next_value()?;
                            context.insert(k[CONTEXT_PREFIX.len()..].to_owned(), value);
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                let method = method.ok_or_else(|| de::Error::missing_field("method"))?;
                if args.is_some_and(|args| !args.get().trim_start().starts_with('{')) {
                    return Err(de::Error::custom("`args` must be an object"));
                }
                Ok(RequestParts {
                    method,
                    args,
                    namespace,
                    version,
                    context,
                    msg_id,
                    reply_q,
                    unique_id,
                })
            }
        }
        deserializer.deserialize_map(RequestVisitor)
    }
}

/// A string (or key) of a received message, borrowed from it unless it has
/// escapes (serde's `Cow<str>` always copies).
struct StrRef<'de>(std::borrow::Cow<'de, str>);

impl<'de: 'a, 'a> Deserialize<'de> for StrRef<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for KeyVisitor<'a> {
            type Value = StrRef<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(StrRef(text.into()))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(StrRef(text.to_owned().into()))
            }
            fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
                Ok(StrRef(text.into()))
            }
        }
        deserializer.deserialize_str(KeyVisitor(std::marker::PhantomData))
    }
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
    StreamItem {
        /// The element's position in the stream, written as `_seq`.
        seq: u64,
        /// The element's value.
        value: &'a RawValue,
    },
    /// The end of a multicall stream of `count` elements.
    End {
        /// How many elements the stream had, written as `_seq`.
        count: u64,
    },
    /// oslo's call-monitor heartbeat.
    Heartbeat,
}

struct InnerReply<'a, V: ?Sized> {
    msg_id: &'a str,
    /// `result`: `null` when `None`.
    value: Option<&'a V>,
    failure: Option<String>,
    ending: bool,
    seq: Option<u64>,
    unique_id: &'a str,
}

impl<V: Serialize + ?Sized> Serialize for InnerReply<'_, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("result", &self.value)?;
        map.serialize_entry("failure", &self.failure)?;
        map.serialize_entry("ending", &self.ending)?;
        if let Some(seq) = self.seq {
            map.serialize_entry("_seq", &seq)?;
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
    let (value, seq) = match body {
        ReplyBody::Result(value) => (Some(value), None),
        ReplyBody::StreamItem { seq, value } => (Some(value), Some(seq)),
        ReplyBody::End { count } => (None, Some(count)),
        ReplyBody::Failure(_) | ReplyBody::Heartbeat => (None, None),
    };
    let size_hint = match value {
        Some(value) => value.get().len(),
        None => failure.as_ref().map_or(0, |f| f.len() * 5 / 4),
    };
    let mut id = [0u8; 32];
    let inner = InnerReply {
        msg_id,
        value,
        failure,
        ending: !matches!(body, ReplyBody::StreamItem { .. } | ReplyBody::Heartbeat),
        seq,
        unique_id: unique_id_buf(&mut id),
    };
    // Values are already JSON and keys are strings: this cannot fail.
    enveloped(&inner, size_hint).expect("a reply serializes")
}

/// Encodes the final reply to the call `msg_id` with `value` serialized
/// straight into it: the bytes of `encode_reply(msg_id,
/// ReplyBody::Result(&to_raw_value(value)?))`, without the raw value.
pub(crate) fn encode_result_reply<T: Serialize + ?Sized>(
    msg_id: &str,
    value: &T,
) -> serde_json::Result<Bytes> {
    let mut id = [0u8; 32];
    let unique_id = unique_id_buf(&mut id);
    if !cfg!(feature = "envelope-fast-path") {
        let inner = InnerReply {
            msg_id,
            value: Some(value),
            failure: None,
            ending: true,
            seq: None,
            unique_id,
        };
        return enveloped(&inner, 64);
    }
    // The keys and order of `InnerReply`, written by hand.
    let mut body = Body::with_capacity(128);
    body.raw(b"{\\\"result\\\":");
    body.value(value)?;
    body.raw(b",\\\"failure\\\":null,\\\"ending\\\":true,\\\"_msg_id\\\":");
    body.string(msg_id);
    body.raw(b",\\\"_unique_id\\\":");
    body.string(unique_id);
    body.raw(b"}");
    Ok(body.finish())
}

/// Decodes a reply body.
pub fn decode_reply(body: &[u8]) -> Result<Reply, Error> {
    #[derive(Deserialize)]
    struct Wire<'a> {
        #[serde(rename = "_msg_id", borrow)]
        msg_id: StrRef<'a>,
        #[serde(default, borrow)]
        result: Option<&'a RawValue>,
        #[serde(default, borrow)]
        failure: Option<StrRef<'a>>,
        #[serde(default)]
        ending: bool,
        #[serde(rename = "_seq", default)]
        seq: Option<u64>,
    }
    let text = unwrap(body)?.into_text("reply")?;
    let fast = if cfg!(feature = "envelope-fast-path") {
        parse_reply_fast(&text)
    } else {
        None
    };
    let wire: Wire<'_> = match fast {
        Some(parts) => Wire {
            msg_id: parts.msg_id,
            result: parts.result,
            failure: parts.failure,
            ending: parts.ending,
            seq: parts.seq,
        },
        None => parse_text(&text, "reply")?,
    };
    let msg_id = Field::of(&text, wire.msg_id);
    let result = wire.result.map(|value| Field::within(&text, value.get()));
    let failure = wire.failure.map(|failure| Field::of(&text, failure));
    let (ending, seq) = (wire.ending, wire.seq);
    Ok(Reply {
        text,
        msg_id,
        result,
        failure,
        ending,
        seq,
    })
}

/// A reply's parts, as [`parse_reply_fast`] reads them.
struct ReplyParts<'a> {
    msg_id: StrRef<'a>,
    result: Option<&'a RawValue>,
    failure: Option<StrRef<'a>>,
    ending: bool,
    seq: Option<u64>,
}

/// The fast path of a reply's parsing, as [`parse_request_fast`] is for
/// requests: keys and strings without escapes, `ending` a boolean, `_seq`
/// `null` or a plain integer, other values read by serde_json as raw JSON.
/// `None` for anything else, a repeated key included (serde rejects one).
fn parse_reply_fast(text: &str) -> Option<ReplyParts<'_>> {
    let mut scan = Scan { text, at: 0 };
    let (mut msg_id, mut result, mut failure, mut ending, mut seq) = (None, None, None, None, None);
    // Set once per key: a second one is left to serde, which rejects it.
    fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
        slot.replace(value).is_none().then_some(())
    }
    scan.expect(b'{')?;
    if scan.peek()? == b'}' {
        return None;
    }
    loop {
        let key = scan.string()?;
        scan.expect(b':')?;
        match key {
            "_msg_id" => once(&mut msg_id, scan.string()?)?,
            "result" => {
                let raw = scan.raw()?;
                once(&mut result, (raw.get() != "null").then_some(raw))?;
            }
            "failure" => once(&mut failure, scan.optional_string()?)?,
            "ending" => once(&mut ending, scan.boolean()?)?,
            "_seq" => once(&mut seq, scan.optional_integer()?)?,
            _ => {
                scan.raw()?;
            }
        }
        match scan.next_byte()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    if scan.peek().is_some() {
        return None;
    }
    Some(ReplyParts {
        msg_id: StrRef(msg_id?.into()),
        result: result.flatten(),
        failure: failure.flatten(),
        ending: ending.unwrap_or(false),
        seq: seq.flatten(),
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
    /// Who sends it (oslo's `publisher_id`, e.g. `compute.host1`).
    pub publisher_id: &'a str,
    /// What happened (e.g. `compute.instance.create.end`).
    pub event_type: &'a str,
    /// Its priority, which also picks where it is sent (`<topic>.<priority>`).
    pub priority: Priority,
    /// The event's data: any serialized JSON value.
    pub payload: &'a RawValue,
    /// The request context, written as `_context_<key>` entries.
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
    enveloped(&inner, notification.payload.get().len()).expect("a notification serializes")
}

/// A notification as a listener receives it.
#[derive(Clone, Debug, PartialEq)]
pub struct IncomingNotification {
    /// The id the notifier gave it (a hyphenated uuid4 from novarpc and oslo).
    pub message_id: String,
    /// Who sent it.
    pub publisher_id: String,
    /// What happened.
    pub event_type: String,
    /// Its priority.
    pub priority: Priority,
    /// The event's data (`null` if the message had none).
    pub payload: Value,
    /// When it was sent, as the notifier wrote it (oslo: UTC,
    /// `YYYY-MM-DD HH:MM:SS.ffffff`); empty if the message had none.
    pub timestamp: String,
    /// The request context, rebuilt from the `_context_<key>` entries.
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
        assert_eq!(decoded.method(), "echo");
        assert_eq!(decoded.args(), r#"{"value":{"x":1}}"#);
        assert_eq!(decoded.namespace(), Some("ns1"));
        assert_eq!(decoded.version(), Some("1.2"));
        assert_eq!(decoded.msg_id(), Some("m1"));
        assert_eq!(decoded.reply_q(), Some("reply_q1"));
        assert_eq!(decoded.context(), &context);
    }

    #[test]
    fn a_version_number_is_written_as_its_text() {
        let context = Context::new();
        let args = raw(r#"{"a":1}"#);
        for (number, text) in [
            (crate::target::Version::new(1, 3), "1.3"),
            (
                crate::target::Version::new(u32::MAX, u32::MAX),
                "4294967295.4294967295",
            ),
        ] {
            let request = |version| TypedRequest {
                method: "m",
                args: &*args,
                namespace: None,
                version: Some(version),
                context: &context,
            };
            let written = |version| {
                let (fast, _) = write_request(&request(version), None, "u1").unwrap();
                let (slow, _) = reference::request(&request(version), None, "u1").unwrap();
                assert_eq!(fast, slow);
                fast
            };
            let body = written(VersionRef::Number(number));
            assert_eq!(body, written(VersionRef::Text(text)));
            assert_eq!(decode_request(&body).unwrap().version(), Some(text));
        }
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
        assert!(!item.ending() && !item.is_heartbeat() && item.seq() == Some(0));
        let heartbeat = decode_reply(&encode_reply("m", ReplyBody::Heartbeat)).unwrap();
        assert!(heartbeat.is_heartbeat());
        let failure = RemoteFailure::new("ValueError", "builtins", "boom");
        let reply = decode_reply(&encode_reply("m", ReplyBody::Failure(&failure))).unwrap();
        assert!(reply.ending());
        assert_eq!(decode_failure(reply.failure().unwrap()).unwrap(), failure);
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

    /// The fast path against serde_json's two passes, on every input,
    /// hostile ones included.
    mod fast_path {
        use super::super::*;
        use proptest::prelude::*;

        /// Strings made of the pieces that trouble escaping: quotes,
        /// backslashes, control characters, escapes (valid, invalid,
        /// surrogates), non-ASCII and the envelope's own punctuation.
        fn hostile_text() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just("\"".to_owned()),
                Just("\\".to_owned()),
                Just("\\\"".to_owned()),
                Just("\\\\".to_owned()),
                Just("\\u0041".to_owned()),
                Just("\\ud83d\\ude00".to_owned()),
                Just("\\ud800".to_owned()),
                Just("\\udc00x".to_owned()),
                Just("\\x".to_owned()),
                Just("\\/".to_owned()),
                Just("\\n\\t\\b\\f\\r".to_owned()),
                Just("\n\t\u{0}\u{1f}\u{7f}".to_owned()),
                Just("}\"{".to_owned()),
                Just("é\u{2028}\u{10ffff}😀".to_owned()),
                Just(" ".to_owned()),
                any::<String>(),
                "[a-z]{0,8}",
            ];
            proptest::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
        }

        /// JSON values with hostile strings and keys, numbers of every kind.
        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                // Floats that survive a round trip through text exactly.
                any::<i32>().prop_map(|i| Value::from(f64::from(i) / 8.0)),
                hostile_text().prop_map(Value::from),
            ];
            leaf.prop_recursive(3, 32, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                    proptest::collection::btree_map(hostile_text(), inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// Bodies: real envelopes (compact and oslo-spaced) of hostile inner
        /// text, then those bytes cut, or with bytes replaced or inserted.
        fn envelope() -> impl Strategy<Value = Vec<u8>> {
            (hostile_text(), any::<bool>()).prop_map(|(inner, spaced)| {
                let body = reference::wrap(&inner).to_vec();
                if spaced {
                    [PREFIX_SPACED, &body[PREFIX.len()..]].concat()
                } else {
                    body
                }
            })
        }

        fn body() -> impl Strategy<Value = Vec<u8>> {
            let prefixed = (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..48)).prop_map(
                |(spaced, tail)| [if spaced { PREFIX_SPACED } else { PREFIX }, &tail[..]].concat(),
            );
            let damaged = (
                envelope(),
                any::<prop::sample::Index>(),
                any::<u8>(),
                0..3u8,
            )
                .prop_map(|(mut body, at, byte, how)| {
                    let at = at.index(body.len() + 1);
                    match how {
                        0 => body.truncate(at),
                        1 if at < body.len() => body[at] = byte,
                        _ => body.insert(at, byte),
                    }
                    body
                });
            prop_oneof![envelope(), prefixed, damaged]
        }

        /// A written message as novarpc writes it (`layout` 0), indented (1),
        /// or spaced as Python's json.dumps (2), then maybe damaged: cut,
        /// a byte overwritten or inserted; `None` when that is not UTF-8.
        fn relaid(
            written: String,
            layout: u8,
            damage: Option<(proptest::sample::Index, u8, u8)>,
        ) -> Option<String> {
            let text = match layout {
                0 => written,
                1 => {
                    serde_json::to_string_pretty(&serde_json::from_str::<Value>(&written).unwrap())
                        .unwrap()
                }
                _ => written
                    .replacen(",\"", ", \"", 3)
                    .replacen("\":", "\": ", 3),
            };
            let Some((at, byte, how)) = damage else {
                return Some(text);
            };
            let mut bytes = text.into_bytes();
            let at = at.index(bytes.len() + 1);
            match how {
                0 => bytes.truncate(at),
                1 if at < bytes.len() => bytes[at] = byte,
                _ => bytes.insert(at, byte),
            }
            String::from_utf8(bytes).ok()
        }

        /// What a request's parts say, comparably.
        #[allow(clippy::type_complexity)]
        fn request_summary(
            parts: &RequestParts<'_>,
        ) -> (String, Option<String>, [Option<String>; 5], Context) {
            let text = |value: &Option<StrRef<'_>>| value.as_ref().map(|v| v.0.to_string());
            (
                parts.method.0.to_string(),
                parts.args.map(|args| args.get().to_owned()),
                [
                    text(&parts.namespace),
                    text(&parts.version),
                    text(&parts.msg_id),
                    text(&parts.reply_q),
                    text(&parts.unique_id),
                ],
                parts.context.clone(),
            )
        }

        fn reference_message(body: &[u8]) -> Option<String> {
            match reference::unwrap(body) {
                Ok(Inner::Owned(message)) => Some(message),
                _ => None,
            }
        }

        // The decoding checks are cheap: many cases.
        proptest! {
            #![proptest_config(ProptestConfig::with_cases(8192))]

            #[test]
            fn find_special_finds_the_first_quote_backslash_or_control(
                bytes in proptest::collection::vec(
                    prop_oneof![any::<u8>(), Just(b'"'), Just(b'\\'), 0x20u8..0x7f],
                    0..40,
                ),
                skip in 0..8usize,
            ) {
                let bytes = &bytes[skip.min(bytes.len())..];
                let naive = bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
                prop_assert_eq!(find_special(bytes), naive);
            }

            #[test]
            fn unwrap_agrees_with_serde_json(body in body()) {
                if let Some(fast) = unwrap_fast(&body) {
                    prop_assert_eq!(Some(fast), reference_message(&body));
                }
            }

            #[test]
            fn unwrap_takes_the_fast_path_for_what_novarpc_and_oslo_write(
                inner in hostile_text(),
            ) {
                let body = reference::wrap(&inner);
                // serde_json writes controls other than \b\t\n\f\r as \u00xx,
                // which the fast path leaves to it.
                let short = |c: char| c >= ' ' || "\u{8}\t\n\u{c}\r".contains(c);
                if inner.chars().all(short) {
                    prop_assert_eq!(unwrap_fast(&body), Some(inner.clone()));
                    let spaced = [PREFIX_SPACED, &body[PREFIX.len()..]].concat();
                    prop_assert_eq!(unwrap_fast(&spaced), Some(inner));
                }
            }

        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1024))]

            #[test]
            fn enveloped_values_are_serde_json_bytes(
                value in json_value(),
                floats in proptest::collection::vec(any::<f64>(), 0..4),
            ) {
                for value in [value, Value::from(floats)] {
                    prop_assert_eq!(
                        enveloped_fast(&value, 0).unwrap(),
                        reference::enveloped(&value, 0).unwrap()
                    );
                }
            }

            #[test]
            fn requests_are_serde_json_bytes(
                method in hostile_text(),
                args in json_value(),
                pretty in any::<bool>(),
                namespace in proptest::option::of(hostile_text()),
                version in proptest::option::of("[0-9]\\.[0-9]"),
                context in proptest::collection::btree_map(hostile_text(), json_value(), 0..4),
                call in any::<bool>(),
            ) {
                let context: Context = context.into_iter().collect();
                // Raw arguments keep their whitespace (newlines included).
                let text = if pretty {
                    serde_json::to_string_pretty(&args).unwrap()
                } else {
                    serde_json::to_string(&args).unwrap()
                };
                let raw = RawValue::from_string(text).unwrap();
                let call = call.then_some(CallHeader { msg_id: "m\"1", reply_q: "reply_\\q" });
                let typed = TypedRequest {
                    method: &method,
                    args: &args,
                    namespace: namespace.as_deref(),
                    version: version.as_deref().map(VersionRef::Text),
                    context: &context,
                };
                let raw_request = TypedRequest {
                    method: &method,
                    args: &*raw,
                    namespace: namespace.as_deref(),
                    version: version.as_deref().map(VersionRef::Text),
                    context: &context,
                };
                let compact = serde_json::to_string(&args).unwrap();
                for (fast, slow, args_text) in [
                    (
                        write_request(&typed, call, "u1"),
                        reference::request(&typed, call, "u1"),
                        compact.as_str(),
                    ),
                    (
                        write_request(&raw_request, call, "u1"),
                        reference::request(&raw_request, call, "u1"),
                        raw.get(),
                    ),
                ] {
                    let (fast, fast_object) = fast.unwrap();
                    let (slow, slow_object) = slow.unwrap();
                    prop_assert_eq!(&fast, &slow);
                    prop_assert_eq!(fast_object, slow_object);
                    prop_assert_eq!(fast_object, args.is_object());
                    // And they decode to what was sent.
                    if fast_object {
                        let decoded = decode_request(&fast).unwrap();
                        prop_assert_eq!(decoded.method(), method.as_str());
                        prop_assert_eq!(decoded.args(), args_text);
                        prop_assert_eq!(decoded.context(), &context);
                        prop_assert_eq!(decoded.namespace(), namespace.as_deref());
                        prop_assert_eq!(decoded.version(), version.as_deref());
                        prop_assert_eq!(decoded.msg_id().is_some(), call.is_some());
                    }
                }
            }

            #[test]
            fn request_parsing_fast_path_agrees_with_serde_json(
                method in "[a-zé_]{1,10}",
                args in json_value(),
                namespace in proptest::option::of("[a-z]{0,6}"),
                version in proptest::option::of("[0-9]\\.[0-9]"),
                context in proptest::collection::btree_map(
                    prop_oneof!["[a-z]{1,6}", hostile_text()],
                    json_value(),
                    0..3,
                ),
                call in any::<bool>(),
                layout in 0..3u8,
                damage in proptest::option::of((any::<proptest::sample::Index>(), any::<u8>(), 0..3u8)),
            ) {
                let context: Context = context.into_iter().collect();
                let typed = TypedRequest {
                    method: &method,
                    args: &args,
                    namespace: namespace.as_deref(),
                    version: version.as_deref().map(VersionRef::Text),
                    context: &context,
                };
                let call = call.then_some(CallHeader { msg_id: "0123abc", reply_q: "reply_x" });
                let (body, _) = write_request(&typed, call, "u1").unwrap();
                let written = unwrap_fast(&body).unwrap();
                let Some(text) = relaid(written, layout, damage) else { return Ok(()) };
                let fast = parse_request_fast(&text);
                if damage.is_none() && args.is_object()
                    && context.keys().all(|k| k.bytes().all(|b| b.is_ascii_lowercase()))
                {
                    prop_assert!(fast.is_some(), "{}", text);
                }
                if let Some(fast) = fast {
                    let slow: RequestParts<'_> = serde_json::from_str(&text)
                        .expect("serde_json accepts what the fast path accepts");
                    prop_assert_eq!(request_summary(&fast), request_summary(&slow));
                }
            }

            #[test]
            fn reply_parsing_fast_path_agrees_with_serde_json(
                value in json_value(),
                seq in proptest::option::of(any::<u64>()),
                stream in any::<bool>(),
                failure in any::<bool>(),
                layout in 0..3u8,
                damage in proptest::option::of((any::<proptest::sample::Index>(), any::<u8>(), 0..3u8)),
            ) {
                let raw = serde_json::value::to_raw_value(&value).unwrap();
                let failed = RemoteFailure::new("Boom", "mod", "it failed");
                let body = match (failure, stream, seq) {
                    (true, _, _) => ReplyBody::Failure(&failed),
                    (_, true, Some(seq)) => ReplyBody::StreamItem { seq, value: &raw },
                    (_, true, None) => ReplyBody::End { count: 3 },
                    _ => ReplyBody::Result(&raw),
                };
                let written = unwrap_fast(&encode_reply("0123abc", body)).unwrap();
                let Some(text) = relaid(written, layout, damage) else { return Ok(()) };
                let fast = parse_reply_fast(&text);
                if damage.is_none() && !failure {
                    prop_assert!(fast.is_some(), "{}", text);
                }
                if let Some(fast) = fast {
                    #[derive(Deserialize)]
                    struct Wire<'a> {
                        #[serde(rename = "_msg_id", borrow)]
                        msg_id: StrRef<'a>,
                        #[serde(default, borrow)]
                        result: Option<&'a RawValue>,
                        #[serde(default, borrow)]
                        failure: Option<StrRef<'a>>,
                        #[serde(default)]
                        ending: bool,
                        #[serde(rename = "_seq", default)]
                        seq: Option<u64>,
                    }
                    let slow: Wire<'_> = serde_json::from_str(&text)
                        .expect("serde_json accepts what the fast path accepts");
                    prop_assert_eq!(fast.msg_id.0, slow.msg_id.0);
                    prop_assert_eq!(fast.result.map(RawValue::get), slow.result.map(RawValue::get));
                    prop_assert_eq!(fast.failure.map(|f| f.0), slow.failure.map(|f| f.0));
                    prop_assert_eq!(fast.ending, slow.ending);
                    prop_assert_eq!(fast.seq, slow.seq);
                }
            }

            #[test]
            fn replies_round_trip(value in json_value(), seq in any::<u64>()) {
                let raw = serde_json::value::to_raw_value(&value).unwrap();
                for body in [ReplyBody::Result(&raw), ReplyBody::StreamItem { seq, value: &raw }] {
                    let reply = decode_reply(&encode_reply("m\\1\"", body)).unwrap();
                    prop_assert_eq!(reply.msg_id(), "m\\1\"");
                    // `null` arrives as no result, as serde reads an Option.
                    prop_assert_eq!(reply.result().unwrap_or("null"), raw.get());
                }
            }

            /// A result serialized straight into its reply is the reply of
            /// its raw value, byte for byte (only the unique ids differ).
            #[test]
            fn result_replies_are_the_raw_values_replies(value in json_value(), msg_id in ".*") {
                let raw = serde_json::value::to_raw_value(&value).unwrap();
                let typed = encode_result_reply(&msg_id, &value).unwrap();
                let reference = encode_reply(&msg_id, ReplyBody::Result(&raw));
                let without_id = |body: &[u8]| {
                    let text = std::str::from_utf8(body).unwrap().to_owned();
                    let at = text.rfind("_unique_id").unwrap();
                    text[..at].to_owned()
                };
                prop_assert_eq!(without_id(&typed), without_id(&reference));
                prop_assert_eq!(typed.len(), reference.len());
                let reply = decode_reply(&typed).unwrap();
                prop_assert_eq!(reply.msg_id(), msg_id.as_str());
                prop_assert_eq!(reply.result().unwrap_or("null"), raw.get());
            }
        }
    }
}
