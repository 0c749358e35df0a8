use std::path::PathBuf;

use novarpc_amqp::{FailoverStrategy, RetryPolicy};
use novarpc_core::{Config, ConfigError};
use serde::{Deserialize, Serialize};

use crate::addressing::{Addressing, AddressingProfile, GenericAddressing};

/// SASL mechanism used to authenticate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SaslMechanism {
    /// PLAIN with the transport URL's user and password (default `guest`).
    #[default]
    Plain,
    /// No credentials (brokers that allow it, or offer nothing else).
    Anonymous,
}

/// Options of the `[qpid]` table. oslo's old `[oslo_messaging_amqp]` names are
/// accepted as aliases where the meaning is the same.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QpidOptions {
    /// How the broker names nodes: `rabbitmq3`, `rabbitmq4`, `activemq` or
    /// `generic` (described by `[qpid.generic]`).
    #[serde(alias = "addressing_mode")]
    pub addressing: AddressingProfile,
    /// Node naming of the `generic` profile.
    pub generic: GenericAddressing,
    /// The SASL mechanism: `PLAIN` (default) or `ANONYMOUS`.
    pub sasl_mechanism: SaslMechanism,
    /// Credit granted to each receiver link (messages in flight per link).
    #[serde(alias = "prefetch_count")]
    pub link_credit: u32,
    /// Idle timeout announced to the broker in seconds (the broker then sends
    /// heartbeats at half of it); 0 disables it.
    #[serde(alias = "idle_timeout")]
    pub heartbeat_timeout: u32,
    /// Send casts and notifications unsettled and count them delivered only on
    /// the broker's `accepted` outcome; `false` sends them pre-settled.
    pub publisher_confirms: bool,
    /// Send replies unsettled and count them sent only on the broker's
    /// `accepted` (a reply the broker releases, or one whose connection
    /// fails, is sent again). `false` (the default, as oslo's AMQP 1.0
    /// driver pre-settles `rpc-reply`) sends them pre-settled: a reply lost
    /// with its connection ends in the caller's timeout.
    pub confirm_replies: bool,
    /// Topic and server queues survive a broker restart (terminus durability
    /// `configuration`). Every peer of a queue must agree: the broker refuses
    /// a link that would redeclare it differently.
    #[serde(alias = "amqp_durable_queues")]
    pub durable_queues: bool,
    /// Where the driver declares queues (`rabbitmq4`): shared queues are
    /// quorum queues (replicated across a cluster) instead of classic ones.
    #[serde(alias = "rabbit_quorum_queue")]
    pub quorum_queues: bool,
    /// Seconds before the first reconnect attempt; later ones back off
    /// exponentially (with jitter) up to `retry_interval_max`.
    #[serde(alias = "connection_retry_interval")]
    pub retry_interval: f64,
    /// The longest wait between reconnect or send retries, in seconds.
    #[serde(alias = "connection_retry_interval_max")]
    pub retry_interval_max: f64,
    /// Retries of a failed send or connect before giving up with an error
    /// (the receivers of a server retry for ever).
    pub max_retries: u32,
    /// Order of the transport URL's hosts: `round-robin` or `shuffle`.
    pub failover_strategy: FailoverStrategy,
    /// Sender links kept open per connection (one per destination address);
    /// the least recently used is closed beyond this.
    pub sender_cache_size: usize,
    /// TLS (`amqps`), verifying the broker's certificate and host name.
    pub ssl: bool,
    /// PEM file of the CA certificates that verify the broker (default: the
    /// system's trusted roots).
    #[serde(alias = "ssl_ca_file")]
    pub ssl_ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for brokers that require TLS client
    /// authentication; needs `ssl_key_file`.
    pub ssl_cert_file: Option<PathBuf>,
    /// PEM private key of `ssl_cert_file`; needs `ssl_cert_file`.
    pub ssl_key_file: Option<PathBuf>,
    /// AMQP container id prefix (default: host name); a unique suffix is added.
    pub container_name: Option<String>,
}

impl Default for QpidOptions {
    fn default() -> Self {
        QpidOptions {
            addressing: AddressingProfile::Rabbitmq3,
            generic: GenericAddressing::default(),
            sasl_mechanism: SaslMechanism::Plain,
            link_credit: 200,
            heartbeat_timeout: 60,
            publisher_confirms: true,
            confirm_replies: false,
            durable_queues: false,
            quorum_queues: false,
            retry_interval: 1.0,
            retry_interval_max: 30.0,
            max_retries: 3,
            failover_strategy: FailoverStrategy::RoundRobin,
            sender_cache_size: 256,
            ssl: false,
            ssl_ca_file: None,
            ssl_cert_file: None,
            ssl_key_file: None,
            container_name: None,
        }
    }
}

impl QpidOptions {
    /// How this transport names nodes.
    pub fn addressing(&self) -> Addressing {
        Addressing {
            profile: self.addressing,
            generic: self.generic.clone(),
        }
    }

    /// Parses `[qpid]` and checks values; reads no files.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let options: QpidOptions = config.section("qpid")?;
        RetryPolicy::from_options(
            config,
            "qpid",
            options.retry_interval,
            options.retry_interval_max,
            options.max_retries,
        )?;
        if options.link_credit == 0 {
            return Err(config.invalid(
                "qpid",
                "link_credit",
                "must be at least 1 (a receiver without credit never gets a message)",
            ));
        }
        if options.sender_cache_size == 0 {
            return Err(config.invalid("qpid", "sender_cache_size", "must be at least 1"));
        }
        if options.ssl_cert_file.is_some() != options.ssl_key_file.is_some() {
            return Err(config.invalid(
                "qpid",
                "ssl_cert_file",
                "a client certificate needs both ssl_cert_file and ssl_key_file",
            ));
        }
        Ok(options)
    }

    /// The backoff for reconnecting and resending, from `retry_interval`,
    /// `retry_interval_max` and `max_retries`.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::from_secs_f64(
            self.retry_interval,
            self.retry_interval_max,
            self.max_retries,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_profiles_parse() {
        let config = Config::from_toml_str(
            "[qpid]\naddressing = \"activemq\"\nsasl_mechanism = \"ANONYMOUS\"\nlink_credit = 10\n",
            "q.toml",
        )
        .unwrap();
        let options = QpidOptions::from_config(&config).unwrap();
        assert_eq!(options.addressing, AddressingProfile::Activemq);
        assert_eq!(options.sasl_mechanism, SaslMechanism::Anonymous);
        assert_eq!(options.link_credit, 10);
        assert!(options.publisher_confirms);
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("[qpid]\nlink_credit = 0\n", "link_credit"),
            ("[qpid]\naddressing = \"qpidd\"\n", "addressing"),
            ("[qpid]\nretry_interval = -2\n", "retry_interval"),
            ("[qpid]\ncredit = 3\n", "credit"),
        ] {
            let config = Config::from_toml_str(text, "q.toml").unwrap();
            let err = QpidOptions::from_config(&config).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
