//! Throughput of the memory backend: calls/s sequential and with 64 in flight,
//! casts/s, next to a raw baseline (a tokio mpsc request + oneshot reply, no
//! envelope) measured in the same run.
//!
//! `cargo bench -p novarpc --bench memory` (`-- --seconds N` to change the
//! duration of each measurement).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use common::{drive, report, seconds};

use novarpc::{Context, Endpoint, EndpointError, RpcClient, RpcServer, Target};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

#[derive(Serialize, Deserialize)]
struct AddArgs {
    a: i64,
    b: i64,
}

type RawRequest = (String, oneshot::Sender<String>);

/// The floor: a channel hop each way, with nothing encoded.
fn raw_server() -> mpsc::Sender<RawRequest> {
    let (tx, mut rx) = mpsc::channel::<RawRequest>(1024);
    tokio::spawn(async move {
        while let Some((request, reply)) = rx.recv().await {
            tokio::spawn(async move {
                let _ = reply.send(request);
            });
        }
    });
    tx
}

async fn raw_call(server: &mpsc::Sender<RawRequest>, i: i64) {
    let (tx, rx) = oneshot::channel();
    server.send((i.to_string(), tx)).await.unwrap();
    rx.await.unwrap();
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let duration = seconds();
    let transport = novarpc::connect(&novarpc::Config::memory()).await.unwrap();
    let casts_seen = Arc::new(AtomicU64::new(0));
    let seen = casts_seen.clone();
    let endpoint = Endpoint::new()
        .method("add", |_ctx, args: AddArgs| async move {
            Ok::<_, EndpointError>(args.a + args.b)
        })
        .method("tick", move |_ctx, _: serde_json::Value| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::Relaxed);
                Ok::<_, EndpointError>(())
            }
        });
    let server = RpcServer::builder(transport.clone(), Target::new("bench").server("host1"))
        .endpoint(endpoint)
        .start()
        .await
        .unwrap();
    let client = RpcClient::new(transport.clone(), Target::new("bench"));
    let raw = raw_server();

    println!(
        "memory backend, {} worker threads, {:?} per figure",
        2, duration
    );
    for in_flight in [1usize, 64] {
        let raw_server = raw.clone();
        let raw = drive(in_flight, duration, move |i| {
            let raw_server = raw_server.clone();
            async move { raw_call(&raw_server, i).await }
        })
        .await;
        let c = client.clone();
        let ours = drive(in_flight, duration, move |i| {
            let c = c.clone();
            async move {
                let ctx = Context::new();
                let sum: i64 = c.call(&ctx, "add", &AddArgs { a: i, b: 1 }).await.unwrap();
                assert_eq!(sum, i + 1);
            }
        })
        .await;
        report(&format!("call, {in_flight} in flight"), &ours, &raw);
    }

    // Casts: publish as fast as one sender can, count what the server processed.
    let start = Instant::now();
    let ctx = Context::new();
    let mut sent = 0u64;
    while start.elapsed() < duration {
        for _ in 0..256 {
            client.cast(&ctx, "tick", &json!({})).await.unwrap();
        }
        sent += 256;
        // Keep the backlog bounded so the figure is end-to-end, not enqueue speed.
        while sent - casts_seen.load(Ordering::Relaxed) > 4096 {
            tokio::task::yield_now().await;
        }
    }
    while casts_seen.load(Ordering::Relaxed) < sent {
        tokio::task::yield_now().await;
    }
    let cast_rate = sent as f64 / start.elapsed().as_secs_f64();
    println!(
        "{:<28} {cast_rate:>10.0} /s   (published and processed)",
        "cast"
    );
    server.stop().await.unwrap();
}
