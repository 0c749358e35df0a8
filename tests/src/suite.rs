//! The behaviour every backend must show. Each test takes a fresh transport and
//! unique exchange/topic names, and asserts error kinds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use futures::StreamExt;
use novarpc::{
    Context, Endpoint, EndpointError, Error, ErrorKind, NotificationListener, Notifier, Priority,
    RpcClient, RpcServer, Target, Transport, Version,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

use crate::args::{MessageArgs, ValueArgs};
use crate::{unique, Backend};

const WAIT: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
struct AddArgs {
    a: i64,
    b: i64,
}

#[derive(Deserialize)]
struct CountArgs {
    n: u64,
}

#[derive(Deserialize)]
struct NoArgs {}

type Record = (String, Value);

/// The endpoint most tests serve: `server` names the host it runs as.
fn standard_endpoint(server: &str, records: mpsc::UnboundedSender<Record>) -> Endpoint {
    let name = server.to_owned();
    let whoami = server.to_owned();
    Endpoint::new()
        .method("echo", |_ctx, args: ValueArgs| async move {
            Ok::<_, EndpointError>(args.value)
        })
        .method("add", |_ctx, args: AddArgs| async move {
            Ok::<_, EndpointError>(args.a + args.b)
        })
        .method("record", move |_ctx, args: ValueArgs| {
            let records = records.clone();
            let name = name.clone();
            async move {
                let _ = records.send((name, args.value));
                Ok::<_, EndpointError>(())
            }
        })
        .method("whoami", move |_ctx, _: NoArgs| {
            let whoami = whoami.clone();
            async move { Ok::<_, EndpointError>(whoami) }
        })
        .method("context", |ctx: Context, _: NoArgs| async move {
            Ok::<_, EndpointError>(ctx)
        })
        .method("fail", |_ctx, args: MessageArgs| async move {
            Err::<(), _>(
                EndpointError::new("ValueError", args.message)
                    .module("builtins")
                    .traceback(vec!["Traceback: in fail\n".into()]),
            )
        })
        .method("io_fail", |_ctx, _: NoArgs| async move {
            Err::<(), _>(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "disk gone",
            ))
        })
        .method("panic", |_ctx, _: NoArgs| async move {
            if true {
                panic!("handler exploded");
            }
            Ok::<(), EndpointError>(())
        })
        .method("_private", |_ctx, _: NoArgs| async move {
            Ok::<_, EndpointError>("secret")
        })
        .stream_method("count", |_ctx, args: CountArgs| {
            futures::stream::iter((0..args.n).map(Ok::<u64, EndpointError>))
        })
        .stream_method("count_then_fail", |_ctx, args: CountArgs| {
            futures::stream::iter(
                (0..args.n)
                    .map(Ok::<u64, EndpointError>)
                    .chain(std::iter::once(Err(EndpointError::new(
                        "RuntimeError",
                        "stream broke",
                    )))),
            )
        })
}

struct Fixture<'b> {
    backend: &'b dyn Backend,
    hosts: Vec<String>,
    exchange: String,
    topic: String,
    client_transport: Transport,
    records: mpsc::UnboundedReceiver<Record>,
    records_tx: mpsc::UnboundedSender<Record>,
    servers: Vec<RpcServer>,
}

impl<'b> Fixture<'b> {
    async fn new(backend: &'b dyn Backend) -> Result<Self> {
        let (records_tx, records) = mpsc::unbounded_channel();
        Ok(Fixture {
            backend,
            hosts: Vec::new(),
            exchange: unique("ex"),
            topic: unique("topic"),
            client_transport: backend.transport().await?,
            records,
            records_tx,
            servers: Vec::new(),
        })
    }

    fn target(&self) -> Target {
        Target::new(&self.topic).exchange(&self.exchange)
    }

    fn client(&self) -> RpcClient {
        RpcClient::new(self.client_transport.clone(), self.target()).timeout(WAIT)
    }

    /// Starts a server for `host` on its own transport, serving the standard endpoint.
    async fn serve(&mut self, backend: &dyn Backend, host: &str) -> Result<()> {
        let endpoint = standard_endpoint(host, self.records_tx.clone());
        self.serve_endpoints(backend, host, vec![endpoint]).await
    }

    async fn serve_endpoints(
        &mut self,
        backend: &dyn Backend,
        host: &str,
        endpoints: Vec<Endpoint>,
    ) -> Result<()> {
        let transport = backend.transport().await?;
        self.hosts.push(host.to_owned());
        let mut builder = RpcServer::builder(transport, self.target().server(host));
        for endpoint in endpoints {
            builder = builder.endpoint(endpoint);
        }
        self.servers.push(builder.start().await?);
        Ok(())
    }

    async fn next_record(&mut self) -> Result<Record> {
        tokio::time::timeout(WAIT, self.records.recv())
            .await
            .context("timed out waiting for a cast to arrive")?
            .context("record channel closed")
    }

    /// Everything recorded within `window`.
    async fn drain_records(&mut self, window: Duration) -> Vec<Record> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(record)) = tokio::time::timeout_at(deadline, self.records.recv()).await {
            out.push(record);
        }
        out
    }

    async fn stop(self) -> Result<()> {
        for server in self.servers {
            server.stop().await?;
        }
        self.client_transport.cleanup().await?;
        let mut queues = vec![self.topic.clone()];
        queues.extend(self.hosts.iter().map(|h| format!("{}.{h}", self.topic)));
        queues.dedup();
        self.backend
            .remove_topology(&queues, std::slice::from_ref(&self.exchange))
            .await
    }
}

fn ctx() -> Context {
    Context::new()
}

pub async fn call_returns_typed_result(backend: &dyn Backend) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    f.serve(backend, "host1").await?;
    let sum: i64 = f
        .client()
        .call(&ctx(), "add", &json!({"a": 2, "b": 3}))
        .await?;
    ensure!(sum == 5, "2 + 3 gave {sum}");

    #[derive(Serialize)]
    struct Add {
        a: i64,
        b: i64,
    }
    let sum: i64 = f.client().call(&ctx(), "add", &Add { a: -1, b: 1 }).await?;
    ensure!(sum == 0);
    f.stop().await
}

pub async fn call_accepts_dynamic_json(backend: &dyn Backend) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    f.serve(backend, "host1").await?;
    let value = json!({"nested": [1, 2.5, null, true, {"k": "v"}]});
    let echoed: Value = f
        .client()
        .call(&ctx(), "echo", &json!({"value": value}))
        .await?;
    ensure!(echoed == value, "echo changed the value: {echoed}");
    let null: Value = f
        .client()
        .call(&ctx(), "record", &json!({"value": 1}))
        .await?;
    ensure!(null.is_null());
    f.stop().await
}

pub async fn cast_reaches_one_server(backend: &dyn Backend) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    f.serve(backend, "host1").await?;
    f.serve(backend, "host2").await?;
    f.client()
        .cast(&ctx(), "record", &json!({"value": "c1"}))
        .await?;
    let (_, value) = f.next_record().await?;
    ensure!(value == "c1");
    let extra = f.drain_records(backend.settle_time()).await;
    ensure!(
        extra.is_empty(),
        "a cast was delivered more than once: {extra:?}"
    );
    f.stop().await
}

pub async fn fanout_cast_reaches_every_server(backend: &dyn Backend) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    for host in ["host1", "host2", "host3"] {
        f.serve(backend, host).await?;
    }
    f.client()
        .fanout_cast(&ctx(), "record", &json!({"value": "f"}))
        .await?;
    let mut hosts = Vec::new();
    for _ in 0..3 {
        hosts.push(f.next_record().await?.0);
    }
    hosts.sort();
    ensure!(
        hosts == ["host1", "host2", "host3"],
        "fanout reached {hosts:?}"
    );
    let extra = f.drain_records(backend.settle_time()).await;
    ensure!(extra.is_empty(), "fanout delivered extra copies: {extra:?}");
    f.stop().await
}

pub async fn cast_to_server_reaches_only_it(backend: &dyn Backend) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    for host in ["host1", "host2", "host3"] {
        f.serve(backend, host).await?;
    }
    for i in 0..6 {
        f.client()
            .cast_to_server(&ctx(), "host2", "record", &json!({"value": i}))
            .await?;
    }
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(f.next_record().await?);
    }
    ensure!(
        got.iter().all(|(host, _)| host == "host2"),
        "cast_to_server reached {got:?}"
    );
    let who: String = f
        .client()
        .prepare()
        .server("host3")
        .call(&ctx(), "whoami", &json!({}))
        .await?;
    ensure!(who == "host3", "call to host3 was answered by {who}");
    f.stop().await
}

pub async fn fanout_cast_to_server_reaches_only_its_listeners(backend: &dyn Backend) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    f.serve(backend, "host1").await?;
    f.serve(backend, "host1").await?;
    f.serve(backend, "host2").await?;
    let result = f
        .client()
        .fanout_cast_to_server(&ctx(), "host1", "record", &json!({"value": "fs"}))
        .await;
    if !f.client_transport.capabilities().fanout_to_server {
        ensure!(
            matches!(result, Err(Error::Unsupported { .. })),
            "a backend without fanout_to_server must say Unsupported, got {result:?}"
        );
        return f.stop().await;
    }
    result?;
    let got = vec![f.next_record().await?, f.next_record().await?];
    ensure!(
        got.iter().all(|(host, _)| host == "host1"),
        "reached {got:?}"
    );
    let extra = f.drain_records(backend.settle_time()).await;
    ensure!(extra.is_empty(), "extra deliveries: {extra:?}");
    f.stop().await
}

pub async fn casts_round_robin_over_servers(backend: &dyn Backend) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    let hosts = ["host1", "host2", "host3"];
    for host in hosts {
        f.serve(backend, host).await?;
    }
    let casts = 30;
    for i in 0..casts {
        f.client()
            .cast(&ctx(), "record", &json!({"value": i}))
            .await?;
    }
    let mut per_host = std::collections::HashMap::<String, usize>::new();
    for _ in 0..casts {
        *per_host.entry(f.next_record().await?.0).or_default() += 1;
    }
    for host in hosts {
        let n = per_host.get(host).copied().unwrap_or(0);
        ensure!(
            n >= casts / hosts.len() / 2,
            "{host} got {n} of {casts} casts: {per_host:?}"
        );
    }
    f.stop().await
}

pub async fn multicall_streams_in_order_then_ends(backend: &dyn Backend) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    f.serve(backend, "host1").await?;
    let replies: Vec<u64> = f
        .client()
        .multicall::<u64, _>(&ctx(), "count", &json!({"n": 50}))
        .await?
        .map(|r| r.map_err(anyhow::Error::from))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    ensure!(
        replies == (0..50).collect::<Vec<_>>(),
        "multicall gave {replies:?}"
    );
    let empty: Vec<_> = f
        .client()
        .multicall::<u64, _>(&ctx(), "count", &json!({"n": 0}))
        .await?
        .collect()
        .await;
    ensure!(empty.is_empty(), "an empty stream gave {empty:?}");
    f.stop().await
}

pub async fn multicall_of_unary_method_yields_its_result(backend: &dyn Backend) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    f.serve(backend, "host1").await?;
    let replies: Vec<_> = f
        .client()
        .multicall::<i64, _>(&ctx(), "add", &json!({"a": 1, "b": 1}))
        .await?
        .collect()
        .await;
    ensure!(
        replies.len() == 1 && matches!(replies[0], Ok(2)),
        "got {replies:?}"
    );
    f.stop().await
}

pub async fn call_of_streaming_method_returns_last_element(backend: &dyn Backend) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    f.serve(backend, "host1").await?;
    let last: u64 = f.client().call(&ctx(), "count", &json!({"n": 5})).await?;
    ensure!(last == 4, "call of a stream gave {last}");
    f.stop().await
}

pub async fn streaming_failure_ends_the_stream(backend: &dyn Backend) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    f.serve(backend, "host1").await?;
    let replies: Vec<_> = f
        .client()
        .multicall::<u64, _>(&ctx(), "count_then_fail", &json!({"n": 2}))
        .await?
        .collect()
        .await;
    ensure!(replies.len() == 3, "got {replies:?}");
    ensure!(matches!(replies[..2], [Ok(0), Ok(1)]), "got {replies:?}");
    match &replies[2] {
        Err(Error::Remote(failure)) => ensure!(failure.class == "RuntimeError"),
        other => anyhow::bail!("expected a remote error, got {other:?}"),
    }
    f.stop().await
}

pub async fn notifications_reach_listeners_by_priority(backend: &dyn Backend) -> Result<()> {
    let transport = backend.transport().await?;
    let exchange = unique("notify_ex");
    let topic = unique("notifications");
    let target = Target::new(&topic).exchange(&exchange);
    let mut errors = NotificationListener::start(
        &transport,
        std::slice::from_ref(&target),
        &[Priority::Error],
        None,
    )
    .await?;
    let mut infos = NotificationListener::start(
        &transport,
        std::slice::from_ref(&target),
        &[Priority::Info],
        None,
    )
    .await?;
    let sender = backend.transport().await?;
    let notifier = Notifier::new(sender.clone(), "compute.host1")
        .topics([topic.clone()])
        .exchange(&exchange);
    let mut context = Context::new();
    context.insert("request_id".into(), json!("req-9"));
    notifier
        .notify(
            &context,
            Priority::Info,
            "compute.instance.create.end",
            &json!({"id": 1}),
        )
        .await?;
    notifier
        .notify(
            &context,
            Priority::Error,
            "compute.instance.create.error",
            &json!({"id": 2}),
        )
        .await?;

    let info = tokio::time::timeout(WAIT, infos.next())
        .await?
        .context("info listener ended")?;
    ensure!(info.priority == Priority::Info && info.event_type == "compute.instance.create.end");
    ensure!(info.payload == json!({"id": 1}) && info.publisher_id == "compute.host1");
    ensure!(
        info.context.get("request_id") == Some(&json!("req-9")),
        "context: {:?}",
        info.context
    );
    let error = tokio::time::timeout(WAIT, errors.next())
        .await?
        .context("error listener ended")?;
    ensure!(error.priority == Priority::Error && error.payload == json!({"id": 2}));
    let stray = tokio::time::timeout(backend.settle_time(), infos.next()).await;
    ensure!(
        stray.is_err(),
        "the info listener got another notification: {stray:?}"
    );
    infos.stop().await?;
    errors.stop().await?;
    transport.cleanup().await?;
    sender.cleanup().await?;
    backend
        .remove_topology(
            &[format!("{topic}.info"), format!("{topic}.error")],
            &[exchange],
        )
        .await
}

pub async fn call_to_unserved_topic_times_out(backend: &dyn Backend) -> Result<()> {
    let f = Fixture::new(backend).await?;
    let timeout = Duration::from_millis(500);
    let started = Instant::now();
    let result: novarpc::Result<Value> = f
        .client()
        .timeout(timeout)
        .call(&ctx(), "echo", &json!({"value": 1}))
        .await;
    let elapsed = started.elapsed();
    ensure!(
        matches!(result, Err(Error::Timeout { .. })),
        "expected a timeout, got {result:?}"
    );
    ensure!(
        elapsed >= timeout && elapsed < timeout + Duration::from_secs(1),
        "the timeout of {timeout:?} fired after {elapsed:?}"
    );
    f.stop().await
}

pub async fn remote_error_carries_class_message_and_traceback(backend: &dyn Backend) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    f.serve(backend, "host1").await?;
    let result: novarpc::Result<Value> = f
        .client()
        .call(&ctx(), "fail", &json!({"message": "boom"}))
        .await;
    match result {
        Err(Error::Remote(failure)) => {
            ensure!(failure.class == "ValueError" && failure.module == "builtins");
            ensure!(failure.message == "boom", "message: {}", failure.message);
            ensure!(
                failure.traceback().contains("in fail"),
                "tb: {:?}",
                failure.tb
            );
        }
        other => anyhow::bail!("expected Error::Remote, got {other:?}"),
    }
    let result: novarpc::Result<Value> = f.client().call(&ctx(), "io_fail", &json!({})).await;
    match result {
        Err(Error::Remote(failure)) => {
            ensure!(
                failure.class == "Error" && failure.message == "disk gone",
                "{failure:?}"
            )
        }
        other => anyhow::bail!("expected Error::Remote, got {other:?}"),
    }
    f.stop().await
}

pub async fn unknown_and_private_methods_are_no_such_method(backend: &dyn Backend) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    f.serve(backend, "host1").await?;
    for method in ["no_such_thing", "_private"] {
        let result: novarpc::Result<Value> = f.client().call(&ctx(), method, &json!({})).await;
        ensure!(
            matches!(&result, Err(Error::NoSuchMethod { method: m }) if m == method),
            "{method}: expected NoSuchMethod, got {result:?}"
        );
    }
    f.stop().await
}

pub async fn invalid_arguments_are_reported(backend: &dyn Backend) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    f.serve(backend, "host1").await?;
    let result: novarpc::Result<Value> = f.client().call(&ctx(), "add", &json!([1, 2])).await;
    ensure!(
        matches!(result, Err(Error::InvalidArguments { .. })),
        "got {result:?}"
    );
    let result: novarpc::Result<Value> = f.client().call(&ctx(), "add", &json!({"a": "x"})).await;
    match result {
        Err(Error::Remote(failure)) => ensure!(failure.class == "TypeError", "{failure:?}"),
        other => anyhow::bail!("expected a remote TypeError, got {other:?}"),
    }
    let result: novarpc::Result<String> = f
        .client()
        .call(&ctx(), "add", &json!({"a": 1, "b": 2}))
        .await;
    ensure!(
        matches!(result, Err(Error::Serialization(_))),
        "got {result:?}"
    );
    f.stop().await
}

fn versioned_endpoint(version: Version, namespace: Option<&str>, answer: &'static str) -> Endpoint {
    let endpoint = Endpoint::new()
        .version(version)
        .method("which", move |_ctx, _: NoArgs| async move {
            Ok::<_, EndpointError>(answer)
        });
    match namespace {
        Some(ns) => endpoint.namespace(ns),
        None => endpoint,
    }
}

pub async fn version_dispatch_follows_oslo_rules(backend: &dyn Backend) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    let endpoints = vec![
        versioned_endpoint(Version::new(1, 3), None, "v1.3"),
        versioned_endpoint(Version::new(2, 0), None, "v2.0"),
    ];
    f.serve_endpoints(backend, "host1", endpoints).await?;
    let client = f.client();
    for (version, expected) in [
        ("1.0", "v1.3"),
        ("1.3", "v1.3"),
        ("2.0", "v2.0"),
        ("2", "v2.0"),
    ] {
        let got: String = client
            .prepare()
            .version(version)
            .call(&ctx(), "which", &json!({}))
            .await?;
        ensure!(got == expected, "version {version} was served by {got}");
    }
    let unversioned: String = client.call(&ctx(), "which", &json!({})).await?;
    ensure!(
        unversioned == "v1.3",
        "a request without a version is 1.0, got {unversioned}"
    );
    for version in ["1.4", "3.0"] {
        let result: novarpc::Result<String> = client
            .prepare()
            .version(version)
            .call(&ctx(), "which", &json!({}))
            .await;
        ensure!(
            matches!(&result, Err(Error::UnsupportedVersion { version: v, .. }) if v == version),
            "version {version}: expected UnsupportedVersion, got {result:?}"
        );
    }
    let result: novarpc::Result<String> = client
        .prepare()
        .version("2.0")
        .call(&ctx(), "missing", &json!({}))
        .await;
    ensure!(
        matches!(result, Err(Error::NoSuchMethod { .. })),
        "got {result:?}"
    );
    f.stop().await
}

pub async fn namespace_dispatch_selects_endpoint(backend: &dyn Backend) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    let endpoints = vec![
        versioned_endpoint(Version::new(1, 0), None, "default"),
        versioned_endpoint(Version::new(1, 2), Some("ns1"), "ns1"),
    ];
    f.serve_endpoints(backend, "host1", endpoints).await?;
    let client = f.client();
    let got: String = client.call(&ctx(), "which", &json!({})).await?;
    ensure!(got == "default", "default namespace served by {got}");
    let got: String = client
        .prepare()
        .namespace("ns1")
        .version("1.2")
        .call(&ctx(), "which", &json!({}))
        .await?;
    ensure!(got == "ns1", "ns1 served by {got}");
    let result: novarpc::Result<String> = client
        .prepare()
        .namespace("ns2")
        .call(&ctx(), "which", &json!({}))
        .await;
    ensure!(
        matches!(result, Err(Error::UnsupportedVersion { .. })),
        "unknown namespace gave {result:?}"
    );
    f.stop().await
}

pub async fn version_cap_refuses_newer_messages(backend: &dyn Backend) -> Result<()> {
    let f = Fixture::new(backend).await?;
    let client = f.client().version_cap(Version::new(1, 2));
    ensure!(client.can_send_version("1.2") && client.can_send_version("1.0"));
    ensure!(!client.can_send_version("1.3") && !client.can_send_version("2.0"));
    let result = client
        .prepare()
        .version("1.5")
        .cast(&ctx(), "record", &json!({"value": 1}))
        .await;
    ensure!(
        matches!(result, Err(Error::VersionCap { .. })),
        "got {result:?}"
    );
    let result: novarpc::Result<Value> = client
        .prepare()
        .version("x.y")
        .call(&ctx(), "echo", &json!({}))
        .await;
    ensure!(
        matches!(result, Err(Error::InvalidVersion(_))),
        "got {result:?}"
    );
    f.stop().await
}

pub async fn thousand_concurrent_calls_complete(backend: &dyn Backend) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    f.serve(backend, "host1").await?;
    f.serve(backend, "host2").await?;
    let client = f.client().timeout(Duration::from_secs(30));
    let calls = (0..1000i64).map(|i| {
        let client = client.clone();
        async move {
            let sum: i64 = client.call(&ctx(), "add", &json!({"a": i, "b": 1})).await?;
            anyhow::Ok((i, sum))
        }
    });
    let results = futures::future::join_all(calls).await;
    for result in results {
        let (i, sum) = result?;
        ensure!(sum == i + 1, "call {i} got {sum}");
    }
    f.stop().await
}

pub async fn graceful_stop_finishes_in_flight_work(backend: &dyn Backend) -> Result<()> {
    let f = Fixture::new(backend).await?;
    let started = Arc::new(Notify::new());
    let signal = started.clone();
    let endpoint = Endpoint::new().method("slow", move |_ctx, _: NoArgs| {
        let signal = signal.clone();
        async move {
            signal.notify_one();
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok::<_, EndpointError>("done")
        }
    });
    let mut f = f;
    f.hosts.push("host1".into());
    let server = RpcServer::builder(backend.transport().await?, f.target().server("host1"))
        .endpoint(endpoint)
        .start()
        .await?;
    let client = f.client();
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.call::<String, _>(&ctx(), "slow", &json!({})).await }
    });
    tokio::time::timeout(WAIT, started.notified())
        .await
        .context("the slow call never started")?;
    let stop_began = Instant::now();
    server.stop().await?;
    ensure!(
        stop_began.elapsed() >= Duration::from_millis(300),
        "stop returned after {:?}, before the in-flight call finished",
        stop_began.elapsed()
    );
    let answer = call.await??;
    ensure!(answer == "done");
    let result: novarpc::Result<String> = client
        .prepare()
        .timeout(Duration::from_millis(300))
        .call(&ctx(), "slow", &json!({}))
        .await;
    ensure!(
        matches!(result, Err(Error::Timeout { .. })),
        "a stopped server answered: {result:?}"
    );
    f.stop().await
}

pub async fn context_round_trips(backend: &dyn Backend) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    f.serve(backend, "host1").await?;
    let mut context = Context::new();
    context.insert("user_id".into(), json!("u1"));
    context.insert("request_id".into(), json!("req-1"));
    context.insert("roles".into(), json!(["admin", "member"]));
    context.insert("is_admin".into(), json!(true));
    let echoed: Context = f.client().call(&context, "context", &json!({})).await?;
    ensure!(echoed == context, "context came back as {echoed:?}");
    f.stop().await
}

pub async fn large_and_unicode_payloads_survive(backend: &dyn Backend) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    f.serve(backend, "host1").await?;
    let big = "x".repeat(1024 * 1024);
    let echoed: String = f
        .client()
        .call(&ctx(), "echo", &json!({"value": big}))
        .await?;
    ensure!(
        echoed.len() == big.len() && echoed == big,
        "1 MiB payload changed"
    );
    let text = "Grüße, 世界 — \u{1F680} \"quoted\" \\ back\\slash \n\t\u{0}";
    let echoed: String = f
        .client()
        .call(&ctx(), "echo", &json!({"value": text}))
        .await?;
    ensure!(echoed == text, "unicode changed: {echoed:?}");
    let mut context = Context::new();
    context.insert("user_name".into(), json!("ñandú"));
    let back: Context = f.client().call(&context, "context", &json!({})).await?;
    ensure!(back == context);
    f.stop().await
}

pub async fn malformed_message_is_rejected_and_server_keeps_serving(
    backend: &dyn Backend,
) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    f.serve(backend, "host1").await?;
    let garbage: [&[u8]; 4] = [
        b"\xff\xfe not even utf-8",
        b"{\"oslo.version\": \"2.0\", \"oslo.message\": \"not json\"}",
        b"{\"oslo.version\": \"2.0\", \"oslo.message\": \"{\\\"args\\\": {}}\"}",
        b"[]",
    ];
    for body in garbage {
        backend.publish_raw(&f.exchange, &f.topic, body).await?;
    }
    let sum: i64 = f
        .client()
        .call(&ctx(), "add", &json!({"a": 20, "b": 22}))
        .await?;
    ensure!(sum == 42);
    f.client()
        .cast(&ctx(), "record", &json!({"value": "after"}))
        .await?;
    let (_, value) = f.next_record().await?;
    ensure!(value == "after");
    f.stop().await
}

pub async fn panicking_handler_becomes_remote_error(backend: &dyn Backend) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    f.serve(backend, "host1").await?;
    let result: novarpc::Result<Value> = f.client().call(&ctx(), "panic", &json!({})).await;
    match result {
        Err(Error::Remote(failure)) => {
            ensure!(
                failure.class == "Panic" && failure.message.contains("exploded"),
                "{failure:?}"
            )
        }
        other => anyhow::bail!("expected a remote Panic, got {other:?}"),
    }
    let sum: i64 = f
        .client()
        .call(&ctx(), "add", &json!({"a": 1, "b": 1}))
        .await?;
    ensure!(sum == 2, "the server stopped serving after a panic");
    f.stop().await
}

pub async fn transport_cleanup_fails_waiting_and_later_calls(backend: &dyn Backend) -> Result<()> {
    let f = Fixture::new(backend).await?;
    let client = f.client();
    let waiting = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .call::<Value, _>(&ctx(), "echo", &json!({"value": 1}))
                .await
        }
    });
    tokio::time::sleep(backend.settle_time()).await;
    client.transport().cleanup().await?;
    let result = tokio::time::timeout(WAIT, waiting)
        .await
        .context("a waiting call hung after cleanup")??;
    ensure!(
        matches!(&result, Err(e) if e.kind() == ErrorKind::Closed),
        "a waiting call got {result:?}"
    );
    let result: novarpc::Result<Value> = client.call(&ctx(), "echo", &json!({"value": 1})).await;
    ensure!(
        matches!(&result, Err(e) if e.kind() == ErrorKind::Closed),
        "a call after cleanup got {result:?}"
    );
    let result = client.cast(&ctx(), "echo", &json!({"value": 1})).await;
    ensure!(
        matches!(&result, Err(e) if e.kind() == ErrorKind::Closed),
        "a cast after cleanup got {result:?}"
    );
    Ok(())
}

pub async fn client_cleanup_affects_only_that_client(backend: &dyn Backend) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    f.serve(backend, "h1").await?;
    let c1 = f.client();
    let c2 = f.client();
    c1.cleanup().await?;
    let result: novarpc::Result<Value> = c1.call(&ctx(), "echo", &json!({"value": 1})).await;
    ensure!(
        matches!(&result, Err(e) if e.kind() == ErrorKind::Closed),
        "c1 after its cleanup got {result:?}"
    );
    let value: Value = c2.call(&ctx(), "echo", &json!({"value": 2})).await?;
    ensure!(value == json!(2), "c2 after c1's cleanup got {value}");
    f.stop().await
}

/// The contract's semantics for casts nobody serves yet: accepted promptly,
/// queued for the target's first server; a fanout with no listener is dropped.
pub async fn cast_to_unserved_topic_waits_for_its_first_server(
    backend: &dyn Backend,
) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    let client = f.client();
    let started = Instant::now();
    client
        .cast(&ctx(), "record", &json!({"value": "early"}))
        .await?;
    client
        .prepare()
        .server("h1")
        .cast(&ctx(), "record", &json!({"value": "early-h1"}))
        .await?;
    let fanout = client.transport().capabilities().fanout;
    if fanout {
        client
            .fanout_cast(&ctx(), "record", &json!({"value": "fanout-early"}))
            .await?;
    }
    ensure!(
        started.elapsed() < Duration::from_secs(2),
        "casts nobody serves took {:?}",
        started.elapsed()
    );
    f.hosts.push("h1".into());
    f.serve(backend, "h1").await?;
    let mut seen: Vec<Value> = Vec::new();
    for _ in 0..2 {
        seen.push(f.next_record().await?.1);
    }
    seen.sort_by_key(|v| v.to_string());
    ensure!(
        seen == vec![json!("early"), json!("early-h1")],
        "the first server got {seen:?}"
    );
    let late = f.drain_records(backend.settle_time() * 2).await;
    ensure!(late.is_empty(), "unexpected deliveries: {late:?}");
    f.stop().await
}

/// What the transport says it cannot do fails with `Unsupported` before
/// anything is sent.
pub async fn unsupported_operations_fail_before_sending(backend: &dyn Backend) -> Result<()> {
    let f = Fixture::new(backend).await?;
    let caps = f.client_transport.capabilities();
    let client = f.client();
    let unsupported = |what: &str, result: novarpc::Result<()>| -> Result<()> {
        ensure!(
            matches!(&result, Err(e) if e.kind() == ErrorKind::Unsupported),
            "{what} on a transport without it gave {result:?}"
        );
        Ok(())
    };
    if !caps.fanout {
        unsupported("fanout", client.fanout_cast(&ctx(), "x", &json!({})).await)?;
    }
    if !caps.fanout_to_server {
        unsupported(
            "fanout to a server",
            client
                .fanout_cast_to_server(&ctx(), "h1", "x", &json!({}))
                .await,
        )?;
    }
    if !caps.call {
        unsupported(
            "call",
            client
                .call::<Value, _>(&ctx(), "x", &json!({}))
                .await
                .map(|_| ()),
        )?;
    }
    if !caps.notification_pools {
        let started = NotificationListener::start(
            &f.client_transport,
            &[f.target()],
            &[Priority::Info],
            Some("pool"),
        )
        .await;
        unsupported("notification pools", started.map(|_| ()))?;
    }
    if !caps.taps {
        unsupported(
            "taps",
            f.client_transport.tap(&f.target()).await.map(|_| ()),
        )?;
    }
    f.stop().await
}

/// A handler that never returns fails its call after the server's handler
/// timeout, and a server stop waits no longer than its grace period.
pub async fn hung_handlers_time_out_and_stop_is_bounded(backend: &dyn Backend) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    f.hosts.push("h1".into());
    let hang = || {
        Endpoint::new().method("hang", |_ctx, _: NoArgs| async move {
            std::future::pending::<()>().await;
            Ok::<_, EndpointError>(())
        })
    };
    let transport = backend.transport().await?;
    let server = RpcServer::builder(transport.clone(), f.target().server("h1"))
        .endpoint(hang())
        .handler_timeout(Duration::from_millis(300))
        .start()
        .await?;
    let started = Instant::now();
    let result: novarpc::Result<Value> = f.client().call(&ctx(), "hang", &json!({})).await;
    match &result {
        Err(Error::Remote(failure)) if failure.class == "MessagingTimeout" => {}
        other => anyhow::bail!("a hung handler gave {other:?}"),
    }
    ensure!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    server.stop().await?;
    // No handler timeout: the grace period bounds the stop.
    let server = RpcServer::builder(transport.clone(), f.target().server("h1"))
        .endpoint(hang())
        .grace_period(Duration::from_millis(300))
        .start()
        .await?;
    f.client().cast(&ctx(), "hang", &json!({})).await?;
    tokio::time::sleep(backend.settle_time()).await;
    let stopping = Instant::now();
    tokio::time::timeout(WAIT, server.stop())
        .await
        .context("stop did not return while a handler hung")??;
    ensure!(
        stopping.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        stopping.elapsed()
    );
    transport.cleanup().await?;
    f.stop().await
}
