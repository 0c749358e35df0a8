//! The qpid (AMQP 1.0) driver under broker faults (see
//! `novarpc_conformance::faults`): connection, session and links are rebuilt,
//! no call hangs, no accepted cast is lost.

use anyhow::Result;
use novarpc_conformance::backends::qpid_with;
use novarpc_conformance::faults;
use novarpc_conformance::Backend;

const PATIENT: &str =
    "retry_interval = 0.2\nretry_interval_max = 1\nmax_retries = 8\ndurable_queues = true";

fn qpid(options: &str) -> Box<dyn Backend> {
    Box::new(qpid_with(options))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ with rabbitmq_amqp1_0 (and restarts it): run ./scripts/test"]
async fn broker_restart_during_calls_and_casts() -> Result<()> {
    faults::broker_restart("qpid", &qpid, PATIENT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ with rabbitmq_amqp1_0 (and closes its connections): run ./scripts/test"]
async fn forced_close_of_all_connections_during_calls_and_casts() -> Result<()> {
    faults::forced_close(&qpid, PATIENT).await
}

fn qpid_full(default: &str, options: &str) -> Box<dyn Backend> {
    Box::new(novarpc_conformance::backends::qpid_full(default, options))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ with rabbitmq_amqp1_0 (and stops it): run ./scripts/test"]
async fn calls_and_casts_end_by_their_deadline_through_a_broker_stop() -> Result<()> {
    faults::deadlines_hold(
        "qpid broker stop",
        &qpid_full,
        PATIENT,
        faults::stop_for_a_while,
    )
    .await
}

/// RabbitMQ 3.10's AMQP 1.0 plugin ignores memory alarms (casts keep being
/// accepted), so this mostly shows that nothing stalls either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ with rabbitmq_amqp1_0 (and raises a memory alarm): run ./scripts/test"]
async fn calls_and_casts_end_by_their_deadline_through_a_memory_alarm() -> Result<()> {
    faults::deadlines_hold(
        "qpid memory alarm",
        &qpid_full,
        PATIENT,
        faults::memory_alarm,
    )
    .await
}
