//! A service written with `#[novarpc::service]` and Python oslo.messaging
//! 18.3.1 on the same RabbitMQ, both ways: Python calls the macro-built
//! service (calls, a cast, a stream consumed as a call, a typed error
//! arriving as its exception class), and the macro-generated client calls a
//! Python oslo.messaging server. Needs RabbitMQ and the venv: `./scripts/test`
//! provides both.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use futures::StreamExt;
use novarpc::{CallError, Context, EndpointError, RpcServer, RpcStream, Target};
use novarpc_conformance::backends::{kombu, qpid};
use novarpc_conformance::python::oslo_peer;
use novarpc_conformance::unique;
use novarpc_conformance::Backend;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Mutex;

/// `tests/interop/interop_exceptions.py`, as Rust sees it.
#[derive(Debug, thiserror::Error, novarpc::RemoteError)]
#[remote(module = "interop_exceptions")]
enum InteropError {
    #[error("Instance {instance_id} could not be found.")]
    InstanceNotFound { instance_id: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct Instance {
    id: String,
    state: String,
    by: String,
}

/// The service both sides implement (`InteropEndpoint` in
/// `tests/interop/oslo_typed_service.py`).
#[novarpc::service(namespace = "interop", version = "1.2")]
trait Interop {
    async fn get_instance(
        &self,
        ctx: &Context,
        instance_id: String,
    ) -> Result<Instance, InteropError>;
    #[rpc(since = "1.1")]
    async fn ping(&self, ctx: &Context) -> Result<String, EndpointError>;
    #[rpc(cast)]
    async fn record(&self, ctx: &Context, event: String) -> Result<(), EndpointError>;
    async fn recorded(&self, ctx: &Context) -> Result<Vec<String>, EndpointError>;
    /// The request's W3C `traceparent`.
    async fn trace(&self, ctx: &Context) -> Result<Option<String>, EndpointError>;
    #[rpc(stream, since = "1.2")]
    fn count(&self, ctx: &Context, to: u32) -> RpcStream<u32, InteropError>;
}

#[derive(Default)]
struct RustInterop {
    events: Arc<Mutex<Vec<String>>>,
}

impl Interop for RustInterop {
    async fn get_instance(
        &self,
        _: &Context,
        instance_id: String,
    ) -> Result<Instance, InteropError> {
        match instance_id.as_str() {
            "i-1" => Ok(Instance {
                id: instance_id,
                state: "active".into(),
                by: "rust".into(),
            }),
            _ => Err(InteropError::InstanceNotFound { instance_id }),
        }
    }
    async fn ping(&self, ctx: &Context) -> Result<String, EndpointError> {
        Ok(format!(
            "pong from rust for {}",
            ctx.get("user_id").and_then(Value::as_str).unwrap_or("-")
        ))
    }
    async fn record(&self, _: &Context, event: String) -> Result<(), EndpointError> {
        self.events.lock().await.push(event);
        Ok(())
    }
    async fn recorded(&self, _: &Context) -> Result<Vec<String>, EndpointError> {
        Ok(self.events.lock().await.clone())
    }
    async fn trace(&self, ctx: &Context) -> Result<Option<String>, EndpointError> {
        Ok(novarpc::trace_id(ctx).and(
            ctx.get("traceparent")
                .and_then(Value::as_str)
                .map(str::to_owned),
        ))
    }
    fn count(&self, _: &Context, to: u32) -> RpcStream<u32, InteropError> {
        futures::stream::iter((1..=to).map(Ok)).boxed()
    }
}

async fn run_python(
    mode: &str,
    exchange: &str,
    topic: &str,
    server: &str,
) -> Result<tokio::process::Child> {
    oslo_peer("oslo_typed_service.py", exchange, topic, server)?
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting oslo_typed_service.py")
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run ./scripts/test"]
async fn trace_id_crosses_a_call_on_kombu() -> Result<()> {
    trace_id_crosses_a_call(&kombu()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an AMQP 1.0 broker: run ./scripts/test"]
async fn trace_id_crosses_a_call_on_qpid() -> Result<()> {
    trace_id_crosses_a_call(&qpid()).await
}

/// A W3C trace id crosses a call between Rust services: the client
/// continues the caller's trace with a new parent id, or starts one.
async fn trace_id_crosses_a_call(backend: &dyn Backend) -> Result<()> {
    let exchange = unique("svc_trace_ex");
    let topic = unique("svc_trace");
    let target = Target::new(&topic).exchange(&exchange);
    let server = RpcServer::builder(backend.transport().await?, target.clone().server("h1"))
        .endpoint(RustInterop::default().into_endpoint())
        .start()
        .await?;
    let client = InteropClient::new(backend.transport().await?, target);
    let mut ctx = Context::new();
    ctx.insert("traceparent".into(), json!(TRACEPARENT));
    ctx.insert("tracestate".into(), json!("vendor=1"));
    let seen = client.trace(&ctx).await?.context("no traceparent")?;
    ensure!(
        seen.starts_with(&format!("00-{TRACE_ID}-"))
            && seen.ends_with("-01")
            && seen != TRACEPARENT,
        "continued: {seen}"
    );
    let started = client
        .trace(&Context::new())
        .await?
        .context("no traceparent")?;
    ensure!(
        started.len() == 55 && !started.contains(TRACE_ID),
        "started: {started}"
    );
    server.stop().await?;
    backend
        .remove_topology(&[topic.clone(), format!("{topic}.h1")], &[exchange])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and the oslo.messaging venv: run ./scripts/test"]
async fn python_oslo_client_calls_a_macro_built_service() -> Result<()> {
    let backend = kombu();
    let exchange = unique("svc_interop_ex");
    let topic = unique("svc_interop");
    let server = RpcServer::builder(
        backend.transport().await?,
        Target::new(&topic).exchange(&exchange).server("rusthost"),
    )
    .endpoint(RustInterop::default().into_endpoint())
    // One request at a time: the cast is handled before the call after it.
    .executor_size(1)
    .start()
    .await?;

    let child = run_python("client", &exchange, &topic, "rusthost").await?;
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .context("oslo_typed_service.py client took too long")??;
    ensure!(
        output.status.success(),
        "oslo_typed_service.py client exited with {}",
        output.status
    );
    let report: Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&output.stdout)))?;

    ensure!(
        report["get_instance"]["ok"] == json!({"id": "i-1", "state": "active", "by": "rust"}),
        "get_instance: {}",
        report["get_instance"]
    );
    // The typed error arrives as the Python exception class, with its kwargs.
    ensure!(
        report["not_found"]["class"] == "InstanceNotFound"
            && report["not_found"]["module"] == "interop_exceptions"
            && report["not_found"]["kwargs"] == json!({"instance_id": "i-404"}),
        "not_found: {}",
        report["not_found"]
    );
    ensure!(
        report["ping"]["ok"] == "pong from rust for u1",
        "ping: {}",
        report["ping"]
    );
    ensure!(
        report["cast"]["ok"].is_null() && report["cast"].get("error").is_none(),
        "cast: {}",
        report["cast"]
    );
    ensure!(
        report["stream_as_call"]["ok"] == 3,
        "stream_as_call: {}",
        report["stream_as_call"]
    );
    ensure!(
        report["recorded"]["ok"] == json!(["from-python"]),
        "recorded: {}",
        report["recorded"]
    );
    ensure!(
        report["too_new"]["error"] == "RemoteError"
            && report["too_new"]["exc_type"] == "UnsupportedVersion",
        "too_new: {}",
        report["too_new"]
    );
    // A missing argument: oslo's TypeError, rebuilt as Python's own.
    ensure!(
        report["bad_arguments"]["error"] == "TypeError",
        "bad_arguments: {}",
        report["bad_arguments"]
    );

    server.stop().await?;
    backend
        .remove_topology(&[topic.clone(), format!("{topic}.rusthost")], &[exchange])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and the oslo.messaging venv: run ./scripts/test"]
async fn macro_generated_client_calls_python_oslo_server() -> Result<()> {
    let backend = kombu();
    let exchange = unique("svc_interop_ex");
    let topic = unique("svc_interop");
    let mut child = run_python("server", &exchange, &topic, "pyhost").await?;
    let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("the Python server printed nothing in time")??
        .context("the Python server exited")?;
    ensure!(ready.contains("ready"), "unexpected first line {ready}");

    let client = InteropClient::new(
        backend.transport().await?,
        Target::new(&topic).exchange(&exchange),
    )
    .timeout(Duration::from_secs(10));
    let mut ctx = Context::new();
    ctx.insert("user_id".into(), json!("u1"));

    let instance = client.get_instance(&ctx, "i-1".into()).await?;
    ensure!(
        instance.by == "python" && instance.state == "active",
        "{instance:?}"
    );
    // Python's interop_exceptions.InstanceNotFound arrives as the variant.
    match client.get_instance(&ctx, "i-404".into()).await {
        Err(CallError::Service(InteropError::InstanceNotFound { instance_id })) => {
            ensure!(instance_id == "i-404", "instance_id {instance_id}")
        }
        other => anyhow::bail!("expected InstanceNotFound, got {other:?}"),
    }
    ensure!(client.ping(&ctx).await? == "pong from python for u1");
    client
        .prepare()
        .server("pyhost")
        .record(&ctx, "from-rust".into())
        .await?;
    let event = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .context("the cast did not arrive")??
        .context("the Python server exited")?;
    ensure!(event.contains("from-rust"), "record: {event}");
    ensure!(client.recorded(&ctx).await? == ["from-rust"]);
    // An oslo server answers a stream once: its one element.
    let items: Vec<u32> = client
        .count(&ctx, 3)
        .await?
        .map(|item| item.map_err(anyhow::Error::from))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    ensure!(items == [3], "count: {items:?}");
    // The trace id crosses into Python, which passes the context key through.
    ctx.insert("traceparent".into(), json!(TRACEPARENT));
    let seen = client
        .trace(&ctx)
        .await?
        .context("no traceparent in Python")?;
    ensure!(
        seen.contains(TRACE_ID) && seen != TRACEPARENT,
        "traceparent in Python: {seen}"
    );

    drop(child.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    ensure!(
        status.success(),
        "oslo_typed_service.py server exited with {status}"
    );
    backend
        .remove_topology(&[topic.clone(), format!("{topic}.pyhost")], &[exchange])
        .await
}
