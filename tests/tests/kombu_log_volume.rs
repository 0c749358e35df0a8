//! A reply that cannot be delivered (its caller is gone) must not flood the
//! server's log: lapin's returned-message warning prints the whole body byte
//! by byte, once per retry, and used to grow a log by 126 MB in 70 s for one
//! 1 MiB reply. With novarpc's logging set-up the server says it once, by size.
//!
//! One test in its own binary: it installs the process's global subscriber.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Result};
use novarpc::{Context, Endpoint, EndpointError, ErrorKind, RpcClient, RpcServer, Target};
use novarpc_conformance::backends::kombu_with;
use novarpc_conformance::{unique, Backend};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run ./scripts/test"]
async fn an_undeliverable_1mib_reply_logs_a_few_lines() -> Result<()> {
    let log = Capture::default();
    let writer = log.clone();
    // The levels a service runs at, with novarpc's retries visible too:
    // lapin at warn (where its returned-message dump is), novarpc at debug.
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new(
            "warn,novarpc_core=debug,novarpc_kombu=debug,novarpc_amqp=debug",
        ))
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .with_filter(novarpc::logging::secret_filter()),
        )
        .init();

    let backend = kombu_with(
        "retry_interval = 0.1\nretry_interval_max = 0.5\nmissing_consumer_retry_timeout = 3",
    );
    let topic = unique("undeliverable");
    let exchange = unique("undeliverable_ex");
    let target = Target::new(&topic).exchange(&exchange);
    let server_transport = backend.transport().await?;
    let server = RpcServer::builder(server_transport.clone(), target.clone().server("h1"))
        .endpoint(Endpoint::new().method("big", |_ctx, _: Value| async move {
            // Answer after the caller gave up and went away.
            tokio::time::sleep(Duration::from_millis(800)).await;
            Ok::<_, EndpointError>("x".repeat(1 << 20))
        }))
        .start()
        .await?;
    let client_transport = backend.transport().await?;
    let result: novarpc::Result<String> = RpcClient::new(client_transport.clone(), target)
        .timeout(Duration::from_millis(300))
        .call(&Context::new(), "big", &json!({}))
        .await;
    ensure!(
        matches!(&result, Err(e) if e.kind() == ErrorKind::Timeout),
        "{result:?}"
    );
    // The reply queue goes with the client's transport.
    client_transport.cleanup().await?;
    // The server tries for missing_consumer_retry_timeout, then gives up.
    tokio::time::sleep(Duration::from_secs(5)).await;
    server.stop().await?;
    server_transport.cleanup().await?;
    backend
        .remove_topology(&[topic.clone(), format!("{topic}.h1")], &[exchange])
        .await?;

    let text = String::from_utf8_lossy(&log.0.lock()).into_owned();
    println!("{} bytes of log:\n{text}", text.len());
    ensure!(
        text.len() < 8 * 1024,
        "an undeliverable reply logged {} bytes",
        text.len()
    );
    ensure!(
        !text.contains("xxxxxxxxxxxxxxxx") && !text.contains("120, 120, 120"),
        "the reply's body reached the log"
    );
    ensure!(
        text.contains("could not send a reply"),
        "the failure itself was not logged"
    );
    Ok(())
}
