//! Fanout casts: every server of a topic, every listener of one host.

#[allow(unused_imports)]
use super::*;

pub async fn fanout_cast_reaches_every_server(backend: &dyn Backend) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    for host in ["host1", "host2", "host3"] {
        f.serve(backend, host).await?;
    }
    let result = f
        .client()
        .fanout_cast(&ctx(), "record", &json!({"value": "f"}))
        .await;
    if !f.client_transport.capabilities().fanout {
        // A broker without multicast must refuse, not reach one server.
        ensure!(
            matches!(&result, Err(e) if e.kind() == ErrorKind::Unsupported),
            "a transport without fanout must say Unsupported, got {result:?}"
        );
        let reached = f.drain_records(backend.settle_time()).await;
        ensure!(reached.is_empty(), "a refused fanout reached {reached:?}");
        return f.stop().await;
    }
    result?;
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

pub async fn fanout_cast_to_host_reaches_only_its_listeners(backend: &dyn Backend) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    f.serve(backend, "host1").await?;
    f.serve(backend, "host1").await?;
    f.serve(backend, "host2").await?;
    let result = f
        .client()
        .fanout_cast_to_host(&ctx(), "host1", "record", &json!({"value": "fs"}))
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
