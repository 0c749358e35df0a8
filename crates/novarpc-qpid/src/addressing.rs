//! Where Nova's nodes live on each broker. AMQP 1.0 leaves node names to the
//! broker, so the mapping is a profile chosen in `[qpid] addressing`.

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
}

/// A node to attach a link to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub address: String,
    /// Terminus capability naming the node's kind, for brokers that want it
    /// (Artemis reads `queue`/`topic`).
    pub capability: Option<&'static str>,
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

impl AddressingProfile {
    /// What a transport with this profile can do. AMQP 1.0 cannot declare
    /// a shared queue bound to an exchange, so notification pools and taps
    /// are out everywhere; RabbitMQ 4's v2 addresses declare nothing, so
    /// until queues are declared through its management node the profile
    /// can only cast to queues that exist.
    pub fn capabilities(self) -> novarpc_core::Capabilities {
        use novarpc_core::Capabilities;
        let amqp1 = Capabilities {
            notification_pools: false,
            taps: false,
            // RabbitMQ 3 cannot delete queues over AMQP 1.0.
            removes_targets: false,
            ..Capabilities::ALL
        };
        match self {
            AddressingProfile::Rabbitmq3 | AddressingProfile::Activemq => amqp1,
            AddressingProfile::Rabbitmq4 => Capabilities {
                call: false,
                multicall: false,
                fanout: false,
                fanout_to_server: false,
                notifications: false,
                serve: false,
                ..amqp1
            },
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AddressingProfile::Rabbitmq3 => "rabbitmq3",
            AddressingProfile::Rabbitmq4 => "rabbitmq4",
            AddressingProfile::Activemq => "activemq",
        }
    }

    /// A shared queue (anycast: each message to one receiver): topic and
    /// server queues, notification queues. Same address for both ends.
    pub fn anycast(self, name: &str) -> Node {
        match self {
            AddressingProfile::Rabbitmq3 => Node {
                address: format!("/queue/{name}"),
                capability: None,
            },
            AddressingProfile::Rabbitmq4 => Node {
                address: format!("/queues/{}", v2_segment(name)),
                capability: None,
            },
            AddressingProfile::Activemq => Node {
                address: format!("queue://{name}"),
                capability: Some("queue"),
            },
        }
    }

    /// Where senders of a multicast (every receiver gets a copy) send.
    pub fn multicast_target(self, key: &str) -> Node {
        match self {
            AddressingProfile::Rabbitmq3 => Node {
                address: format!("/topic/{key}"),
                capability: None,
            },
            AddressingProfile::Rabbitmq4 => Node {
                address: format!("/exchanges/amq.topic/{}", v2_segment(key)),
                capability: None,
            },
            AddressingProfile::Activemq => Node {
                address: format!("topic://{key}"),
                capability: Some("topic"),
            },
        }
    }

    /// Where a receiver of a multicast attaches, or `None` where the broker
    /// needs a bound queue declared first (RabbitMQ 4's v2 addresses).
    pub fn multicast_source(self, key: &str) -> Option<Node> {
        match self {
            AddressingProfile::Rabbitmq4 => None,
            _ => Some(self.multicast_target(key)),
        }
    }

    /// The per-process reply node. On RabbitMQ 3 a `/queue/` reply queue
    /// would outlive the process, so replies go through `amq.topic` to the
    /// private queue of the process's receiver, which the broker deletes
    /// when the link closes.
    pub fn reply(self, name: &str) -> ReplyNode {
        match self {
            AddressingProfile::Rabbitmq3 => ReplyNode::Multicast(self.multicast_target(name)),
            AddressingProfile::Rabbitmq4 => ReplyNode::Queue(self.anycast(name)),
            AddressingProfile::Activemq => ReplyNode::Dynamic,
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

    #[test]
    fn rabbitmq3_uses_v1_addresses() {
        assert_eq!(
            Rabbitmq3.anycast("nova.compute").address,
            "/queue/nova.compute"
        );
        assert_eq!(
            Rabbitmq3.multicast_target("nova.compute.fanout").address,
            "/topic/nova.compute.fanout"
        );
        assert_eq!(
            Rabbitmq3.multicast_source("nova.compute.fanout"),
            Some(Rabbitmq3.multicast_target("nova.compute.fanout"))
        );
        assert_eq!(
            Rabbitmq3.reply("reply_ab12"),
            ReplyNode::Multicast(Node {
                address: "/topic/reply_ab12".into(),
                capability: None
            })
        );
    }

    #[test]
    fn rabbitmq4_uses_percent_encoded_v2_addresses() {
        assert_eq!(
            Rabbitmq4.anycast("nova.compute").address,
            "/queues/nova.compute"
        );
        assert_eq!(Rabbitmq4.anycast("a b/c").address, "/queues/a%20b%2Fc");
        assert_eq!(
            Rabbitmq4.multicast_target("nova.compute.fanout").address,
            "/exchanges/amq.topic/nova.compute.fanout"
        );
        assert_eq!(Rabbitmq4.multicast_source("k"), None);
        assert_eq!(
            Rabbitmq4.reply("reply_1"),
            ReplyNode::Queue(Node {
                address: "/queues/reply_1".into(),
                capability: None
            })
        );
    }

    #[test]
    fn activemq_uses_schemes_capabilities_and_dynamic_replies() {
        let queue = Activemq.anycast("nova.compute");
        assert_eq!(queue.address, "queue://nova.compute");
        assert_eq!(queue.capability, Some("queue"));
        let topic = Activemq.multicast_source("nova.compute.fanout").unwrap();
        assert_eq!(topic.address, "topic://nova.compute.fanout");
        assert_eq!(topic.capability, Some("topic"));
        assert_eq!(Activemq.reply("reply_1"), ReplyNode::Dynamic);
    }

    #[test]
    fn exchanges_prefix_node_names() {
        assert_eq!(topic_queue("nova", "compute.host1"), "nova.compute.host1");
        assert_eq!(fanout_key("nova", "compute"), "nova.compute.fanout");
    }
}
