//! Requests are counted, timed and tracked in flight through the `metrics`
//! facade, on both sides, per backend and method.

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};
use novarpc_core::memory::MemoryDriver;
use novarpc_core::metrics::names;
use novarpc_core::{
    CommonOptions, Context, Endpoint, ErrorKind, RpcClient, RpcServer, Target, Transport,
};

mod common;

fn label<'a>(key: &'a CompositeKey, name: &str) -> Option<&'a str> {
    key.key()
        .labels()
        .find(|l| l.key() == name)
        .map(|l| l.value())
}

#[test]
fn requests_are_counted_timed_and_tracked_in_flight() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // A local recorder: the current-thread runtime keeps every task on
    // this thread, and other tests' figures stay out.
    let _guard = metrics::set_default_local_recorder(&recorder);
    let runtime = common::runtime();
    runtime.block_on(async {
        let transport = Transport::new(MemoryDriver::new(CommonOptions::default()));
        let endpoint = common::add_and_fail(Endpoint::new());
        let server = RpcServer::builder(transport.clone(), Target::new("metrics").server("h1"))
            .endpoint(endpoint)
            .start()
            .await
            .unwrap();
        let client = RpcClient::new(transport, Target::new("metrics"));
        let args = serde_json::json!({"a": 2, "b": 3});
        for _ in 0..3 {
            client
                .call::<i64, _>(&Context::new(), "add", &args)
                .await
                .unwrap();
        }
        let error = client
            .call::<(), _>(&Context::new(), "fail", &serde_json::json!({}))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Remote);
        client.cast(&Context::new(), "add", &args).await.unwrap();
        server.stop().await.unwrap();
    });

    let snapshot = snapshotter.snapshot().into_vec();
    let find = |kind: MetricKind, name: &str, labels: &[(&str, &str)]| {
        snapshot
            .iter()
            .find(|(key, _, _, _)| {
                key.kind() == kind
                    && key.key().name() == name
                    && labels.iter().all(|(k, v)| label(key, k) == Some(*v))
            })
            .map(|(_, _, _, value)| value)
    };
    let count = |labels: &[(&str, &str)]| match find(MetricKind::Counter, names::REQUESTS, labels) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{labels:?}: {other:?} in {snapshot:#?}"),
    };
    let memory = ("backend", "memory");
    assert_eq!(
        count(&[
            ("side", "client"),
            memory,
            ("kind", "call"),
            ("method", "add"),
            ("outcome", "ok")
        ]),
        3
    );
    assert_eq!(
        count(&[
            ("side", "client"),
            ("kind", "call"),
            ("method", "fail"),
            ("outcome", "remote")
        ]),
        1
    );
    assert_eq!(
        count(&[
            ("side", "client"),
            ("kind", "cast"),
            ("method", "add"),
            ("outcome", "ok")
        ]),
        1
    );
    assert_eq!(
        count(&[
            ("side", "server"),
            memory,
            ("kind", "call"),
            ("method", "add"),
            ("outcome", "ok")
        ]),
        3
    );
    assert_eq!(
        count(&[
            ("side", "server"),
            ("kind", "call"),
            ("method", "fail"),
            ("outcome", "failed")
        ]),
        1
    );
    match find(
        MetricKind::Histogram,
        names::DURATION,
        &[("side", "client"), ("kind", "call"), ("method", "add")],
    ) {
        Some(DebugValue::Histogram(samples)) => {
            assert_eq!(samples.len(), 3);
            assert!(samples.iter().all(|s| s.into_inner() > 0.0));
        }
        other => panic!("duration: {other:?}"),
    }
    for side in ["client", "server"] {
        match find(
            MetricKind::Gauge,
            names::IN_FLIGHT,
            &[("side", side), memory],
        ) {
            Some(DebugValue::Gauge(value)) => assert_eq!(value.into_inner(), 0.0, "{side}"),
            other => panic!("in flight ({side}): {other:?}"),
        }
    }
}
