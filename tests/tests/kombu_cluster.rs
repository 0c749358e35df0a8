//! The kombu driver on a 3-node RabbitMQ cluster with quorum queues, where
//! users go when one broker is not enough: the node the client and the
//! server use (the first of the transport URL) is stopped (`stop_app`), then
//! killed (SIGKILL), while calls and casts are in flight. Calls and casts end
//! by their deadlines, those started a second after the fault succeed (the
//! client and server fail over to the surviving nodes and re-declare their
//! reply and fanout queues there), and the node comes back.
//!
//! Needs the cluster of `scripts/rabbitmq-cluster.sh start`
//! (`NOVARPC_TEST_CLUSTER_URL`); `scripts/cluster-test` runs it (the test
//! is built with the `cluster` feature only).

use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use novarpc_conformance::backends::kombu_full;
use novarpc_conformance::faults;
use novarpc_conformance::Backend;

const OPTIONS: &str = "quorum_queues = true\ntransient_quorum_queue = true\n\
    retry_interval = 0.05\nretry_interval_max = 0.5\nmax_retries = 8\n\
    missing_consumer_retry_timeout = 5\nconfirm_timeout = 0.3";

fn script() -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/rabbitmq-cluster.sh"
    )
    .to_owned()
}

fn cluster_backend(default: &str, options: &str) -> Box<dyn Backend> {
    Box::new(kombu_full(default, options))
}

async fn cluster(args: &[&str]) -> Result<()> {
    let status = tokio::process::Command::new("bash")
        .arg(script())
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .context("running scripts/rabbitmq-cluster.sh")?;
    ensure!(status.success(), "rabbitmq-cluster.sh {args:?} failed");
    Ok(())
}

fn check_cluster() -> Result<()> {
    let url = std::env::var("NOVARPC_TEST_CLUSTER_URL").context(
        "NOVARPC_TEST_CLUSTER_URL is not set: start the cluster with \
         `scripts/rabbitmq-cluster.sh start` (or run scripts/cluster-test)",
    )?;
    ensure!(
        std::env::var("NOVARPC_TEST_RABBIT_URL").ok().as_deref() == Some(url.as_str()),
        "set NOVARPC_TEST_RABBIT_URL to the cluster's URL ({url})"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the RabbitMQ cluster: run scripts/cluster-test"]
async fn failover_when_the_node_in_use_is_stopped() -> Result<()> {
    check_cluster()?;
    faults::deadlines_hold_and_recover(
        "cluster: stop_app of node 1",
        &cluster_backend,
        OPTIONS,
        || async {
            cluster(&["stop-node", "1"]).await?;
            tokio::time::sleep(Duration::from_secs(6)).await;
            cluster(&["start-node", "1"]).await
        },
        Some(Duration::from_secs(1)),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the RabbitMQ cluster: run scripts/cluster-test"]
async fn failover_when_the_node_in_use_is_killed() -> Result<()> {
    check_cluster()?;
    faults::deadlines_hold_and_recover(
        "cluster: SIGKILL of node 1",
        &cluster_backend,
        OPTIONS,
        || async {
            cluster(&["kill", "1"]).await?;
            tokio::time::sleep(Duration::from_secs(6)).await;
            cluster(&["restart-node", "1"]).await
        },
        Some(Duration::from_secs(1)),
    )
    .await
}
