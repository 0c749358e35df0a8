use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;

use crate::reply::ReplyRegistry;
use crate::FastMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum QueueKind {
    /// Outlives its consumers (topic, server and notification queues).
    Shared,
    /// Deleted with its only consumer (fanout queues).
    Exclusive,
}

type ConsumerTx = mpsc::UnboundedSender<(usize, Bytes)>;

#[derive(Debug)]
struct Consumer {
    id: u64,
    tx: ConsumerTx,
    source: usize,
}

#[derive(Debug, Default)]
struct QueueState {
    consumers: Vec<Consumer>,
    next: usize,
    next_id: u64,
    backlog: VecDeque<Bytes>,
}

/// A queue: round-robin over its consumers, a backlog while it has none.
#[derive(Debug)]
pub(super) struct Queue {
    name: String,
    kind: QueueKind,
    /// For fanout queues: the server whose listener owns it.
    owner: Option<String>,
    state: Mutex<QueueState>,
}

impl Queue {
    pub(super) fn kind(&self) -> QueueKind {
        self.kind
    }

    pub(super) fn publish(&self, mut body: Bytes) {
        let mut state = self.state.lock();
        loop {
            if state.consumers.is_empty() {
                state.backlog.push_back(body);
                return;
            }
            let index = state.next % state.consumers.len();
            state.next = state.next.wrapping_add(1);
            let consumer = &state.consumers[index];
            match consumer.tx.send((consumer.source, body)) {
                Ok(()) => return,
                Err(mpsc::error::SendError((_, returned))) => {
                    body = returned;
                    state.consumers.remove(index);
                }
            }
        }
    }

    pub(super) fn add_consumer(&self, tx: ConsumerTx, source: usize) -> u64 {
        let mut state = self.state.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.consumers.push(Consumer { id, tx, source });
        let backlog = std::mem::take(&mut state.backlog);
        drop(state);
        for body in backlog {
            self.publish(body);
        }
        id
    }

    pub(super) fn remove_consumer(&self, id: u64) {
        self.state.lock().consumers.retain(|c| c.id != id);
    }
}

/// exchange → routing key → bound queues.
type Bindings = FastMap<String, FastMap<String, Vec<Arc<Queue>>>>;

/// Exchanges are implicit: a binding maps (exchange, routing key) to queues.
/// Topic exchanges here match routing keys exactly (novarpc uses no wildcards);
/// fanout exchanges bind with the key "".
#[derive(Debug, Default)]
pub(super) struct Broker {
    bindings: RwLock<Bindings>,
    queues: Mutex<FastMap<String, Arc<Queue>>>,
    reply_queues: RwLock<FastMap<String, Weak<ReplyRegistry>>>,
}

impl Broker {
    /// Declares `name` (or returns the existing queue) and binds it to
    /// `exchange` with each key.
    pub(super) fn declare_queue(
        &self,
        name: &str,
        kind: QueueKind,
        exchange: &str,
        keys: &[&str],
    ) -> Arc<Queue> {
        self.declare_owned_queue(name, kind, exchange, keys, None)
    }

    pub(super) fn declare_owned_queue(
        &self,
        name: &str,
        kind: QueueKind,
        exchange: &str,
        keys: &[&str],
        owner: Option<&str>,
    ) -> Arc<Queue> {
        let queue = self
            .queues
            .lock()
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(Queue {
                    name: name.to_owned(),
                    kind,
                    owner: owner.map(str::to_owned),
                    state: Mutex::default(),
                })
            })
            .clone();
        let mut bindings = self.bindings.write();
        let exchange = bindings.entry(exchange.to_owned()).or_default();
        for key in keys {
            let bound = exchange.entry((*key).to_owned()).or_default();
            if !bound.iter().any(|q| Arc::ptr_eq(q, &queue)) {
                bound.push(queue.clone());
            }
        }
        queue
    }

    /// Routes `body`; returns whether any queue took it. `server` restricts a
    /// fanout to the queues owned by that server's listeners.
    pub(super) fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        server: Option<&str>,
        body: Bytes,
    ) -> bool {
        let bindings = self.bindings.read();
        let Some(queues) = bindings.get(exchange).and_then(|e| e.get(routing_key)) else {
            return false;
        };
        let mut targets = queues
            .iter()
            .filter(|queue| server.is_none() || queue.owner.as_deref() == server)
            .peekable();
        let routed = targets.peek().is_some();
        // The last queue takes the body itself: a clone of a `Bytes` made
        // from a `Vec` allocates its shared part, one more allocation (kept
        // while the message waits) for every message routed to one queue.
        while let Some(queue) = targets.next() {
            if targets.peek().is_some() {
                queue.publish(body.clone());
            } else {
                queue.publish(body);
                break;
            }
        }
        routed
    }

    pub(super) fn delete_queue(&self, queue: &Arc<Queue>) {
        self.queues.lock().remove(&queue.name);
        let mut bindings = self.bindings.write();
        for exchange in bindings.values_mut() {
            for bound in exchange.values_mut() {
                bound.retain(|q| !Arc::ptr_eq(q, queue));
            }
            exchange.retain(|_, bound| !bound.is_empty());
        }
        bindings.retain(|_, exchange| !exchange.is_empty());
    }

    pub(super) fn delete_queue_named(&self, name: &str) {
        let queue = self.queues.lock().get(name).cloned();
        if let Some(queue) = queue {
            self.delete_queue(&queue);
        }
    }

    pub(super) fn queue_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.queues.lock().keys().cloned().collect();
        names.extend(self.reply_queues.read().keys().cloned());
        names.sort();
        names
    }

    pub(super) fn add_reply_queue(&self, name: &str, registry: &Arc<ReplyRegistry>) {
        self.reply_queues
            .write()
            .insert(name.to_owned(), Arc::downgrade(registry));
    }

    pub(super) fn remove_reply_queue(&self, name: &str) {
        self.reply_queues.write().remove(name);
    }

    /// Delivers a reply to the reply queue `name`; false when it is gone.
    pub(super) fn deliver_reply(&self, name: &str, body: &[u8]) -> bool {
        let registry = self.reply_queues.read().get(name).and_then(Weak::upgrade);
        match registry {
            Some(registry) => {
                registry.deliver_body(body);
                true
            }
            None => false,
        }
    }
}
