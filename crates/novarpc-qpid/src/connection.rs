//! Connections: a connector for `Reconnector` (TCP with TCP_NODELAY, optional
//! TLS, SASL, one broker host at a time) and the per-connection cache of
//! sender links.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::{Target, TerminusDurability};
use fe2o3_amqp::types::primitives::Symbol;
use fe2o3_amqp::{Connection, Sender, Session};
use novarpc_amqp::{BrokerAddress, Connector, Reconnector};
use novarpc_core::ConfigError;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::addressing::{Declaration, Node};
use crate::management::Management;
use crate::options::{QpidOptions, SaslMechanism};
use crate::QpidError;
use novarpc_core::ErrorKind;

/// TLS settings read from the files the options name (at connect time:
/// building the configuration does no I/O).
pub(crate) fn tls_connector(
    options: &QpidOptions,
) -> Result<tokio_rustls::TlsConnector, QpidError> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|cause| {
            QpidError::Tls(
                ConfigError::Read {
                    path: path.to_owned(),
                    cause,
                }
                .to_string(),
            )
        })
    };
    let mut roots = rustls::RootCertStore::empty();
    match &options.ssl_ca_file {
        Some(path) => {
            for cert in CertificateDer::pem_slice_iter(&read(path)?) {
                let cert = cert.map_err(|e| QpidError::Tls(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| QpidError::Tls(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| QpidError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&options.ssl_cert_file, &options.ssl_key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(&read(cert)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| QpidError::Tls(format!("{}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_slice(&read(key)?)
                .map_err(|e| QpidError::Tls(format!("{}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| QpidError::Tls(e.to_string()))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A live AMQP 1.0 connection: the session senders share, and their links.
pub(crate) struct AmqpConnection {
    connection: tokio::sync::Mutex<ConnectionHandle<()>>,
    session: tokio::sync::Mutex<SessionHandle<()>>,
    senders: parking_lot::Mutex<SenderCache>,
    /// One gate per address being attached: concurrent first sends to an
    /// address wait for one attach instead of each attaching a link (1000
    /// concurrent calls used to attach 272 links for 2 addresses, which some
    /// brokers answer with `no such handle` errors).
    attaching: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The management link pair, attached on first use (RabbitMQ 4).
    management: tokio::sync::Mutex<Option<Management>>,
    /// Cancelled once the connection is known to be unusable.
    closed: CancellationToken,
    durable_queues: bool,
    quorum_queues: bool,
    /// What the management connection needs: the broker, the options and
    /// a container id.
    host: BrokerAddress,
    options: QpidOptions,
    container_id: String,
    pub(crate) description: String,
}

pub(crate) type SharedSender = Arc<tokio::sync::Mutex<Sender>>;

/// A request to the management node.
#[derive(Clone, Copy)]
enum ManagementRequest<'a> {
    Declare(&'a Declaration),
    Delete(&'a str),
}

struct SenderCache {
    links: HashMap<String, (u64, SharedSender)>,
    clock: u64,
    capacity: usize,
}

impl fmt::Debug for AmqpConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConnection")
            .field("broker", &self.description)
            .finish_non_exhaustive()
    }
}

/// How long the broker may take to answer an open, begin or attach.
pub(crate) const BROKER_ANSWER: std::time::Duration = std::time::Duration::from_secs(10);

static LINK_NUMBER: AtomicU64 = AtomicU64::new(0);

/// A link name unique in this process (link names must be unique per
/// connection and container).
pub(crate) fn link_name(kind: &str) -> String {
    format!(
        "novarpc-{kind}-{}-{}",
        std::process::id(),
        LINK_NUMBER.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) fn durability(durable: bool) -> TerminusDurability {
    if durable {
        TerminusDurability::Configuration
    } else {
        TerminusDurability::None
    }
}

impl AmqpConnection {
    /// Marks the connection unusable: the next `Reconnector::get` replaces it.
    pub(crate) fn mark_broken(&self) {
        self.closed.cancel();
    }

    /// Completes once the connection is marked broken or its engine stops.
    pub(crate) async fn closed(&self) {
        self.closed.cancelled().await
    }

    /// Whether the connection is known to be closed (broken, or its engine
    /// stopped).
    pub(crate) fn is_closed(&self) -> bool {
        self.is_broken()
            || self
                .connection
                .try_lock()
                .is_ok_and(|handle| handle.is_closed())
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Opens a new session on this connection, for receivers: a refused
    /// attach ends its whole session, so each listener gets its own.
    pub(crate) async fn begin_session(&self) -> Result<SessionHandle<()>, QpidError> {
        let mut connection = self.connection.lock().await;
        let begun =
            tokio::time::timeout(BROKER_ANSWER, Session::builder().begin(&mut connection)).await;
        match begun {
            Ok(Ok(session)) => Ok(session),
            Ok(Err(e)) => {
                self.mark_broken();
                Err(QpidError::Session(e.to_string()))
            }
            Err(_) => {
                self.mark_broken();
                Err(QpidError::Session(format!(
                    "no answer to begin within {BROKER_ANSWER:?}"
                )))
            }
        }
    }

    /// The management link pair, attached on first use; one request at a
    /// time (declarations are rare: once per queue and connection). Says
    /// whether the pair is new.
    async fn management(
        &self,
    ) -> Result<(tokio::sync::MutexGuard<'_, Option<Management>>, bool), QpidError> {
        let mut slot = self.management.lock().await;
        let fresh = slot.is_none();
        if fresh {
            *slot = Some(Management::open(&self.host, &self.options, &self.container_id).await?);
        }
        Ok((slot, fresh))
    }

    /// Runs a management request. A failure of the management connection
    /// (not an error status) drops it; a kept one may have been closed by
    /// the broker while idle, so the request is tried once more on a new one.
    async fn manage(&self, request: ManagementRequest<'_>) -> Result<(), QpidError> {
        loop {
            let (mut slot, fresh) = self.management().await?;
            let management = slot.as_mut().expect("attached by management()");
            let result = match request {
                ManagementRequest::Declare(declaration) => {
                    management.declare(declaration, self.quorum_queues).await
                }
                ManagementRequest::Delete(queue) => management.delete_queue(queue).await,
            };
            if let Err(QpidError::Management { status: None, .. }) = &result {
                if let Some(broken) = slot.take() {
                    broken.close().await;
                }
                if !fresh {
                    tracing::debug!("management connection lost; reconnecting");
                    continue;
                }
            }
            return result;
        }
    }

    /// Declares a queue and its bindings through the management node.
    pub(crate) async fn declare(&self, declaration: &Declaration) -> Result<(), QpidError> {
        let result = self.manage(ManagementRequest::Declare(declaration)).await;
        if result.is_ok() {
            tracing::debug!(queue = %declaration.queue, "queue declared");
        }
        result
    }

    /// Deletes a queue through the management node.
    pub(crate) async fn delete_queue(&self, queue: &str) -> Result<(), QpidError> {
        self.manage(ManagementRequest::Delete(queue)).await
    }

    /// The cached sender link to `address`, marked as just used.
    fn cached_sender(&self, address: &str) -> Option<SharedSender> {
        let mut cache = self.senders.lock();
        cache.clock += 1;
        let now = cache.clock;
        cache.links.get_mut(address).map(|(used, sender)| {
            *used = now;
            sender.clone()
        })
    }

    /// The sender link to `node`, attached on first use: one attach per
    /// address, however many sends start at once.
    pub(crate) async fn sender(
        &self,
        node: &Node,
        durable: bool,
    ) -> Result<SharedSender, QpidError> {
        if let Some(sender) = self.cached_sender(&node.address) {
            return Ok(sender);
        }
        let gate = self
            .attaching
            .lock()
            .entry(node.address.clone())
            .or_default()
            .clone();
        let _attaching = gate.lock().await;
        // Whoever held the gate before may have attached it.
        if let Some(sender) = self.cached_sender(&node.address) {
            return Ok(sender);
        }
        // Boxed: attaching (a declare, then the attach) is a 4-KB future, and
        // unboxed it sat in every send in flight although a link is attached
        // once per address and connection.
        let attached = Box::pin(self.attach_sender(node, durable)).await;
        self.attaching.lock().remove(&node.address);
        attached
    }

    async fn attach_sender(&self, node: &Node, durable: bool) -> Result<SharedSender, QpidError> {
        // v2 addresses refuse a link to a queue that does not exist yet.
        if let Some(declaration) = &node.declare {
            self.declare(declaration).await?;
        }
        let mut target = Target::builder()
            .address(node.address.clone())
            .durable(durability(durable && self.durable_queues));
        if let Some(capability) = &node.capability {
            target = target.capabilities(vec![Symbol::from(capability.as_str())]);
        }
        let sender = {
            let mut session = self.session.lock().await;
            tokio::time::timeout(
                BROKER_ANSWER,
                Sender::builder()
                    .name(link_name("sender"))
                    .target(target.build())
                    .attach(&mut session),
            )
            .await
        };
        let sender = match sender {
            Ok(Ok(sender)) => {
                tracing::debug!(address = %node.address, "sender link attached");
                Arc::new(tokio::sync::Mutex::new(sender))
            }
            Err(_) => {
                self.mark_broken();
                return Err(QpidError::Attach {
                    address: node.address.clone(),
                    reason: format!("no answer within {BROKER_ANSWER:?}"),
                    kind: novarpc_core::ErrorKind::Unreachable,
                });
            }
            Ok(Err(error)) => {
                // A refused attach ends the session and with it every sender.
                self.mark_broken();
                let remote = match &error {
                    fe2o3_amqp::link::SenderAttachError::RemoteClosedWithError(e) => Some(e),
                    _ => None,
                };
                return Err(QpidError::Attach {
                    address: node.address.clone(),
                    reason: error.to_string(),
                    kind: crate::attach_error_kind(remote),
                });
            }
        };
        let evicted = {
            let mut cache = self.senders.lock();
            cache.clock += 1;
            let now = cache.clock;
            if let Some((used, existing)) = cache.links.get_mut(&node.address) {
                // Another task attached one meanwhile: keep one, close ours.
                *used = now;
                let existing = existing.clone();
                drop(cache);
                close_sender(sender);
                return Ok(existing);
            }
            cache
                .links
                .insert(node.address.clone(), (now, sender.clone()));
            if cache.links.len() > cache.capacity {
                let oldest = cache
                    .links
                    .iter()
                    .min_by_key(|(_, (used, _))| *used)
                    .map(|(address, _)| address.clone());
                oldest.and_then(|address| cache.links.remove(&address))
            } else {
                None
            }
        };
        if let Some((_, sender)) = evicted {
            close_sender(sender);
        }
        Ok(sender)
    }

    /// Forgets a sender that failed, so the next send attaches a new link.
    pub(crate) fn drop_sender(&self, address: &str) {
        let removed = self.senders.lock().links.remove(address);
        if let Some((_, sender)) = removed {
            close_sender(sender);
        }
    }

    /// Closes links, session and connection, politely.
    pub(crate) async fn close(&self) {
        self.mark_broken();
        let senders: Vec<SharedSender> = self
            .senders
            .lock()
            .links
            .drain()
            .map(|(_, (_, s))| s)
            .collect();
        for sender in senders {
            if let Ok(sender) = Arc::try_unwrap(sender) {
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(2),
                    sender.into_inner().close(),
                )
                .await;
            }
        }
        if let Some(management) = self.management.lock().await.take() {
            management.close().await;
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            let _ = self.session.lock().await.end().await;
            let _ = self.connection.lock().await.close().await;
        })
        .await;
    }
}

/// Closes an evicted sender once the send holding it (if any) is done; a
/// sender still shared then goes with its connection instead.
fn close_sender(sender: SharedSender) {
    tokio::spawn(async move {
        drop(sender.lock().await);
        if let Ok(sender) = Arc::try_unwrap(sender) {
            let _ = sender.into_inner().close().await;
        }
    });
}

/// fe2o3-amqp tells that a connection's engine stopped only through the
/// handle, so a watcher looks every 250 ms and cancels `closed`: senders
/// waiting for an outcome lost with the connection then stop waiting.
fn watch_engine(connection: std::sync::Weak<AmqpConnection>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        loop {
            tick.tick().await;
            let Some(connection) = connection.upgrade() else {
                return;
            };
            if connection.is_closed() {
                connection.mark_broken();
                return;
            }
        }
    });
}

pub(crate) struct QpidConnector {
    options: QpidOptions,
    container_id: String,
}

impl QpidConnector {
    pub(crate) fn new(options: QpidOptions, purpose: &str) -> Self {
        let name = options.container_name.clone().unwrap_or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "novarpc".to_owned())
        });
        let container_id = format!(
            "{name}:{}:novarpc-{purpose}-{}",
            std::process::id(),
            novarpc_core::envelope::new_unique_id()
        );
        QpidConnector {
            options,
            container_id,
        }
    }
}

impl Connector for QpidConnector {
    type Host = BrokerAddress;
    type Connection = Arc<AmqpConnection>;
    type Error = QpidError;
    const BACKEND: &'static str = "qpid";

    async fn connect(&self, host: &BrokerAddress) -> Result<Arc<AmqpConnection>, QpidError> {
        let description = host.describe();
        let connect_error = |kind: ErrorKind, reason: String| QpidError::Connect {
            broker: description.clone(),
            reason,
            kind,
        };
        let stream = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            TcpStream::connect((host.host.as_str(), host.port)),
        )
        .await
        .map_err(|_| {
            connect_error(
                ErrorKind::Unreachable,
                "TCP connect timed out after 10s".into(),
            )
        })?
        .map_err(|e| connect_error(ErrorKind::Unreachable, e.to_string()))?;
        // Without it each small transfer waits for a delayed ACK (~40 ms).
        stream
            .set_nodelay(true)
            .map_err(|e| connect_error(ErrorKind::Unreachable, e.to_string()))?;
        let sasl = match self.options.sasl_mechanism {
            SaslMechanism::Plain => SaslProfile::Plain {
                username: host.username.clone(),
                password: host.password.expose().to_owned(),
            },
            SaslMechanism::Anonymous => SaslProfile::Anonymous,
        };
        // RabbitMQ picks the virtual host from the open frame's hostname.
        let hostname = host
            .virtual_host
            .as_ref()
            .filter(|v| !v.is_empty() && *v != "/")
            .map(|v| format!("vhost:{v}"));
        let builder = Connection::builder()
            .container_id(self.container_id.clone())
            .hostname(hostname.as_deref())
            .sasl_profile(sasl);
        let builder = if self.options.heartbeat_timeout > 0 {
            builder.idle_time_out(self.options.heartbeat_timeout.saturating_mul(1000))
        } else {
            builder
        };
        let opened = if host.tls {
            let connector = tls_connector(&self.options)?;
            let server_name =
                tokio_rustls::rustls::pki_types::ServerName::try_from(host.host.clone())
                    .map_err(|e| QpidError::Tls(format!("{}: {e}", host.host)))?;
            let stream = connector
                .connect(server_name, stream)
                .await
                .map_err(|e| QpidError::Tls(format!("{description}: {e}")))?;
            tokio::time::timeout(
                std::time::Duration::from_secs(10),
                builder.open_with_stream(stream),
            )
            .await
        } else {
            tokio::time::timeout(
                std::time::Duration::from_secs(10),
                builder.open_with_stream(stream),
            )
            .await
        };
        let mut connection = match opened {
            Err(_) => {
                return Err(connect_error(
                    ErrorKind::Unreachable,
                    "AMQP open timed out after 10s".into(),
                ))
            }
            Ok(Err(error)) => {
                let (kind, reason) = open_failure(&error, self.options.sasl_mechanism);
                let reason = if kind == ErrorKind::Authentication
                    && matches!(error, fe2o3_amqp::connection::OpenError::NotImplemented(_))
                {
                    // fe2o3 does not say what the broker offers: ask it.
                    match crate::sasl::offered_mechanisms(&host.host, host.port, host.tls).await {
                        Some(offered) => format!(
                            "{reason}; the broker offers SASL mechanisms: {}",
                            offered.join(", ")
                        ),
                        None => reason,
                    }
                } else {
                    reason
                };
                return Err(connect_error(kind, reason));
            }
            Ok(Ok(connection)) => connection,
        };
        let session =
            tokio::time::timeout(BROKER_ANSWER, Session::builder().begin(&mut connection))
                .await
                .map_err(|_| connect_error(ErrorKind::Unreachable, "no answer to begin".into()))?
                .map_err(|e| connect_error(begin_error_kind(&e), format!("begin session: {e}")))?;
        let connection = Arc::new(AmqpConnection {
            connection: tokio::sync::Mutex::new(connection),
            session: tokio::sync::Mutex::new(session),
            senders: parking_lot::Mutex::new(SenderCache {
                links: HashMap::new(),
                clock: 0,
                capacity: self.options.sender_cache_size,
            }),
            attaching: parking_lot::Mutex::new(HashMap::new()),
            management: tokio::sync::Mutex::new(None),
            closed: CancellationToken::new(),
            durable_queues: self.options.durable_queues,
            quorum_queues: self.options.quorum_queues,
            host: host.clone(),
            options: self.options.clone(),
            container_id: self.container_id.clone(),
            description,
        });
        watch_engine(Arc::downgrade(&connection));
        Ok(connection)
    }

    fn is_usable(&self, connection: &Arc<AmqpConnection>) -> bool {
        !connection.is_closed()
    }

    fn describe(&self, host: &BrokerAddress) -> String {
        host.describe()
    }
}

pub(crate) type Broker = Reconnector<QpidConnector>;

/// Classifies a failed first session: RabbitMQ refuses an unknown or
/// forbidden virtual host only here, by closing the connection.
fn begin_error_kind(error: &fe2o3_amqp::session::BeginError) -> ErrorKind {
    use fe2o3_amqp::connection::ConnectionStopReason;
    use fe2o3_amqp::session::BeginError;
    match error {
        BeginError::ConnectionStopped(ConnectionStopReason::RemoteClosedWithError(e))
        | BeginError::RemoteEndedWithError(e) => crate::condition_kind(&e.condition),
        _ => ErrorKind::Unreachable,
    }
}

/// Classifies a failed AMQP open and says it in words.
fn open_failure(
    error: &fe2o3_amqp::connection::OpenError,
    mechanism: SaslMechanism,
) -> (ErrorKind, String) {
    use fe2o3_amqp::connection::OpenError;
    use fe2o3_amqp::types::sasl::SaslCode;
    match error {
        OpenError::Io(e) => (ErrorKind::Unreachable, e.to_string()),
        OpenError::SaslError { code, .. } => match code {
            SaslCode::Auth => (
                ErrorKind::Authentication,
                format!("SASL {mechanism:?}: the broker refused the user name or password"),
            ),
            SaslCode::SysTemp => (
                ErrorKind::Busy,
                "SASL failed for a temporary system error".into(),
            ),
            other => (
                ErrorKind::Authentication,
                format!("SASL {mechanism:?} failed ({other:?})"),
            ),
        },
        OpenError::NotImplemented(description) => (
            ErrorKind::Authentication,
            format!(
                "the broker does not offer the SASL mechanism {mechanism:?}{}",
                description
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ),
        ),
        OpenError::RemoteClosedWithError(e) => (
            crate::condition_kind(&e.condition),
            format!(
                "the broker closed the connection: {:?}{}",
                e.condition,
                e.description
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            ),
        ),
        OpenError::RemoteClosed => (
            ErrorKind::Unreachable,
            "the broker closed the connection while opening it".into(),
        ),
        OpenError::ProtocolHeaderMismatch(_) => (
            ErrorKind::Protocol,
            format!("{error} (not an AMQP 1.0 port, or the broker wants another SASL setup)"),
        ),
        other => (ErrorKind::Protocol, other.to_string()),
    }
}
