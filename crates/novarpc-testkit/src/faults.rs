//! Broker faults for the AMQP drivers, against the real RabbitMQ: a restart
//! (`rabbitmqctl stop_app` / `start_app`) and a forced close of every
//! connection (`rabbitmqctl close_all_connections`) during a stream of calls and
//! casts. Servers must come back by themselves, no call may hang past its
//! timeout, no confirmed cast may be lost, and a cast that cannot be published
//! must fail with a clear error.
//!
//! These tests take the broker down: they hold a lock so they run one at a
//! time, and cargo runs test binaries one after another. Which broker they
//! drive is the environment's: `NOVARPC_TEST_RABBITMQCTL` names its
//! `rabbitmqctl`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::{unique, Backend};
use anyhow::{ensure, Context as _, Result};
use novarpc::{Context, Endpoint, EndpointError, Error, ErrorKind, RpcClient, RpcServer, Target};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::json;

static BROKER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// The test broker's `rabbitmqctl` (`NOVARPC_TEST_RABBITMQCTL`, words split
/// on white space; default `rabbitmqctl`): its program name and a command
/// to add arguments to.
pub fn rabbitmqctl_command() -> (String, tokio::process::Command) {
    let words = rabbitmqctl_argv();
    let mut command = tokio::process::Command::new(&words[0]);
    command.args(&words[1..]);
    (words[0].clone(), command)
}

/// The words of the `rabbitmqctl` command for the broker under test
/// (`NOVARPC_TEST_RABBITMQCTL` split on spaces, else `rabbitmqctl`); never
/// empty.
pub fn rabbitmqctl_argv() -> Vec<String> {
    let configured =
        std::env::var("NOVARPC_TEST_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into());
    let words: Vec<String> = configured.split_whitespace().map(str::to_owned).collect();
    if words.is_empty() {
        vec!["rabbitmqctl".to_owned()]
    } else {
        words
    }
}

/// Runs `rabbitmqctl` against the broker under test: the command in
/// `NOVARPC_TEST_RABBITMQCTL` (split on spaces, e.g.
/// `bash scripts/brokers-extra.sh ctl` for the RabbitMQ 4 chroot), else the
/// machine's `rabbitmqctl`.
pub async fn rabbitmqctl(args: &[&str]) -> Result<()> {
    let (program, mut command) = rabbitmqctl_command();
    let status = command
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .with_context(|| format!("running {program}"))?;
    ensure!(status.success(), "{program} {args:?} failed");
    Ok(())
}

pub async fn restart_broker() -> Result<()> {
    rabbitmqctl(&["stop_app"]).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    start_broker().await
}

pub async fn start_broker() -> Result<()> {
    rabbitmqctl(&["start_app"]).await?;
    rabbitmqctl(&["await_startup"]).await
}

#[derive(Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(Deserialize)]
struct Record {
    value: i64,
}

#[derive(Default, Debug)]
struct Outcome {
    casts_confirmed: Vec<i64>,
    casts_failed: Vec<String>,
    calls_ok: usize,
    calls_failed: Vec<String>,
}

/// Runs a stream of calls and casts, applies `fault` in the middle, then checks
/// the guarantees.
/// `make_backend` builds the driver's backend with these driver options
/// (TOML lines).
pub async fn survive<F, Fut>(
    name: &str,
    make_backend: &dyn Fn(&str) -> Box<dyn Backend>,
    patient_options: &str,
    fault: F,
) -> Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let _broker = BROKER.lock().await;
    crate::init_tracing();
    let backend = make_backend(patient_options);
    let exchange = unique("fault_ex");
    let topic = unique("fault");
    let received = Arc::new(Mutex::new(BTreeSet::new()));
    let mut servers = Vec::new();
    for host in ["h1", "h2"] {
        let received = received.clone();
        let endpoint = Endpoint::new()
            .method("add", |_ctx, a: Add| async move {
                Ok::<_, EndpointError>(a.a + a.b)
            })
            .method("record", move |_ctx, r: Record| {
                let received = received.clone();
                async move {
                    received.lock().insert(r.value);
                    Ok::<_, EndpointError>(())
                }
            });
        servers.push(
            RpcServer::builder(
                backend.transport().await?,
                Target::new(&topic).exchange(&exchange).server(host),
            )
            .endpoint(endpoint)
            .start()
            .await?,
        );
    }
    let client_transport = backend.transport().await?;
    let client = RpcClient::new(
        client_transport.clone(),
        Target::new(&topic).exchange(&exchange),
    )
    .timeout(CALL_TIMEOUT);

    // A client that retries little, to see a cast fail cleanly while the broker is away.
    let impatient = make_backend(IMPATIENT);
    let impatient_client = RpcClient::new(
        impatient.transport().await?,
        Target::new(&topic).exchange(&exchange),
    );

    let load = tokio::spawn({
        let client = client.clone();
        async move {
            let mut outcome = Outcome::default();
            let ctx = Context::new();
            for i in 0..250i64 {
                match client.cast(&ctx, "record", &json!({"value": i})).await {
                    Ok(()) => outcome.casts_confirmed.push(i),
                    Err(error) => outcome.casts_failed.push(error.to_string()),
                }
                if i % 5 == 0 {
                    let args = json!({"a": i, "b": 1});
                    let call = client.call::<i64, _>(&ctx, "add", &args);
                    // A call must end by its timeout; allow for the publish retries before it.
                    match tokio::time::timeout(CALL_TIMEOUT + Duration::from_secs(3), call).await {
                        Err(_) => return Err(anyhow::anyhow!("call {i} hung past its timeout")),
                        Ok(Ok(sum)) if sum == i + 1 => outcome.calls_ok += 1,
                        Ok(Ok(sum)) => return Err(anyhow::anyhow!("call {i} returned {sum}")),
                        Ok(Err(error)) => {
                            ensure!(
                                matches!(error, Error::Timeout { .. } | Error::Transport { .. }),
                                "call {i} failed with an unexpected error kind: {error:?}"
                            );
                            outcome.calls_failed.push(error.to_string());
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(outcome)
        }
    });

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let faulted = fault().await;
    if faulted.is_err() {
        // Never leave the broker down for the tests after this one.
        let _ = start_broker().await;
    }
    faulted?;
    let outcome = load.await??;

    // Servers resume by themselves: a call succeeds again.
    let ctx = Context::new();
    let mut recovered = false;
    for _ in 0..30 {
        if let Ok(2) = client
            .call::<i64, _>(&ctx, "add", &json!({"a": 1, "b": 1}))
            .await
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ensure!(recovered, "{name}: the servers did not come back");

    // Every confirmed cast arrives.
    let confirmed: BTreeSet<i64> = outcome.casts_confirmed.iter().copied().collect();
    for _ in 0..100 {
        if received.lock().is_superset(&confirmed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lost: Vec<i64> = confirmed.difference(&received.lock()).copied().collect();
    println!(
        "{name}: {} casts confirmed, {} failed cleanly, {} lost; {} calls answered, {} failed cleanly",
        outcome.casts_confirmed.len(),
        outcome.casts_failed.len(),
        lost.len(),
        outcome.calls_ok,
        outcome.calls_failed.len()
    );
    for error in outcome
        .casts_failed
        .iter()
        .chain(&outcome.calls_failed)
        .take(3)
    {
        println!("  e.g. {error}");
    }
    ensure!(
        lost.is_empty(),
        "{name}: confirmed casts were lost: {lost:?}"
    );
    ensure!(outcome.calls_ok > 0, "{name}: no call succeeded at all");
    drop(impatient_client);

    for server in servers {
        server.stop().await?;
    }
    client_transport.cleanup().await?;
    backend
        .remove_topology(
            &[topic.clone(), format!("{topic}.h1"), format!("{topic}.h2")],
            &[exchange],
        )
        .await
}

/// Options of a client that retries little.
pub const IMPATIENT: &str = "retry_interval = 0.1\nretry_interval_max = 0.2\nmax_retries = 1";

/// A restart during the load; meanwhile a cast with few retries must fail
/// with a clear "gave up" error from `backend_name`.
pub async fn broker_restart(
    backend_name: &str,
    make_backend: &dyn Fn(&str) -> Box<dyn Backend>,
    patient_options: &str,
) -> Result<()> {
    let impatient = make_backend(IMPATIENT);
    let impatient_transport = impatient.transport().await?;
    let impatient_client = RpcClient::new(
        impatient_transport,
        Target::new(unique("down")).exchange(unique("down_ex")),
    );
    let impatient_failure = Arc::new(Mutex::new(None));
    let slot = impatient_failure.clone();
    survive(
        "broker restart",
        make_backend,
        patient_options,
        || async move {
            rabbitmqctl(&["stop_app"]).await?;
            // While the broker is away, a cast with few retries fails with a clear error.
            let result = impatient_client
                .cast(&Context::new(), "record", &json!({"value": -1}))
                .await;
            *slot.lock() = Some(result);
            tokio::time::sleep(Duration::from_secs(2)).await;
            start_broker().await
        },
    )
    .await?;
    let result = impatient_failure
        .lock()
        .take()
        .context("the impatient cast did not run")?;
    match result {
        Err(error @ Error::Transport { backend, .. }) if backend == backend_name => {
            // A broker that is away is a temporary failure: it was retried.
            ensure!(
                error.kind() == ErrorKind::Unreachable && error.is_temporary(),
                "a cast while the broker was down: {error:?}"
            );
            println!(
                "a cast while the broker was down: {}",
                novarpc::error_chain(&error)
            );
        }
        other => anyhow::bail!("a cast while the broker was down gave {other:?}"),
    }
    Ok(())
}

/// `rabbitmqctl close_all_connections` during the load.
pub async fn forced_close(
    make_backend: &dyn Fn(&str) -> Box<dyn Backend>,
    patient_options: &str,
) -> Result<()> {
    survive(
        "close_all_connections",
        make_backend,
        patient_options,
        || async { rabbitmqctl(&["close_all_connections", "novarpc fault test"]).await },
    )
    .await
}

/// How late a call or cast may end after its deadline (scheduling on a
/// loaded 2-core machine, the broker's own work).
const DEADLINE_MARGIN: Duration = Duration::from_millis(750);

/// What one call or cast of [`deadlines_hold`] did.
struct Ended {
    started: tokio::time::Instant,
    elapsed: Duration,
    kind: Option<ErrorKind>,
}

/// Many calls in flight (and a stream of casts) through `fault`: every call
/// ends by its timeout plus a small margin (`DEADLINE_MARGIN`), counted from the moment
/// `call` was invoked, and every cast by `send_timeout` plus the margin,
/// whatever the broker does; and the servers come back afterwards.
/// `make_backend` gets `[DEFAULT]` lines and driver lines.
pub async fn deadlines_hold<F, Fut>(
    name: &str,
    make_backend: &dyn Fn(&str, &str) -> Box<dyn Backend>,
    driver_options: &str,
    fault: F,
) -> Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    deadlines_hold_and_recover(name, make_backend, driver_options, fault, None).await
}

/// [`deadlines_hold`], and with `recover_within`: no call or cast started
/// more than that after the fault began may fail (a cluster fails over; a
/// single broker that is down cannot).
pub async fn deadlines_hold_and_recover<F, Fut>(
    name: &str,
    make_backend: &dyn Fn(&str, &str) -> Box<dyn Backend>,
    driver_options: &str,
    fault: F,
    recover_within: Option<Duration>,
) -> Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    const CALL: Duration = Duration::from_secs(2);
    const SEND: Duration = Duration::from_secs(2);
    const IN_FLIGHT: usize = 24;
    let _broker = BROKER.lock().await;
    crate::init_tracing();
    let backend = make_backend(
        &format!("send_timeout = {}", SEND.as_secs_f64()),
        driver_options,
    );
    let exchange = unique("deadline_ex");
    let topic = unique("deadline");
    let server = RpcServer::builder(
        backend.transport().await?,
        Target::new(&topic).exchange(&exchange).server("h1"),
    )
    .endpoint(
        Endpoint::new()
            .method("add", |_ctx, a: Add| async move {
                Ok::<_, EndpointError>(a.a + a.b)
            })
            .method("record", |_ctx, _: Record| async move {
                Ok::<_, EndpointError>(())
            }),
    )
    .start()
    .await?;
    let client_transport = backend.transport().await?;
    let client = RpcClient::new(
        client_transport.clone(),
        Target::new(&topic).exchange(&exchange),
    )
    .timeout(CALL);
    let stop = tokio_util::sync::CancellationToken::new();
    let mut workers = Vec::new();
    for worker in 0..=IN_FLIGHT {
        let client = client.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut ended = Vec::new();
            let ctx = Context::new();
            let mut i = 0i64;
            while !stop.is_cancelled() {
                let started = tokio::time::Instant::now();
                // Worker 0 casts; the others call.
                let result = if worker == 0 {
                    client.cast(&ctx, "record", &json!({"value": i})).await
                } else {
                    client
                        .call::<i64, _>(&ctx, "add", &json!({"a": i, "b": 1}))
                        .await
                        .map(|_| ())
                };
                let kind = result.err().map(|e| e.kind());
                ended.push(Ended {
                    started,
                    elapsed: started.elapsed(),
                    kind,
                });
                if kind.is_some() {
                    // Failing fast must not become a busy loop.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                i += 1;
            }
            (worker, ended)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fault_began = tokio::time::Instant::now();
    let faulted = fault().await;
    if faulted.is_err() {
        let _ = start_broker().await;
    }
    faulted?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    let mut calls = Vec::new();
    let mut casts = Vec::new();
    for worker in workers {
        // A worker stuck past every deadline is the failure this looks for.
        let (index, ended) = tokio::time::timeout(CALL + SEND + Duration::from_secs(5), worker)
            .await
            .with_context(|| format!("{name}: a call or cast hung past its deadline"))??;
        if index == 0 {
            casts.extend(ended);
        } else {
            calls.extend(ended);
        }
    }
    let summary = |what: &str, ended: &[Ended]| {
        let failed: Vec<_> = ended.iter().filter_map(|e| e.kind).collect();
        let slowest = ended.iter().map(|e| e.elapsed).max().unwrap_or_default();
        let mut kinds: Vec<String> = failed.iter().map(|k| k.to_string()).collect();
        kinds.sort();
        kinds.dedup();
        println!(
            "{name}: {} {what}, {} failed ({}), slowest {slowest:?}",
            ended.len(),
            failed.len(),
            kinds.join(", ")
        );
        slowest
    };
    let slowest_call = summary("calls", &calls);
    let slowest_cast = summary("casts", &casts);
    ensure!(
        slowest_call <= CALL + DEADLINE_MARGIN,
        "{name}: a call with a {CALL:?} timeout took {slowest_call:?}"
    );
    ensure!(
        slowest_cast <= SEND + DEADLINE_MARGIN,
        "{name}: a cast with a {SEND:?} send timeout took {slowest_cast:?}"
    );
    if let Some(recover) = recover_within {
        let late: Vec<_> = calls
            .iter()
            .chain(&casts)
            .filter(|e| e.kind.is_some() && e.started > fault_began + recover)
            .collect();
        println!(
            "{name}: {} failures among calls and casts started more than {recover:?} after the fault",
            late.len()
        );
        ensure!(
            late.is_empty(),
            "{name}: {} calls or casts started more than {recover:?} after the fault failed",
            late.len()
        );
    }
    for ended in calls.iter().chain(&casts) {
        if let Some(kind) = ended.kind {
            ensure!(
                matches!(
                    kind,
                    ErrorKind::Timeout | ErrorKind::Unreachable | ErrorKind::Busy
                ),
                "{name}: an outage gave a permanent-looking error: {kind}"
            );
        }
    }
    // The servers come back by themselves.
    let mut recovered = false;
    for _ in 0..40 {
        if let Ok(2) = client
            .call::<i64, _>(&Context::new(), "add", &json!({"a": 1, "b": 1}))
            .await
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ensure!(recovered, "{name}: the server did not come back");
    server.stop().await?;
    client_transport.cleanup().await?;
    backend
        .remove_topology(&[topic.clone(), format!("{topic}.h1")], &[exchange])
        .await
}

/// `rabbitmqctl stop_app` for 5 s, then `start_app`.
pub async fn stop_for_a_while() -> Result<()> {
    rabbitmqctl(&["stop_app"]).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    start_broker().await
}

/// A memory alarm for 5 s: the broker blocks every publishing connection.
pub async fn memory_alarm() -> Result<()> {
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]).await
}
