use std::path::PathBuf;

use novarpc_amqp::{seconds, FailoverStrategy, RetryPolicy};
use novarpc_core::{Config, ConfigError};
use serde::{Deserialize, Serialize};

/// The SASL mechanism used to log in (oslo's `rabbit_login_method`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum LoginMethod {
    /// PLAIN with the transport URL's user and password.
    #[default]
    Plain,
    /// RabbitMQ's AMQPLAIN (oslo's default), the same credentials.
    Amqplain,
    /// EXTERNAL: the TLS client certificate identifies the user (needs
    /// RabbitMQ's `rabbitmq_auth_mechanism_ssl`).
    External,
}

impl LoginMethod {
    /// The mechanism's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            LoginMethod::Plain => "PLAIN",
            LoginMethod::Amqplain => "AMQPLAIN",
            LoginMethod::External => "EXTERNAL",
        }
    }
}

/// Options of the `[kombu]` table. oslo.messaging's names
/// (`[oslo_messaging_rabbit]`) are accepted as aliases.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KombuOptions {
    /// Consumer prefetch (QoS); 0 means unlimited.
    #[serde(alias = "rabbit_qos_prefetch_count")]
    pub prefetch_count: u16,
    /// AMQP heartbeat in seconds; 0 takes the broker's (60 s).
    #[serde(alias = "heartbeat_timeout_threshold")]
    pub heartbeat_timeout: u16,
    /// The largest AMQP frame this client proposes, in bytes (the broker may
    /// lower it); 0 takes the broker's (RabbitMQ: 131,072). lapin keeps 32
    /// frames of buffer each way per connection, so this bounds a
    /// connection's buffers (32,768: 2 MB; RabbitMQ's: 8 MB); larger messages
    /// are split into more frames. `?frame_max=N` in the URL too.
    pub frame_max: u32,
    /// Seconds before the first reconnect attempt; later ones back off
    /// exponentially (with jitter) up to `retry_interval_max`.
    #[serde(alias = "rabbit_retry_interval")]
    pub retry_interval: f64,
    /// The longest wait between reconnect or publish retries, in seconds.
    #[serde(alias = "rabbit_interval_max")]
    pub retry_interval_max: f64,
    /// Retries of a failed publish or connect before giving up with an error
    /// (consumers of a server retry for ever).
    #[serde(alias = "rabbit_max_retries")]
    pub max_retries: u32,
    /// Durable topic queues and control exchange.
    #[serde(alias = "amqp_durable_queues")]
    pub durable_queues: bool,
    /// Auto-delete the shared (topic, server and notification) queues and
    /// the control exchange: the broker removes a queue when its last
    /// consumer goes, the exchange when its last binding does.
    #[serde(alias = "amqp_auto_delete")]
    pub auto_delete: bool,
    /// `x-expires` of reply and fanout queues, in seconds.
    #[serde(alias = "rabbit_transient_queues_ttl")]
    pub transient_queues_ttl: u64,
    /// Quorum queues for topic and server queues.
    #[serde(alias = "rabbit_quorum_queue")]
    pub quorum_queues: bool,
    /// `x-delivery-limit` of quorum queues (0: none).
    #[serde(alias = "rabbit_quorum_delivery_limit")]
    pub quorum_delivery_limit: u32,
    /// `x-max-in-memory-length` of quorum queues (0: none).
    #[serde(alias = "rabbit_quorum_max_memory_length")]
    pub quorum_max_memory_length: u32,
    /// `x-max-in-memory-bytes` of quorum queues (0: none).
    #[serde(alias = "rabbit_quorum_max_memory_bytes")]
    pub quorum_max_memory_bytes: u64,
    /// Reply and fanout queues as quorum queues (durable, replicated), and a
    /// durable fanout exchange, as oslo's `rabbit_transient_quorum_queue`:
    /// RabbitMQ 4 deployments that deny the deprecated transient
    /// non-exclusive queues need it (with `quorum_queues` or `durable_queues`).
    #[serde(alias = "rabbit_transient_quorum_queue")]
    pub transient_quorum_queue: bool,
    /// One stream queue `<topic>_fanout` per topic instead of a queue per
    /// listener, as oslo's `rabbit_stream_fanout` (needs
    /// `transient_quorum_queue` and a non-zero `prefetch_count`).
    #[serde(alias = "rabbit_stream_fanout")]
    pub stream_fanout: bool,
    /// Wait for the broker's confirmation of casts and notifications.
    pub publisher_confirms: bool,
    /// Seconds to wait for a publish's confirmation before the channel is
    /// retired and the message sent again on another (the server drops the
    /// copy by its `_unique_id`): a channel that published to a quorum
    /// queue as its leader died may never confirm anything again.
    pub confirm_timeout: f64,
    /// Publish casts to a topic or server as mandatory. A cast declares its
    /// target's queue first (so it waits there for a server); a cast the
    /// broker still returns is reported as undeliverable instead of being
    /// confirmed and dropped. Fanout casts are never mandatory.
    pub mandatory_casts: bool,
    /// Publish replies as mandatory, so a reply to a vanished caller is reported.
    #[serde(alias = "direct_mandatory_flag")]
    pub mandatory_replies: bool,
    /// Seconds a reply keeps being retried while its reply queue is missing.
    #[serde(alias = "kombu_missing_consumer_retry_timeout")]
    pub missing_consumer_retry_timeout: f64,
    /// Order of the transport URL's hosts: `round-robin` or `shuffle`.
    #[serde(alias = "kombu_failover_strategy")]
    pub failover_strategy: FailoverStrategy,
    /// Publisher channels kept open.
    #[serde(alias = "rpc_conn_pool_size")]
    pub channel_pool_size: usize,
    /// TLS (`amqps`), verifying the broker's certificate and host name.
    pub ssl: bool,
    /// PEM file of the CA certificates that verify the broker (default: the
    /// system's trusted roots).
    pub ssl_ca_file: Option<PathBuf>,
    /// PEM client certificate, for brokers that require one (and for the
    /// `EXTERNAL` login method); needs `ssl_key_file`.
    pub ssl_cert_file: Option<PathBuf>,
    /// PEM (PKCS#8) private key of `ssl_cert_file`; needs `ssl_cert_file`.
    pub ssl_key_file: Option<PathBuf>,
    /// Reply and fanout queues named `<hostname>:<processname>:<n>` from a
    /// counter shared by the service's processes, as oslo's
    /// `use_queue_manager`: a restarted service reuses its queues instead of
    /// creating new ones. Such queues are left to expire
    /// (`transient_queues_ttl`) rather than deleted when a listener stops.
    pub use_queue_manager: bool,
    /// Shown in connection names in the management UI and used in queue
    /// manager names (default: host name).
    pub hostname: Option<String>,
    /// Shown in connection names and used in queue manager names (default:
    /// the executable's name).
    pub processname: Option<String>,
    /// The SASL mechanism: `PLAIN` (default), `AMQPLAIN` or `EXTERNAL`.
    #[serde(alias = "rabbit_login_method")]
    pub login_method: LoginMethod,
    /// Calls take their replies through RabbitMQ's direct reply-to
    /// (`amq.rabbitmq.reply-to`): no reply queue, and a reply goes straight
    /// to the caller's channel. Opt-in, for deployments whose servers are
    /// all novarpc: the request's `_reply_q` is the pseudo-queue, and the
    /// server answers to the address the broker gave the message, which an
    /// oslo.messaging server does not read. Replies to calls in flight when
    /// the connection is lost are lost with it (those calls time out).
    pub direct_reply_to: bool,
    /// Accepted from oslo configs; novarpc backs off exponentially instead.
    pub rabbit_retry_backoff: Option<f64>,
    /// Accepted from oslo configs; lapin checks heartbeats itself.
    pub heartbeat_rate: Option<f64>,
}

impl Default for KombuOptions {
    fn default() -> Self {
        KombuOptions {
            prefetch_count: 0,
            heartbeat_timeout: 60,
            frame_max: 32_768,
            retry_interval: 1.0,
            retry_interval_max: 30.0,
            max_retries: 3,
            durable_queues: false,
            auto_delete: false,
            transient_queues_ttl: 1800,
            quorum_queues: false,
            quorum_delivery_limit: 0,
            quorum_max_memory_length: 0,
            quorum_max_memory_bytes: 0,
            transient_quorum_queue: false,
            stream_fanout: false,
            publisher_confirms: true,
            confirm_timeout: 1.0,
            mandatory_casts: true,
            mandatory_replies: true,
            missing_consumer_retry_timeout: 60.0,
            failover_strategy: FailoverStrategy::RoundRobin,
            channel_pool_size: 8,
            ssl: false,
            ssl_ca_file: None,
            ssl_cert_file: None,
            ssl_key_file: None,
            use_queue_manager: false,
            hostname: None,
            processname: None,
            login_method: LoginMethod::Plain,
            direct_reply_to: false,
            rabbit_retry_backoff: None,
            heartbeat_rate: None,
        }
    }
}

impl KombuOptions {
    /// `hostname`, or the machine's host name.
    pub fn hostname_or_default(&self) -> String {
        self.hostname
            .clone()
            .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned())
    }

    /// `processname`, or the executable's file name.
    pub fn processname_or_default(&self) -> String {
        self.processname.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "novarpc".to_owned())
        })
    }

    /// Parses `[kombu]` and checks values; reads no files.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let options: KombuOptions = config.section("kombu")?;
        RetryPolicy::from_options(
            config,
            "kombu",
            options.retry_interval,
            options.retry_interval_max,
            options.max_retries,
        )?;
        seconds(
            config,
            "kombu",
            "missing_consumer_retry_timeout",
            options.missing_consumer_retry_timeout,
        )?;
        seconds(config, "kombu", "confirm_timeout", options.confirm_timeout)?;
        if options.channel_pool_size == 0 {
            return Err(config.invalid("kombu", "channel_pool_size", "must be at least 1"));
        }
        // AMQP 0-9-1's smallest frame; brokers refuse a smaller one.
        if options.frame_max != 0 && options.frame_max < 4096 {
            return Err(config.invalid(
                "kombu",
                "frame_max",
                "must be 0 (the broker's) or at least 4096",
            ));
        }
        // oslo refuses the same combinations.
        if options.stream_fanout && options.prefetch_count == 0 {
            return Err(config.invalid(
                "kombu",
                "stream_fanout",
                "stream fanout queues need a non-zero prefetch_count",
            ));
        }
        if options.stream_fanout && !options.transient_quorum_queue {
            return Err(config.invalid(
                "kombu",
                "stream_fanout",
                "stream fanout needs transient_quorum_queue = true",
            ));
        }
        if options.ssl_cert_file.is_some() != options.ssl_key_file.is_some() {
            return Err(config.invalid(
                "kombu",
                "ssl_cert_file",
                "a client certificate needs both ssl_cert_file and ssl_key_file",
            ));
        }
        Ok(options)
    }

    /// The backoff for reconnecting and republishing, from `retry_interval`,
    /// `retry_interval_max` and `max_retries`.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::from_secs_f64(
            self.retry_interval,
            self.retry_interval_max,
            self.max_retries,
        )
    }

    pub(crate) fn transient_ttl_ms(&self) -> u32 {
        u32::try_from(self.transient_queues_ttl.saturating_mul(1000)).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oslo_names_are_aliases() {
        let config = Config::from_toml_str(
            "[kombu]\nrabbit_qos_prefetch_count = 64\nheartbeat_timeout_threshold = 10\namqp_durable_queues = true\nkombu_failover_strategy = \"shuffle\"\n",
            "k.toml",
        )
        .unwrap();
        let options = KombuOptions::from_config(&config).unwrap();
        assert_eq!(options.prefetch_count, 64);
        assert_eq!(options.heartbeat_timeout, 10);
        assert!(options.durable_queues);
        assert_eq!(options.failover_strategy, FailoverStrategy::Shuffle);
    }

    #[test]
    fn bad_values_name_the_key() {
        let config = Config::from_toml_str("[kombu]\nretry_interval = -1\n", "k.toml").unwrap();
        let err = KombuOptions::from_config(&config).unwrap_err().to_string();
        assert!(
            err.contains("retry_interval") && err.contains("line 2"),
            "{err}"
        );
        let config = Config::from_toml_str("[kombu]\nprefetch = 1\n", "k.toml").unwrap();
        let err = KombuOptions::from_config(&config).unwrap_err().to_string();
        assert!(err.contains("prefetch"), "{err}");
        let config = Config::from_toml_str("[kombu]\nframe_max = 1024\n", "k.toml").unwrap();
        let err = KombuOptions::from_config(&config).unwrap_err().to_string();
        assert!(err.contains("frame_max"), "{err}");
        for ok in ["0", "4096", "131072"] {
            let config =
                Config::from_toml_str(&format!("[kombu]\nframe_max = {ok}\n"), "k.toml").unwrap();
            KombuOptions::from_config(&config).unwrap();
        }
    }
}
