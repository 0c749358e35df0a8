//! Peer RPC frameworks, measured the way `novarpc bench` measures novarpc
//! (fixed concurrency, a fixed duration, a 200-byte payload, client-side
//! latencies), so `scripts/bench-report` can print novarpc/peer ratios from
//! one run. Prints one JSON object.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use hdrhistogram::Histogram;
use tarpc::server::Channel;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Peer {
    /// tarpc's in-process channel transport (client and server in this
    /// process, as novarpc's memory backend).
    Tarpc,
    /// RustStream (ruststream-lapin) echo RPC on RabbitMQ over direct
    /// reply-to: a `#[subscriber]` with a reply, and a requester.
    Ruststream,
}

#[derive(Parser)]
struct Args {
    #[arg(value_enum)]
    peer: Peer,
    /// Calls in flight.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Payload bytes per call.
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// The broker (RustStream).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672")]
    url: String,
}

mod ruststream_echo {
    use ruststream_lapin::prelude::*;
    use serde::{Deserialize, Serialize};

    /// The request and the reply: the payload, echoed.
    #[derive(Debug, Deserialize, Serialize, Outgoing)]
    pub struct Echo {
        pub payload: String,
    }

    /// The queue lives as long as the benchmark's connection.
    #[subscriber(
        RabbitQueue::new("novarpc_peer_ruststream_echo").durable(false).exclusive(true),
        reply("novarpc_peer_ruststream_echo.unrouted")
    )]
    pub async fn echo(ask: &Echo) -> Echo {
        Echo {
            payload: ask.payload.clone(),
        }
    }

    pub fn app(url: &str) -> RustStream {
        RustStream::new(AppInfo::new("novarpc-peer-echo", "0.1.0")).with_broker(
            LapinBroker::new(url).declare_topology(true),
            |b| {
                b.include(echo)
                    .out_reply(Publish::default())
                    .transform(DirectReplyTo);
            },
        )
    }
}

#[tarpc::service]
trait Echo {
    async fn echo(payload: String) -> String;
}

#[derive(Clone)]
struct EchoServer;

impl Echo for EchoServer {
    async fn echo(self, _: tarpc::context::Context, payload: String) -> String {
        payload
    }
}

/// Runs `concurrency` loops of `call` for `duration`; returns the report.
async fn drive<F, Fut>(concurrency: usize, duration: Duration, call: F) -> Result<serde_json::Value>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (stop, errors, call) = (stop.clone(), errors.clone(), call.clone());
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).expect("3 significant digits");
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if call().await {
                    let _ = histogram.record(t.elapsed().as_micros() as u64);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            histogram
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Histogram::<u64>::new(3)?;
    for task in tasks {
        total.add(task.await?)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "operations": total.len(),
        "errors": errors.load(Ordering::Relaxed),
        "seconds": seconds,
        "rate": total.len() as f64 / seconds,
        "p50_us": total.value_at_quantile(0.5),
        "p99_us": total.value_at_quantile(0.99),
        "p999_us": total.value_at_quantile(0.999),
    }))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let duration = Duration::from_secs_f64(args.duration);
    let payload = "x".repeat(args.payload);
    let report = match args.peer {
        Peer::Tarpc => {
            let (client_transport, server_transport) = tarpc::transport::channel::unbounded();
            let server = tarpc::server::BaseChannel::with_defaults(server_transport);
            tokio::spawn(
                server
                    .execute(EchoServer.serve())
                    .for_each(|response| async move {
                        tokio::spawn(response);
                    }),
            );
            let client =
                EchoClient::new(tarpc::client::Config::default(), client_transport).spawn();
            drive(args.concurrency, duration, move || {
                let (client, payload) = (client.clone(), payload.clone());
                async move {
                    client
                        .echo(tarpc::context::current(), payload)
                        .await
                        .is_ok()
                }
            })
            .await?
        }
        Peer::Ruststream => {
            use ruststream::codec::{Codec, JsonCodec};
            use ruststream_lapin::prelude::*;
            let running = ruststream_echo::app(&args.url).start().await?;
            let connected = LapinBroker::new(args.url.as_str()).connect().await?;
            let requester = std::sync::Arc::new(connected.requester(LapinRequest::default()));
            let body = JsonCodec
                .encode(&ruststream_echo::Echo { payload })?
                .to_vec();
            let body = std::sync::Arc::new(body);
            let report = drive(args.concurrency, duration, move || {
                let (requester, body) = (requester.clone(), body.clone());
                async move {
                    let ask = ruststream::OutgoingMessage::new(
                        "novarpc_peer_ruststream_echo",
                        body.as_slice(),
                    );
                    requester
                        .request(ask, Duration::from_secs(10))
                        .await
                        .is_ok()
                }
            })
            .await?;
            running.shutdown().await?;
            report
        }
    };
    let mut report = report;
    report["peer"] = serde_json::json!(format!("{:?}", args.peer).to_lowercase());
    report["concurrency"] = serde_json::json!(args.concurrency);
    println!("{report}");
    Ok(())
}
