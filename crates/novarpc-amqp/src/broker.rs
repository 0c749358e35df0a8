//! What both AMQP drivers read from `[DEFAULT] transport_url` and their
//! tables: the broker hosts, and retry timings given in seconds.

use std::time::Duration;

use novarpc_core::{Config, ConfigError, Password, TransportUrl};

use crate::RetryPolicy;

/// One broker host of a transport URL, RabbitMQ's defaults filled in.
#[derive(Clone)]
pub struct BrokerAddress {
    /// The host name or IP address (an IPv6 address without its brackets).
    pub host: String,
    /// The port: the URL's, else 5671 with TLS and 5672 without.
    pub port: u16,
    /// The user to authenticate as (`guest` when the URL names none).
    pub username: String,
    /// The user's password (`guest` when the URL gives none); redacted in
    /// `Debug` output.
    pub password: Password,
    /// The URL's virtual host, as written (`None` when it names none).
    pub virtual_host: Option<String>,
    /// Whether to connect over TLS (`amqps`).
    pub tls: bool,
}

impl std::fmt::Debug for BrokerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl BrokerAddress {
    /// `amqp[s]://user@host:port`, without the password.
    pub fn describe(&self) -> String {
        format!(
            "{}://{}@{}:{}",
            if self.tls { "amqps" } else { "amqp" },
            self.username,
            self.host,
            self.port
        )
    }
}

/// The brokers of a transport URL, or the local broker without one. TLS when
/// `tls` is set, the URL's scheme is `amqps`, or it says `?ssl=1`/`true`;
/// ports default to 5671 with TLS and 5672 without, users to `guest`.
pub fn broker_addresses(url: Option<&TransportUrl>, tls: bool) -> Vec<BrokerAddress> {
    let tls = tls
        || url.is_some_and(|u| u.scheme == "amqps")
        || url
            .and_then(|u| u.query_value("ssl"))
            .is_some_and(|v| v == "1" || v == "true");
    let default_port = if tls { 5671 } else { 5672 };
    let virtual_host = url.and_then(|u| u.virtual_host.clone());
    let make =
        |host: &str, port: Option<u16>, user: Option<&str>, password: Option<&str>| BrokerAddress {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: port.unwrap_or(default_port),
            username: user.unwrap_or("guest").to_owned(),
            password: Password::new(password.unwrap_or("guest")),
            virtual_host: virtual_host.clone(),
            tls,
        };
    match url {
        Some(url) if !url.hosts.is_empty() => url
            .hosts
            .iter()
            .map(|h| {
                make(
                    &h.hostname,
                    h.port,
                    h.username.as_deref(),
                    h.password.as_ref().map(|p| p.expose()),
                )
            })
            .collect(),
        _ => vec![make("127.0.0.1", None, None, None)],
    }
}

/// Checks a duration option of `table` given in seconds.
pub fn seconds(
    config: &Config,
    table: &str,
    key: &str,
    value: f64,
) -> Result<Duration, ConfigError> {
    if (0.0..1e9).contains(&value) {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(config.invalid(
            table,
            key,
            format!("must be a non-negative number of seconds, got {value}"),
        ))
    }
}

impl RetryPolicy {
    /// A policy from seconds, as driver tables give them (already checked
    /// by [`RetryPolicy::from_options`]).
    pub fn from_secs_f64(interval: f64, max_interval: f64, max_retries: u32) -> RetryPolicy {
        RetryPolicy {
            interval: Duration::from_secs_f64(interval.max(0.0)),
            max_interval: Duration::from_secs_f64(max_interval.max(0.0)),
            max_retries: Some(max_retries),
        }
    }

    /// The policy of a driver table's `retry_interval`, `retry_interval_max`
    /// (seconds) and `max_retries`, checked.
    pub fn from_options(
        config: &Config,
        table: &str,
        interval: f64,
        max_interval: f64,
        max_retries: u32,
    ) -> Result<RetryPolicy, ConfigError> {
        Ok(RetryPolicy {
            interval: seconds(config, table, "retry_interval", interval)?,
            max_interval: seconds(config, table, "retry_interval_max", max_interval)?,
            max_retries: Some(max_retries),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_hosts_get_defaults_and_tls_ports() {
        let url: TransportUrl = "amqps://u:s3cret@h1,[::1]:5700/vh".parse().unwrap();
        let hosts = broker_addresses(Some(&url), false);
        assert_eq!(hosts.len(), 2);
        assert!(hosts[0].tls && hosts[0].port == 5671 && hosts[0].username == "u");
        assert_eq!((hosts[1].host.as_str(), hosts[1].port), ("::1", 5700));
        assert_eq!(hosts[1].username, "guest");
        assert_eq!(hosts[0].virtual_host.as_deref(), Some("vh"));
        assert!(!format!("{hosts:?}").contains("s3cret"));
        let local = broker_addresses(None, false);
        assert_eq!(local[0].describe(), "amqp://guest@127.0.0.1:5672");
    }
}
