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
