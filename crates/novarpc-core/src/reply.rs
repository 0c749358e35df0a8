//! Reply correlation: a registry from message id to the caller waiting for it.
//! Drivers feed it from their reply queue; callers hold a [`ReplyReceiver`].

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, Weak};
use std::task::{Poll, Waker};

use parking_lot::Mutex;

use crate::envelope::{self, Reply};

/// Waiters by message id. A waiter is removed when its receiver is dropped
/// (the caller timed out or went away), so a late reply finds nobody and is
/// dropped with a debug log instead of piling up.
#[derive(Debug, Default)]
pub struct ReplyRegistry {
    waiters: Mutex<HashMap<Key, Arc<Waiter>, BuildHasherDefault<KeyHasher>>>,
}

/// A waiter's message id as the registry keys it: novarpc's ids (uuid4 in
/// 32 hex digits) inline, so registering and looking up copy no string and
/// hash a few words; any other id as itself.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Key {
    Id([u8; 32]),
    Text(Box<str>),
}

impl Key {
    fn of(msg_id: &str) -> Key {
        match msg_id.as_bytes().try_into() {
            Ok(id) => Key::Id(id),
            Err(_) => Key::Text(msg_id.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Made from a `&str` of 32 bytes, so UTF-8.
            Key::Id(id) => std::str::from_utf8(id).unwrap_or_default(),
            Key::Text(text) => text,
        }
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            Key::Id(id) => {
                // Hex digits of random bits: fold the words, then mix them
                // into every bit (a folded multiply), which the table's
                // bucket index (low bits) and tag (high bits) both need.
                let word = |i: usize| {
                    u64::from_le_bytes(id[i * 8..i * 8 + 8].try_into().expect("eight bytes"))
                };
                let product = u128::from(word(0) ^ word(2).rotate_left(32))
                    * u128::from(word(1) ^ word(3).rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15);
                state.write_u64((product as u64) ^ ((product >> 64) as u64));
            }
            Key::Text(text) => text.hash(state),
        }
    }
}

/// The registry's hasher: [`Key`] hashes itself; only ids that novarpc did
/// not make (rare) go through FNV-1a here.
#[derive(Debug)]
struct KeyHasher(u64);

impl Default for KeyHasher {
    fn default() -> Self {
        KeyHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
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
    /// The replies after `first`, in order (multicall streams).
    more: VecDeque<Reply>,
    waker: Option<Waker>,
    closed: bool,
}

impl WaiterState {
    fn pop(&mut self) -> Option<Reply> {
        self.first.take().or_else(|| self.more.pop_front())
    }
}

impl Waiter {
    fn push(&self, reply: Reply) {
        let waker = {
            let mut state = self.state.lock();
            if state.first.is_none() && state.more.is_empty() {
                state.first = Some(reply);
            } else {
                state.more.push_back(reply);
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
        let key = Key::of(msg_id);
        self.waiters.lock().insert(key.clone(), waiter.clone());
        ReplyReceiver {
            key,
            waiter,
            registry: Arc::downgrade(self),
        }
    }

    /// Hands a reply to its waiter; returns false (and logs) when nobody waits.
    pub fn deliver(&self, reply: Reply) -> bool {
        let key = Key::of(reply.msg_id());
        let waiter = self.waiters.lock().get(&key).cloned();
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
        for waiter in waiters.values() {
            waiter.close();
        }
    }
}

/// The caller's end: replies to one message id.
#[derive(Debug)]
pub struct ReplyReceiver {
    key: Key,
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
            registry.waiters.lock().remove(&self.key);
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
}
