//! The qpid driver leaves nothing on the broker but the shared queues that
//! are meant to persist (`<exchange>.<topic>`, `<exchange>.<topic>.<server>`).
//! The broker is the qpid test backend's (`NOVARPC_TEST_AMQP1_URL`), listed
//! with `NOVARPC_TEST_RABBITMQCTL` (default `rabbitmqctl`).
//!
//! On RabbitMQ 4 (`rabbitmq4` profile) the driver declares reply and fanout
//! queues exclusive through the management node, so they go with the
//! process's connection, and it deletes the shared ones on `delete_target`.
//!
//! RabbitMQ 3.10's AMQP 1.0 plugin never deletes the private queue it makes
//! for a receiver on `/topic/KEY` (fanout copies, the reply node): detaching
//! with `closed = true` only cancels the consumer, and the queue is neither
//! exclusive nor auto-delete. No AMQP 1.0 client can remove it, so the
//! `rabbitmq3` profile relies on the operator policy scripts/brokers.sh
//! installs (`expires` on unused `amq.gen-*` queues) — this test sets that
//! policy with a short expiry and checks the queues go, and that the driver
//! itself made nothing else.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use novarpc::{Context, Endpoint, EndpointError, RpcClient, RpcServer, Target};
use novarpc_conformance::backends::qpid;
use novarpc_conformance::faults::rabbitmqctl;
use novarpc_conformance::{unique, Backend};
use serde_json::{json, Value};

async fn queues() -> Result<BTreeSet<String>> {
    let (_, mut command) = novarpc_conformance::faults::rabbitmqctl_command();
    let output = command
        .args(["-q", "list_queues", "name", "--no-table-headers"])
        .output()
        .await
        .context("running rabbitmqctl")?;
    ensure!(output.status.success(), "rabbitmqctl list_queues failed");
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ with rabbitmq_amqp1_0: run ./scripts/test"]
async fn nothing_is_left_on_the_broker_but_shared_queues() -> Result<()> {
    novarpc_conformance::init_tracing();
    rabbitmqctl(&[
        "set_policy",
        "--apply-to",
        "queues",
        "--priority",
        "10",
        "novarpc-test-private-expiry",
        r"^amq\.gen-",
        r#"{"expires": 1500}"#,
    ])
    .await?;
    let result = exercise().await;
    let _ = rabbitmqctl(&["clear_policy", "novarpc-test-private-expiry"]).await;
    result
}

async fn exercise() -> Result<()> {
    let before = queues().await?;
    let backend = qpid();
    let exchange = unique("leak_ex");
    let topic = unique("leak");
    let endpoint = || {
        Endpoint::new()
            .method(
                "echo",
                |_ctx, v: Value| async move { Ok::<_, EndpointError>(v) },
            )
            .method("sink", |_ctx, _: Value| async move {
                Ok::<_, EndpointError>(())
            })
    };
    let mut servers = Vec::new();
    for host in ["h1", "h2"] {
        let transport = backend.transport().await?;
        let server = RpcServer::builder(
            transport.clone(),
            Target::new(&topic).exchange(&exchange).server(host),
        )
        .endpoint(endpoint())
        .start()
        .await?;
        servers.push((server, transport));
    }
    let client_transport = backend.transport().await?;
    let client_caps = client_transport.capabilities();
    let client = RpcClient::new(
        client_transport.clone(),
        Target::new(&topic).exchange(&exchange),
    );
    let ctx = Context::new();
    for i in 0..10 {
        let back: Value = client.call(&ctx, "echo", &json!({"i": i})).await?;
        ensure!(back == json!({"i": i}));
    }
    client.cast(&ctx, "sink", &json!({})).await?;
    client
        .clone()
        .fanout(true)
        .cast(&ctx, "sink", &json!({}))
        .await?;
    client
        .clone()
        .server("h2")
        .cast(&ctx, "sink", &json!({}))
        .await?;

    let during = queues().await?;
    let made: Vec<&String> = during.difference(&before).collect();
    println!("queues while running: {made:?}");

    for (server, transport) in servers {
        server.stop().await?;
        transport.cleanup().await?;
    }
    client_transport.cleanup().await?;

    let shared: BTreeSet<String> = [
        format!("{exchange}.{topic}"),
        format!("{exchange}.{topic}.h1"),
        format!("{exchange}.{topic}.h2"),
    ]
    .into();
    let deadline = Instant::now() + Duration::from_secs(20);
    let left = loop {
        let now = queues().await?;
        let left: Vec<String> = now
            .difference(&before)
            .filter(|q| !shared.contains(*q))
            .cloned()
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // A reply queue named by the driver (`/queue/reply_*` on RabbitMQ 3)
    // would be left here: only broker-named private queues expire.
    ensure!(left.is_empty(), "queues left behind: {left:?}");
    backend
        .remove_topology(
            &[topic.clone(), format!("{topic}.h1"), format!("{topic}.h2")],
            &[exchange],
        )
        .await?;
    if client_caps.removes_targets {
        let after = queues().await?;
        let kept: Vec<&String> = after.intersection(&shared).collect();
        ensure!(kept.is_empty(), "delete_target left {kept:?}");
    }
    Ok(())
}
