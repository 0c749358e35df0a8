//! The backends the suite knows how to build.

use async_trait::async_trait;
use bytes::Bytes;
use novarpc::memory::MemoryDriver;
use novarpc::Transport;

use crate::Backend;

/// The in-process backend; each value is its own broker, reached through the
/// registry like any configured backend.
pub struct MemoryBackend {
    config: novarpc::Config,
    raw: MemoryDriver,
}

pub fn memory() -> MemoryBackend {
    let text = format!(
        "[DEFAULT]\nrpc_backend = \"memory\"\nrpc_response_timeout = 10\n\n[memory]\nbroker = \"{}\"\n",
        crate::unique("conformance")
    );
    let config =
        novarpc::Config::from_toml_str(&text, "<conformance memory>").expect("valid config");
    let raw = MemoryDriver::from_config(&config).expect("memory transport");
    MemoryBackend { config, raw }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn transport(&self) -> anyhow::Result<Transport> {
        Ok(novarpc::connect(&self.config).await?)
    }

    async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.raw
                .publish_raw(exchange, routing_key, Bytes::copy_from_slice(body)),
            "no queue is bound to {exchange}/{routing_key}"
        );
        Ok(())
    }

    async fn cells(&self) -> anyhow::Result<Option<crate::Cells>> {
        crate::cells::memory()
    }
}

/// How to get a broker, for failure messages.
pub const START_RABBITMQ: &str =
    "start RabbitMQ with `rabbitmq-server -detached && rabbitmqctl await_startup` \
     (or run ./scripts/test, which does it), or point NOVARPC_TEST_RABBIT_URL at one";

/// The broker the kombu tests use: `NOVARPC_TEST_RABBIT_URL`, by default the
/// local RabbitMQ.
pub fn rabbit_url() -> String {
    std::env::var("NOVARPC_TEST_RABBIT_URL")
        .unwrap_or_else(|_| "rabbit://guest:guest@127.0.0.1:5672/".to_owned())
}

/// The kombu driver against a real RabbitMQ.
pub struct KombuBackend {
    config: novarpc::Config,
}

pub fn kombu() -> KombuBackend {
    kombu_with("retry_interval = 0.2\nretry_interval_max = 1\nmax_retries = 2")
}

/// The kombu backend with these `[kombu]` options (TOML lines).
pub fn kombu_with(kombu_options: &str) -> KombuBackend {
    kombu_full("", kombu_options)
}

/// `[kombu]` lines the environment adds (`NOVARPC_TEST_KOMBU_OPTIONS`, TOML
/// lines separated by `;` or newlines), e.g. `quorum_queues = true;
/// transient_quorum_queue = true` for a RabbitMQ 4 that denies transient
/// non-exclusive queues.
pub fn kombu_env_options() -> String {
    std::env::var("NOVARPC_TEST_KOMBU_OPTIONS")
        .map(|lines| lines.replace(';', "\n") + "\n")
        .unwrap_or_default()
}

/// The kombu backend with these `[DEFAULT]` and `[kombu]` options (TOML
/// lines), plus what the environment asks for ([`kombu_env_options`]).
pub fn kombu_full(default_options: &str, kombu_options: &str) -> KombuBackend {
    let text = format!(
        "[DEFAULT]\nrpc_backend = \"kombu\"\ntransport_url = \"{}\"\nrpc_response_timeout = 10\n{default_options}\n\n[kombu]\n{}{kombu_options}\n",
        rabbit_url(),
        kombu_env_options()
    );
    let config =
        novarpc::Config::from_toml_str(&text, "<conformance kombu>").expect("valid config");
    KombuBackend { config }
}

impl KombuBackend {
    pub fn config(&self) -> &novarpc::Config {
        &self.config
    }
}

/// A raw lapin connection to the test broker.
pub async fn raw_rabbit() -> anyhow::Result<lapin::Connection> {
    // The first host of the test URL (a cluster's URL names several).
    let parsed: novarpc::TransportUrl = rabbit_url().parse()?;
    let host = parsed
        .hosts
        .first()
        .ok_or_else(|| anyhow::anyhow!("the test URL names no host"))?;
    // In AMQP URIs an empty path is the vhost "", not "/".
    let vhost = match parsed.virtual_host.as_deref() {
        None | Some("") | Some("/") => "%2f".to_owned(),
        Some(v) => v.to_owned(),
    };
    let url = format!(
        "amqp://{}:{}@{}:{}/{vhost}",
        host.username.as_deref().unwrap_or("guest"),
        host.password
            .as_ref()
            .map(|p| p.expose())
            .unwrap_or("guest"),
        host.hostname,
        host.port.unwrap_or(5672)
    );
    lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach RabbitMQ at {url}: {e}; {START_RABBITMQ}"))
}

/// Deletes queues, then exchanges, on the test broker through a raw lapin
/// connection.
async fn delete_on_rabbit(
    queues: impl IntoIterator<Item = String>,
    exchanges: &[String],
) -> anyhow::Result<()> {
    let connection = raw_rabbit().await?;
    let channel = connection.create_channel().await?;
    for queue in queues {
        channel
            .queue_delete(
                queue.as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await?;
    }
    for exchange in exchanges {
        channel
            .exchange_delete(
                exchange.as_str().into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await?;
    }
    connection.close(200, "done".into()).await?;
    Ok(())
}

#[async_trait]
impl Backend for KombuBackend {
    fn name(&self) -> &'static str {
        "kombu"
    }

    async fn transport(&self) -> anyhow::Result<Transport> {
        novarpc::connect(&self.config)
            .await
            .map_err(|e| anyhow::anyhow!("{e}; {START_RABBITMQ}"))
    }

    async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
    ) -> anyhow::Result<()> {
        let connection = raw_rabbit().await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await?;
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                lapin::options::BasicPublishOptions::default(),
                body,
                lapin::BasicProperties::default(),
            )
            .await?
            .await?;
        anyhow::ensure!(confirm.is_ack(), "the broker refused the raw message");
        connection.close(200, "done".into()).await?;
        Ok(())
    }

    async fn remove_topology(&self, queues: &[String], exchanges: &[String]) -> anyhow::Result<()> {
        delete_on_rabbit(queues.iter().cloned(), exchanges).await
    }

    fn settle_time(&self) -> std::time::Duration {
        std::time::Duration::from_millis(300)
    }

    async fn cells(&self) -> anyhow::Result<Option<crate::Cells>> {
        crate::cells::kombu().await
    }
}

/// How to get the AMQP 1.0 plugin, for failure messages.
pub const START_AMQP1: &str = "enable RabbitMQ's AMQP 1.0 plugin with \
     `rabbitmq-plugins enable rabbitmq_amqp1_0` (./scripts/test does it), or point \
     NOVARPC_TEST_AMQP1_URL at an AMQP 1.0 broker";

/// The broker the qpid tests use: `NOVARPC_TEST_AMQP1_URL`, by default the
/// local RabbitMQ's AMQP 1.0 plugin.
pub fn amqp1_url() -> String {
    std::env::var("NOVARPC_TEST_AMQP1_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/".to_owned())
}

/// The qpid driver against a real AMQP 1.0 broker (RabbitMQ's plugin).
pub struct QpidBackend {
    config: novarpc::Config,
}

pub fn qpid() -> QpidBackend {
    qpid_with("retry_interval = 0.2\nretry_interval_max = 1\nmax_retries = 2")
}

/// The qpid backend with these `[qpid]` options (TOML lines).
pub fn qpid_with(qpid_options: &str) -> QpidBackend {
    qpid_full("", qpid_options)
}

/// `[qpid]` lines the environment asks for: `NOVARPC_TEST_AMQP1_ADDRESSING`
/// (an addressing profile), `NOVARPC_TEST_AMQP1_SASL` (a SASL mechanism) and
/// `NOVARPC_TEST_AMQP1_OPTIONS` (TOML lines separated by `;`), so the suite
/// runs against another AMQP 1.0 broker with no code change.
pub fn amqp1_env_options() -> String {
    let mut lines = std::env::var("NOVARPC_TEST_AMQP1_OPTIONS")
        .map(|lines| lines.replace(';', "\n") + "\n")
        .unwrap_or_default();
    if let Ok(profile) = std::env::var("NOVARPC_TEST_AMQP1_ADDRESSING") {
        lines.push_str(&format!("addressing = \"{profile}\"\n"));
    }
    if let Ok(mechanism) = std::env::var("NOVARPC_TEST_AMQP1_SASL") {
        lines.push_str(&format!(
            "sasl_mechanism = \"{}\"\n",
            mechanism.to_uppercase()
        ));
    }
    lines
}

/// The qpid backend with these `[DEFAULT]` and `[qpid]` options (TOML lines),
/// plus what the environment asks for ([`amqp1_env_options`]).
pub fn qpid_full(default_options: &str, qpid_options: &str) -> QpidBackend {
    let text = format!(
        "[DEFAULT]\nrpc_backend = \"qpid\"\ntransport_url = \"{}\"\nrpc_response_timeout = 10\n{default_options}\n\n[qpid]\n{}{qpid_options}\n",
        amqp1_url(),
        amqp1_env_options()
    );
    let config = novarpc::Config::from_toml_str(&text, "<conformance qpid>").expect("valid config");
    QpidBackend { config }
}

impl QpidBackend {
    pub fn config(&self) -> &novarpc::Config {
        &self.config
    }
}

/// Sends one message with a raw fe2o3-amqp client to `address` on the
/// AMQP 1.0 test broker (`NOVARPC_TEST_AMQP1_URL`, with
/// `NOVARPC_TEST_AMQP1_SASL`), waiting for the broker's `accepted`.
pub async fn raw_amqp1_send(address: &str, body: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use fe2o3_amqp::sasl_profile::SaslProfile;
    use fe2o3_amqp::types::messaging::{Data, Message, Outcome};
    let url: novarpc::TransportUrl = amqp1_url().parse()?;
    let host = url
        .hosts
        .first()
        .context("the AMQP 1.0 test URL names no host")?;
    let port = host.port.unwrap_or(5672);
    let stream = tokio::net::TcpStream::connect((host.hostname.as_str(), port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the AMQP 1.0 broker: {e}; {START_AMQP1}"))?;
    stream.set_nodelay(true)?;
    let anonymous =
        std::env::var("NOVARPC_TEST_AMQP1_SASL").is_ok_and(|m| m.eq_ignore_ascii_case("anonymous"));
    let sasl = if anonymous {
        SaslProfile::Anonymous
    } else {
        SaslProfile::Plain {
            username: host.username.clone().unwrap_or_else(|| "guest".into()),
            password: host
                .password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_else(|| "guest".into()),
        }
    };
    let mut connection = fe2o3_amqp::Connection::builder()
        .container_id(crate::unique("raw"))
        .sasl_profile(sasl)
        .open_with_stream(stream)
        .await
        .map_err(|e| anyhow::anyhow!("AMQP 1.0 open failed: {e}; {START_AMQP1}"))?;
    let mut session = fe2o3_amqp::Session::begin(&mut connection).await?;
    let mut sender =
        fe2o3_amqp::Sender::attach(&mut session, crate::unique("raw-sender"), address).await?;
    let message = Message::builder().data(Data(body.to_vec().into())).build();
    let outcome = sender.send(message).await?;
    anyhow::ensure!(
        matches!(outcome, Outcome::Accepted(_)),
        "the broker did not accept the raw message: {outcome:?}"
    );
    // RabbitMQ 3's plugin answers a sender's closing detach in a way
    // fe2o3-amqp reports as an illegal state; the message is already accepted.
    let _ = sender.close().await;
    let _ = session.end().await;
    connection
        .close()
        .await
        .context("closing the raw connection")?;
    Ok(())
}

#[async_trait]
impl Backend for QpidBackend {
    fn name(&self) -> &'static str {
        "qpid"
    }

    async fn transport(&self) -> anyhow::Result<Transport> {
        novarpc::connect(&self.config)
            .await
            .map_err(|e| anyhow::anyhow!("{e}; {START_AMQP1}"))
    }

    async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
    ) -> anyhow::Result<()> {
        let options = novarpc::qpid::QpidOptions::from_config(&self.config)?;
        let node = options
            .addressing()
            .anycast(&format!("{exchange}.{routing_key}"));
        raw_amqp1_send(&node.address, body).await
    }

    /// The shared queues (named `<exchange>.<queue>`) go through the driver
    /// where it can delete them (`removes_targets`: RabbitMQ 4's management
    /// node). AMQP 1.0 cannot delete queues on RabbitMQ 3: the test broker's
    /// 0-9-1 side removes them. Other brokers' test queues are left to the
    /// broker (the Proton example broker keeps them in memory until it
    /// stops).
    async fn remove_topology(&self, queues: &[String], exchanges: &[String]) -> anyhow::Result<()> {
        let options = novarpc::qpid::QpidOptions::from_config(&self.config)?;
        if options.addressing().capabilities().removes_targets {
            let transport = self.transport().await?;
            for exchange in exchanges {
                for queue in queues {
                    transport
                        .delete_target(&novarpc::Target::new(queue.as_str()).exchange(exchange))
                        .await?;
                }
            }
            transport.cleanup().await?;
            return Ok(());
        }
        if options.addressing != novarpc::qpid::AddressingProfile::Rabbitmq3 {
            return Ok(());
        }
        let names: Vec<String> = exchanges
            .iter()
            .flat_map(|exchange| {
                queues
                    .iter()
                    .map(move |queue| format!("{exchange}.{queue}"))
            })
            .collect();
        delete_on_rabbit(names, &[]).await
    }

    fn settle_time(&self) -> std::time::Duration {
        std::time::Duration::from_millis(300)
    }

    async fn cells(&self) -> anyhow::Result<Option<crate::Cells>> {
        crate::cells::qpid().await
    }
}
