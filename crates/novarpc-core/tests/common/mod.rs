//! What the core's observability tests share: a runtime that keeps every
//! task on the test's thread (so thread-local subscribers and recorders see
//! them all) and an endpoint with a method that succeeds and one that fails.

use novarpc_core::{Context, Endpoint, EndpointError};

#[derive(serde::Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

/// A current-thread runtime.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `endpoint` with `add` (`{a, b}` → `a + b`) and `fail` (always a `Boom`).
pub fn add_and_fail(endpoint: Endpoint) -> Endpoint {
    endpoint
        .method("add", |_ctx: Context, args: Add| async move {
            Ok::<_, EndpointError>(args.a + args.b)
        })
        .method("fail", |_ctx: Context, _: serde_json::Value| async move {
            Err::<(), _>(EndpointError::new("Boom", "it broke"))
        })
}
