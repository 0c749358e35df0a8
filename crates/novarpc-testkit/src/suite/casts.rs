//! Casts: one server, a named host, round robin, and casts nobody serves yet.

#[allow(unused_imports)]
use super::*;

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

pub async fn cast_to_host_reaches_only_it(backend: &dyn Backend) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    for host in ["host1", "host2", "host3"] {
        f.serve(backend, host).await?;
    }
    for i in 0..6 {
        f.client()
            .cast_to_host(&ctx(), "host2", "record", &json!({"value": i}))
            .await?;
    }
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(f.next_record().await?);
    }
    ensure!(
        got.iter().all(|(host, _)| host == "host2"),
        "cast_to_host reached {got:?}"
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
