//! The `memory` driver: an in-process broker with the topology of oslo's rabbit
//! driver (topic exchange, `topic` and `topic.server` queues, one fanout queue
//! per listener, one reply queue per transport). Every message is encoded in the
//! oslo envelope and decoded again, so what would not survive a broker fails here
//! too. It is the embedded default, for examples and for services' unit tests.
//!
//! Transports naming the same in-process broker share it: the host of a
//! `memory://NAME` transport URL (with its path, `memory://NAME/VHOST`, as a
//! separate broker per virtual host) or `[memory] broker = "NAME"`. So one
//! process can hold two "cells", `memory://cell0` and `memory://cell1`.

mod broker;

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock as OnceCell;
use tokio::sync::mpsc;

use crate::config::{CommonOptions, Config, ConfigError};
use crate::driver::{
    CallInfo, Capabilities, Delivery, Driver, DriverDescriptor, Listener, OutgoingRequest,
};
use crate::error::{Error, ErrorKind, Result};
use crate::notify::Priority;
use crate::reply::ReplyRegistry;
use crate::target::Target;

use broker::{Broker, Queue, QueueKind};

const BACKEND: &str = "memory";

/// What the in-process broker can do: everything but crossing processes.
pub const CAPABILITIES: Capabilities = Capabilities {
    publisher_confirms: false,
    cross_process: false,
    redelivers: false,
    ..Capabilities::ALL
};

/// The driver's registration.
pub const DESCRIPTOR: DriverDescriptor = DriverDescriptor {
    name: BACKEND,
    aliases: &["fake", "in-memory"],
    url_schemes: &["memory", "fake"],
    config_section: "memory",
    capabilities: |_| Ok(CAPABILITIES),
    validate: |config| broker_name(config).map(|_| ()),
    resolved_options: |config| {
        let options: MemoryOptions = config.section("memory")?;
        Ok(toml::to_string(&options).unwrap_or_default())
    },
    connect: |config| {
        Box::pin(async move {
            let driver: Arc<dyn Driver> = Arc::new(MemoryDriver::from_config(&config)?);
            Ok(driver)
        })
    },
};

/// Options of the `[memory]` table.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryOptions {
    /// Transports naming the same broker share it (within one process); without
    /// a name each transport has a broker of its own. A `memory://NAME`
    /// transport URL names the broker instead.
    pub broker: Option<String>,
}

/// The in-process broker a configuration names: the transport URL's host
/// (and path), else `[memory] broker`, else none (a broker of its own).
fn broker_name(config: &Config) -> std::result::Result<Option<String>, ConfigError> {
    let options: MemoryOptions = config.section("memory")?;
    let Some(url) = &config.common().transport_url else {
        return Ok(options.broker);
    };
    match url.hosts.as_slice() {
        [] => Ok(options.broker),
        [host] => Ok(Some(match &url.virtual_host {
            Some(vhost) => format!("{}/{vhost}", host.hostname),
            None => host.hostname.clone(),
        })),
        _ => Err(ConfigError::InvalidUrl {
            url: url.to_string(),
            reason: "a memory:// URL names one in-process broker (memory://NAME)".into(),
        }),
    }
}

static NAMED_BROKERS: Mutex<Option<HashMap<String, Weak<Broker>>>> = Mutex::new(None);

fn named_broker(name: &str) -> Arc<Broker> {
    let mut brokers = NAMED_BROKERS.lock();
    let brokers = brokers.get_or_insert_with(HashMap::new);
    brokers.retain(|_, broker| broker.strong_count() > 0);
    if let Some(broker) = brokers.get(name).and_then(Weak::upgrade) {
        return broker;
    }
    let broker = Arc::new(Broker::default());
    brokers.insert(name.to_owned(), Arc::downgrade(&broker));
    broker
}

/// The in-process driver.
#[derive(Debug)]
pub struct MemoryDriver {
    broker: Arc<Broker>,
    options: CommonOptions,
    reply_queue: OnceCell<String>,
    replies: Arc<ReplyRegistry>,
}

impl MemoryDriver {
    /// A transport with a broker of its own.
    pub fn new(options: CommonOptions) -> Self {
        MemoryDriver::with_broker(Arc::new(Broker::default()), options)
    }

    fn with_broker(broker: Arc<Broker>, options: CommonOptions) -> Self {
        MemoryDriver {
            broker,
            options,
            reply_queue: OnceCell::new(),
            replies: ReplyRegistry::new(),
        }
    }

    /// A driver from the `[DEFAULT]` options and the `[memory]` table: a
    /// `memory://NAME` transport URL, or `broker = "NAME"`, joins that named
    /// in-process broker.
    pub fn from_config(config: &Config) -> std::result::Result<Self, ConfigError> {
        let broker = match broker_name(config)? {
            Some(name) => named_broker(&name),
            None => Arc::new(Broker::default()),
        };
        Ok(MemoryDriver::with_broker(broker, config.common().clone()))
    }

    /// Another transport on the same in-process broker (as a second process
    /// would connect to the same RabbitMQ).
    pub fn connect_sibling(&self) -> Self {
        MemoryDriver::with_broker(self.broker.clone(), self.options.clone())
    }

    /// Publishes raw bytes to `exchange` with `routing_key`, bypassing the
    /// envelope: for tests that put garbage on a queue.
    pub fn publish_raw(&self, exchange: &str, routing_key: &str, body: Bytes) -> bool {
        self.broker.publish(exchange, routing_key, None, body)
    }

    /// Names of the queues that exist now.
    pub fn queue_names(&self) -> Vec<String> {
        self.broker.queue_names()
    }

    fn exchange<'a>(&'a self, target: &'a Target) -> &'a str {
        target.exchange_or(&self.options.control_exchange)
    }

    fn reply_queue(&self) -> &str {
        self.reply_queue.get_or_init(|| {
            let name = format!("reply_{}", crate::new_uuid_hex());
            self.broker.add_reply_queue(&name, &self.replies);
            name
        })
    }

    fn route(&self, target: &Target, body: Bytes) -> bool {
        if target.fanout {
            let exchange = target.fanout_exchange();
            self.broker
                .publish(&exchange, "", target.server.as_deref(), body)
        } else {
            let exchange = self.exchange(target);
            self.broker
                .publish(exchange, &target.routing_key(), None, body)
        }
    }
}

#[async_trait]
impl Driver for MemoryDriver {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn options(&self) -> &CommonOptions {
        &self.options
    }

    async fn reply_address(&self) -> Result<&str> {
        Ok(self.reply_queue())
    }

    fn replies(&self) -> &Arc<ReplyRegistry> {
        &self.replies
    }

    async fn send(&self, target: &Target, request: OutgoingRequest<'_>) -> Result<()> {
        if !target.fanout {
            // A cast waits in its target's shared queue for the first server,
            // as on the brokers.
            let key = target.routing_key();
            self.broker
                .declare_queue(&key, QueueKind::Shared, self.exchange(target), &[&*key]);
        }
        if !self.route(target, request.body) {
            tracing::debug!(target_ = %target, "fanout cast dropped: nobody listens");
        }
        Ok(())
    }

    async fn send_call(
        &self,
        target: &Target,
        request: OutgoingRequest<'_>,
        _call: CallInfo<'_>,
    ) -> Result<()> {
        self.route(target, request.body);
        Ok(())
    }

    async fn send_reply(&self, reply_to: &str, _msg_id: &str, body: Bytes) -> Result<()> {
        if self.broker.deliver_reply(reply_to, &body) {
            Ok(())
        } else {
            Err(Error::transport_of_kind(
                BACKEND,
                ErrorKind::Undeliverable,
                format!("reply queue `{reply_to}` does not exist (the caller went away)"),
            ))
        }
    }

    async fn send_notification(
        &self,
        target: &Target,
        priority: Priority,
        body: Bytes,
    ) -> Result<()> {
        let key = target.notification_key(priority);
        let exchange = self.exchange(target);
        // Like oslo's notifier, declare the queue so nothing is lost before a
        // listener appears.
        self.broker
            .declare_queue(&key, QueueKind::Shared, exchange, &[key.as_str()]);
        self.broker.publish(exchange, &key, None, body);
        Ok(())
    }

    async fn listen(&self, target: &Target) -> Result<Box<dyn Listener>> {
        let exchange = self.exchange(target);
        let topic = target.topic.as_str();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut subscriptions = Vec::new();
        let mut subscribe = |queue: Arc<Queue>| {
            let source = subscriptions.len();
            let consumer = queue.add_consumer(tx.clone(), source);
            subscriptions.push((queue, consumer));
        };
        subscribe(
            self.broker
                .declare_queue(topic, QueueKind::Shared, exchange, &[topic]),
        );
        if let Some(server) = &target.server {
            let queue = format!("{topic}.{server}");
            subscribe(self.broker.declare_queue(
                &queue,
                QueueKind::Shared,
                exchange,
                &[queue.as_str()],
            ));
        }
        let fanout = format!("{topic}_fanout_{}", crate::new_uuid_hex());
        subscribe(self.broker.declare_owned_queue(
            &fanout,
            QueueKind::Exclusive,
            &target.fanout_exchange(),
            &[""],
            target.server.as_deref(),
        ));
        Ok(Box::new(MemoryListener {
            broker: self.broker.clone(),
            rx,
            subscriptions,
            stopped: false,
        }))
    }

    async fn listen_for_notifications(
        &self,
        targets: &[Target],
        priorities: &[Priority],
        pool: Option<&str>,
    ) -> Result<Box<dyn Listener>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut subscriptions: Vec<(Arc<Queue>, u64)> = Vec::new();
        for target in targets {
            let exchange = self.exchange(target);
            for priority in priorities {
                let key = target.notification_key(*priority);
                let queue_name = pool.unwrap_or(&key);
                let queue =
                    self.broker
                        .declare_queue(queue_name, QueueKind::Shared, exchange, &[&*key]);
                if subscriptions.iter().any(|(q, _)| Arc::ptr_eq(q, &queue)) {
                    continue;
                }
                let consumer = queue.add_consumer(tx.clone(), subscriptions.len());
                subscriptions.push((queue, consumer));
            }
        }
        Ok(Box::new(MemoryListener {
            broker: self.broker.clone(),
            rx,
            subscriptions,
            stopped: false,
        }))
    }

    async fn tap(&self, target: &Target) -> Result<Box<dyn Listener>> {
        let exchange = self.exchange(target);
        let (tx, rx) = mpsc::unbounded_channel();
        let name = format!("novarpc_tap_{}", crate::new_uuid_hex());
        let mut keys = vec![target.topic.clone()];
        if target.server.is_some() {
            keys.push(target.routing_key().into_owned());
        }
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let queue = self
            .broker
            .declare_queue(&name, QueueKind::Exclusive, exchange, &keys);
        self.broker.declare_queue(
            &name,
            QueueKind::Exclusive,
            &target.fanout_exchange(),
            &[""],
        );
        let consumer = queue.add_consumer(tx, 0);
        Ok(Box::new(MemoryListener {
            broker: self.broker.clone(),
            rx,
            subscriptions: vec![(queue, consumer)],
            stopped: false,
        }))
    }

    async fn delete_target(&self, target: &Target) -> Result<()> {
        self.broker.delete_queue_named(&target.topic);
        if target.server.is_some() {
            self.broker.delete_queue_named(&target.routing_key());
        }
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        if let Some(name) = self.reply_queue.get() {
            self.broker.remove_reply_queue(name);
        }
        self.replies.close_all();
        Ok(())
    }
}

impl Drop for MemoryDriver {
    fn drop(&mut self) {
        if let Some(name) = self.reply_queue.get() {
            self.broker.remove_reply_queue(name);
        }
    }
}

struct MemoryListener {
    broker: Arc<Broker>,
    rx: mpsc::UnboundedReceiver<(usize, Bytes)>,
    subscriptions: Vec<(Arc<Queue>, u64)>,
    stopped: bool,
}

impl MemoryListener {
    fn detach(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        for (queue, consumer) in &self.subscriptions {
            queue.remove_consumer(*consumer);
        }
        // Hand back what was routed to us but not taken, in order, as a broker
        // requeues a cancelled consumer's unacknowledged messages.
        self.rx.close();
        while let Ok((source, body)) = self.rx.try_recv() {
            let queue = &self.subscriptions[source].0;
            if queue.kind() == QueueKind::Shared {
                queue.publish(body);
            }
        }
        for (queue, _) in &self.subscriptions {
            if queue.kind() == QueueKind::Exclusive {
                self.broker.delete_queue(queue);
            }
        }
    }
}

#[async_trait]
impl Listener for MemoryListener {
    async fn next(&mut self) -> Option<Delivery> {
        if self.stopped {
            return None;
        }
        self.rx.recv().await.map(|(_, body)| Delivery::new(body))
    }

    async fn stop(&mut self) -> Result<()> {
        self.detach();
        Ok(())
    }
}

impl Drop for MemoryListener {
    fn drop(&mut self) {
        self.detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml_str(text, "m.toml").unwrap()
    }

    #[test]
    fn a_memory_url_names_the_in_process_broker() {
        let named = |text: &str| broker_name(&config(text));
        assert_eq!(
            named("[DEFAULT]\ntransport_url = \"memory://cell1\"\n").unwrap(),
            Some("cell1".to_owned())
        );
        assert_eq!(
            named("[DEFAULT]\ntransport_url = \"memory://local/cell1\"\n").unwrap(),
            Some("local/cell1".to_owned())
        );
        // The URL wins over [memory] broker; without a host, the table decides.
        assert_eq!(
            named("[DEFAULT]\ntransport_url = \"memory://a\"\n[memory]\nbroker = \"b\"\n").unwrap(),
            Some("a".to_owned())
        );
        assert_eq!(
            named("[DEFAULT]\ntransport_url = \"memory://\"\n[memory]\nbroker = \"b\"\n").unwrap(),
            Some("b".to_owned())
        );
        assert_eq!(named("").unwrap(), None);
        assert!(named("[DEFAULT]\ntransport_url = \"memory://a,b\"\n").is_err());
    }
}
