//! novarpc's test kit: the behaviour every backend must show, written once.
//!
//! A [`Backend`] says how to build transports to one broker (and how to put
//! raw bytes on it and remove what a test left); the [`suite`] is generic over
//! it, split by family (calls, casts, fanout, notifications, failures, tools,
//! cells);
//! [`conformance_suite!`] turns it into one `#[tokio::test]` per behaviour;
//! [`faults`] takes a RabbitMQ broker down under load. The kit itself needs no
//! broker: a driver's test crate supplies a `Backend` (configured from the
//! environment, so one suite runs against any broker with no code change).
//!
//! ```ignore
//! novarpc_testkit::conformance_suite!(my_backends::memory());
//! ```

pub mod args {
    //! Argument types of the test endpoints, shared by the suite and the
    //! interop tests.
    use serde::Deserialize;
    use serde_json::Value;

    #[derive(Deserialize)]
    pub struct ValueArgs {
        pub value: Value,
    }

    #[derive(Deserialize)]
    pub struct MessageArgs {
        pub message: String,
    }
}
pub mod faults;
pub mod suite;

use std::time::Duration;

use async_trait::async_trait;
use novarpc::Transport;

/// A way to build transports to one broker, for the suite.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// A fresh transport; transports of one backend value share the broker (as
    /// processes share RabbitMQ), so a client and servers can meet.
    async fn transport(&self) -> anyhow::Result<Transport>;

    /// Puts raw bytes on `exchange` with `routing_key`, bypassing novarpc.
    async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
    ) -> anyhow::Result<()>;

    /// Deletes queues and exchanges a test created (shared topic queues outlive
    /// their servers by design, so tests remove their own).
    async fn remove_topology(
        &self,
        _queues: &[String],
        _exchanges: &[String],
    ) -> anyhow::Result<()> {
        Ok(())
    }

    /// How long a message takes to be routed at most (for "nothing arrived" checks).
    fn settle_time(&self) -> Duration {
        Duration::from_millis(200)
    }

    /// Two brokers of this backend's kind, for the cells tests
    /// ([`suite::cells_cast_to_server_reaches_only_that_broker`] & co.):
    /// `None` (the default) skips them with a printed reason. Each call may
    /// make new brokers (virtual hosts), removed when the [`Cells`] is dropped.
    async fn cells(&self) -> anyhow::Result<Option<Cells>> {
        Ok(None)
    }
}

/// Two message brokers ("cells") of one backend, for the cells tests: cell 0
/// is the clients' default broker, cell 1 another one they reach by name or
/// URL. Dropping it removes what the backend made for it.
pub struct Cells {
    /// Cell 0's configuration: its default broker is cell 0, and it names cell
    /// 1 in a `[brokers.<cell1_name>]` table. Its `send_timeout` bounds the
    /// dead-broker checks (keep it short, a few seconds).
    pub cell0: novarpc::Config,
    /// The `[brokers]` name of cell 1 in `cell0`.
    pub cell1_name: String,
    /// Cell 1's transport URL, credentials included (for `Broker::url`).
    pub cell1_url: String,
    /// A configuration whose default broker is cell 1, for its servers (as a
    /// process of that cell would have).
    pub cell1: novarpc::Config,
    /// A transport URL of this backend's kind for a broker at `host:port`,
    /// for brokers that are down (a closed port, a peer that never answers).
    pub url_at: Box<dyn Fn(std::net::SocketAddr) -> String + Send + Sync>,
    /// Removes the cells' brokers (virtual hosts) when dropped.
    pub guard: Option<Box<dyn Send + Sync>>,
}

impl std::fmt::Debug for Cells {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cells")
            .field("cell0", &self.cell0.origin())
            .field("cell1_name", &self.cell1_name)
            .field("cell1", &self.cell1.origin())
            .finish_non_exhaustive()
    }
}

/// Serves and calls `ping` over a transport built from `config`, then removes
/// the target's shared queues through `backend` (with these exchanges).
pub async fn ping_over(
    config: &novarpc::Config,
    backend: &dyn Backend,
    exchanges: &[String],
) -> anyhow::Result<()> {
    use novarpc::{Context, Endpoint, EndpointError, RpcClient, RpcServer, Target};
    let transport = novarpc::connect(config).await?;
    let topic = unique("ping");
    let server = RpcServer::builder(transport.clone(), Target::new(&topic).server("h1"))
        .endpoint(
            Endpoint::new().method("ping", |_ctx, _: serde_json::Value| async move {
                Ok::<_, EndpointError>("pong")
            }),
        )
        .start()
        .await?;
    let pong: String = RpcClient::new(transport.clone(), Target::new(&topic))
        .call(&Context::new(), "ping", &serde_json::json!({}))
        .await?;
    anyhow::ensure!(pong == "pong");
    server.stop().await?;
    transport.cleanup().await?;
    backend
        .remove_topology(&[topic.clone(), format!("{topic}.h1")], exchanges)
        .await
}

/// A name no other test uses, for exchanges and topics.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Logs to the test output (once per process), honouring `RUST_LOG`.
pub fn init_tracing() {
    novarpc::logging::init_for_tests("warn");
}

/// Generates one `#[tokio::test]` per suite test for a backend expression,
/// with an optional attribute for each (e.g. `#[ignore = "needs a broker"]`).
#[macro_export]
macro_rules! conformance_suite {
    ($backend:expr) => {
        $crate::conformance_suite!($backend, #[allow(unused_attributes)]);
    };
    ($backend:expr, #$attr:tt) => {
        $crate::conformance_suite!(@tests $backend, $attr;
            call_returns_typed_result,
            call_accepts_dynamic_json,
            cast_reaches_one_server,
            fanout_cast_reaches_every_server,
            cast_to_host_reaches_only_it,
            fanout_cast_to_host_reaches_only_its_listeners,
            casts_round_robin_over_servers,
            multicall_streams_in_order_then_ends,
            multicall_of_unary_method_yields_its_result,
            call_of_streaming_method_returns_last_element,
            streaming_failure_ends_the_stream,
            notifications_reach_listeners_by_priority,
            call_to_unserved_topic_times_out,
            remote_error_carries_class_message_and_traceback,
            unknown_and_private_methods_are_no_such_method,
            invalid_arguments_are_reported,
            version_dispatch_follows_oslo_rules,
            namespace_dispatch_selects_endpoint,
            version_cap_refuses_newer_messages,
            thousand_concurrent_calls_complete,
            graceful_stop_finishes_in_flight_work,
            context_round_trips,
            large_and_unicode_payloads_survive,
            malformed_message_is_rejected_and_server_keeps_serving,
            panicking_handler_becomes_remote_error,
            transport_cleanup_fails_waiting_and_later_calls,
            client_cleanup_affects_only_that_client,
            cast_to_unserved_topic_waits_for_its_first_server,
            unsupported_operations_fail_before_sending,
            hung_handlers_time_out_and_stop_is_bounded,
            notification_pools_each_get_every_notification,
            taps_see_copies_without_taking_requests,
            delete_target_removes_shared_queues,
            cells_cast_to_server_reaches_only_that_broker,
            cells_fanout_cast_to_server_reaches_every_server_of_that_broker,
            cells_call_and_multicall_reach_the_other_broker,
            cells_dead_broker_fails_only_its_sends,
        );
    };
    (@tests $backend:expr, $attr:tt; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #$attr
            async fn $test() {
                $crate::init_tracing();
                let backend = $backend;
                $crate::suite::$test(&backend).await.unwrap();
            }
        )*
    };
}
