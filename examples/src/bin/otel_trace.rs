//! One OpenTelemetry trace across an RPC: the caller's span and the
//! server's span share a trace id, exported to stdout.
//!
//! novarpc carries the W3C trace context in the request context
//! (`traceparent`, `tracestate`: keys oslo.messaging peers pass through
//! untouched), so any OpenTelemetry setup joins it: the caller injects its
//! current span into the context it calls with, the typed client continues
//! that trace (a new parent id per request), and the server extracts it as
//! the parent of its own span. This example runs both sides in one process
//! on the memory backend (`--config FILE` picks a broker instead) and prints
//! the spans as the stdout exporter writes them, then the trace ids it saw.
//!
//! For OTLP (Jaeger, Tempo, …), swap the stdout exporter for
//! `opentelemetry-otlp`'s; nothing else changes.

use std::sync::Arc;

use anyhow::{ensure, Result};
use clap::Parser;
use novarpc::{Context, EndpointError, RpcServer, Target};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use parking_lot::Mutex;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// A request context as an OpenTelemetry carrier (string values only).
struct Carrier<'a>(&'a mut Context);

impl Injector for Carrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value.into());
    }
}

struct ReadCarrier<'a>(&'a Context);

impl Extractor for ReadCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The OpenTelemetry trace id of the current `tracing` span.
fn current_trace_id() -> String {
    tracing::Span::current()
        .context()
        .span()
        .span_context()
        .trace_id()
        .to_string()
}

/// A small service: the scheduler picks a host.
#[novarpc::service(namespace = "scheduler", version = "1.0")]
pub trait Scheduler {
    /// The host to build `instance` on.
    async fn select_destination(
        &self,
        ctx: &Context,
        instance: String,
    ) -> Result<String, EndpointError>;
}

/// Records the trace id each request arrived with.
#[derive(Default)]
struct SchedulerManager {
    seen: Mutex<Vec<String>>,
}

impl Scheduler for Arc<SchedulerManager> {
    async fn select_destination(
        &self,
        ctx: &Context,
        instance: String,
    ) -> Result<String, EndpointError> {
        // The server's span continues the caller's trace.
        let parent = TraceContextPropagator::new().extract(&ReadCarrier(ctx));
        let span = tracing::info_span!("scheduler.select_destination", %instance);
        let _ = span.set_parent(parent);
        async {
            self.seen.lock().push(current_trace_id());
            Ok("compute1".to_owned())
        }
        .instrument(span)
        .await
    }
}

#[derive(Parser)]
struct Args {
    /// A novarpc TOML file (default: the memory backend).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(opentelemetry_stdout::SpanExporter::default())
        .build();
    let tracer = provider.tracer("novarpc-example");
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new(
            "info,novarpc_core=debug",
        ))
        .with(tracing_opentelemetry::layer().with_tracer(tracer));
    tracing::subscriber::set_global_default(subscriber)?;

    let config = match &args.config {
        Some(path) => novarpc::Config::from_file(path)?,
        None => novarpc::Config::memory(),
    };
    let transport = novarpc::connect(&config).await?;
    let manager = Arc::new(SchedulerManager::default());
    let server = RpcServer::builder(
        transport.clone(),
        Target::new("scheduler").server("scheduler1"),
    )
    .endpoint(manager.clone().into_endpoint())
    .start()
    .await?;

    let client = SchedulerClient::new(transport.clone(), Target::new("scheduler"));
    let root = tracing::info_span!("api.boot_instance");
    let caller_trace = async {
        // The caller's span into the request context.
        let mut ctx = Context::new();
        TraceContextPropagator::new()
            .inject_context(&tracing::Span::current().context(), &mut Carrier(&mut ctx));
        let host = client
            .select_destination(&ctx, "vm-1".to_owned())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tracing::info!(%host, "scheduled");
        anyhow::Ok(current_trace_id())
    }
    .instrument(root)
    .await?;

    server.stop().await?;
    transport.cleanup().await?;
    provider.shutdown()?;

    let seen = manager.seen.lock().clone();
    println!("caller trace id: {caller_trace}");
    println!("server trace ids: {seen:?}");
    ensure!(
        seen == [caller_trace.clone()],
        "the server's span is not in the caller's trace"
    );
    println!("one trace across the call: {caller_trace}");
    Ok(())
}
