//! Operators' tools, where the transport has them: taps and `delete_target`.

#[allow(unused_imports)]
use super::*;

/// A tap sees a copy of each request without taking it from the servers.
pub async fn taps_see_copies_without_taking_requests(backend: &dyn Backend) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    if !f.client_transport.capabilities().taps {
        return f.stop().await;
    }
    f.hosts.push("h1".into());
    f.serve(backend, "h1").await?;
    let mut tap = f.client_transport.tap(&f.target()).await?;
    f.client()
        .cast(&ctx(), "record", &json!({"value": "tapped"}))
        .await?;
    let (_, value) = f.next_record().await?;
    ensure!(value == json!("tapped"), "the server got {value}");
    let copy = tokio::time::timeout(WAIT, tap.next())
        .await
        .context("the tap saw nothing")?
        .context("the tap ended")?;
    let request = novarpc::driver::envelope::decode_request(&copy.body)?;
    ensure!(
        request.method() == "record",
        "the tap saw `{}`",
        request.method()
    );
    copy.ack().await;
    tap.stop().await?;
    f.stop().await
}

/// `delete_target` removes a target's shared queues, and what waited in them.
pub async fn delete_target_removes_shared_queues(backend: &dyn Backend) -> Result<()> {
    let mut f = Fixture::new(backend).await?;
    if !f.client_transport.capabilities().removes_targets {
        return f.stop().await;
    }
    f.hosts.push("h1".into());
    f.serve(backend, "h1").await?;
    for server in f.servers.drain(..) {
        server.stop().await?;
    }
    // Waits in the topic's queue, with nobody serving it.
    f.client()
        .cast(&ctx(), "record", &json!({"value": "orphan"}))
        .await?;
    f.client_transport
        .delete_target(&f.target().server("h1"))
        .await?;
    f.serve(backend, "h1").await?;
    let late = f.drain_records(backend.settle_time() * 2).await;
    ensure!(late.is_empty(), "a deleted queue still delivered {late:?}");
    // The target works again (its queues come back with the server).
    let value: Value = f
        .client()
        .call(&ctx(), "echo", &json!({"value": 3}))
        .await?;
    ensure!(value == json!(3));
    f.stop().await
}
