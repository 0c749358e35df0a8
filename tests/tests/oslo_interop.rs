//! novarpc's kombu driver against Python oslo.messaging 18.3.1 on the same
//! RabbitMQ, in both directions, and the topology each declares.
//! Needs RabbitMQ and the venv: `./scripts/test` provides both.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use novarpc::{Context, Endpoint, EndpointError, Error, RpcClient, RpcServer, Target, Version};
use novarpc_conformance::args::{MessageArgs, ValueArgs};
use novarpc_conformance::backends::{kombu, kombu_with};
use novarpc_conformance::python::{run_client, PythonServer};
use novarpc_conformance::unique;
use novarpc_conformance::Backend;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

const NEEDS: &str = "needs RabbitMQ and the oslo.messaging venv: run ./scripts/test";

#[derive(Deserialize)]
struct NoArgs {}

fn rust_endpoints(
    host: &'static str,
    records: mpsc::UnboundedSender<(String, Value, Context)>,
) -> Vec<Endpoint> {
    let compute = Endpoint::new()
        .method("echo", |_ctx, a: ValueArgs| async move {
            Ok::<_, EndpointError>(a.value)
        })
        .method("context", |ctx: Context, _: NoArgs| async move {
            Ok::<_, EndpointError>(ctx)
        })
        .method("whoami", move |_ctx, _: NoArgs| async move {
            Ok::<_, EndpointError>(host)
        })
        .method("fail", |_ctx, a: MessageArgs| async move {
            Err::<(), _>(EndpointError::new("ValueError", a.message).module("builtins"))
        })
        .method("record", move |ctx: Context, a: ValueArgs| {
            let records = records.clone();
            async move {
                let _ = records.send((host.to_owned(), a.value, ctx));
                Ok::<_, EndpointError>(())
            }
        });
    let versioned = Endpoint::new()
        .namespace("ns1")
        .version(Version::new(1, 3))
        .method("versioned", |_ctx, _: NoArgs| async move {
            Ok::<_, EndpointError>("ns1-1.3")
        });
    vec![compute, versioned]
}

fn user_context() -> Context {
    let mut ctx = Context::new();
    ctx.insert("user_id".into(), json!("u1"));
    ctx.insert("request_id".into(), json!("req-1"));
    ctx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and the oslo.messaging venv: run ./scripts/test"]
async fn python_oslo_client_calls_novarpc_server() -> Result<()> {
    let _ = NEEDS;
    let backend = kombu();
    let exchange = unique("interop_ex");
    let topic = unique("interop");
    let (tx, mut records) = mpsc::unbounded_channel();
    let mut servers = Vec::new();
    for host in ["rusthost", "otherhost"] {
        let mut builder = RpcServer::builder(
            backend.transport().await?,
            Target::new(&topic).exchange(&exchange).server(host),
        );
        for endpoint in rust_endpoints(host, tx.clone()) {
            builder = builder.endpoint(endpoint);
        }
        servers.push(builder.start().await?);
    }

    let report = run_client(&exchange, &topic, "rusthost").await?;
    let ok = |step: &str| {
        report[step]
            .get("ok")
            .cloned()
            .with_context(|| format!("{step}: {}", report[step]))
    };
    ensure!(
        ok("echo")? == json!({"x": 1, "s": "Grüße"}),
        "echo: {}",
        report["echo"]
    );
    ensure!(
        ok("context")? == json!({"user_id": "u1", "request_id": "req-1"}),
        "context: {}",
        report["context"]
    );
    ensure!(ok("whoami")? == "rusthost", "whoami: {}", report["whoami"]);
    ensure!(
        ok("versioned")? == "ns1-1.3",
        "versioned: {}",
        report["versioned"]
    );
    // oslo re-raises exceptions of the `builtins` module as themselves, and
    // others (like its dispatcher's) as RemoteError naming the class.
    ensure!(
        report["fail"]["error"] == "ValueError"
            && report["fail"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("boom")),
        "fail: {}",
        report["fail"]
    );
    for (step, class) in [
        ("missing", "NoSuchMethod"),
        ("too_new", "UnsupportedVersion"),
    ] {
        ensure!(
            report[step]["error"] == "RemoteError" && report[step]["exc_type"] == class,
            "{step}: {}",
            report[step]
        );
    }
    ensure!(
        report["timeout"]["error"] == "MessagingTimeout",
        "timeout: {}",
        report["timeout"]
    );

    let mut seen: HashMap<String, BTreeSet<String>> = HashMap::new();
    // c1 (one server), c2 (rusthost), c3 (fanout: both).
    for _ in 0..4 {
        let (host, value, ctx) = tokio::time::timeout(Duration::from_secs(10), records.recv())
            .await
            .context("a cast from Python did not arrive")?
            .context("records closed")?;
        ensure!(ctx == user_context(), "cast context: {ctx:?}");
        seen.entry(value.as_str().unwrap_or_default().to_owned())
            .or_default()
            .insert(host);
    }
    ensure!(seen["c1"].len() == 1, "c1 reached {:?}", seen["c1"]);
    ensure!(
        seen["c2"] == BTreeSet::from(["rusthost".to_owned()]),
        "c2 reached {:?}",
        seen["c2"]
    );
    ensure!(seen["c3"].len() == 2, "the fanout reached {:?}", seen["c3"]);
    for server in servers {
        server.stop().await?;
    }
    backend
        .remove_topology(
            &[
                topic.clone(),
                format!("{topic}.rusthost"),
                format!("{topic}.otherhost"),
            ],
            &[exchange],
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and the oslo.messaging venv: run ./scripts/test"]
async fn novarpc_client_calls_python_oslo_server() -> Result<()> {
    let backend = kombu();
    let exchange = unique("interop_ex");
    let topic = unique("interop");
    let mut py1 = PythonServer::start(&exchange, &topic, "pyhost").await?;
    let mut py2 = PythonServer::start(&exchange, &topic, "pyhost2").await?;
    let transport = backend.transport().await?;
    let client = RpcClient::new(transport.clone(), Target::new(&topic).exchange(&exchange))
        .timeout(Duration::from_secs(10));
    let ctx = user_context();

    let echoed: Value = client
        .call(&ctx, "echo", &json!({"value": {"x": 1, "s": "Grüße"}}))
        .await?;
    ensure!(echoed == json!({"x": 1, "s": "Grüße"}), "echo: {echoed}");
    let back: Context = client.call(&ctx, "context", &json!({})).await?;
    // An oslo server adds `client_timeout` to the context it hands endpoints.
    ensure!(
        ctx.iter().all(|(k, v)| back.get(k) == Some(v)),
        "context: {back:?}"
    );
    let who: String = client
        .prepare()
        .server("pyhost2")
        .call(&ctx, "whoami", &json!({}))
        .await?;
    ensure!(who == "pyhost2", "whoami: {who}");
    let versioned: String = client
        .prepare()
        .namespace("ns1")
        .version(Version::new(1, 2))
        .call(&ctx, "versioned", &json!({}))
        .await?;
    ensure!(versioned == "ns1-1.3");

    match client
        .call::<Value, _>(&ctx, "fail", &json!({"message": "boom"}))
        .await
    {
        Err(Error::Remote(failure)) => {
            ensure!(
                failure.class == "ValueError" && failure.module == "builtins",
                "{failure:?}"
            );
            ensure!(failure.message == "boom", "{failure:?}");
            ensure!(
                failure.traceback().contains("Traceback"),
                "no Python traceback: {:?}",
                failure.tb
            );
        }
        other => anyhow::bail!("fail: expected a remote ValueError, got {other:?}"),
    }
    let missing = client.call::<Value, _>(&ctx, "missing", &json!({})).await;
    ensure!(
        matches!(missing, Err(Error::NoSuchMethod { .. })),
        "missing: {missing:?}"
    );
    let too_new = client
        .prepare()
        .namespace("ns1")
        .version(Version::new(2, 0))
        .call::<Value, _>(&ctx, "versioned", &json!({}))
        .await;
    ensure!(
        matches!(too_new, Err(Error::UnsupportedVersion { .. })),
        "too new: {too_new:?}"
    );

    client
        .cast_to_host(&ctx, "pyhost2", "record", &json!({"value": "c2"}))
        .await?;
    let event = py2.next_event(Duration::from_secs(10)).await?;
    ensure!(
        event["value"] == "c2" && event["context"]["user_id"] == "u1",
        "cast_to_host: {event}"
    );
    client
        .fanout_cast(&ctx, "record", &json!({"value": "c3"}))
        .await?;
    ensure!(py1.next_event(Duration::from_secs(10)).await?["value"] == "c3");
    ensure!(py2.next_event(Duration::from_secs(10)).await?["value"] == "c3");
    client.cast(&ctx, "record", &json!({"value": "c1"})).await?;
    let c1 = tokio::select! {
        e = py1.next_event(Duration::from_secs(10)) => e?,
        e = py2.next_event(Duration::from_secs(10)) => e?,
    };
    ensure!(c1["value"] == "c1", "cast: {c1}");

    let started = Instant::now();
    let timeout = client
        .prepare()
        .timeout(Duration::from_secs(1))
        .call::<Value, _>(&ctx, "slow", &json!({"seconds": 3}))
        .await;
    ensure!(
        matches!(timeout, Err(Error::Timeout { .. })),
        "slow call: {timeout:?}"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(2),
        "the timeout took {:?}",
        started.elapsed()
    );

    // Stop the servers first: a reply to a deleted reply queue is retried by
    // oslo for `kombu_missing_consumer_retry_timeout` (60 s).
    py1.stop().await?;
    py2.stop().await?;
    transport.cleanup().await?;
    backend
        .remove_topology(
            &[
                topic.clone(),
                format!("{topic}.pyhost"),
                format!("{topic}.pyhost2"),
            ],
            &[exchange],
        )
        .await
}

/// `qmhost:<processname>:<n>` with `<n>` as `<n>`: the Python and the Rust
/// server share one counter, so each takes its own number.
fn queue_manager_counter(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("qmhost:") {
        let (before, after) = rest.split_at(at);
        out.push_str(before);
        let name_end = after["qmhost:".len()..]
            .find(':')
            .map_or(after.len(), |i| i + "qmhost:".len());
        out.push_str(&after[..name_end]);
        let digits = after[name_end..]
            .strip_prefix(':')
            .map_or(0, |d| d.bytes().take_while(u8::is_ascii_digit).count());
        if digits > 0 {
            out.push_str(":<n>");
            rest = &after[name_end + 1 + digits..];
        } else {
            rest = &after[name_end..];
        }
    }
    out.push_str(rest);
    out
}

/// The broker's view of everything named after `exchange` or `topic`, with
/// those names and uuids replaced by placeholders.
async fn topology(exchange: &str, topic: &str) -> Result<BTreeSet<String>> {
    async fn list(args: &[&str]) -> Result<Vec<Value>> {
        let output = tokio::process::Command::new("rabbitmqctl")
            .args(args)
            .args(["--formatter", "json", "-q"])
            .output()
            .await
            .context("running rabbitmqctl")?;
        ensure!(output.status.success(), "rabbitmqctl {args:?} failed");
        Ok(serde_json::from_slice(&output.stdout)?)
    }
    let uuid = |s: &str| {
        // uuid4 hex: 32 lower-case hex digits.
        let mut out = String::new();
        let mut run = String::new();
        for c in s.chars().chain(std::iter::once(' ')) {
            if c.is_ascii_hexdigit() && !c.is_ascii_uppercase() {
                run.push(c);
            } else {
                out.push_str(if run.len() == 32 { "<uuid>" } else { &run });
                run.clear();
                out.push(c);
            }
        }
        out.pop();
        out
    };
    let normalize = |v: &Value| {
        // The order of x-arguments means nothing to the broker.
        let mut v = v.clone();
        if let Some(Value::Array(arguments)) = v.get_mut("arguments") {
            arguments.sort_by_key(|a| a.to_string());
        }
        queue_manager_counter(&uuid(
            &v.to_string()
                .replace(exchange, "<exchange>")
                .replace(topic, "<topic>"),
        ))
    };
    let mentions = |v: &Value| {
        let text = v.to_string();
        text.contains(exchange) || text.contains(topic)
    };
    let mut items = BTreeSet::new();
    for (kind, args) in [
        (
            "queue",
            &[
                "list_queues",
                "name",
                "durable",
                "auto_delete",
                "exclusive",
                "arguments",
            ][..],
        ),
        (
            "exchange",
            &[
                "list_exchanges",
                "name",
                "type",
                "durable",
                "auto_delete",
                "internal",
                "arguments",
            ][..],
        ),
        (
            "binding",
            &[
                "list_bindings",
                "source_name",
                "destination_name",
                "destination_kind",
                "routing_key",
                "arguments",
            ][..],
        ),
    ] {
        for item in list(args).await? {
            if mentions(&item) {
                items.insert(format!("{kind} {}", normalize(&item)));
            }
        }
    }
    Ok(items)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and the oslo.messaging venv: run ./scripts/test"]
async fn novarpc_server_declares_the_same_topology_as_oslo() -> Result<()> {
    same_topology_as_oslo(&[], "").await
}

/// The options RabbitMQ 4 deployments without deprecated features need:
/// quorum topic queues, quorum reply and fanout queues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and the oslo.messaging venv: run ./scripts/test"]
async fn same_topology_as_oslo_with_quorum_and_transient_quorum_queues() -> Result<()> {
    same_topology_as_oslo(
        &[
            ("rabbit_quorum_queue", "true"),
            ("rabbit_transient_quorum_queue", "true"),
        ],
        "rabbit_quorum_queue = true\nrabbit_transient_quorum_queue = true",
    )
    .await
}

/// Stream fanout (one stream per topic instead of a queue per listener).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and the oslo.messaging venv: run ./scripts/test"]
async fn same_topology_as_oslo_with_stream_fanout() -> Result<()> {
    same_topology_as_oslo(
        &[
            ("rabbit_quorum_queue", "true"),
            ("rabbit_transient_quorum_queue", "true"),
            ("rabbit_stream_fanout", "true"),
            ("rabbit_qos_prefetch_count", "10"),
        ],
        "rabbit_quorum_queue = true\nrabbit_transient_quorum_queue = true\nrabbit_stream_fanout = true\nrabbit_qos_prefetch_count = 10",
    )
    .await
}

/// oslo's queue manager: fanout queues named `<hostname>:<processname>:<n>`
/// from the counter both sides keep in /dev/shm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and the oslo.messaging venv: run ./scripts/test"]
async fn same_topology_as_oslo_with_the_queue_manager() -> Result<()> {
    let processname = unique("qmproc");
    same_topology_as_oslo(
        &[
            ("use_queue_manager", "true"),
            ("hostname", "qmhost"),
            ("processname", &processname),
        ],
        &format!(
            "use_queue_manager = true\nhostname = \"qmhost\"\nprocessname = \"{processname}\""
        ),
    )
    .await?;
    let _ = std::fs::remove_file(format!("/dev/shm/qmhost_{processname}_qmanager"));
    // Such fanout queues outlive their servers (until x-expires), as oslo's.
    let listed = tokio::process::Command::new("rabbitmqctl")
        .args(["list_queues", "name", "-q"])
        .output()
        .await?;
    let left: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|name| name.contains(&processname))
        .map(str::to_owned)
        .collect();
    ensure!(
        left.len() == 2,
        "expected both fanout queues, found {left:?}"
    );
    kombu().remove_topology(&left, &[]).await
}

/// A Python oslo.messaging server with `oslo_options` and a novarpc server
/// with the same options under their oslo names (`kombu_options`) declare
/// the same queues, exchanges and bindings.
async fn same_topology_as_oslo(oslo_options: &[(&str, &str)], kombu_options: &str) -> Result<()> {
    let backend = kombu_with(kombu_options);
    let (py_exchange, py_topic) = (unique("topo_ex"), unique("topo"));
    let python = PythonServer::start_with(&py_exchange, &py_topic, "host1", oslo_options).await?;
    let oslo = topology(&py_exchange, &py_topic).await?;

    let (rs_exchange, rs_topic) = (unique("topo_ex"), unique("topo"));
    let (tx, _records) = mpsc::unbounded_channel();
    let mut builder = RpcServer::builder(
        backend.transport().await?,
        Target::new(&rs_topic)
            .exchange(&rs_exchange)
            .server("host1"),
    );
    for endpoint in rust_endpoints("host1", tx) {
        builder = builder.endpoint(endpoint);
    }
    let server = builder.start().await?;
    let ours = topology(&rs_exchange, &rs_topic).await?;

    ensure!(!oslo.is_empty(), "found no oslo topology");
    ensure!(
        ours == oslo,
        "topology differs\n only oslo: {:#?}\n only novarpc: {:#?}",
        oslo.difference(&ours).collect::<Vec<_>>(),
        ours.difference(&oslo).collect::<Vec<_>>()
    );
    server.stop().await?;
    python.stop().await?;
    backend
        .remove_topology(
            &[
                py_topic.clone(),
                format!("{py_topic}.host1"),
                // Stream fanout queues are shared and outlive their servers.
                format!("{py_topic}_fanout"),
                rs_topic.clone(),
                format!("{rs_topic}.host1"),
                format!("{rs_topic}_fanout"),
            ],
            &[py_exchange, rs_exchange],
        )
        .await
}
