//! The backends the suite knows how to build.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use novarpc::memory::MemoryTransport;
use novarpc::Transport;

use crate::Backend;

/// The in-process backend; each value is its own broker, reached through the
/// registry like any configured backend.
pub struct MemoryBackend {
    config: novarpc::Config,
    raw: MemoryTransport,
}

pub fn memory() -> MemoryBackend {
    let text = format!(
        "[DEFAULT]\nrpc_backend = \"memory\"\nrpc_response_timeout = 10\n\n[memory]\nbroker = \"{}\"\n",
        crate::unique("conformance")
    );
    let config =
        novarpc::Config::from_toml_str(&text, "<conformance memory>").expect("valid config");
    let raw = MemoryTransport::from_config(&config).expect("memory transport");
    MemoryBackend { config, raw }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn transport(&self) -> anyhow::Result<Arc<dyn Transport>> {
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
    let text = format!(
        "[DEFAULT]\nrpc_backend = \"kombu\"\ntransport_url = \"{}\"\nrpc_response_timeout = 10\n\n[kombu]\n{kombu_options}\n",
        rabbit_url()
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
    let mut url = rabbit_url().replacen("rabbit://", "amqp://", 1);
    // In AMQP URIs an empty path is the vhost "", not "/".
    if url.ends_with('/') {
        url.push_str("%2f");
    }
    lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach RabbitMQ at {url}: {e}; {START_RABBITMQ}"))
}

#[async_trait]
impl Backend for KombuBackend {
    fn name(&self) -> &'static str {
        "kombu"
    }

    async fn transport(&self) -> anyhow::Result<Arc<dyn Transport>> {
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

    fn settle_time(&self) -> std::time::Duration {
        std::time::Duration::from_millis(300)
    }
}
