//! Notifications: listeners by priority (and pools, where the backend has them).

#[allow(unused_imports)]
use super::*;

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

/// Listener pools (where the transport has them): each pool gets every
/// notification once, shared among its listeners.
pub async fn notification_pools_each_get_every_notification(backend: &dyn Backend) -> Result<()> {
    let transport = backend.transport().await?;
    if !transport.capabilities().notification_pools {
        return Ok(transport.cleanup().await?);
    }
    let exchange = unique("pool_ex");
    let topic = unique("pooled");
    let target = Target::new(&topic).exchange(&exchange);
    let (pool_a, pool_b) = (unique("pool_a"), unique("pool_b"));
    let mut listeners = Vec::new();
    for pool in [&pool_a, &pool_b] {
        listeners.push(
            NotificationListener::start(
                &transport,
                std::slice::from_ref(&target),
                &[Priority::Info],
                Some(pool.as_str()),
            )
            .await?,
        );
    }
    let notifier = Notifier::new(transport.clone(), "compute.host1")
        .topics([topic.clone()])
        .exchange(&exchange);
    notifier
        .info(
            &Context::new(),
            "compute.instance.update",
            &json!({"id": 7}),
        )
        .await?;
    for listener in &mut listeners {
        let got = tokio::time::timeout(WAIT, listener.next())
            .await
            .context("a pool did not get the notification")?
            .context("a pool listener ended")?;
        ensure!(got.payload == json!({"id": 7}), "{:?}", got.payload);
        let again = tokio::time::timeout(backend.settle_time(), listener.next()).await;
        ensure!(again.is_err(), "a pool got the notification twice");
    }
    for listener in listeners {
        listener.stop().await?;
    }
    transport.cleanup().await?;
    backend
        .remove_topology(&[pool_a, pool_b, format!("{topic}.info")], &[exchange])
        .await
}
