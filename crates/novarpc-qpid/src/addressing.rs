//! Where Nova's nodes live on each broker. AMQP 1.0 leaves node names to the
//! broker, so the mapping is a profile chosen in `[qpid] addressing` (and,
//! for `generic`, the prefixes and capabilities in `[qpid.generic]`).

use novarpc_core::Capabilities;
use serde::{Deserialize, Serialize};

/// A broker's address syntax.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressingProfile {
    /// RabbitMQ 3.x's `rabbitmq_amqp1_0` plugin (v1 addresses): `/queue/NAME`
    /// declares the queue, `/topic/KEY` routes through `amq.topic` and gives
    /// each receiver a private queue. No dynamic reply nodes.
    #[default]
    Rabbitmq3,
    /// RabbitMQ 4.x native AMQP 1.0 (v2 addresses): `/queues/NAME` and
    /// `/exchanges/amq.topic/KEY`. v2 addresses declare nothing, so the
    /// driver declares queues and bindings through the broker's
    /// `/management` node: durable shared queues, and exclusive reply and
    /// fanout queues that go away with the connection.
    Rabbitmq4,
    /// ActiveMQ classic and Artemis: `queue://NAME`, `topic://NAME`, and a
    /// dynamic (broker-named, temporary) reply queue per process.
    Activemq,
    /// Any AMQP 1.0 broker that creates nodes on attach, described by
    /// `[qpid.generic]`: prefixes for anycast and multicast addresses (no
    /// multicast prefix: the broker has none, and fanout is unsupported),
    /// terminus capabilities, and a dynamic or named reply node.
    Generic,
}

/// How a `generic` broker names nodes (`[qpid.generic]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenericAddressing {
    /// Put before a shared queue's name (`""`, `queue://`, `/queues/` ...).
    pub anycast_prefix: String,
    /// Put before a multicast key; absent when the broker has no multicast
    /// (then fanout casts and fanout receivers are unsupported).
    pub multicast_prefix: Option<String>,
    /// Terminus capability announced on anycast nodes (Artemis: `queue`).
    pub anycast_capability: Option<String>,
    /// Terminus capability announced on multicast nodes (Artemis: `topic`).
    pub multicast_capability: Option<String>,
    /// The reply node: `dynamic` (named by the broker, gone with the link) or
    /// `queue` (a named anycast node of the process's own).
    pub reply: GenericReply,
}

impl Default for GenericAddressing {
    fn default() -> Self {
        GenericAddressing {
            anycast_prefix: String::new(),
            multicast_prefix: None,
            anycast_capability: None,
            multicast_capability: None,
            reply: GenericReply::Dynamic,
        }
    }
}

/// The kind of reply node of a `generic` broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GenericReply {
    /// A dynamic node the broker names on attach.
    Dynamic,
    /// A named anycast node (`reply_<uuid>`).
    Queue,
}

/// A node to attach a link to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The node's address.
    pub address: String,
    /// Terminus capability naming the node's kind, for brokers that want it
    /// (Artemis reads `queue`/`topic`).
    pub capability: Option<String>,
    /// The queue to declare (through the broker's management node) before
    /// a link attaches, on brokers whose addresses declare nothing.
    pub declare: Option<Declaration>,
}

/// How long a declared queue lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueLifetime {
    /// A shared (topic, server or notification) queue: durable, it outlives
    /// its consumers and waits for the next.
    Shared,
    /// A process's own (reply or fanout) queue: exclusive to the connection
    /// that declared it and deleted with it or with its last consumer.
    Private,
}

/// A queue to declare, and the `(exchange, binding key)` pairs that route
/// to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Declaration {
    /// The queue's name.
    pub queue: String,
    /// Shared or private.
    pub lifetime: QueueLifetime,
    /// Bindings to create after the queue.
    pub bindings: Vec<(String, String)>,
}

/// Where a process receives its replies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyNode {
    /// A queue of the caller's own.
    Queue(Node),
    /// A multicast node: the broker gives the caller's receiver a private
    /// queue.
    Multicast(Node),
    /// A dynamic node the broker names on attach (and removes on detach).
    Dynamic,
}

/// Percent-encodes a path segment as RabbitMQ 4's v2 addresses require.
pub(crate) fn v2_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn node(address: String, capability: Option<&str>) -> Node {
    Node {
        address,
        capability: capability.map(str::to_owned),
        declare: None,
    }
}

/// The exchange RabbitMQ 4's multicast (fanout and notification) keys are
/// routed through.
const RABBITMQ4_EXCHANGE: &str = "amq.topic";

/// A RabbitMQ 4 queue node, declared before use.
fn rabbitmq4_queue(name: &str, lifetime: QueueLifetime, bound_to: Option<&str>) -> Node {
    Node {
        address: format!("/queues/{}", v2_segment(name)),
        capability: None,
        declare: Some(Declaration {
            queue: name.to_owned(),
            lifetime,
            bindings: bound_to
                .map(|key| vec![(RABBITMQ4_EXCHANGE.to_owned(), key.to_owned())])
                .unwrap_or_default(),
        }),
    }
}

impl AddressingProfile {
    /// The profile's name, as in `[qpid] addressing`.
    pub fn name(self) -> &'static str {
        match self {
            AddressingProfile::Rabbitmq3 => "rabbitmq3",
            AddressingProfile::Rabbitmq4 => "rabbitmq4",
            AddressingProfile::Activemq => "activemq",
            AddressingProfile::Generic => "generic",
        }
    }
}

/// How one transport names nodes: its profile, and the `generic` settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Addressing {
    /// The broker's address syntax.
    pub profile: AddressingProfile,
    /// Used by the `generic` profile only.
    pub generic: GenericAddressing,
}

impl From<AddressingProfile> for Addressing {
    fn from(profile: AddressingProfile) -> Self {
        Addressing {
            profile,
            generic: GenericAddressing::default(),
        }
    }
}

impl Addressing {
    /// Whether the broker has multicast nodes (fanout).
    fn has_multicast(&self) -> bool {
        match self.profile {
            AddressingProfile::Rabbitmq3
            | AddressingProfile::Rabbitmq4
            | AddressingProfile::Activemq => true,
            AddressingProfile::Generic => self.generic.multicast_prefix.is_some(),
        }
    }

    /// Whether queues are declared (and deleted) through the broker's
    /// management node rather than by attaching to an address.
    pub fn manages_queues(&self) -> bool {
        self.profile == AddressingProfile::Rabbitmq4
    }

    /// What a transport with this addressing can do. Plain AMQP 1.0 cannot
    /// declare a shared queue bound to an exchange, so notification pools
    /// are out, nor delete one, except where queues are managed (RabbitMQ
    /// 4's management node); taps are out everywhere (requests go straight
    /// to their queue); a broker without multicast has no fanout.
    pub fn capabilities(&self) -> Capabilities {
        let managed = self.manages_queues();
        Capabilities {
            notification_pools: managed,
            taps: false,
            removes_targets: managed,
            fanout: self.has_multicast(),
            fanout_to_server: self.has_multicast(),
            ..Capabilities::ALL
        }
    }

    /// A shared queue (anycast: each message to one receiver): topic and
    /// server queues, notification queues. Same address for both ends.
    pub fn anycast(&self, name: &str) -> Node {
        match self.profile {
            AddressingProfile::Rabbitmq3 => node(format!("/queue/{name}"), None),
            AddressingProfile::Rabbitmq4 => rabbitmq4_queue(name, QueueLifetime::Shared, None),
            AddressingProfile::Activemq => node(format!("queue://{name}"), Some("queue")),
            AddressingProfile::Generic => node(
                format!("{}{name}", self.generic.anycast_prefix),
                self.generic.anycast_capability.as_deref(),
            ),
        }
    }

    /// Where senders of a multicast (every receiver gets a copy) send, or
    /// `None` where the broker has no multicast.
    pub fn multicast_target(&self, key: &str) -> Option<Node> {
        match self.profile {
            AddressingProfile::Rabbitmq3 => Some(node(format!("/topic/{key}"), None)),
            AddressingProfile::Rabbitmq4 => Some(node(
                format!("/exchanges/{RABBITMQ4_EXCHANGE}/{}", v2_segment(key)),
                None,
            )),
            AddressingProfile::Activemq => Some(node(format!("topic://{key}"), Some("topic"))),
            AddressingProfile::Generic => self.generic.multicast_prefix.as_ref().map(|prefix| {
                node(
                    format!("{prefix}{key}"),
                    self.generic.multicast_capability.as_deref(),
                )
            }),
        }
    }

    /// Where a receiver of a multicast attaches, or `None` where the broker
    /// has none. On RabbitMQ 4 that is a private queue of the receiver's
    /// own (`KEY.UNIQUE`) bound to the key, declared before the attach:
    /// `unique` makes its name.
    pub fn multicast_source(&self, key: &str, unique: &str) -> Option<Node> {
        match self.profile {
            AddressingProfile::Rabbitmq4 => Some(rabbitmq4_queue(
                &format!("{key}.{unique}"),
                QueueLifetime::Private,
                Some(key),
            )),
            _ => self.multicast_target(key),
        }
    }

    /// Where notifications of `name` (`EXCHANGE.TOPIC.PRIORITY`) are sent.
    /// Where queues are managed they go through the exchange, so listener
    /// pools each get a copy, and the sender declares the default queue
    /// bound to the key, as oslo's notifier does.
    pub fn notification_target(&self, name: &str) -> Node {
        if self.manages_queues() {
            let mut node = self
                .multicast_target(name)
                .expect("a managed broker has multicast");
            node.declare = rabbitmq4_queue(name, QueueLifetime::Shared, Some(name)).declare;
            node
        } else {
            self.anycast(name)
        }
    }

    /// Where a notification listener receives `name`: the shared default
    /// queue, or a pool's own shared queue (`NAME.POOL`). `None` for a pool
    /// where queues cannot be declared with bindings.
    pub fn notification_source(&self, name: &str, pool: Option<&str>) -> Option<Node> {
        match (self.manages_queues(), pool) {
            (true, None) => Some(rabbitmq4_queue(name, QueueLifetime::Shared, Some(name))),
            (true, Some(pool)) => Some(rabbitmq4_queue(
                &format!("{name}.{pool}"),
                QueueLifetime::Shared,
                Some(name),
            )),
            (false, None) => Some(self.anycast(name)),
            (false, Some(_)) => None,
        }
    }

    /// The per-process reply node. On RabbitMQ 3 a `/queue/` reply queue
    /// would outlive the process, so replies go through `amq.topic` to the
    /// private queue of the process's receiver, which the broker deletes
    /// when the link closes.
    pub fn reply(&self, name: &str) -> ReplyNode {
        match self.profile {
            AddressingProfile::Rabbitmq3 => ReplyNode::Multicast(
                self.multicast_target(name)
                    .expect("RabbitMQ 3 has multicast"),
            ),
            AddressingProfile::Rabbitmq4 => {
                ReplyNode::Queue(rabbitmq4_queue(name, QueueLifetime::Private, None))
            }
            AddressingProfile::Activemq => ReplyNode::Dynamic,
            AddressingProfile::Generic => match self.generic.reply {
                GenericReply::Dynamic => ReplyNode::Dynamic,
                GenericReply::Queue => ReplyNode::Queue(self.anycast(name)),
            },
        }
    }
}

/// Nova's node names for a control exchange: AMQP 1.0 has no exchanges, so
/// the exchange becomes a prefix and different exchanges never share a node.
pub fn topic_queue(exchange: &str, routing_key: &str) -> String {
    format!("{exchange}.{routing_key}")
}

/// The multicast key of a topic's (or a server's) fanout.
pub fn fanout_key(exchange: &str, routing_key: &str) -> String {
    format!("{exchange}.{routing_key}.fanout")
}

#[cfg(test)]
mod tests {
    use super::*;
    use AddressingProfile::*;

    fn a(profile: AddressingProfile) -> Addressing {
        Addressing::from(profile)
    }

    #[test]
    fn rabbitmq3_uses_v1_addresses() {
        assert_eq!(
            a(Rabbitmq3).anycast("nova.compute").address,
            "/queue/nova.compute"
        );
        assert_eq!(
            a(Rabbitmq3)
                .multicast_target("nova.compute.fanout")
                .unwrap()
                .address,
            "/topic/nova.compute.fanout"
        );
        assert_eq!(
            a(Rabbitmq3).multicast_source("nova.compute.fanout", "u1"),
            a(Rabbitmq3).multicast_target("nova.compute.fanout")
        );
        assert_eq!(
            a(Rabbitmq3).reply("reply_ab12"),
            ReplyNode::Multicast(Node {
                address: "/topic/reply_ab12".into(),
                capability: None,
                declare: None,
            })
        );
    }

    #[test]
    fn rabbitmq4_uses_percent_encoded_v2_addresses() {
        assert_eq!(
            a(Rabbitmq4).anycast("nova.compute").address,
            "/queues/nova.compute"
        );
        assert_eq!(a(Rabbitmq4).anycast("a b/c").address, "/queues/a%20b%2Fc");
        assert_eq!(
            a(Rabbitmq4)
                .multicast_target("nova.compute.fanout")
                .unwrap()
                .address,
            "/exchanges/amq.topic/nova.compute.fanout"
        );
        let fanout = a(Rabbitmq4).multicast_source("k.fanout", "u1").unwrap();
        assert_eq!(fanout.address, "/queues/k.fanout.u1");
        assert_eq!(
            fanout.declare,
            Some(Declaration {
                queue: "k.fanout.u1".into(),
                lifetime: QueueLifetime::Private,
                bindings: vec![("amq.topic".into(), "k.fanout".into())],
            })
        );
        let ReplyNode::Queue(reply) = a(Rabbitmq4).reply("reply_1") else {
            panic!("RabbitMQ 4 replies go to a queue");
        };
        assert_eq!(reply.address, "/queues/reply_1");
        assert_eq!(
            reply.declare.map(|d| (d.lifetime, d.bindings.len())),
            Some((QueueLifetime::Private, 0))
        );
    }

    #[test]
    fn rabbitmq4_declares_queues_and_routes_notifications_through_amq_topic() {
        let rabbit4 = a(Rabbitmq4);
        assert!(rabbit4.manages_queues());
        let caps = rabbit4.capabilities();
        assert!(caps.call && caps.serve && caps.fanout && caps.notification_pools);
        assert!(caps.removes_targets && !caps.taps);
        let shared = rabbit4.anycast("nova.compute").declare.unwrap();
        assert_eq!(shared.lifetime, QueueLifetime::Shared);
        assert!(shared.bindings.is_empty());
        let sent = rabbit4.notification_target("nova.notifications.info");
        assert_eq!(sent.address, "/exchanges/amq.topic/nova.notifications.info");
        assert_eq!(
            sent.declare.unwrap().queue,
            "nova.notifications.info",
            "the sender declares the default queue"
        );
        let pool = rabbit4
            .notification_source("nova.notifications.info", Some("p1"))
            .unwrap();
        assert_eq!(pool.address, "/queues/nova.notifications.info.p1");
        assert_eq!(
            pool.declare.unwrap().bindings,
            vec![("amq.topic".into(), "nova.notifications.info".into())]
        );
        // Elsewhere pools need bindings that cannot be declared.
        assert_eq!(a(Rabbitmq3).notification_source("n", Some("p1")), None);
        assert!(!a(Rabbitmq3).capabilities().notification_pools);
        assert!(a(Rabbitmq3).anycast("n").declare.is_none());
    }

    #[test]
    fn activemq_uses_schemes_capabilities_and_dynamic_replies() {
        let queue = a(Activemq).anycast("nova.compute");
        assert_eq!(queue.address, "queue://nova.compute");
        assert_eq!(queue.capability.as_deref(), Some("queue"));
        let topic = a(Activemq)
            .multicast_source("nova.compute.fanout", "u1")
            .unwrap();
        assert_eq!(topic.address, "topic://nova.compute.fanout");
        assert_eq!(topic.capability.as_deref(), Some("topic"));
        assert_eq!(a(Activemq).reply("reply_1"), ReplyNode::Dynamic);
    }

    #[test]
    fn generic_takes_prefixes_and_knows_when_it_has_no_multicast() {
        let without = Addressing {
            profile: Generic,
            generic: GenericAddressing::default(),
        };
        assert_eq!(without.anycast("nova.compute").address, "nova.compute");
        assert_eq!(without.multicast_source("k", "u1"), None);
        assert!(!without.capabilities().fanout);
        assert_eq!(without.reply("r"), ReplyNode::Dynamic);
        let with = Addressing {
            profile: Generic,
            generic: GenericAddressing {
                anycast_prefix: "queue://".into(),
                multicast_prefix: Some("topic://".into()),
                anycast_capability: Some("queue".into()),
                multicast_capability: Some("topic".into()),
                reply: GenericReply::Queue,
            },
        };
        assert!(with.capabilities().fanout);
        let topic = with.multicast_source("k", "u1").unwrap();
        assert_eq!(topic.address, "topic://k");
        assert_eq!(topic.capability.as_deref(), Some("topic"));
        assert_eq!(
            with.reply("r"),
            ReplyNode::Queue(Node {
                address: "queue://r".into(),
                capability: Some("queue".into()),
                declare: None,
            })
        );
    }

    #[test]
    fn exchanges_prefix_node_names() {
        assert_eq!(topic_queue("nova", "compute.host1"), "nova.compute.host1");
        assert_eq!(fanout_key("nova", "compute"), "nova.compute.fanout");
    }
}
