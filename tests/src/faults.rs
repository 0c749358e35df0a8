//! Broker faults for the AMQP drivers, against the real RabbitMQ: a restart
//! (`rabbitmqctl stop_app` / `start_app`) and a forced close of every
//! connection (`rabbitmqctl close_all_connections`) during a stream of calls and
//! casts. Servers must come back by themselves, no call may hang past its
//! timeout, no confirmed cast may be lost, and a cast that cannot be published
//! must fail with a clear error.
//!
//! These tests take the broker down: they hold a lock so they run one at a
//! time, and cargo runs test binaries one after another.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::{unique, Backend};
use anyhow::{ensure, Context as _, Result};
use novarpc::{Context, Endpoint, EndpointError, Error, RpcClient, RpcServer, Target};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::json;

static BROKER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CALL_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn rabbitmqctl(args: &[&str]) -> Result<()> {
    let status = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .context("running rabbitmqctl")?;
    ensure!(status.success(), "rabbitmqctl {args:?} failed");
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
        Err(Error::Transport { backend, cause }) if backend == backend_name => {
            let text = cause.to_string();
            ensure!(text.contains("gave up after"), "unclear error: {text}");
            println!("a cast while the broker was down: {text}");
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
