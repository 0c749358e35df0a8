//! Failures and lifecycle: timeouts, garbage on a queue, panics, cleanup, capabilities, hung handlers, graceful stop.

#[allow(unused_imports)]
use super::*;

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
    // A handler that panics, and a result whose serialization panics.
    for (method, message) in [
        ("panic", "exploded"),
        ("panic_in_result", "while serializing"),
    ] {
        let result: novarpc::Result<Value> = f.client().call(&ctx(), method, &json!({})).await;
        match result {
            Err(Error::Remote(failure)) => {
                ensure!(
                    failure.class == "Panic" && failure.message.contains(message),
                    "{failure:?}"
                )
            }
            other => anyhow::bail!("expected a remote Panic from {method}, got {other:?}"),
        }
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
                .fanout_cast_to_host(&ctx(), "h1", "x", &json!({}))
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
