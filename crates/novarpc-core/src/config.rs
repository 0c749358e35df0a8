//! nova.conf-style TOML configuration: a `[DEFAULT]` table shared by every
//! backend, and one table per driver for its own options.
//!
//! ```toml
//! [DEFAULT]
//! rpc_backend = "kombu"                 # or let transport_url's scheme choose
//! transport_url = "rabbit://nova:secret@host1:5672,nova:secret@host2:5672/nova"
//! control_exchange = "nova"
//! rpc_response_timeout = 60             # seconds
//! executor_thread_pool_size = 64
//!
//! [kombu]
//! rabbit_qos_prefetch_count = 64
//!
//! # Other brokers (Nova cells), reached with cast_to_server & co.
//! [brokers.cell1]
//! transport_url = "rabbit://nova:secret@cell1-mq:5672/nova"
//!
//! [brokers.cell1.kombu]                 # merged over [kombu] for this broker
//! ssl = true
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

/// Configuration errors; each names where the problem is (file, line, key,
/// environment variable or URL), and none shows a password.
///
/// ```
/// use novarpc_core::{Config, ConfigError};
///
/// let err = Config::from_toml_str("[DEFAULT]\nrpc_response_timeout = -1\n", "nova.toml")
///     .unwrap_err();
/// assert!(matches!(err, ConfigError::Invalid { line: Some(2), .. }));
/// assert!(err.to_string().contains("nova.toml"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    // The cause is shown in the message, so it is not also a `source()`
    // (error chains would print it twice).
    /// The configuration file could not be read.
    #[error("cannot read config file {path}: {cause}")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// Why reading it failed.
        cause: std::io::Error,
    },
    /// Malformed TOML, an unknown key or a wrong type; the message names the
    /// line, column and key.
    #[error("{origin}: {message}")]
    Parse {
        /// The file or label the text came from.
        origin: String,
        /// The parser's message (line, column, key).
        message: String,
    },
    /// A value that parses but makes no sense.
    #[error("{origin}{}: invalid `{key}`: {message}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Invalid {
        /// The file or label the text came from.
        origin: String,
        /// The line of the key, when it could be found.
        line: Option<usize>,
        /// The key, as `table.key` for driver tables.
        key: String,
        /// What is wrong with the value.
        message: String,
    },
    /// `rpc_backend` (or the transport URL's scheme) names no registered driver.
    #[error("{origin}: unknown rpc_backend `{name}`; available backends: {available}")]
    UnknownBackend {
        /// The file or label the configuration came from.
        origin: String,
        /// The name that matched nothing.
        name: String,
        /// The registered names, for the message.
        available: String,
    },
    /// A top-level table that neither `[DEFAULT]` nor any driver claims,
    /// usually a misspelt driver section.
    #[error("{origin}{}: unknown table `[{table}]`; known tables: {known}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    UnknownTable {
        /// The file or label the configuration came from.
        origin: String,
        /// The line the table starts on, when it could be found.
        line: Option<usize>,
        /// The table's name.
        table: String,
        /// The tables that would have been accepted, for the message.
        known: String,
    },
    /// A broker name that no `[brokers.NAME]` table defines.
    #[error("{origin}: unknown broker `{name}`; the [brokers] tables name: {known}")]
    UnknownBroker {
        /// The file or label the configuration came from.
        origin: String,
        /// The name that matched nothing.
        name: String,
        /// The names that would have been accepted, for the message.
        known: String,
    },
    /// A broker that is neither a `[brokers]` name nor a transport URL.
    #[error("invalid broker `{broker}`: {reason}")]
    InvalidBroker {
        /// The text given, passwords hidden.
        broker: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A transport URL that does not parse.
    #[error("invalid transport URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL with its passwords hidden.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `NOVARPC_*` environment override with an unusable value.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable's name.
        var: String,
        /// What is wrong with its value.
        message: String,
    },
}

/// A secret that never shows in `Debug` or `Display`, so configurations and
/// URLs can be logged and printed without leaking it.
///
/// ```
/// use novarpc_core::Password;
///
/// let password = Password::new("s3cret");
/// assert_eq!(format!("{password} {password:?}"), "*** \"***\"");
/// assert_eq!(password.expose(), "s3cret");
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Password(String);

impl Password {
    /// Wraps a secret (from a vault, a prompt, a test).
    pub fn new(secret: impl Into<String>) -> Self {
        Password(secret.into())
    }

    /// The secret itself, for handing to a broker client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One broker host of a transport URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportHost {
    /// The broker's host name or address, as the URL gives it.
    pub hostname: String,
    /// The port, when the URL gives one; drivers fill in their default.
    pub port: Option<u16>,
    /// The user name, percent-decoded.
    pub username: Option<String>,
    /// The password, percent-decoded.
    pub password: Option<Password>,
}

/// An oslo.messaging transport URL:
/// `scheme://user:pass@host1:port,user:pass@host2:port/virtual_host?opt=value`.
/// `Display` and `Debug` redact passwords.
///
/// ```
/// use novarpc_core::TransportUrl;
///
/// let url: TransportUrl = "rabbit://nova:secret@h1:5672,nova:secret@h2/nova?heartbeat=10"
///     .parse()?;
/// assert_eq!(url.hosts.len(), 2);
/// assert_eq!(url.virtual_host.as_deref(), Some("nova"));
/// assert_eq!(url.query_value("heartbeat"), Some("10"));
/// assert!(!url.to_string().contains("secret"));
/// # Ok::<(), novarpc_core::ConfigError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct TransportUrl {
    /// The scheme, lower-cased; it may select the backend (`rabbit`, `amqp`, ...).
    pub scheme: String,
    /// The brokers to try, in order (none for `memory://`).
    pub hosts: Vec<TransportHost>,
    /// The path after the hosts, percent-decoded (a RabbitMQ virtual host).
    pub virtual_host: Option<String>,
    /// Driver options given as `?key=value` pairs, in order.
    pub query: Vec<(String, String)>,
}

impl TransportUrl {
    /// The value of a query option (`?heartbeat=10`).
    pub fn query_value(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl FromStr for TransportUrl {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: &str| ConfigError::InvalidUrl {
            url: redact_url_text(text),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = text.split_once("://").ok_or_else(|| {
            invalid("expected scheme://[user:pass@]host[:port][,...]/[virtual_host]")
        })?;
        let scheme_ok = !scheme.is_empty()
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !scheme_ok {
            return Err(invalid(
                "the scheme must be letters, digits, `+`, `-` or `.`",
            ));
        }
        let scheme = scheme.to_ascii_lowercase();
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let (netlocs, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let mut hosts = Vec::new();
        if !netlocs.is_empty() {
            for netloc in netlocs.split(',') {
                if netloc.is_empty() {
                    return Err(invalid("empty host in the host list"));
                }
                let parsed = url::Url::parse(&format!("{scheme}://{netloc}/"))
                    .map_err(|e| invalid(&format!("host `{}`: {e}", redact_netloc(netloc))))?;
                let hostname = parsed
                    .host_str()
                    .filter(|h| !h.is_empty())
                    .ok_or_else(|| invalid("a host has no hostname"))?;
                let decode = |s: &str| {
                    percent_encoding::percent_decode_str(s)
                        .decode_utf8()
                        .map(|c| c.into_owned())
                        .map_err(|_| invalid("user name or password is not UTF-8"))
                };
                let username = match parsed.username() {
                    "" => None,
                    u => Some(decode(u)?),
                };
                let password = match parsed.password() {
                    None => None,
                    Some(p) => Some(Password(decode(p)?)),
                };
                hosts.push(TransportHost {
                    hostname: hostname.to_owned(),
                    port: parsed.port(),
                    username,
                    password,
                });
            }
        }
        let virtual_host = match path {
            None | Some("") => None,
            Some(p) => Some(
                percent_encoding::percent_decode_str(p)
                    .decode_utf8()
                    .map_err(|_| invalid("virtual host is not UTF-8"))?
                    .into_owned(),
            ),
        };
        let query = query
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();
        Ok(TransportUrl {
            scheme,
            hosts,
            virtual_host,
            query,
        })
    }
}

fn redact_netloc(netloc: &str) -> String {
    match netloc.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => netloc.to_owned(),
        },
        None => netloc.to_owned(),
    }
}

/// Hides credentials in free text (an error excerpt of a config file): the
/// password of every `user:password@host` and the value of every key whose
/// name contains `password`.
pub fn redact_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let lower = line.to_ascii_lowercase();
        if let (Some(key_at), Some(eq)) = (lower.find("password"), line.find('=')) {
            if key_at < eq {
                out.push_str(&line[..=eq]);
                out.push_str(" \"***\"");
                continue;
            }
        }
        out.push_str(&redact_userinfo(line));
    }
    out
}

/// Replaces the password of each `user:password@` in `line` with `***`.
fn redact_userinfo(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find('@') {
        let before = &rest[..at];
        let start = before
            .rfind(|c: char| c.is_whitespace() || "\"'/,=<>|".contains(c))
            .map_or(0, |i| i + 1);
        match before[start..].find(':') {
            Some(colon) => {
                out.push_str(&before[..start + colon + 1]);
                out.push_str("***@");
            }
            None => {
                out.push_str(before);
                out.push('@');
            }
        }
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
    out
}

/// The transport URL `text` with its passwords hidden; works on text that
/// does not parse, for error messages about it.
pub fn redact_url_text(text: &str) -> String {
    match text.split_once("://") {
        Some((scheme, rest)) => {
            let (netlocs, tail) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let netlocs: Vec<String> = netlocs.split(',').map(redact_netloc).collect();
            format!("{scheme}://{}{tail}", netlocs.join(","))
        }
        None => text.to_owned(),
    }
}

impl fmt::Display for TransportUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        for (i, host) in self.hosts.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if let Some(user) = &host.username {
                f.write_str(user)?;
                if host.password.is_some() {
                    f.write_str(":***")?;
                }
                f.write_str("@")?;
            }
            f.write_str(&host.hostname)?;
            if let Some(port) = host.port {
                write!(f, ":{port}")?;
            }
        }
        f.write_str("/")?;
        if let Some(vhost) = &self.virtual_host {
            f.write_str(vhost)?;
        }
        for (i, (k, v)) in self.query.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

impl fmt::Debug for TransportUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TransportUrl({self})")
    }
}

/// The `[DEFAULT]` options every backend shares, resolved with defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct CommonOptions {
    /// The backend's name or alias; `None` lets `transport_url` choose (else `memory`).
    pub rpc_backend: Option<String>,
    /// Where the brokers are, with credentials; without one, drivers fall
    /// back to their defaults (a broker on the local host).
    pub transport_url: Option<TransportUrl>,
    /// The exchange targets use when they name none (oslo default `openstack`).
    pub control_exchange: String,
    /// The timeout of a call that sets none.
    pub rpc_response_timeout: Duration,
    /// How long a cast, fanout cast or notification may take to be handed to
    /// the broker (connecting, reconnecting, a blocked connection, confirms)
    /// before it fails with a timeout instead of waiting out an outage.
    pub send_timeout: Duration,
    /// How many requests a server handles at once.
    pub executor_thread_pool_size: usize,
    /// How many other brokers' transports the process keeps connected at
    /// most (least recently used closed first; those still in use by a
    /// server or client are never closed).
    pub broker_cache_size: usize,
    /// How long another broker's transport may go unused before it is closed.
    pub broker_idle_timeout: Duration,
}

impl Default for CommonOptions {
    fn default() -> Self {
        CommonOptions {
            rpc_backend: None,
            transport_url: None,
            control_exchange: "openstack".to_owned(),
            rpc_response_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(30),
            executor_thread_pool_size: 64,
            broker_cache_size: 16,
            broker_idle_timeout: Duration::from_secs(300),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultTable {
    rpc_backend: Option<String>,
    transport_url: Option<toml::Spanned<String>>,
    control_exchange: Option<toml::Spanned<String>>,
    rpc_response_timeout: Option<toml::Spanned<f64>>,
    send_timeout: Option<toml::Spanned<f64>>,
    executor_thread_pool_size: Option<toml::Spanned<i64>>,
    broker_cache_size: Option<toml::Spanned<i64>>,
    broker_idle_timeout: Option<toml::Spanned<f64>>,
}

/// One `[brokers.NAME]` table: another message broker the process may send
/// to (a Nova cell), by name.
///
/// ```toml
/// [brokers.cell1]
/// transport_url = "rabbit://nova:secret@cell1-mq:5672/nova"
/// rpc_backend = "kombu"           # optional: the URL's scheme chooses
///
/// [brokers.cell1.kombu]           # optional: merged over [kombu]
/// ssl = true
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct BrokerEntry {
    /// The table's name (`cell1`).
    pub name: String,
    /// Where the broker is, with its credentials (redacted in `Debug`).
    pub transport_url: TransportUrl,
    /// The backend, when the table names one; else the URL's scheme decides.
    pub rpc_backend: Option<String>,
    /// Driver tables (`[brokers.cell1.kombu]`) merged over the top-level
    /// ones for this broker, with the line each starts on.
    pub tables: Vec<(String, Option<usize>)>,
    /// The line the table starts on.
    pub line: Option<usize>,
    /// The line of its `transport_url`.
    pub url_line: Option<usize>,
}

const BROKER_KEYS: &str =
    "a [brokers.NAME] table takes `transport_url`, `rpc_backend` and driver tables such as [brokers.NAME.kombu]";

/// Parses the `[brokers]` tables, each error naming its file, line and key.
fn parse_brokers(text: &str, origin: &str) -> Result<Vec<BrokerEntry>, ConfigError> {
    type Table = std::collections::BTreeMap<String, toml::Spanned<toml::Value>>;
    let parse_error = |e: toml::de::Error| ConfigError::Parse {
        origin: origin.to_owned(),
        message: redact_secrets(e.to_string().trim_end()),
    };
    let brokers: Option<std::collections::BTreeMap<String, toml::Spanned<toml::Value>>> =
        section_at(text, &["brokers"]).map_err(parse_error)?;
    let Some(brokers) = brokers else {
        return Ok(Vec::new());
    };
    let invalid = |line: Option<usize>, key: String, message: String| ConfigError::Invalid {
        origin: origin.to_owned(),
        line,
        key,
        message,
    };
    let mut entries = Vec::new();
    for (name, table) in brokers {
        let header = header_line(text, &format!("brokers.{name}"))
            .or_else(|| Some(line_of(text, table.span().start)));
        if !table.get_ref().is_table() {
            return Err(invalid(
                header,
                format!("brokers.{name}"),
                format!("expected a table: {BROKER_KEYS}"),
            ));
        }
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
        {
            return Err(invalid(
                header,
                format!("brokers.{name}"),
                "broker names are letters, digits, `_` and `-`".into(),
            ));
        }
        let table: Table = section_at(text, &["brokers", &name]).map_err(parse_error)?;
        let mut transport_url = None;
        let mut url_line = None;
        let mut rpc_backend = None;
        let mut tables = Vec::new();
        for (key, value) in table {
            let line = Some(line_of(text, value.span().start));
            let full_key = format!("brokers.{name}.{key}");
            match (key.as_str(), value.get_ref()) {
                ("transport_url", toml::Value::String(url)) => {
                    url_line = line;
                    transport_url = Some(
                        url.parse::<TransportUrl>()
                            .map_err(|e| invalid(line, full_key, e.to_string()))?,
                    );
                }
                ("rpc_backend", toml::Value::String(backend)) => {
                    rpc_backend = Some(backend.clone());
                }
                ("transport_url" | "rpc_backend", other) => {
                    return Err(invalid(
                        line,
                        full_key,
                        format!("expected a string, got {}", other.type_str()),
                    ));
                }
                (_, toml::Value::Table(_)) => {
                    let line = header_line(text, &full_key).or(line);
                    tables.push((key, line));
                }
                _ => {
                    return Err(invalid(
                        line,
                        full_key,
                        format!("unknown key: {BROKER_KEYS}"),
                    ))
                }
            }
        }
        let transport_url = transport_url.ok_or_else(|| {
            invalid(
                header,
                format!("brokers.{name}.transport_url"),
                "missing: every broker needs a transport_url".into(),
            )
        })?;
        entries.push(BrokerEntry {
            name,
            transport_url,
            rpc_backend,
            tables,
            line: header,
            url_line,
        });
    }
    Ok(entries)
}

/// The line of the header `[name]` (or `[name.`...), if the table has one.
fn header_line(text: &str, name: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.starts_with(&format!("[{name}]")) || l.starts_with(&format!("[{name}."))
        })
        .map(|i| i + 1)
}

/// Merges `overlay` over `base`, table by table; other values are replaced.
fn merge_tables(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(overlay)) => {
                merge_tables(base, overlay)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

struct Source {
    origin: String,
    text: String,
}

impl fmt::Debug for Source {
    // The text holds credentials: show where it came from and its size only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("origin", &self.origin)
            .field("text_len", &self.text.len())
            .finish()
    }
}

/// A loaded configuration: the resolved `[DEFAULT]` options and the text the
/// driver tables are parsed from (so their errors can name lines too).
///
/// ```
/// use std::time::Duration;
/// use novarpc_core::Config;
///
/// let config = Config::from_toml_str(
///     "[DEFAULT]\nrpc_backend = \"memory\"\nrpc_response_timeout = 5\n",
///     "<inline>",
/// )?;
/// assert_eq!(config.common().rpc_response_timeout, Duration::from_secs(5));
/// assert_eq!(config.origin(), "<inline>");
/// # Ok::<(), novarpc_core::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Config {
    source: Arc<Source>,
    common: CommonOptions,
    brokers: Arc<Vec<BrokerEntry>>,
    /// The `[brokers]` table this configuration is for ([`Config::for_broker`]).
    scope: Option<Arc<str>>,
}

impl Default for Config {
    /// The embedded default: the `memory` backend.
    fn default() -> Self {
        Config {
            source: Arc::new(Source {
                origin: "<built-in defaults>".to_owned(),
                text: String::new(),
            }),
            common: CommonOptions {
                rpc_backend: Some("memory".to_owned()),
                ..CommonOptions::default()
            },
            brokers: Arc::default(),
            scope: None,
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Config {
    /// The embedded default: the `memory` backend.
    pub fn memory() -> Config {
        Config::default()
    }

    /// Reads a TOML file, then applies `NOVARPC_*` environment overrides.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        let mut config = Config::from_toml_str(&text, &path.display().to_string())?;
        config.apply_overrides(std::env::vars())?;
        Ok(config)
    }

    /// Parses TOML text; `origin` names it in errors (a path, `<inline>`, ...).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        // toml's messages quote the offending line: a password on it must
        // not reach a terminal or a log.
        let parse_error = |e: toml::de::Error| ConfigError::Parse {
            origin: origin.to_owned(),
            message: redact_secrets(e.to_string().trim_end()),
        };
        let document: toml::Table = toml::from_str(text).map_err(parse_error)?;
        let mut common = CommonOptions::default();
        if document.contains_key("DEFAULT") {
            let table: DefaultTable = section_at(text, &["DEFAULT"]).map_err(parse_error)?;
            let invalid =
                |span: std::ops::Range<usize>, key: &str, message: String| ConfigError::Invalid {
                    origin: origin.to_owned(),
                    line: Some(line_of(text, span.start)),
                    key: key.to_owned(),
                    message,
                };
            common.rpc_backend = table.rpc_backend;
            if let Some(url) = table.transport_url {
                let span = url.span();
                common.transport_url = Some(
                    url.into_inner()
                        .parse()
                        .map_err(|e: ConfigError| invalid(span, "transport_url", e.to_string()))?,
                );
            }
            if let Some(exchange) = table.control_exchange {
                if exchange.get_ref().is_empty() {
                    return Err(invalid(
                        exchange.span(),
                        "control_exchange",
                        "must not be empty".into(),
                    ));
                }
                common.control_exchange = exchange.into_inner();
            }
            if let Some(timeout) = table.rpc_response_timeout {
                let seconds = *timeout.get_ref();
                common.rpc_response_timeout = positive_seconds(seconds)
                    .map_err(|m| invalid(timeout.span(), "rpc_response_timeout", m))?;
            }
            if let Some(timeout) = table.send_timeout {
                let seconds = *timeout.get_ref();
                common.send_timeout = positive_seconds(seconds)
                    .map_err(|m| invalid(timeout.span(), "send_timeout", m))?;
            }
            if let Some(size) = table.broker_cache_size {
                common.broker_cache_size = usize::try_from(*size.get_ref())
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        invalid(
                            size.span(),
                            "broker_cache_size",
                            format!("must be a positive integer, got {}", size.get_ref()),
                        )
                    })?;
            }
            if let Some(timeout) = table.broker_idle_timeout {
                let seconds = *timeout.get_ref();
                common.broker_idle_timeout = positive_seconds(seconds)
                    .map_err(|m| invalid(timeout.span(), "broker_idle_timeout", m))?;
            }
            if let Some(size) = table.executor_thread_pool_size {
                common.executor_thread_pool_size = usize::try_from(*size.get_ref())
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        invalid(
                            size.span(),
                            "executor_thread_pool_size",
                            format!("must be a positive integer, got {}", size.get_ref()),
                        )
                    })?;
            }
        }
        let brokers = if document.contains_key("brokers") {
            parse_brokers(text, origin)?
        } else {
            Vec::new()
        };
        Ok(Config {
            source: Arc::new(Source {
                origin: origin.to_owned(),
                text: text.to_owned(),
            }),
            common,
            brokers: Arc::new(brokers),
            scope: None,
        })
    }

    /// Applies `NOVARPC_RPC_BACKEND`, `NOVARPC_TRANSPORT_URL`,
    /// `NOVARPC_CONTROL_EXCHANGE`, `NOVARPC_RPC_RESPONSE_TIMEOUT`,
    /// `NOVARPC_SEND_TIMEOUT`, `NOVARPC_EXECUTOR_THREAD_POOL_SIZE`,
    /// `NOVARPC_BROKER_CACHE_SIZE` and `NOVARPC_BROKER_IDLE_TIMEOUT` from `vars`.
    pub fn apply_overrides(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (var, value) in vars {
            let env_error = |message: String| ConfigError::Env {
                var: var.clone(),
                message,
            };
            match var.as_str() {
                "NOVARPC_RPC_BACKEND" => self.common.rpc_backend = Some(value),
                "NOVARPC_TRANSPORT_URL" => {
                    self.common.transport_url = Some(
                        value
                            .parse()
                            .map_err(|e: ConfigError| env_error(e.to_string()))?,
                    )
                }
                "NOVARPC_CONTROL_EXCHANGE" if !value.is_empty() => {
                    self.common.control_exchange = value
                }
                "NOVARPC_RPC_RESPONSE_TIMEOUT" => {
                    let seconds: f64 = value
                        .parse()
                        .map_err(|_| env_error(format!("`{value}` is not a number of seconds")))?;
                    self.common.rpc_response_timeout =
                        positive_seconds(seconds).map_err(env_error)?;
                }
                "NOVARPC_SEND_TIMEOUT" => {
                    let seconds: f64 = value
                        .parse()
                        .map_err(|_| env_error(format!("`{value}` is not a number of seconds")))?;
                    self.common.send_timeout = positive_seconds(seconds).map_err(env_error)?;
                }
                "NOVARPC_BROKER_CACHE_SIZE" => {
                    self.common.broker_cache_size = value
                        .parse()
                        .ok()
                        .filter(|n: &usize| *n > 0)
                        .ok_or_else(|| env_error(format!("`{value}` is not a positive integer")))?
                }
                "NOVARPC_BROKER_IDLE_TIMEOUT" => {
                    let seconds: f64 = value
                        .parse()
                        .map_err(|_| env_error(format!("`{value}` is not a number of seconds")))?;
                    self.common.broker_idle_timeout =
                        positive_seconds(seconds).map_err(env_error)?;
                }
                "NOVARPC_EXECUTOR_THREAD_POOL_SIZE" => {
                    self.common.executor_thread_pool_size = value
                        .parse()
                        .ok()
                        .filter(|n: &usize| *n > 0)
                        .ok_or_else(|| env_error(format!("`{value}` is not a positive integer")))?
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The resolved `[DEFAULT]` options.
    pub fn common(&self) -> &CommonOptions {
        &self.common
    }

    /// The `[DEFAULT]` options, for programs that set them in code (tests,
    /// command-line flags) after loading.
    pub fn common_mut(&mut self) -> &mut CommonOptions {
        &mut self.common
    }

    /// Where this configuration came from (a path or a label).
    pub fn origin(&self) -> &str {
        &self.source.origin
    }

    /// The names of the top-level tables, with the line each starts on.
    pub fn tables(&self) -> Vec<(String, Option<usize>)> {
        let text = &self.source.text;
        let Ok(document) = toml::from_str::<toml::Table>(text) else {
            return Vec::new();
        };
        document
            .keys()
            .map(|name| {
                let line = text.lines().position(|l| {
                    let l = l.trim_start();
                    l.starts_with(&format!("[{name}]"))
                        || l.starts_with(&format!("[{name}."))
                        || l.starts_with(&format!("{name} ="))
                        || l.starts_with(&format!("{name}="))
                });
                (name.clone(), line.map(|l| l + 1))
            })
            .collect()
    }

    /// The `[brokers.NAME]` tables, in name order.
    pub fn brokers(&self) -> &[BrokerEntry] {
        &self.brokers
    }

    /// The `[brokers]` table this configuration was made for by
    /// [`Config::for_broker`], if any.
    pub fn broker_scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// The configuration of the broker `[brokers.NAME]`: the same `[DEFAULT]`
    /// options with the broker's `transport_url` (and `rpc_backend`), and
    /// driver tables with the broker's own (`[brokers.NAME.kombu]`) merged
    /// over them key by key. Its [`Config::origin`] names the broker.
    pub fn for_broker(&self, name: &str) -> Result<Config, ConfigError> {
        let entry = self
            .brokers
            .iter()
            .find(|b| b.name == name)
            .ok_or_else(|| ConfigError::UnknownBroker {
                origin: self.source.origin.clone(),
                name: name.to_owned(),
                known: if self.brokers.is_empty() {
                    "(none)".to_owned()
                } else {
                    self.brokers
                        .iter()
                        .map(|b| b.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })?;
        let mut config = self.clone();
        config.common.transport_url = Some(entry.transport_url.clone());
        config.common.rpc_backend = entry.rpc_backend.clone();
        config.scope = Some(Arc::from(name));
        Ok(config)
    }

    /// The configuration of the broker at `url`: the same `[DEFAULT]` options
    /// and driver tables, with this transport URL; its scheme chooses the
    /// backend.
    pub fn for_url(&self, url: TransportUrl) -> Config {
        let mut config = self.clone();
        config.common.transport_url = Some(url);
        config.common.rpc_backend = None;
        config.scope = None;
        config
    }

    /// Parses the table `[name]` into a driver's typed options (defaults when the
    /// table is absent). Errors name the file, line and key.
    ///
    /// In a broker's configuration ([`Config::for_broker`]), the broker's
    /// `[brokers.NAME.<name>]` table is checked on its own (errors name its
    /// lines), then merged over `[name]` key by key (nested tables too). Both
    /// tables must spell a key the same way (not one an alias of the other).
    pub fn section<T: DeserializeOwned + Default>(&self, name: &str) -> Result<T, ConfigError> {
        let text = &self.source.text;
        let parse_error = |e: toml::de::Error| ConfigError::Parse {
            origin: self.source.origin.clone(),
            message: redact_secrets(e.to_string().trim_end()),
        };
        let Some(scope) = &self.scope else {
            return section_at::<Option<T>>(text, &[name])
                .map(Option::unwrap_or_default)
                .map_err(parse_error);
        };
        let path = ["brokers", scope, name];
        let overlay: Option<toml::Table> = section_at(text, &path).map_err(parse_error)?;
        let Some(overlay) = overlay else {
            return section_at::<Option<T>>(text, &[name])
                .map(Option::unwrap_or_default)
                .map_err(parse_error);
        };
        // The override alone: unknown keys and wrong types name its lines.
        section_at::<Option<T>>(text, &path).map_err(parse_error)?;
        let mut merged: toml::Table = section_at::<Option<toml::Table>>(text, &[name])
            .map_err(parse_error)?
            .unwrap_or_default();
        merge_tables(&mut merged, overlay);
        T::deserialize(toml::Value::Table(merged)).map_err(|e| ConfigError::Parse {
            origin: self.source.origin.clone(),
            message: format!(
                "[brokers.{scope}.{name}] merged over [{name}]: {}",
                redact_secrets(e.to_string().trim_end())
            ),
        })
    }

    /// An error about `key` in table `[table]`, for drivers' own checks. In a
    /// broker's configuration it names `[brokers.NAME.table]` when the key is
    /// set there.
    pub fn invalid(&self, table: &str, key: &str, message: impl Into<String>) -> ConfigError {
        let message = message.into();
        if let Some(scope) = &self.scope {
            let scoped = format!("brokers.{scope}.{table}");
            if let Some(line) = self.key_line(&scoped, key) {
                return ConfigError::Invalid {
                    origin: self.source.origin.clone(),
                    line: Some(line),
                    key: format!("{scoped}.{key}"),
                    message,
                };
            }
        }
        ConfigError::Invalid {
            origin: self.source.origin.clone(),
            line: self.key_line(table, key),
            key: format!("{table}.{key}"),
            message,
        }
    }

    /// The line of `key` in the table with the header `[table]`.
    fn key_line(&self, table: &str, key: &str) -> Option<usize> {
        let mut in_table = false;
        for (i, l) in self.source.text.lines().enumerate() {
            let l = l.trim_start();
            if l.starts_with('[') {
                in_table = l.starts_with(&format!("[{table}]"));
            } else if in_table && l.starts_with(key) && l[key.len()..].trim_start().starts_with('=')
            {
                return Some(i + 1);
            }
        }
        None
    }
}

fn positive_seconds(seconds: f64) -> Result<Duration, String> {
    if seconds.is_finite() && seconds > 0.0 && seconds < 1e9 {
        Ok(Duration::from_secs_f64(seconds))
    } else {
        Err(format!(
            "must be a positive number of seconds, got {seconds}"
        ))
    }
}

/// Deserializes the table at `path` (`["kombu"]`, `["brokers", "cell1",
/// "kombu"]`) of a TOML document straight from its text, so errors inside the
/// table keep their line and column. An absent table deserializes from unit
/// (`Option<_>` gives `None`).
fn section_at<T: DeserializeOwned>(text: &str, path: &[&str]) -> Result<T, toml::de::Error> {
    struct Section<'p, T> {
        path: &'p [&'p str],
        marker: std::marker::PhantomData<T>,
    }
    impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for Section<'_, T> {
        type Value = T;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
            match self.path {
                [] => T::deserialize(d),
                _ => d.deserialize_map(self),
            }
        }
    }
    impl<'de, T: DeserializeOwned> Visitor<'de> for Section<'_, T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a TOML table")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
            let (first, rest) = self.path.split_first().expect("a non-empty path");
            let mut found = None;
            while let Some(key) = map.next_key::<String>()? {
                if key == *first {
                    found = Some(map.next_value_seed(Section::<T> {
                        path: rest,
                        marker: std::marker::PhantomData,
                    })?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            match found {
                Some(value) => Ok(value),
                // Absent table: let `T` decide (Option<_> gives None).
                None => T::deserialize(serde::de::value::UnitDeserializer::new())
                    .map_err(|e: serde::de::value::Error| serde::de::Error::custom(e)),
            }
        }
    }
    Section {
        path,
        marker: std::marker::PhantomData,
    }
    .deserialize(toml::Deserializer::new(text))
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_never_show_in_debug_or_parse_errors() {
        let text = "[DEFAULT]\ntransport_url = \"rabbit://nova:s3cret@h1:5672,nova:s3cret@h2/\"\n";
        let config = Config::from_toml_str(text, "n.toml").unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        // A syntax error on the URL's line: toml quotes the line.
        let broken = "[DEFAULT]\ntransport_url = \"rabbit://nova:s3cret@h1:5672/\" x\n";
        let err = Config::from_toml_str(broken, "n.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("n.toml") && !err.contains("s3cret"), "{err}");
        let broken = "[kombu]\nssl_key_password = \"s3cret\" x\n";
        let err = Config::from_toml_str(broken, "n.toml")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
        assert_eq!(
            redact_secrets("amqp://u:p@h:1/ and u2:p2@h2"),
            "amqp://u:***@h:1/ and u2:***@h2"
        );
    }

    use super::*;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct DriverOptions {
        prefetch: u32,
    }

    #[test]
    fn parses_default_table() {
        let config = Config::from_toml_str(
            "[DEFAULT]\nrpc_backend = \"kombu\"\ncontrol_exchange = \"nova\"\nrpc_response_timeout = 2.5\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(config.common().rpc_backend.as_deref(), Some("kombu"));
        assert_eq!(config.common().control_exchange, "nova");
        assert_eq!(
            config.common().rpc_response_timeout,
            Duration::from_millis(2500)
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let err =
            Config::from_toml_str("[DEFAULT]\nrpc_backend = \"memory\"\nbogus = 1\n", "n.toml")
                .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ConfigError::Parse { .. }));
        assert!(
            text.contains("n.toml") && text.contains("line 3") && text.contains("bogus"),
            "{text}"
        );

        let err = Config::from_toml_str("[DEFAULT]\nrpc_response_timeout = \"x\"\n", "n.toml")
            .unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");

        let err =
            Config::from_toml_str("[DEFAULT]\n\ntransport_url = \"nope\"\n", "n.toml").unwrap_err();
        assert!(
            matches!(err, ConfigError::Invalid { line: Some(3), .. }),
            "{err}"
        );

        let config =
            Config::from_toml_str("[DEFAULT]\n[drv]\nprefetch = 1\n\nextra = true\n", "d.toml")
                .unwrap();
        let err = config.section::<DriverOptions>("drv").unwrap_err();
        assert!(
            err.to_string().contains("line 5") && err.to_string().contains("extra"),
            "{err}"
        );
        assert_eq!(
            config.section::<DriverOptions>("absent").unwrap(),
            DriverOptions::default()
        );
        let err = Config::from_toml_str("[DEFAULT\n", "broken.toml").unwrap_err();
        assert!(err.to_string().contains("broken.toml"), "{err}");
    }

    #[test]
    fn transport_urls_parse_hosts_and_redact_passwords() {
        let url: TransportUrl = "rabbit://nova:s3cr%40t@h1:5672,nova:other@h2/nova?heartbeat=10"
            .parse()
            .unwrap();
        assert_eq!(url.scheme, "rabbit");
        assert_eq!(url.hosts.len(), 2);
        assert_eq!(url.hosts[0].password.as_ref().unwrap().expose(), "s3cr@t");
        assert_eq!(url.hosts[1].port, None);
        assert_eq!(url.virtual_host.as_deref(), Some("nova"));
        assert_eq!(url.query_value("heartbeat"), Some("10"));
        let shown = format!("{url} {url:?}");
        assert!(
            !shown.contains("s3cr") && !shown.contains("other"),
            "{shown}"
        );
        assert!(shown.contains("nova:***@h1:5672"), "{shown}");

        let err = "rabbit://u:topsecret@h1,,h2/"
            .parse::<TransportUrl>()
            .unwrap_err();
        assert!(!err.to_string().contains("topsecret"), "{err}");
        assert!("no-scheme".parse::<TransportUrl>().is_err());
        let memory: TransportUrl = "memory://".parse().unwrap();
        assert!(memory.hosts.is_empty() && memory.virtual_host.is_none());
    }

    #[test]
    fn brokers_tables_parse_and_merge_over_driver_tables() {
        let text = "[DEFAULT]\ntransport_url = \"rabbit://a:pw0@h0/\"\n\n[drv]\nprefetch = 1\n\n\
                    [brokers.cell1]\ntransport_url = \"rabbit://b:pw1@h1:5673/cell1\"\n\n\
                    [brokers.cell1.drv]\nprefetch = 7\n";
        let config = Config::from_toml_str(text, "c.toml").unwrap();
        let entry = &config.brokers()[0];
        assert_eq!(
            (entry.name.as_str(), entry.line, entry.url_line),
            ("cell1", Some(7), Some(8))
        );
        assert_eq!(entry.tables, vec![("drv".to_owned(), Some(10))]);
        let shown = format!("{config:?}");
        assert!(!shown.contains("pw1") && !shown.contains("pw0"), "{shown}");
        let cell1 = config.for_broker("cell1").unwrap();
        assert_eq!(cell1.broker_scope(), Some("cell1"));
        let url = cell1.common().transport_url.as_ref().unwrap();
        assert_eq!(url.virtual_host.as_deref(), Some("cell1"));
        assert_eq!(cell1.section::<DriverOptions>("drv").unwrap().prefetch, 7);
        assert_eq!(config.section::<DriverOptions>("drv").unwrap().prefetch, 1);
        let err = cell1.invalid("drv", "prefetch", "too big");
        assert!(
            matches!(&err, ConfigError::Invalid { line: Some(11), key, .. } if key == "brokers.cell1.drv.prefetch"),
            "{err}"
        );
        assert!(matches!(
            config.for_broker("cell2"),
            Err(ConfigError::UnknownBroker { .. })
        ));
        let by_url = config.for_url("memory://x".parse().unwrap());
        assert_eq!(by_url.broker_scope(), None);
        assert_eq!(by_url.common().rpc_backend, None);
        assert_eq!(by_url.section::<DriverOptions>("drv").unwrap().prefetch, 1);
    }

    #[test]
    fn nested_driver_tables_merge_key_by_key() {
        let mut base: toml::Table = toml::from_str("a = 1\n[n]\nx = 1\ny = 2\n").unwrap();
        let overlay: toml::Table = toml::from_str("b = 2\n[n]\ny = 3\n").unwrap();
        merge_tables(&mut base, overlay);
        let expected: toml::Table = toml::from_str("a = 1\nb = 2\n[n]\nx = 1\ny = 3\n").unwrap();
        assert_eq!(base, expected);
    }

    #[test]
    fn brokers_errors_name_file_line_and_key() {
        let invalid = |text: &str| Config::from_toml_str(text, "b.toml").unwrap_err();
        let err = invalid("[brokers.cell1]\ntransport_url = \"memory://x\"\ntransprt = 1\n");
        assert!(
            matches!(&err, ConfigError::Invalid { line: Some(3), key, .. } if key == "brokers.cell1.transprt"),
            "{err}"
        );
        let err = invalid("\n[brokers.cell1]\ntransport_url = \"rabbit://u:s3cret@h1,,h2/\"\n");
        assert!(
            matches!(&err, ConfigError::Invalid { line: Some(3), key, .. } if key == "brokers.cell1.transport_url"),
            "{err}"
        );
        assert!(!err.to_string().contains("s3cret") && err.to_string().contains("b.toml"));
        let err = invalid("[brokers.cell1]\nrpc_backend = \"kombu\"\n");
        assert!(
            matches!(&err, ConfigError::Invalid { line: Some(1), key, .. } if key == "brokers.cell1.transport_url"),
            "{err}"
        );
        let err = invalid("[brokers]\ncell1 = \"rabbit://h/\"\n");
        assert!(
            matches!(&err, ConfigError::Invalid { key, .. } if key == "brokers.cell1"),
            "{err}"
        );
        let err = invalid("[brokers.cell1]\ntransport_url = 5\n");
        assert!(
            matches!(&err, ConfigError::Invalid { line: Some(2), .. }),
            "{err}"
        );
        // The broker's driver table on its own: its lines.
        let config = Config::from_toml_str(
            "[brokers.cell1]\ntransport_url = \"memory://x\"\n\n[brokers.cell1.drv]\n\nextra = 1\n",
            "b.toml",
        )
        .unwrap();
        let err = config
            .for_broker("cell1")
            .unwrap()
            .section::<DriverOptions>("drv")
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 6") && text.contains("extra"), "{text}");
    }

    #[test]
    fn broker_cache_options_parse() {
        let config = Config::from_toml_str(
            "[DEFAULT]\nbroker_cache_size = 4\nbroker_idle_timeout = 2.5\n",
            "d.toml",
        )
        .unwrap();
        assert_eq!(config.common().broker_cache_size, 4);
        assert_eq!(
            config.common().broker_idle_timeout,
            Duration::from_millis(2500)
        );
        let err =
            Config::from_toml_str("[DEFAULT]\n\nbroker_cache_size = 0\n", "d.toml").unwrap_err();
        assert!(
            matches!(err, ConfigError::Invalid { line: Some(3), .. }),
            "{err}"
        );
    }

    #[test]
    fn environment_overrides_apply() {
        let mut config = Config::default();
        config
            .apply_overrides([
                ("NOVARPC_RPC_BACKEND".to_owned(), "kombu".to_owned()),
                ("NOVARPC_RPC_RESPONSE_TIMEOUT".to_owned(), "3".to_owned()),
                ("UNRELATED".to_owned(), "x".to_owned()),
            ])
            .unwrap();
        assert_eq!(config.common().rpc_backend.as_deref(), Some("kombu"));
        assert_eq!(config.common().rpc_response_timeout, Duration::from_secs(3));
        let err = config
            .apply_overrides([("NOVARPC_RPC_RESPONSE_TIMEOUT".to_owned(), "-1".to_owned())])
            .unwrap_err();
        assert!(matches!(err, ConfigError::Env { .. }));
    }
}
