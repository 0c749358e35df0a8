//! Calls and multicalls: results, errors, dispatch by version and namespace, load.

#[allow(unused_imports)]
use super::*;

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
            .version(version.parse()?)
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
            .version(version.parse()?)
            .call(&ctx(), "which", &json!({}))
            .await;
        ensure!(
            matches!(&result, Err(Error::UnsupportedVersion { version: v, .. }) if v == version),
            "version {version}: expected UnsupportedVersion, got {result:?}"
        );
    }
    let result: novarpc::Result<String> = client
        .prepare()
        .version(Version::new(2, 0))
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
        .version(Version::new(1, 2))
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
    ensure!(
        client.can_send_version(Version::new(1, 2)) && client.can_send_version(Version::new(1, 0))
    );
    ensure!(
        !client.can_send_version(Version::new(1, 3))
            && !client.can_send_version(Version::new(2, 0))
    );
    let result = client
        .prepare()
        .version(Version::new(1, 5))
        .cast(&ctx(), "record", &json!({"value": 1}))
        .await;
    ensure!(
        matches!(result, Err(Error::VersionCap { .. })),
        "got {result:?}"
    );
    let result = "x.y".parse::<Version>();
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
