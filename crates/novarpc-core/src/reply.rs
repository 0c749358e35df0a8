//! Reply correlation: a registry from message id to the caller waiting for it.
//! Drivers feed it from their reply queue; callers hold a [`ReplyReceiver`].

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Weak};
use std::task::{Poll, Waker};

use parking_lot::Mutex;

use crate::envelope::{self, Reply};

/// Waiters by message id. A waiter is removed when its receiver is dropped
/// (the caller timed out or went away), so a late reply finds nobody and is
/// dropped with a debug log instead of piling up.
#[derive(Debug, Default)]
pub struct ReplyRegistry {
    waiters: Mutex<Waiters>,
}

#[derive(Debug, Default)]
struct Waiters {
    /// Ids of 32 lowercase hex digits (novarpc's and oslo's uuid4s) by their
    /// 128 bits: a table entry of 24 bytes instead of the text's 48, which
    /// matters with 10,000 calls in flight (the table, and its copy while
    /// it grows, are the registry's memory).
    ids: HashMap<Id, Arc<Waiter>, BuildHasherDefault<IdHasher>>,
    /// Any other id (rare), as itself.
    other: HashMap<Box<str>, Arc<Waiter>>,
}

impl Waiters {
    fn get(&self, msg_id: &str) -> Option<&Arc<Waiter>> {
        match Id::parse(msg_id) {
            Some(id) => self.ids.get(&id),
            None => self.other.get(msg_id),
        }
    }

    fn len(&self) -> usize {
        self.ids.len() + self.other.len()
    }
}

/// A message id as the caller holds it: novarpc's ids (uuid4 in 32 hex
/// digits) inline, so registering copies no string; any other id as itself.
#[derive(Clone, Debug, PartialEq, Eq)]
enum MsgId {
    /// 32 lowercase hex digits ([`Id::parse`] took them).
    Hex([u8; 32]),
    Text(Box<str>),
}

impl MsgId {
    fn as_str(&self) -> &str {
        match self {
            // Made from a `&str` of 32 bytes, so UTF-8.
            MsgId::Hex(id) => std::str::from_utf8(id).unwrap_or_default(),
            MsgId::Text(text) => text,
        }
    }
}

/// The 128 bits that 32 lowercase hex digits spell, the registry's key:
/// one id, one key, and no other text has it ([`Id::parse`] refuses
/// anything but lowercase hex, which is what makes it one-to-one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Id([u64; 2]);

impl Id {
    /// The bits of `msg_id` when it is 32 lowercase hex digits.
    fn parse(msg_id: &str) -> Option<Id> {
        Id::from_digits(msg_id.as_bytes().try_into().ok()?)
    }

    /// The bits of 32 lowercase hex digits; `None` for anything else.
    fn from_digits(digits: &[u8; 32]) -> Option<Id> {
        let word = |i: usize| {
            let mut lanes = [0u8; 8];
            lanes.copy_from_slice(&digits[i * 8..i * 8 + 8]);
            hex8(u64::from_le_bytes(lanes))
        };
        let (a, b, c, d) = (word(0), word(1), word(2), word(3));
        // One test for all four: this runs on every call and every reply.
        if (a.1 | b.1 | c.1 | d.1) != 0 {
            return None;
        }
        Some(Id([
            (u64::from(a.0) << 32) | u64::from(b.0),
            (u64::from(c.0) << 32) | u64::from(d.0),
        ]))
    }
}

/// Eight lowercase hex digits (a word's lanes, the first digit lowest) as
/// 32 bits, any fixed order of nibbles keeping the key one-to-one; the
/// second value is non-zero when the text is anything else.
fn hex8(text: u64) -> (u32, u64) {
    const LANES: u64 = 0x0101_0101_0101_0101;
    // '0'..'9' keep their low nibble; 'a'..'f' (bit 6 set) add 9.
    let nibbles = (text & (0x0f * LANES)) + ((text >> 6) & LANES) * 9;
    let too_big = nibbles & (0xf0 * LANES);
    // Spelling the nibbles again must give the text back: that refuses
    // upper case and every byte that is no hex digit.
    let letters = ((nibbles + 6 * LANES) >> 4) & LANES;
    let respelled = (nibbles & (0x0f * LANES)) + 0x30 * LANES + letters * 39;
    let pairs = (nibbles | (nibbles >> 4)) & 0x00ff_00ff_00ff_00ff;
    let quads = (pairs | (pairs >> 8)) & 0x0000_ffff_0000_ffff;
    ((quads | (quads >> 16)) as u32, too_big | (respelled ^ text))
}

impl std::hash::Hash for Id {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Random bits (uuid4): mix them into every bit with a folded
        // multiply, as the table's bucket index (low bits) and tag (high
        // bits) both need.
        let [a, b] = self.0;
        let product = u128::from(a ^ 0x243f_6a88_85a3_08d3)
            * u128::from(b.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15);
        state.write_u64((product as u64) ^ ((product >> 64) as u64));
    }
}

/// The hasher of [`Id`], which hashes itself into one word.
#[derive(Debug, Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached: `Id` writes one word.
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// One caller's mailbox. Most calls get one reply, so this is a small queue
/// behind a lock rather than a channel (whose first block alone is kilobytes).
#[derive(Debug, Default)]
struct Waiter {
    state: Mutex<WaiterState>,
}

#[derive(Debug, Default)]
struct WaiterState {
    /// The next reply: most calls get only one, which needs no queue.
    first: Option<Reply>,
    /// The replies after `first`, in order (multicall streams); boxed, since
    /// every call in flight holds a waiter and most never need it.
    #[allow(clippy::box_collection)] // 8 bytes instead of 32 while unused
    more: Option<Box<VecDeque<Reply>>>,
    waker: Option<Waker>,
    closed: bool,
}

impl WaiterState {
    fn pop(&mut self) -> Option<Reply> {
        self.first
            .take()
            .or_else(|| self.more.as_mut().and_then(|more| more.pop_front()))
    }
}

impl Waiter {
    fn push(&self, reply: Reply) {
        let waker = {
            let mut state = self.state.lock();
            if state.first.is_none() && state.more.as_ref().is_none_or(|more| more.is_empty()) {
                state.first = Some(reply);
            } else {
                state.more.get_or_insert_default().push_back(reply);
            }
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn close(&self) {
        let waker = {
            let mut state = self.state.lock();
            state.closed = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl ReplyRegistry {
    /// An empty registry, shared between a driver's reply consumer and the
    /// transport handle.
    pub fn new() -> Arc<Self> {
        Arc::new(ReplyRegistry::default())
    }

    /// Registers a waiter for `msg_id`.
    pub fn register(self: &Arc<Self>, msg_id: &str) -> ReplyReceiver {
        let waiter = Arc::new(Waiter::default());
        let key = match Id::parse(msg_id) {
            Some(id) => {
                self.waiters.lock().ids.insert(id, waiter.clone());
                MsgId::Hex(msg_id.as_bytes().try_into().expect("32 bytes, parsed"))
            }
            None => {
                self.waiters
                    .lock()
                    .other
                    .insert(msg_id.into(), waiter.clone());
                MsgId::Text(msg_id.into())
            }
        };
        ReplyReceiver {
            key,
            waiter,
            registry: Arc::downgrade(self),
        }
    }

    /// Hands a reply to its waiter; returns false (and logs) when nobody waits.
    pub fn deliver(&self, reply: Reply) -> bool {
        let waiter = self.waiters.lock().get(reply.msg_id()).cloned();
        match waiter {
            Some(waiter) => {
                waiter.push(reply);
                true
            }
            None => {
                tracing::debug!(msg_id = %reply.msg_id(), "dropping a reply nobody waits for (late or duplicate)");
                false
            }
        }
    }

    /// Decodes a reply body and hands it to its waiter; malformed replies are
    /// logged and dropped.
    pub fn deliver_body(&self, body: &[u8]) -> bool {
        match envelope::decode_reply(body) {
            Ok(reply) => self.deliver(reply),
            Err(error) => {
                tracing::warn!(%error, "dropping a malformed reply");
                false
            }
        }
    }

    /// Number of callers waiting.
    pub fn len(&self) -> usize {
        self.waiters.lock().len()
    }

    /// Whether no caller is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends every waiter: their receivers yield `None`.
    pub fn close_all(&self) {
        let waiters = std::mem::take(&mut *self.waiters.lock());
        for waiter in waiters.ids.values().chain(waiters.other.values()) {
            waiter.close();
        }
    }
}

/// The caller's end: replies to one message id.
#[derive(Debug)]
pub struct ReplyReceiver {
    key: MsgId,
    waiter: Arc<Waiter>,
    registry: Weak<ReplyRegistry>,
}

impl ReplyReceiver {
    /// The message id the replies are correlated by (the request's `_msg_id`).
    pub fn msg_id(&self) -> &str {
        self.key.as_str()
    }

    /// The next reply, or `None` when the transport closed.
    pub async fn recv(&mut self) -> Option<Reply> {
        poll_fn(|cx| {
            let mut state = self.waiter.state.lock();
            if let Some(reply) = state.pop() {
                Poll::Ready(Some(reply))
            } else if state.closed || self.registry.strong_count() == 0 {
                Poll::Ready(None)
            } else {
                if !state
                    .waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    state.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        })
        .await
    }
}

impl Drop for ReplyReceiver {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.upgrade() {
            let mut waiters = registry.waiters.lock();
            match &self.key {
                MsgId::Hex(digits) => {
                    // Parsed when registered: the same digits, the same key.
                    if let Some(id) = Id::from_digits(digits) {
                        waiters.ids.remove(&id);
                    }
                }
                MsgId::Text(text) => {
                    waiters.other.remove(text);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{encode_reply, null_value, ReplyBody};

    #[tokio::test]
    async fn late_replies_are_dropped_not_leaked() {
        let registry = ReplyRegistry::new();
        let mut receiver = registry.register("m1");
        let null = null_value();
        assert!(registry.deliver_body(&encode_reply("m1", ReplyBody::Result(&null))));
        assert!(receiver.recv().await.unwrap().ending());
        drop(receiver);
        assert!(registry.is_empty());
        assert!(!registry.deliver_body(&encode_reply("m1", ReplyBody::Result(&null))));
        assert!(!registry.deliver_body(b"garbage"));
        assert!(registry.is_empty());
    }

    #[tokio::test]
    async fn uuid_and_other_ids_are_told_apart() {
        let registry = ReplyRegistry::new();
        let id = crate::new_uuid_hex();
        let upper = id.to_uppercase();
        let mut by_id = registry.register(&id);
        let mut by_upper = registry.register(&upper);
        let mut other = registry.register("m1");
        assert_eq!(registry.len(), 3);
        let null = null_value();
        for msg_id in [&upper, "m1", &id, "m2"] {
            registry.deliver_body(&encode_reply(msg_id, ReplyBody::Result(&null)));
        }
        for receiver in [&mut by_id, &mut by_upper, &mut other] {
            let msg_id = receiver.msg_id().to_owned();
            assert_eq!(receiver.recv().await.unwrap().msg_id(), msg_id);
        }
        // A stream's replies come in order.
        for seq in 0..3 {
            let reply = ReplyBody::StreamItem { seq, value: &null };
            registry.deliver_body(&encode_reply(&id, reply));
        }
        for seq in 0..3 {
            assert_eq!(by_id.recv().await.unwrap().seq(), Some(seq));
        }
        drop((by_id, by_upper, other));
        assert!(registry.is_empty());
    }

    /// What `Id::parse` must do, the slow way: lowercase hex digits only.
    fn is_lower_hex(text: &str) -> bool {
        text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }

    #[test]
    fn an_id_is_parsed_only_from_lowercase_hex() {
        let id = crate::new_uuid_hex();
        assert!(Id::parse(&id).is_some());
        assert!(Id::parse(&"0".repeat(32)).is_some());
        assert!(Id::parse(&"f".repeat(32)).is_some());
        for bad in ["G", "g", "A", "F", ":", "/", "`", "o", " ", "\u{7f}"] {
            let text = format!("{}{bad}", &id[..31]);
            assert!(Id::parse(&text).is_none(), "{text}");
        }
        assert!(Id::parse(&id[..31]).is_none());
        assert!(Id::parse(&format!("{id}0")).is_none());
        assert!(Id::parse("0123456789abcdef0123456789abcdeé").is_none());
    }

    proptest::proptest! {
        /// Parsed exactly when lowercase hex, and one key per text: two
        /// texts never share a key (ids from a small alphabet around the
        /// hex digits, so that near misses and collisions are tried).
        #[test]
        fn ids_and_keys_are_one_to_one(
            a in "[0-9a-gA-G:/`@]{32}|[0-9a-f]{32}",
            b in "[0-9a-f]{32}",
            flips in proptest::collection::vec((0usize..32, "[0-9a-f]"), 0..3),
        ) {
            proptest::prop_assert_eq!(Id::parse(&a).is_some(), is_lower_hex(&a));
            let mut c = b.clone().into_bytes();
            for (at, digit) in &flips {
                c[*at] = digit.as_bytes()[0];
            }
            let c = String::from_utf8(c).unwrap();
            let (kb, kc) = (Id::parse(&b).unwrap(), Id::parse(&c).unwrap());
            proptest::prop_assert_eq!(kb == kc, b == c);
            if let Some(ka) = Id::parse(&a) {
                proptest::prop_assert_eq!(ka == kb, a == b);
            }
        }
    }
}
