//! Sending to another message broker: Nova's cells, where a service reaches
//! another cell's broker (`cast_to_server` with the broker's parameters in
//! Nova's `amqp.py`; one transport URL per cell in today's Nova).
//!
//! A [`Broker`] names the broker: the name of a `[brokers.NAME]` table of the
//! configuration, or a transport URL. A [`BrokerResolver`] turns it into a
//! [`Transport`]; `novarpc::connect` gives every transport one, backed by a
//! per-process cache of broker transports (connected on first use, reused,
//! closed when idle). [`crate::RpcClient::cast_to_server`],
//! [`crate::RpcClient::fanout_cast_to_server`] and
//! [`crate::RpcClient::broker`] send through it.

use std::fmt;
use std::str::FromStr;

use futures::future::BoxFuture;

use crate::config::{ConfigError, TransportUrl};
use crate::error::Result;
use crate::transport::Transport;

/// A message broker to send to: a broker the configuration names in a
/// `[brokers.NAME]` table, or one given by its transport URL. `Display` and
/// `Debug` never show a password.
///
/// ```
/// use novarpc_core::Broker;
///
/// let cell1: Broker = "cell1".parse()?;
/// assert_eq!(cell1, Broker::named("cell1"));
/// let by_url: Broker = "rabbit://nova:s3cret@cell1-mq:5672/cell1".parse()?;
/// assert_eq!(by_url.to_string(), "rabbit://nova:***@cell1-mq:5672/cell1");
/// assert!(!format!("{by_url:?}").contains("s3cret"));
/// # Ok::<(), novarpc_core::ConfigError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Broker {
    /// The broker of the configuration's `[brokers.NAME]` table.
    Named(String),
    /// A broker given by its transport URL (credentials, hosts, virtual
    /// host); the driver is chosen by the URL's scheme.
    Url(TransportUrl),
}

impl Broker {
    /// The broker of the configuration's `[brokers.NAME]` table.
    pub fn named(name: impl Into<String>) -> Self {
        Broker::Named(name.into())
    }

    /// A broker given by a transport URL (`rabbit://user:pass@host:5672/vhost`).
    pub fn url(url: &str) -> std::result::Result<Self, ConfigError> {
        Ok(Broker::Url(url.parse()?))
    }
}

impl From<TransportUrl> for Broker {
    fn from(url: TransportUrl) -> Self {
        Broker::Url(url)
    }
}

impl FromStr for Broker {
    type Err = ConfigError;

    /// A transport URL if the text has a scheme (`scheme://`), else a
    /// broker name.
    fn from_str(text: &str) -> std::result::Result<Self, ConfigError> {
        if text.contains("://") {
            return Broker::url(text);
        }
        let valid = !text.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
        if valid {
            Ok(Broker::Named(text.to_owned()))
        } else {
            Err(ConfigError::InvalidBroker {
                broker: crate::config::redact_url_text(text),
                reason: "a broker is a [brokers] name (letters, digits, `_`, `-`) or a transport URL (scheme://...)".into(),
            })
        }
    }
}

impl fmt::Display for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Broker::Named(name) => f.write_str(name),
            // TransportUrl's Display hides passwords.
            Broker::Url(url) => write!(f, "{url}"),
        }
    }
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Broker::Named(name) => write!(f, "Broker::Named({name:?})"),
            Broker::Url(url) => write!(f, "Broker::Url({url})"),
        }
    }
}

/// Turns a [`Broker`] into a transport to it. `novarpc::connect` attaches one
/// to the transports it builds (a per-process cache that connects lazily,
/// once per broker, and closes idle brokers); implement it to route brokers
/// some other way. Object safe.
pub trait BrokerResolver: Send + Sync + fmt::Debug + 'static {
    /// The transport to `broker`: connected on first use, shared after.
    /// Failures keep their classification (a broker that is down fails with
    /// `Unreachable`, a name no `[brokers]` table has with `Config`).
    /// Connecting to one broker must never hold up resolving another.
    fn transport_for<'a>(&'a self, broker: &'a Broker) -> BoxFuture<'a, Result<Transport>>;

    /// Closes every transport this resolver made; later resolutions fail
    /// with `Closed`. Called by the owning transport's
    /// [`Transport::cleanup`].
    fn close(&self) -> BoxFuture<'_, Result<()>>;
}

const _: Option<&dyn BrokerResolver> = None;

impl From<&Broker> for Broker {
    /// Lets `cast_to_server` take a broker by reference as well.
    fn from(broker: &Broker) -> Self {
        broker.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_urls_and_redacts() {
        assert_eq!(
            "cell-1_a".parse::<Broker>().unwrap(),
            Broker::named("cell-1_a")
        );
        assert!("".parse::<Broker>().is_err());
        assert!("cell 1".parse::<Broker>().is_err());
        let url: Broker = "rabbit://u:pw@h1:5672,u:pw@h2/vh".parse().unwrap();
        let shown = format!("{url} {url:?}");
        assert!(!shown.contains("pw@"), "{shown}");
        assert!(matches!(url, Broker::Url(ref u) if u.hosts.len() == 2));
        let err = "rabbit://u:pw@h1,,h2/".parse::<Broker>().unwrap_err();
        assert!(!err.to_string().contains("pw@"), "{err}");
    }
}
