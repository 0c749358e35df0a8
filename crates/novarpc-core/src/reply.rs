//! Reply correlation: a registry from message id to the caller waiting for it.
//! Drivers feed it from their reply queue; callers hold a [`ReplyReceiver`].

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::envelope::{self, Reply};

/// Waiters by message id. A waiter is removed when its receiver is dropped
/// (the caller timed out or went away), so a late reply finds nobody and is
/// dropped with a debug log instead of piling up.
#[derive(Debug, Default)]
pub struct ReplyRegistry {
    waiters: Mutex<HashMap<String, mpsc::UnboundedSender<Reply>>>,
}

impl ReplyRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(ReplyRegistry::default())
    }

    /// Registers a waiter for `msg_id`.
    pub fn register(self: &Arc<Self>, msg_id: String) -> ReplyReceiver {
        let (tx, rx) = mpsc::unbounded_channel();
        self.waiters.lock().insert(msg_id.clone(), tx);
        ReplyReceiver {
            msg_id,
            rx,
            registry: Arc::downgrade(self),
        }
    }

    /// Hands a reply to its waiter; returns false (and logs) when nobody waits.
    pub fn deliver(&self, reply: Reply) -> bool {
        let waiters = self.waiters.lock();
        match waiters.get(&reply.msg_id) {
            Some(tx) => tx.send(reply).is_ok(),
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

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends every waiter: their receivers yield `None`.
    pub fn close_all(&self) {
        self.waiters.lock().clear();
    }
}

/// The caller's end: replies to one message id.
#[derive(Debug)]
pub struct ReplyReceiver {
    msg_id: String,
    rx: mpsc::UnboundedReceiver<Reply>,
    registry: Weak<ReplyRegistry>,
}

impl ReplyReceiver {
    pub fn msg_id(&self) -> &str {
        &self.msg_id
    }

    /// The next reply, or `None` when the transport closed.
    pub async fn recv(&mut self) -> Option<Reply> {
        self.rx.recv().await
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
