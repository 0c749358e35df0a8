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
    /// `/exchanges/amq.topic/KEY`. v2 addresses never declare anything: the
    /// queues must exist (declared by an operator or a 0-9-1 client).
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
fn v2_segment(name: &str) -> String {
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
            AddressingProfile::Rabbitmq3 | AddressingProfile::Activemq => true,
            AddressingProfile::Rabbitmq4 => false,
            AddressingProfile::Generic => self.generic.multicast_prefix.is_some(),
        }
    }

    /// What a transport with this addressing can do. AMQP 1.0 cannot declare
    /// a shared queue bound to an exchange, so notification pools and taps
    /// are out everywhere; RabbitMQ 4's v2 addresses declare nothing, so
    /// until queues are declared through its management node the profile
    /// can only cast to queues that exist; a broker without multicast has no
    /// fanout.
    pub fn capabilities(&self) -> Capabilities {
        let amqp1 = Capabilities {
            notification_pools: false,
            taps: false,
            // RabbitMQ 3 cannot delete queues over AMQP 1.0.
            removes_targets: false,
            fanout: self.has_multicast(),
            fanout_to_server: self.has_multicast(),
            ..Capabilities::ALL
        };
        match self.profile {
            AddressingProfile::Rabbitmq4 => Capabilities {
                call: false,
                multicall: false,
                notifications: false,
                serve: false,
                ..amqp1
            },
            _ => amqp1,
        }
    }

    /// A shared queue (anycast: each message to one receiver): topic and
    /// server queues, notification queues. Same address for both ends.
    pub fn anycast(&self, name: &str) -> Node {
        match self.profile {
            AddressingProfile::Rabbitmq3 => node(format!("/queue/{name}"), None),
            AddressingProfile::Rabbitmq4 => node(format!("/queues/{}", v2_segment(name)), None),
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
                format!("/exchanges/amq.topic/{}", v2_segment(key)),
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
    /// has none or needs a bound queue declared first (RabbitMQ 4's v2
    /// addresses).
    pub fn multicast_source(&self, key: &str) -> Option<Node> {
        match self.profile {
            AddressingProfile::Rabbitmq4 => None,
            _ => self.multicast_target(key),
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
            AddressingProfile::Rabbitmq4 => ReplyNode::Queue(self.anycast(name)),
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
            a(Rabbitmq3).multicast_source("nova.compute.fanout"),
            a(Rabbitmq3).multicast_target("nova.compute.fanout")
        );
        assert_eq!(
            a(Rabbitmq3).reply("reply_ab12"),
            ReplyNode::Multicast(Node {
                address: "/topic/reply_ab12".into(),
                capability: None
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
        assert_eq!(a(Rabbitmq4).multicast_source("k"), None);
        assert_eq!(
            a(Rabbitmq4).reply("reply_1"),
            ReplyNode::Queue(Node {
                address: "/queues/reply_1".into(),
                capability: None
            })
        );
    }

    #[test]
    fn activemq_uses_schemes_capabilities_and_dynamic_replies() {
        let queue = a(Activemq).anycast("nova.compute");
        assert_eq!(queue.address, "queue://nova.compute");
        assert_eq!(queue.capability.as_deref(), Some("queue"));
        let topic = a(Activemq).multicast_source("nova.compute.fanout").unwrap();
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
        assert_eq!(without.multicast_source("k"), None);
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
        let topic = with.multicast_source("k").unwrap();
        assert_eq!(topic.address, "topic://k");
        assert_eq!(topic.capability.as_deref(), Some("topic"));
        assert_eq!(
            with.reply("r"),
            ReplyNode::Queue(Node {
                address: "queue://r".into(),
                capability: Some("queue".into())
            })
        );
    }

    #[test]
    fn exchanges_prefix_node_names() {
        assert_eq!(topic_queue("nova", "compute.host1"), "nova.compute.host1");
        assert_eq!(fanout_key("nova", "compute"), "nova.compute.fanout");
    }
}
