//! An independent AMQP 1.0 implementation against the qpid driver: a Python
//! client on python-qpid-proton (PyPI) that follows the documented mapping
//! (docs/amqp1-mapping.md) calls and casts to a novarpc server through
//! RabbitMQ's AMQP 1.0 plugin. Needs the broker, the plugin and the venv:
//! `./scripts/test` provides all three.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use novarpc::{Context, Endpoint, EndpointError, RpcServer, Target};
use novarpc_conformance::args::{MessageArgs, ValueArgs};
use novarpc_conformance::backends::{amqp1_url, qpid};
use novarpc_conformance::python::{python, script};
use novarpc_conformance::{unique, Backend};
use serde_json::{json, Value};
use tokio::sync::mpsc;

const NEEDS: &str =
    "needs RabbitMQ with rabbitmq_amqp1_0 and python-qpid-proton in the venv: run ./scripts/test";

/// Runs `proton_client.py` and returns its exit code and JSON output.
async fn proton_client(exchange: &str, topic: &str, args: &[&str]) -> Result<(i32, Value)> {
    let python = python()?;
    let has_proton = tokio::process::Command::new(&python)
        .args(["-c", "import proton"])
        .status()
        .await?
        .success();
    ensure!(
        has_proton,
        "{} cannot import proton: {NEEDS}",
        python.display()
    );
    let output = tokio::process::Command::new(python)
        .arg(script("proton_client.py"))
        .args([
            "--url",
            &amqp1_url(),
            "--exchange",
            exchange,
            "--topic",
            topic,
        ])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .await?;
    let text = String::from_utf8_lossy(&output.stdout);
    let value: Value = serde_json::from_str(text.trim())
        .with_context(|| format!("proton_client.py printed {text:?}"))?;
    Ok((output.status.code().unwrap_or(-1), value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ with rabbitmq_amqp1_0 and the venv: run ./scripts/test"]
async fn proton_client_calls_and_casts_to_a_novarpc_server() -> Result<()> {
    novarpc_conformance::init_tracing();
    let backend = qpid();
    let exchange = unique("interop_ex");
    let topic = unique("interop");
    let (records_tx, mut records) = mpsc::unbounded_channel();
    let endpoint = Endpoint::new()
        .method("echo", |_ctx, a: ValueArgs| async move {
            Ok::<_, EndpointError>(a.value)
        })
        .method("context", |ctx: Context, _: Value| async move {
            Ok::<_, EndpointError>(ctx)
        })
        .method("fail", |_ctx, a: MessageArgs| async move {
            Err::<(), _>(EndpointError::new("ValueError", a.message).module("builtins"))
        })
        .method("record", move |ctx: Context, a: ValueArgs| {
            let records_tx = records_tx.clone();
            async move {
                let _ = records_tx.send((a.value, ctx));
                Ok::<_, EndpointError>(())
            }
        });
    let transport = backend.transport().await?;
    let server = RpcServer::builder(
        transport.clone(),
        Target::new(&topic).exchange(&exchange).server("h1"),
    )
    .endpoint(endpoint)
    .start()
    .await?;

    let value = json!({"n": 7, "text": "Grüße ✓", "list": [1, null, true]});
    let (code, out) = proton_client(
        &exchange,
        &topic,
        &[
            "call",
            "echo",
            "--args",
            &json!({"value": value}).to_string(),
        ],
    )
    .await?;
    ensure!(code == 0, "call failed ({code}): {out}");
    ensure!(out["result"] == value, "echo returned {out}");

    let (code, out) = proton_client(
        &exchange,
        &topic,
        &[
            "call",
            "context",
            "--context",
            r#"{"user_id": "u1", "request_id": "req-7"}"#,
        ],
    )
    .await?;
    ensure!(code == 0, "context call failed: {out}");
    ensure!(
        out["result"]["user_id"] == "u1" && out["result"]["request_id"] == "req-7",
        "{out}"
    );

    // To one server by its own queue.
    let (code, out) = proton_client(
        &exchange,
        &topic,
        &[
            "--server",
            "h1",
            "call",
            "echo",
            "--args",
            r#"{"value": "direct"}"#,
        ],
    )
    .await?;
    ensure!(code == 0 && out["result"] == "direct", "server call: {out}");

    let (code, out) = proton_client(
        &exchange,
        &topic,
        &["call", "fail", "--args", r#"{"message": "boom"}"#],
    )
    .await?;
    ensure!(
        code == 1,
        "a remote failure should exit 1, got {code}: {out}"
    );
    ensure!(
        out["failure"]["class"] == "ValueError" && out["failure"]["message"] == "boom",
        "failure: {out}"
    );

    let (code, out) = proton_client(
        &exchange,
        &topic,
        &[
            "cast",
            "record",
            "--args",
            r#"{"value": "c1"}"#,
            "--context",
            r#"{"user_id": "u2"}"#,
        ],
    )
    .await?;
    ensure!(code == 0 && out["sent"] == true, "cast: {out}");
    let (value, ctx) = tokio::time::timeout(Duration::from_secs(10), records.recv())
        .await
        .context("the cast did not arrive")?
        .context("server gone")?;
    ensure!(value == "c1" && ctx.get("user_id") == Some(&json!("u2")));

    let (code, out) = proton_client(
        &exchange,
        &topic,
        &["cast", "--fanout", "record", "--args", r#"{"value": "f1"}"#],
    )
    .await?;
    ensure!(code == 0, "fanout cast: {out}");
    let (value, _) = tokio::time::timeout(Duration::from_secs(10), records.recv())
        .await
        .context("the fanout cast did not arrive")?
        .context("server gone")?;
    ensure!(value == "f1");

    server.stop().await?;
    transport.cleanup().await?;
    backend
        .remove_topology(&[topic.clone(), format!("{topic}.h1")], &[exchange])
        .await
}
