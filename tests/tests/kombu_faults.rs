//! The kombu driver under broker faults (see `novarpc_conformance::faults`).

use anyhow::Result;
use novarpc_conformance::backends::kombu_with;
use novarpc_conformance::faults;
use novarpc_conformance::Backend;

const PATIENT: &str = "retry_interval = 0.2\nretry_interval_max = 1\nmax_retries = 8\ndurable_queues = true\nmissing_consumer_retry_timeout = 5";

fn kombu(options: &str) -> Box<dyn Backend> {
    Box::new(kombu_with(options))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ (and restarts it): run ./scripts/test"]
async fn broker_restart_during_calls_and_casts() -> Result<()> {
    faults::broker_restart("kombu", &kombu, PATIENT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ (and closes its connections): run ./scripts/test"]
async fn forced_close_of_all_connections_during_calls_and_casts() -> Result<()> {
    faults::forced_close(&kombu, PATIENT).await
}

fn kombu_full(default: &str, options: &str) -> Box<dyn Backend> {
    Box::new(novarpc_conformance::backends::kombu_full(default, options))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ (and stops it): run ./scripts/test"]
async fn calls_and_casts_end_by_their_deadline_through_a_broker_stop() -> Result<()> {
    faults::deadlines_hold(
        "kombu broker stop",
        &kombu_full,
        PATIENT,
        faults::stop_for_a_while,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ (and raises a memory alarm): run ./scripts/test"]
async fn calls_and_casts_end_by_their_deadline_through_a_memory_alarm() -> Result<()> {
    faults::deadlines_hold(
        "kombu memory alarm",
        &kombu_full,
        PATIENT,
        faults::memory_alarm,
    )
    .await
}
