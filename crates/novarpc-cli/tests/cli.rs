//! The `novarpc` command end to end: against the memory backend (no broker) and
//! against the machine's RabbitMQ (ignored by a plain `cargo test`;
//! `./scripts/test` runs them).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use novarpc::{
    Context, Endpoint, EndpointError, NotificationListener, Priority, RpcServer, Target,
};
use novarpc_conformance::backends::{
    amqp1_env_options, amqp1_url, kombu, kombu_env_options, qpid, rabbit_url,
};
use novarpc_conformance::{unique, Backend};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

fn novarpc(config: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_novarpc"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("NOVARPC_CONFIG")
        .output()
        .expect("the novarpc binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn workspace_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn temp_config(contents: &str) -> Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("{}.toml", unique("novarpc-cli")));
    std::fs::write(&path, contents)?;
    Ok(path)
}

#[test]
fn check_config_prints_resolved_settings_and_redacts_passwords() -> Result<()> {
    let out = novarpc(&workspace_file("config/novarpc.toml"), &["check-config"]);
    ensure!(out.status.code() == Some(0), "{}", text(&out.stderr));
    ensure!(
        text(&out.stdout).contains("backend `memory`"),
        "{}",
        text(&out.stdout)
    );

    let secret =
        temp_config("[DEFAULT]\ntransport_url = \"rabbit://nova:hunter2@h1:5672/nova\"\n")?;
    let out = novarpc(&secret, &["check-config"]);
    let all = text(&out.stdout) + &text(&out.stderr);
    ensure!(out.status.code() == Some(0), "{all}");
    ensure!(
        all.contains("nova:***@h1:5672") && !all.contains("hunter2"),
        "{all}"
    );
    ensure!(
        all.contains("prefetch_count = 0"),
        "driver defaults missing: {all}"
    );

    let out = novarpc(
        &secret,
        &["check-config", "--set", "DEFAULT.control_exchange=cells"],
    );
    ensure!(
        text(&out.stdout).contains("control_exchange = \"cells\""),
        "{}",
        text(&out.stdout)
    );
    Ok(())
}

#[test]
fn check_config_warns_when_no_backend_is_named() -> Result<()> {
    // An empty [DEFAULT] (a typo'd table name, say) falls back to memory:
    // valid, but said, because such a process reaches nobody.
    let bare = temp_config("[DEFAULT]\ncontrol_exchange = \"nova\"\n")?;
    let out = novarpc(&bare, &["check-config"]);
    ensure!(out.status.code() == Some(0), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    ensure!(
        stderr.contains("warning") && stderr.contains("`memory`"),
        "{stderr}"
    );
    let named = temp_config("[DEFAULT]\nrpc_backend = \"memory\"\n")?;
    let out = novarpc(&named, &["check-config"]);
    ensure!(
        out.status.code() == Some(0) && !text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}

#[test]
fn check_config_fails_with_exit_3_naming_the_line() -> Result<()> {
    let bad = temp_config("[DEFAULT]\nrpc_backend = \"memory\"\n\n[memory]\nbrokr = \"x\"\n")?;
    let out = novarpc(&bad, &["check-config"]);
    ensure!(out.status.code() == Some(3), "exit {:?}", out.status.code());
    let stderr = text(&out.stderr);
    ensure!(
        stderr.contains("line 5") && stderr.contains("brokr"),
        "{stderr}"
    );
    let unknown = temp_config("[DEFAULT]\nrpc_backend = \"zeromq\"\n")?;
    let out = novarpc(&unknown, &["check-config"]);
    ensure!(
        out.status.code() == Some(3) && text(&out.stderr).contains("available backends"),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}

#[test]
fn a_bench_that_cannot_finish_fails_at_its_deadline() -> Result<()> {
    let config = workspace_file("config/novarpc.toml");
    let started = std::time::Instant::now();
    // Far more calls than fit in the deadline: the run must end with an
    // error naming where it was, not run on.
    let out = novarpc(
        &config,
        &["bench", "--messages", "1000000000", "--deadline", "1"],
    );
    ensure!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    ensure!(out.status.code() == Some(4), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    ensure!(
        stderr.contains("deadline") && stderr.contains("running the novarpc load"),
        "{stderr}"
    );
    let out = novarpc(&config, &["bench", "--deadline", "0"]);
    ensure!(out.status.code() == Some(2), "{}", text(&out.stderr));
    Ok(())
}

#[test]
fn ping_and_bench_on_memory() -> Result<()> {
    let config = workspace_file("config/novarpc.toml");
    let out = novarpc(&config, &["ping"]);
    ensure!(out.status.code() == Some(0), "{}", text(&out.stderr));
    ensure!(
        text(&out.stdout).starts_with("ok: memory"),
        "{}",
        text(&out.stdout)
    );

    let out = novarpc(
        &config,
        &[
            "bench",
            "--messages",
            "500",
            "--concurrency",
            "8",
            "--baseline",
            "raw",
            "--json",
        ],
    );
    ensure!(out.status.code() == Some(0), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        report["novarpc"]["operations"] == 500 && report["novarpc"]["errors"] == 0,
        "{report}"
    );
    ensure!(
        report["raw"]["operations"] == 500 && report["ratio"].is_number(),
        "{report}"
    );
    ensure!(
        report["novarpc"]["p999_us"].is_number() && report["peak_rss_mb"].is_number(),
        "{report}"
    );

    // --metrics: the run's figures in Prometheus' text format.
    let metrics = std::env::temp_dir().join(format!("{}.prom", unique("bench-metrics")));
    let out = novarpc(
        &config,
        &[
            "bench",
            "--messages",
            "200",
            "--json",
            "--metrics",
            metrics.to_str().context("temp path")?,
        ],
    );
    ensure!(out.status.code() == Some(0), "{}", text(&out.stderr));
    let exposition = std::fs::read_to_string(&metrics)?;
    let _ = std::fs::remove_file(&metrics);
    ensure!(
        exposition
            .lines()
            .any(|l| l.starts_with("novarpc_requests_total{")
                && l.contains("side=\"client\"")
                && l.contains("method=\"echo\"")
                && l.contains("outcome=\"ok\"")),
        "{exposition}"
    );
    ensure!(
        exposition.contains("novarpc_request_duration_seconds")
            && exposition.contains("side=\"server\""),
        "{exposition}"
    );

    for mode in ["cast", "fanout", "notify"] {
        let out = novarpc(
            &config,
            &[
                "bench",
                "--mode",
                mode,
                "--messages",
                "300",
                "--servers",
                "2",
                "--json",
            ],
        );
        ensure!(
            out.status.code() == Some(0),
            "{mode}: {}",
            text(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout)?;
        ensure!(
            report["novarpc"]["delivered_rate"].as_f64().unwrap_or(0.0) > 0.0,
            "{mode}: {report}"
        );
    }
    Ok(())
}

#[test]
fn bad_arguments_exit_2() -> Result<()> {
    let config = workspace_file("config/novarpc.toml");
    let out = novarpc(&config, &["call", "compute", "echo", "--args", "not json"]);
    ensure!(
        out.status.code() == Some(2),
        "exit {:?}: {}",
        out.status.code(),
        text(&out.stderr)
    );
    let out = novarpc(&config, &["notify", "loud", "x.y"]);
    ensure!(
        out.status.code() == Some(2) && text(&out.stderr).contains("priority"),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}

/// `[brokers]` in check-config (redacted, overrides shown) and `--broker`
/// on cast and call, on the memory backend.
#[test]
fn brokers_in_check_config_and_the_broker_flag_on_memory() -> Result<()> {
    let config = temp_config(
        "[DEFAULT]\ntransport_url = \"memory://c0\"\n\n[kombu]\nmax_retries = 3\n\n\
         [brokers.cell1]\ntransport_url = \"memory://c1\"\n\n\
         [brokers.cell2]\ntransport_url = \"rabbit://nova:hunter2@127.0.0.1:1/cell2\"\n\n\
         [brokers.cell2.kombu]\nmax_retries = 0\nretry_interval = 0.1\n",
    )?;
    let out = novarpc(&config, &["check-config"]);
    let all = text(&out.stdout) + &text(&out.stderr);
    ensure!(out.status.code() == Some(0), "{all}");
    ensure!(
        all.contains("[brokers.cell1]") && all.contains("rpc_backend = \"memory\""),
        "{all}"
    );
    ensure!(
        all.contains("[brokers.cell2]")
            && all.contains("nova:***@127.0.0.1:1/cell2")
            && !all.contains("hunter2"),
        "{all}"
    );
    ensure!(
        all.contains("[brokers.cell2.kombu]") && all.contains("max_retries = 0"),
        "{all}"
    );

    let out = novarpc(&config, &["cast", "t", "m", "--broker", "cell1"]);
    ensure!(out.status.code() == Some(0), "{}", text(&out.stderr));
    let out = novarpc(
        &config,
        &["cast", "t", "m", "--fanout", "--broker", "memory://c1"],
    );
    ensure!(out.status.code() == Some(0), "{}", text(&out.stderr));
    let out = novarpc(
        &config,
        &["call", "t", "m", "--broker", "cell1", "--timeout", "0.3"],
    );
    ensure!(
        out.status.code() == Some(5),
        "exit {:?}: {}",
        out.status.code(),
        text(&out.stderr)
    );
    // A broker that is down: exit 4, no password shown.
    let out = novarpc(&config, &["cast", "t", "m", "--broker", "cell2"]);
    let stderr = text(&out.stderr);
    ensure!(
        out.status.code() == Some(4),
        "exit {:?}: {stderr}",
        out.status.code()
    );
    ensure!(!stderr.contains("hunter2"), "{stderr}");
    let out = novarpc(&config, &["cast", "t", "m", "--broker", "cell9"]);
    ensure!(
        out.status.code() == Some(3) && text(&out.stderr).contains("cell9"),
        "exit {:?}: {}",
        out.status.code(),
        text(&out.stderr)
    );
    let out = novarpc(&config, &["cast", "t", "m", "--broker", "not a name"]);
    ensure!(out.status.code() == Some(2), "exit {:?}", out.status.code());

    let bad = temp_config(
        "[brokers.cell1]\ntransport_url = \"memory://c1\"\n\n[brokers.cell1.kombu]\nprefetch = 1\n",
    )?;
    let out = novarpc(&bad, &["check-config"]);
    let stderr = text(&out.stderr);
    ensure!(
        out.status.code() == Some(3) && stderr.contains("line 5") && stderr.contains("prefetch"),
        "exit {:?}: {stderr}",
        out.status.code()
    );
    let bad = temp_config("[brokers.cell1]\ntransport_url = \"zmq://h/\"\n")?;
    let out = novarpc(&bad, &["check-config"]);
    let stderr = text(&out.stderr);
    ensure!(
        out.status.code() == Some(3)
            && stderr.contains("line 2")
            && stderr.contains("brokers.cell1.transport_url"),
        "exit {:?}: {stderr}",
        out.status.code()
    );
    Ok(())
}

/// `--broker` against a server on another virtual host of the machine's
/// RabbitMQ (made for the test with rabbitmqctl, removed after).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and rabbitmqctl: run ./scripts/test"]
async fn broker_flag_against_rabbitmq() -> Result<()> {
    use novarpc_conformance::cells::{with_vhost, Vhost};
    let url = rabbit_url();
    let vhost = Vhost::create(&unique("novarpc_cell1"), "guest").await?;
    let cell1_url = with_vhost(&url, vhost.name())?;
    let topic = unique("cli_cells");
    let kombu_options = kombu_env_options();
    let config = temp_config(&format!(
        "[DEFAULT]\ntransport_url = \"{url}\"\nrpc_response_timeout = 10\n\n[kombu]\n{kombu_options}\n[brokers.cell1]\ntransport_url = \"{cell1_url}\"\n"
    ))?;
    let cell1 = novarpc::Config::from_toml_str(
        &format!("[DEFAULT]\ntransport_url = \"{cell1_url}\"\n\n[kombu]\n{kombu_options}"),
        "<cell1>",
    )?;
    let transport = novarpc::connect(&cell1).await?;
    let (tx, mut records) = mpsc::unbounded_channel::<Value>();
    let endpoint = Endpoint::new()
        .method("add", |_ctx, a: AddArgs| async move {
            Ok::<_, EndpointError>(a.a + a.b)
        })
        .method("record", move |_ctx, r: Record| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(r.value);
                Ok::<_, EndpointError>(())
            }
        });
    let server = RpcServer::builder(transport.clone(), Target::new(&topic).server("h1"))
        .endpoint(endpoint)
        .start()
        .await?;
    let run = |args: Vec<String>| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            novarpc(&config, &args)
        })
    };
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let out = run(args(&[
        "call",
        &topic,
        "add",
        "--args",
        r#"{"a": 1, "b": 2}"#,
        "--broker",
        "cell1",
    ]))
    .await?;
    ensure!(out.status.code() == Some(0), "{}", text(&out.stderr));
    ensure!(text(&out.stdout).trim() == "3", "{}", text(&out.stdout));
    let out = run(args(&[
        "call",
        &topic,
        "add",
        "--args",
        r#"{"a": 1, "b": 2}"#,
        "--timeout",
        "1",
    ]))
    .await?;
    ensure!(
        out.status.code() == Some(5),
        "without --broker the call stays on cell 0: exit {:?}",
        out.status.code()
    );
    for (value, extra) in [
        ("c1", vec!["--broker", "cell1"]),
        ("f1", vec!["--broker", cell1_url.as_str(), "--fanout"]),
    ] {
        let json = format!(r#"{{"value": "{value}"}}"#);
        let mut list = vec!["cast", topic.as_str(), "record", "--args", json.as_str()];
        list.extend(extra);
        let out = run(args(&list)).await?;
        ensure!(out.status.code() == Some(0), "{}", text(&out.stderr));
        let got = tokio::time::timeout(Duration::from_secs(10), records.recv())
            .await?
            .context("record channel closed")?;
        ensure!(got == json!(value), "{got}");
    }
    server.stop().await?;
    transport.cleanup().await?;
    // Cell 0 got the topic queue of the call that stayed home.
    kombu().remove_topology(&[topic], &[]).await?;
    drop(vhost);
    Ok(())
}

#[derive(Deserialize)]
struct AddArgs {
    a: i64,
    b: i64,
}

#[derive(Deserialize)]
struct Record {
    value: Value,
}

/// The subcommands against a novarpc server on the machine's RabbitMQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run ./scripts/test"]
async fn subcommands_against_rabbitmq() -> Result<()> {
    subcommands_against(
        "kombu",
        &rabbit_url(),
        kombu_env_options(),
        Box::new(kombu()),
    )
    .await
}

/// The same over AMQP 1.0, on RabbitMQ's plugin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ with rabbitmq_amqp1_0: run ./scripts/test"]
async fn subcommands_against_rabbitmq_amqp1() -> Result<()> {
    subcommands_against("qpid", &amqp1_url(), amqp1_env_options(), Box::new(qpid())).await
}

/// `driver_options`: the `[kind]` lines the environment asks of the test
/// broker (RabbitMQ 4's quorum queues, an AMQP 1.0 addressing profile).
async fn subcommands_against(
    kind: &str,
    url: &str,
    driver_options: String,
    backend: Box<dyn Backend>,
) -> Result<()> {
    let exchange = unique("cli_ex");
    let topic = unique("cli");
    let config = temp_config(&format!(
        "[DEFAULT]\nrpc_backend = \"{kind}\"\ntransport_url = \"{url}\"\ncontrol_exchange = \"{exchange}\"\nrpc_response_timeout = 10\n\n[{kind}]\n{driver_options}"
    ))?;
    let (tx, mut records) = mpsc::unbounded_channel::<(Value, Context)>();
    let endpoint = Endpoint::new()
        .method("add", |_ctx, a: AddArgs| async move {
            Ok::<_, EndpointError>(a.a + a.b)
        })
        .method("fail", |_ctx, _: Value| async move {
            Err::<(), _>(EndpointError::new("InstanceNotFound", "no such instance"))
        })
        .stream_method("count", |_ctx, a: AddArgs| {
            futures::stream::iter((a.a..a.b).map(Ok::<_, EndpointError>))
        })
        .method("record", move |ctx: Context, r: Record| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((r.value, ctx));
                Ok::<_, EndpointError>(())
            }
        });
    let server = RpcServer::builder(
        backend.transport().await?,
        Target::new(&topic).exchange(&exchange).server("h1"),
    )
    .endpoint(endpoint)
    .start()
    .await?;

    let run = |args: Vec<String>| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            novarpc(&config, &args)
        })
    };
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let out = run(args(&[
        "call",
        &topic,
        "add",
        "--args",
        r#"{"a": 40, "b": 2}"#,
    ]))
    .await?;
    ensure!(out.status.code() == Some(0), "{}", text(&out.stderr));
    ensure!(
        text(&out.stdout).trim() == "42",
        "call printed {}",
        text(&out.stdout)
    );

    // A multicall's elements, one JSON line each.
    let out = run(args(&[
        "call",
        &topic,
        "count",
        "--stream",
        "--args",
        r#"{"a": 1, "b": 4}"#,
    ]))
    .await?;
    ensure!(out.status.code() == Some(0), "{}", text(&out.stderr));
    ensure!(
        text(&out.stdout) == "1\n2\n3\n",
        "call --stream printed {:?}",
        text(&out.stdout)
    );

    let out = run(args(&["call", &topic, "fail"])).await?;
    ensure!(out.status.code() == Some(1), "exit {:?}", out.status.code());
    ensure!(
        text(&out.stderr).contains("InstanceNotFound: no such instance"),
        "{}",
        text(&out.stderr)
    );

    let out = run(args(&[
        "call",
        &topic,
        "add",
        "--server",
        "nobody",
        "--timeout",
        "0.5",
    ]))
    .await?;
    ensure!(
        out.status.code() == Some(5),
        "timeout exit {:?}: {}",
        out.status.code(),
        text(&out.stderr)
    );

    // A tap sees casts without taking them from the server (where the
    // backend can tap: AMQP 1.0 cannot bind a queue beside the servers').
    let can_tap = backend.transport().await?.capabilities().taps;
    let tap = if !can_tap {
        None
    } else {
        let config = config.clone();
        let topic = topic.clone();
        tokio::process::Command::new(env!("CARGO_BIN_EXE_novarpc"))
            .arg("--config")
            .arg(&config)
            .args([
                "listen",
                "--rpc",
                "--topic",
                &topic,
                "--count",
                "1",
                "--timeout",
                "20",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map(Some)?
    };
    if can_tap {
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let out = run(args(&[
        "cast",
        &topic,
        "record",
        "--args",
        r#"{"value": "c1"}"#,
        "--context",
        r#"{"user_id": "u7"}"#,
    ]))
    .await?;
    ensure!(out.status.code() == Some(0), "{}", text(&out.stderr));
    let (value, ctx) = tokio::time::timeout(Duration::from_secs(10), records.recv())
        .await?
        .context("no cast")?;
    ensure!(
        value == "c1" && ctx.get("user_id") == Some(&json!("u7")),
        "{value} {ctx:?}"
    );
    if let Some(tap) = tap {
        let tapped =
            tokio::time::timeout(Duration::from_secs(20), tap.wait_with_output()).await??;
        ensure!(
            tapped.status.code() == Some(0),
            "tap: {}",
            text(&tapped.stderr)
        );
        let line: Value = serde_json::from_str(text(&tapped.stdout).trim())?;
        ensure!(
            line["method"] == "record" && line["args"]["value"] == "c1",
            "{line}"
        );
    }

    let out = run(args(&[
        "cast",
        &topic,
        "record",
        "--fanout",
        "--args",
        r#"{"value": "f1"}"#,
    ]))
    .await?;
    ensure!(out.status.code() == Some(0), "{}", text(&out.stderr));
    let (value, _) = tokio::time::timeout(Duration::from_secs(10), records.recv())
        .await?
        .context("no fanout")?;
    ensure!(value == "f1");

    // notify → an in-process listener; listen ← an in-process notifier.
    let transport = backend.transport().await?;
    let notif_topic = unique("cli_notifications");
    let target = Target::new(&notif_topic).exchange(&exchange);
    let mut listener = NotificationListener::start(
        &transport,
        std::slice::from_ref(&target),
        &[Priority::Warn],
        None,
    )
    .await?;
    let out = run(args(&[
        "notify",
        "warn",
        "volume.low",
        "--topic",
        &notif_topic,
        "--exchange",
        &exchange,
        "--payload",
        r#"{"free": 3}"#,
    ]))
    .await?;
    ensure!(out.status.code() == Some(0), "{}", text(&out.stderr));
    let n = tokio::time::timeout(Duration::from_secs(10), listener.next())
        .await?
        .context("no notification")?;
    ensure!(
        n.event_type == "volume.low" && n.payload == json!({"free": 3}),
        "{n:?}"
    );
    listener.stop().await?;

    let listen = tokio::process::Command::new(env!("CARGO_BIN_EXE_novarpc"))
        .arg("--config")
        .arg(&config)
        .args([
            "listen",
            "--topic",
            &notif_topic,
            "--exchange",
            &exchange,
            "--priority",
            "error",
            "--count",
            "1",
            "--timeout",
            "20",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    novarpc::Notifier::new(transport.clone(), "compute.h1")
        .topics([notif_topic.clone()])
        .exchange(&exchange)
        .error(
            &Context::new(),
            "compute.instance.error",
            &json!({"id": "i-9"}),
        )
        .await?;
    let heard = tokio::time::timeout(Duration::from_secs(20), listen.wait_with_output()).await??;
    ensure!(
        heard.status.code() == Some(0),
        "listen: {}",
        text(&heard.stderr)
    );
    let line: Value = serde_json::from_str(text(&heard.stdout).trim())?;
    ensure!(
        line["event_type"] == "compute.instance.error" && line["priority"] == "error",
        "{line}"
    );

    let out = run(args(&["ping"])).await?;
    ensure!(
        out.status.code() == Some(0) && text(&out.stdout).starts_with(&format!("ok: {kind}")),
        "{}",
        text(&out.stderr)
    );

    let bench_topic = unique("clibench");
    let out = run(args(&[
        "bench",
        "--messages",
        "300",
        "--concurrency",
        "8",
        "--baseline",
        "raw",
        "--json",
        "--topic",
        &bench_topic,
    ]))
    .await?;
    ensure!(out.status.code() == Some(0), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        report["backend"] == kind
            && report["raw"]["operations"] == 300
            && report["ratio"].is_number(),
        "{report}"
    );

    server.stop().await?;
    transport.cleanup().await?;
    backend
        .remove_topology(
            &[
                topic.clone(),
                format!("{topic}.h1"),
                format!("{notif_topic}.warn"),
                format!("{notif_topic}.error"),
                bench_topic.clone(),
                format!("{bench_topic}.bench-0"),
                "novarpc_ping".into(),
                "novarpc_ping.ping".into(),
            ],
            &[exchange],
        )
        .await
}
