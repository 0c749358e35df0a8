//! Reply correlation: a registry from message id to the caller waiting for it.
//! Drivers feed it from their reply queue; callers hold a [`ReplyReceiver`].

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::sync::{Arc, Weak};
use std::task::{Poll, Waker};

use parking_lot::Mutex;

use crate::envelope::{self, Reply};

/// Waiters by message id. A waiter is removed when its receiver is dropped
/// (the caller timed out or went away), so a late reply finds nobody and is
/// dropped with a debug log instead of piling up.
#[derive(Debug, Default)]
pub struct ReplyRegistry {
    waiters: Mutex<HashMap<String, Arc<Waiter>>>,
}

/// One caller's mailbox. Most calls get one reply, so this is a small queue
/// behind a lock rather than a channel (whose first block alone is kilobytes).
#[derive(Debug, Default)]
struct Waiter {
    state: Mutex<WaiterState>,
}

#[derive(Debug, Default)]
struct WaiterState {
    replies: VecDeque<Reply>,
    waker: Option<Waker>,
    closed: bool,
}

impl Waiter {
    fn push(&self, reply: Reply) {
        let waker = {
            let mut state = self.state.lock();
            state.replies.push_back(reply);
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
    pub fn register(self: &Arc<Self>, msg_id: String) -> ReplyReceiver {
        let waiter = Arc::new(Waiter::default());
        self.waiters.lock().insert(msg_id.clone(), waiter.clone());
        ReplyReceiver {
            msg_id,
            waiter,
            registry: Arc::downgrade(self),
        }
    }

    /// Hands a reply to its waiter; returns false (and logs) when nobody waits.
    pub fn deliver(&self, reply: Reply) -> bool {
        let waiter = self.waiters.lock().get(&reply.msg_id).cloned();
        match waiter {
            Some(waiter) => {
                waiter.push(reply);
                true
            }
            None => {
                tracing::debug!(msg_id = %reply.msg_id, "dropping a reply nobody waits for (late or duplicate)");
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
    msg_id: String,
    waiter: Arc<Waiter>,
    registry: Weak<ReplyRegistry>,
}

impl ReplyReceiver {
    /// The message id the replies are correlated by (the request's `_msg_id`).
    pub fn msg_id(&self) -> &str {
        &self.msg_id
    }

    /// The next reply, or `None` when the transport closed.
    pub async fn recv(&mut self) -> Option<Reply> {
        poll_fn(|cx| {
            let mut state = self.waiter.state.lock();
            if let Some(reply) = state.replies.pop_front() {
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
            registry.waiters.lock().remove(&self.msg_id);
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
        let mut receiver = registry.register("m1".into());
        let null = null_value();
        assert!(registry.deliver_body(&encode_reply("m1", ReplyBody::Result(&null))));
        assert!(receiver.recv().await.unwrap().ending);
        drop(receiver);
        assert!(registry.is_empty());
        assert!(!registry.deliver_body(&encode_reply("m1", ReplyBody::Result(&null))));
        assert!(!registry.deliver_body(b"garbage"));
        assert!(registry.is_empty());
    }
}
