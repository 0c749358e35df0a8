//! Connections and channels: a connector for `Reconnector` (one broker host at a
//! time, failing over to the next), and the publisher channel pool.

use std::fmt;
use std::sync::Arc;

use lapin::options::ConfirmSelectOptions;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::uri::{
    AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo, SASLMechanism,
};
use lapin::{Channel, Connection, ConnectionProperties};
use novarpc_amqp::pool::{Manager, Metrics, RecycleError, RecycleResult};
use novarpc_amqp::{broker_addresses, Connector, Reconnector};
use novarpc_core::{CommonOptions, ConfigError, TransportUrl};

use crate::options::{KombuOptions, LoginMethod};
use crate::KombuError;

/// How long connecting to one broker host may take (TCP, TLS, AMQP handshake).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One broker of the transport URL.
#[derive(Clone)]
pub(crate) struct BrokerHost {
    uri: AMQPUri,
}

impl fmt::Debug for BrokerHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&describe(&self.uri))
    }
}

fn describe(uri: &AMQPUri) -> String {
    format!(
        "{}://{}@{}:{}/{}",
        uri.scheme,
        uri.authority.userinfo.username,
        uri.authority.host,
        uri.authority.port,
        uri.vhost
    )
}

/// The brokers to use: the transport URL's hosts, or RabbitMQ's defaults.
pub(crate) fn broker_hosts(url: Option<&TransportUrl>, options: &KombuOptions) -> Vec<BrokerHost> {
    let heartbeat = url
        .and_then(|u| u.query_value("heartbeat"))
        .and_then(|h| h.parse().ok())
        .unwrap_or(options.heartbeat_timeout);
    let frame_max = url
        .and_then(|u| u.query_value("frame_max"))
        .and_then(|f| f.parse().ok())
        .unwrap_or(options.frame_max);
    let auth_mechanism = match options.login_method {
        LoginMethod::Plain => SASLMechanism::Plain,
        LoginMethod::Amqplain => SASLMechanism::AMQPlain,
        LoginMethod::External => SASLMechanism::External,
    };
    let query = AMQPQueryString {
        heartbeat: Some(heartbeat),
        frame_max: (frame_max != 0).then_some(frame_max),
        connection_timeout: Some(CONNECT_TIMEOUT.as_millis() as u64),
        auth_mechanism: Some(auth_mechanism),
        ..AMQPQueryString::default()
    };
    broker_addresses(url, options.ssl)
        .into_iter()
        .map(|address| BrokerHost {
            uri: AMQPUri {
                scheme: if address.tls {
                    AMQPScheme::AMQPS
                } else {
                    AMQPScheme::AMQP
                },
                authority: AMQPAuthority {
                    userinfo: AMQPUserInfo {
                        username: address.username,
                        password: address.password.expose().to_owned(),
                    },
                    host: address.host,
                    port: address.port,
                },
                vhost: address.virtual_host.unwrap_or_else(|| "/".to_owned()),
                query: query.clone(),
            },
        })
        .collect()
}

/// Reads the TLS files named in the options (at connect time: building the
/// configuration does no I/O).
fn tls_config(options: &KombuOptions) -> Result<OwnedTLSConfig, ConfigError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })
    };
    let cert_chain = match &options.ssl_ca_file {
        Some(path) => Some(String::from_utf8_lossy(&read(path)?).into_owned()),
        None => None,
    };
    let identity = match (&options.ssl_cert_file, &options.ssl_key_file) {
        (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
            pem: read(cert)?,
            key: read(key)?,
        }),
        _ => None,
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

pub(crate) struct KombuConnector {
    options: KombuOptions,
    connection_name: String,
}

impl KombuConnector {
    pub(crate) fn new(options: KombuOptions, common: &CommonOptions, purpose: &str) -> Self {
        let hostname = options.hostname_or_default();
        let processname = options.processname_or_default();
        // oslo names connections `<process>:<pid>:<host>`; the purpose tells the
        // publisher and consumer connections of a process apart.
        let connection_name = format!(
            "{processname}:{}:{hostname} novarpc {purpose} ({})",
            std::process::id(),
            common.control_exchange
        );
        KombuConnector {
            options,
            connection_name,
        }
    }
}

impl Connector for KombuConnector {
    type Host = BrokerHost;
    type Connection = Arc<Connection>;
    type Error = KombuError;
    const BACKEND: &'static str = "kombu";

    async fn connect(&self, host: &BrokerHost) -> Result<Arc<Connection>, KombuError> {
        // A mechanism the broker does not offer makes RabbitMQ answer
        // COMMAND_INVALID, which lapin does not report (the connect hangs):
        // ask the broker first, when the method is not the universal PLAIN.
        let wanted = self.options.login_method;
        if wanted != LoginMethod::Plain && host.uri.scheme == AMQPScheme::AMQP {
            let authority = &host.uri.authority;
            if let Some(offered) =
                crate::sasl::offered_mechanisms(&authority.host, authority.port).await
            {
                if !offered.iter().any(|m| m == wanted.name()) {
                    return Err(KombuError::Mechanism {
                        broker: describe(&host.uri),
                        wanted: wanted.name().to_owned(),
                        offered,
                    });
                }
            }
        }
        let properties = ConnectionProperties::default()
            .with_connection_name(self.connection_name.clone().into());
        let runtime = lapin::runtime::default_runtime().map_err(KombuError::Amqp)?;
        let tls = match host.uri.scheme {
            AMQPScheme::AMQPS => Some(tls_config(&self.options).map_err(KombuError::Tls)?),
            AMQPScheme::AMQP => None,
        };
        let uri = host.uri.clone();
        let connect = async {
            match tls {
                Some(tls) => {
                    Connection::connect_uri_with_config(uri, properties, tls, runtime).await
                }
                None => Connection::connect_uri_with_runtime(uri, properties, runtime).await,
            }
        };
        // lapin's own `connection_timeout` does not always end a connect: one
        // to a closed port was seen waiting for ever (no socket, no timer),
        // once in many runs. The same limit, kept here.
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .unwrap_or_else(|_| {
                Err(lapin::Error::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {CONNECT_TIMEOUT:?}"),
                )))
            });
        connection
            .map(Arc::new)
            .map_err(|source| KombuError::Connect {
                broker: describe(&host.uri),
                tls: host.uri.scheme == AMQPScheme::AMQPS,
                source,
            })
    }

    fn is_usable(&self, connection: &Arc<Connection>) -> bool {
        connection.status().connected()
    }

    fn describe(&self, host: &BrokerHost) -> String {
        describe(&host.uri)
    }
}

pub(crate) type Broker = Reconnector<KombuConnector>;

/// A channel and the connection generation it belongs to.
#[derive(Clone)]
pub(crate) struct PooledChannel {
    pub(crate) channel: Channel,
    pub(crate) generation: u64,
    /// The connection it is on: exchanges are declared on channels of their
    /// own (see `Exchange::declare`).
    pub(crate) connection: Arc<Connection>,
    /// Set when the broker nacked a publish on this channel: such a channel
    /// is retired (a channel whose first publish to a quorum queue met its
    /// leader's death keeps losing every later publish).
    pub(crate) retired: Arc<std::sync::atomic::AtomicBool>,
}

impl PooledChannel {
    /// Whether a nack (or a missing confirm) retired the channel.
    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Closes a retired channel in the background: closing it releases the
    /// broker's side too, and ends the consumers on it.
    pub(crate) fn close_retired(&self) {
        let channel = self.channel.clone();
        tokio::spawn(async move {
            let _ = channel.close(200, "retired after a nack".into()).await;
        });
    }
}

/// Creates publisher channels (in confirm mode when confirms are on).
pub(crate) struct ChannelManager {
    pub(crate) broker: Arc<Broker>,
    pub(crate) confirms: bool,
}

impl Manager for ChannelManager {
    type Type = PooledChannel;
    type Error = KombuError;

    async fn create(&self) -> Result<PooledChannel, KombuError> {
        let (generation, connection) = self.broker.get().await.map_err(|e| e.last_error)?;
        let channel = match connection.create_channel().await {
            Ok(channel) => channel,
            Err(error) => {
                self.broker.reset(generation).await;
                return Err(KombuError::Amqp(error));
            }
        };
        if self.confirms {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(KombuError::Amqp)?;
        }
        Ok(PooledChannel {
            channel,
            generation,
            connection,
            retired: Arc::default(),
        })
    }

    async fn recycle(&self, object: &mut PooledChannel, _: &Metrics) -> RecycleResult<KombuError> {
        if object.is_retired() {
            object.close_retired();
            Err(RecycleError::message("channel retired after a nack"))
        } else if object.channel.status().connected() {
            Ok(())
        } else {
            Err(RecycleError::message("channel closed"))
        }
    }
}
