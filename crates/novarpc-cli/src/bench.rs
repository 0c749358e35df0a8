//! `novarpc bench`: a load generator in the spirit of oslo.messaging's
//! simulator, with a raw-client baseline measured in the same run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use novarpc::{
    Context, Endpoint, EndpointError, NotificationListener, Notifier, Priority, RpcClient,
    RpcServer, Target, Transport,
};
use serde::{Deserialize, Serialize};

use crate::load::{drive, Budget, Figure};
use crate::raw::{amqp_uri, RawChannelEcho, RawLapinCasts, RawLapinRpc};
use crate::raw_amqp1::{RawAmqp1Casts, RawAmqp1Rpc};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Call,
    Cast,
    Fanout,
    Notify,
}

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub mode: Mode,
    pub concurrency: usize,
    pub budget: Budget,
    pub payload_bytes: usize,
    pub servers: usize,
    pub client_only: bool,
    pub server_only: bool,
    pub topic: String,
    pub baseline_raw: bool,
    pub progress: bool,
    /// The whole run (connecting, the raw baseline, the load, waiting for
    /// deliveries, stopping) fails after this long instead of hanging.
    pub deadline: Duration,
}

impl BenchOptions {
    /// The deadline when none is given: room for a slow broker, but a stuck
    /// run still fails within minutes.
    pub fn default_deadline(budget: Budget, baseline_raw: bool) -> Duration {
        let runs = if baseline_raw { 2 } else { 1 };
        match budget {
            Budget::Duration(d) => d * 2 * runs + Duration::from_secs(120),
            Budget::Messages(_) => Duration::from_secs(600),
        }
    }
}

/// What a run is doing, so a run past its deadline can say where it stuck.
#[derive(Clone, Default)]
struct Phase(Arc<parking_lot::Mutex<&'static str>>);

impl Phase {
    fn set(&self, phase: &'static str) {
        tracing::debug!(phase, "bench");
        *self.0.lock() = phase;
    }

    fn get(&self) -> &'static str {
        *self.0.lock()
    }
}

#[derive(Serialize, Deserialize)]
struct Payload {
    payload: String,
}

/// One side's figures.
#[derive(Debug, Serialize)]
pub struct Stats {
    pub operations: u64,
    pub errors: u64,
    pub seconds: f64,
    /// Operations completed per second by the client.
    pub rate: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// Messages the in-process servers received per second, end to end
    /// (casts, fanout, notifications).
    pub delivered_rate: Option<f64>,
}

impl Stats {
    fn new(figure: &Figure, delivered_rate: Option<f64>) -> Self {
        let q = |q: f64| figure.latency.value_at_quantile(q);
        Stats {
            operations: figure.operations,
            errors: figure.errors,
            seconds: figure.elapsed.as_secs_f64(),
            rate: figure.rate(),
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: figure.latency.max(),
            delivered_rate,
        }
    }

    /// The figure to compare: end-to-end delivery where there is one.
    fn throughput(&self) -> f64 {
        self.delivered_rate.unwrap_or(self.rate)
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub backend: String,
    pub mode: Mode,
    pub concurrency: usize,
    pub payload_bytes: usize,
    pub servers: usize,
    pub novarpc: Stats,
    pub raw: Option<Stats>,
    /// The raw client used, or why there is no baseline.
    pub raw_client: String,
    /// novarpc's throughput over raw's.
    pub ratio: Option<f64>,
    /// novarpc's p50 latency over raw's.
    pub p50_ratio: Option<f64>,
    pub peak_rss_mb: f64,
    /// Peak RSS minus RSS just before the load started (after connecting and
    /// starting servers): what the operations in flight cost.
    pub rss_growth_mb: f64,
}

/// Resident memory now and at its peak, in MB (Linux `/proc/self/status`).
pub fn memory_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn progress_bar(
    options: &BenchOptions,
    label: &str,
    progress: Arc<AtomicU64>,
) -> Option<tokio::task::JoinHandle<()>> {
    if !options.progress {
        return None;
    }
    let bar = match options.budget {
        Budget::Messages(n) => indicatif::ProgressBar::new(n),
        Budget::Duration(_) => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>9} {spinner} [{elapsed_precise}] {wide_bar} {pos} msgs ({per_sec})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(label.to_owned());
    Some(tokio::spawn(async move {
        loop {
            bar.set_position(progress.load(Ordering::Relaxed));
            tokio::time::sleep(Duration::from_millis(100)).await;
            if Arc::strong_count(&progress) == 1 {
                bar.finish_and_clear();
                return;
            }
        }
    }))
}

async fn wait_for(received: &AtomicU64, expected: u64, started: Instant) -> Option<f64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Some(received.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

struct ServerSide {
    servers: Vec<RpcServer>,
    listener: Option<tokio::task::JoinHandle<()>>,
    received: Arc<AtomicU64>,
}

async fn start_servers(transport: &Transport, options: &BenchOptions) -> Result<ServerSide> {
    let received = Arc::new(AtomicU64::new(0));
    let mut servers = Vec::new();
    let mut listener = None;
    if options.mode == Mode::Notify {
        let mut notifications = NotificationListener::start(
            transport,
            &[Target::new(format!("{}_notifications", options.topic))],
            &[Priority::Info],
            None,
        )
        .await?;
        let received = received.clone();
        listener = Some(tokio::spawn(async move {
            while notifications.next().await.is_some() {
                received.fetch_add(1, Ordering::Relaxed);
            }
        }));
    } else {
        for i in 0..options.servers.max(1) {
            let counter = received.clone();
            let endpoint = Endpoint::new()
                .method("echo", |_ctx, p: Payload| async move {
                    Ok::<_, EndpointError>(p.payload)
                })
                .method("sink", move |_ctx, _: Payload| {
                    let counter = counter.clone();
                    async move {
                        counter.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, EndpointError>(())
                    }
                });
            servers.push(
                RpcServer::builder(
                    transport.clone(),
                    Target::new(&options.topic).server(format!("bench-{i}")),
                )
                .endpoint(endpoint)
                .executor_size(256.max(options.concurrency))
                .start()
                .await?,
            );
        }
    }
    Ok(ServerSide {
        servers,
        listener,
        received,
    })
}

/// Stops the bench servers and removes their queues.
async fn stop_servers(
    side: ServerSide,
    transport: &Transport,
    options: &BenchOptions,
) -> Result<()> {
    for server in side.servers {
        server.stop().await?;
    }
    if let Some(listener) = side.listener {
        listener.abort();
    }
    let target = Target::new(&options.topic);
    for i in 0..options.servers.max(1) {
        let _ = transport
            .delete_target(&target.clone().server(format!("bench-{i}")))
            .await;
    }
    Ok(())
}

/// Serves the bench topic until interrupted (`--server-only`).
pub async fn serve(transport: Transport, options: &BenchOptions) -> Result<u64> {
    let side = start_servers(&transport, options).await?;
    let received = side.received.clone();
    tokio::signal::ctrl_c().await?;
    stop_servers(side, &transport, options).await?;
    Ok(received.load(Ordering::Relaxed))
}

/// Runs the benchmark: raw baseline first (if asked), then novarpc. A run
/// that has not finished by `options.deadline` fails, naming the phase it
/// was stuck in.
pub async fn run(config: &novarpc::Config, options: &BenchOptions) -> Result<Report> {
    let phase = Phase::default();
    match tokio::time::timeout(options.deadline, run_phases(config, options, &phase)).await {
        Ok(report) => report,
        Err(_) => anyhow::bail!(
            "the bench did not finish within its deadline of {:?} (stuck {}); see --deadline",
            options.deadline,
            phase.get()
        ),
    }
}

async fn run_phases(
    config: &novarpc::Config,
    options: &BenchOptions,
    phase: &Phase,
) -> Result<Report> {
    phase.set("connecting");
    let client_transport = novarpc::connect(config).await?;
    let backend = client_transport.backend().to_owned();
    // The memory backend only reaches itself; brokers get a connection per
    // side, and a client-only run none for servers (its memory is measured).
    let server_transport = if client_transport.capabilities().cross_process && !options.client_only
    {
        novarpc::connect(config).await?
    } else {
        client_transport.clone()
    };
    phase.set("starting servers");
    let side = if options.client_only {
        None
    } else {
        Some(start_servers(&server_transport, options).await?)
    };
    let payload = "x".repeat(options.payload_bytes);

    let (raw, raw_client) = if options.baseline_raw {
        phase.set("running the raw baseline");
        run_raw(config, &backend, options, &payload).await?
    } else {
        (None, "not asked for (--baseline raw)".to_owned())
    };

    let client = RpcClient::new(client_transport.clone(), Target::new(&options.topic));
    let notifier = Notifier::new(client_transport.clone(), "novarpc.bench")
        .topics([format!("{}_notifications", options.topic)]);
    let received = side.as_ref().map(|s| s.received.clone());
    if let Some(received) = &received {
        received.store(0, Ordering::Relaxed);
    }
    let progress = Arc::new(AtomicU64::new(0));
    let bar = progress_bar(options, "novarpc", progress.clone());
    phase.set("running the novarpc load");
    let (rss_before, _) = memory_mb();
    let started = Instant::now();
    // One shared bundle: cloning a client, a notifier and the payload for
    // every operation would be measured as part of the call.
    let shared = Arc::new((client, notifier, Payload { payload }));
    // One closure per mode: a task holds its operation's future, sized by
    // the largest of the futures it could hold, and 10,000 of them are
    // measured.
    macro_rules! drive_op {
        (|$client:ident, $notifier:ident, $ctx:ident, $args:ident| $op:expr) => {
            drive(options.concurrency, options.budget, progress, move |_| {
                let shared = shared.clone();
                async move {
                    let ($client, $notifier, $args) = &*shared;
                    let _ = ($client, $notifier);
                    let $ctx = Context::new();
                    let result = $op.await;
                    if let Err(error) = &result {
                        tracing::debug!(%error, "a bench operation failed");
                    }
                    result.is_ok()
                }
            })
            .await
        };
    }
    let figure = match options.mode {
        Mode::Call => {
            drive_op!(|client, notifier, ctx, args| client.call::<String, _>(&ctx, "echo", args))
        }
        Mode::Cast => drive_op!(|client, notifier, ctx, args| client.cast(&ctx, "sink", args)),
        Mode::Fanout => {
            drive_op!(|client, notifier, ctx, args| client.fanout_cast(&ctx, "sink", args))
        }
        Mode::Notify => {
            drive_op!(|client, notifier, ctx, args| notifier.info(&ctx, "bench.event", args))
        }
    };
    if let Some(bar) = bar {
        let _ = bar.await;
    }
    phase.set("waiting for the servers to receive what was sent");
    let delivered_rate = match (&received, options.mode) {
        (Some(_), Mode::Call) | (None, _) => None,
        (Some(received), mode) => {
            let per_message = if mode == Mode::Fanout {
                options.servers.max(1) as u64
            } else {
                1
            };
            wait_for(
                received,
                (figure.operations - figure.errors) * per_message,
                started,
            )
            .await
        }
    };
    let novarpc = Stats::new(&figure, delivered_rate);

    phase.set("stopping the servers");
    if let Some(side) = side {
        stop_servers(side, &server_transport, options).await?;
    }
    phase.set("closing the transports");
    client_transport.cleanup().await?;
    server_transport.cleanup().await?;

    let (_, peak) = memory_mb();
    let ratio = raw
        .as_ref()
        .map(|r| novarpc.throughput() / r.throughput().max(1e-9));
    let p50_ratio = raw
        .as_ref()
        .map(|r| novarpc.p50_us as f64 / r.p50_us.max(1) as f64);
    Ok(Report {
        backend,
        mode: options.mode,
        concurrency: options.concurrency,
        payload_bytes: options.payload_bytes,
        servers: options.servers,
        novarpc,
        raw,
        raw_client,
        ratio,
        p50_ratio,
        peak_rss_mb: peak,
        rss_growth_mb: (peak - rss_before).max(0.0),
    })
}

/// Drives `op` over the payload with a progress bar: the raw half of a run.
async fn drive_raw<F, Fut>(options: &BenchOptions, body: Vec<u8>, op: F) -> crate::load::Figure
where
    F: Fn(Arc<Vec<u8>>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let progress = Arc::new(AtomicU64::new(0));
    let bar = progress_bar(options, "raw", progress.clone());
    let body = Arc::new(body);
    let figure = drive(options.concurrency, options.budget, progress, move |_| {
        op(body.clone())
    })
    .await;
    if let Some(bar) = bar {
        let _ = bar.await;
    }
    figure
}

/// Raw casts, counted as the broker delivers them.
async fn raw_casts<F, Fut>(
    options: &BenchOptions,
    body: Vec<u8>,
    received: Arc<AtomicU64>,
    cast: F,
) -> Stats
where
    F: Fn(Arc<Vec<u8>>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let started = Instant::now();
    let figure = drive_raw(options, body, cast).await;
    let delivered = wait_for(&received, figure.operations - figure.errors, started).await;
    Stats::new(&figure, delivered)
}

async fn run_raw(
    config: &novarpc::Config,
    backend: &str,
    options: &BenchOptions,
    payload: &str,
) -> Result<(Option<Stats>, String)> {
    let body = payload.as_bytes().to_vec();
    let url = config.common().transport_url.as_ref();
    match (backend, options.mode) {
        ("memory", Mode::Call) => {
            let raw = Arc::new(RawChannelEcho::start());
            let figure = drive_raw(options, body, move |body| {
                let raw = raw.clone();
                async move { raw.call(body.to_vec()).await }
            })
            .await;
            Ok((
                Some(Stats::new(&figure, None)),
                "tokio mpsc + oneshot".into(),
            ))
        }
        ("kombu", Mode::Call) => {
            let raw = RawLapinRpc::start(&amqp_uri(url))
                .await
                .context("raw lapin baseline")?;
            let rpc = raw.clone();
            let figure = drive_raw(options, body, move |body| {
                let rpc = rpc.clone();
                async move { rpc.call(&body).await }
            })
            .await;
            raw.close().await;
            Ok((
                Some(Stats::new(&figure, None)),
                "lapin (hand-written RPC)".into(),
            ))
        }
        ("kombu", Mode::Cast) => {
            let confirms = config
                .section::<novarpc::kombu::KombuOptions>("kombu")?
                .publisher_confirms;
            let raw = RawLapinCasts::start(&amqp_uri(url), confirms)
                .await
                .context("raw lapin baseline")?;
            let casts = raw.clone();
            let stats = raw_casts(options, body, raw.received.clone(), move |body| {
                let casts = casts.clone();
                async move { casts.cast(&body).await }
            })
            .await;
            raw.close().await;
            let label = if confirms {
                "lapin, confirmed publishes"
            } else {
                "lapin, unconfirmed publishes"
            };
            Ok((Some(stats), label.into()))
        }
        ("qpid", Mode::Call) => {
            let raw = RawAmqp1Rpc::start(url)
                .await
                .context("raw fe2o3-amqp baseline")?;
            let rpc = raw.clone();
            let figure = drive_raw(options, body, move |body| {
                let rpc = rpc.clone();
                async move { rpc.call(&body).await }
            })
            .await;
            raw.close().await;
            Ok((
                Some(Stats::new(&figure, None)),
                "fe2o3-amqp (hand-written RPC)".into(),
            ))
        }
        ("qpid", Mode::Cast) => {
            let confirms = config
                .section::<novarpc::qpid::QpidOptions>("qpid")?
                .publisher_confirms;
            let raw = RawAmqp1Casts::start(url, confirms)
                .await
                .context("raw fe2o3-amqp baseline")?;
            let casts = raw.clone();
            let stats = raw_casts(options, body, raw.received.clone(), move |body| {
                let casts = casts.clone();
                async move { casts.cast(&body).await }
            })
            .await;
            raw.close().await;
            let label = if confirms {
                "fe2o3-amqp, unsettled sends (accepted)"
            } else {
                "fe2o3-amqp, pre-settled sends"
            };
            Ok((Some(stats), label.into()))
        }
        (backend, mode) => Ok((
            None,
            format!("no raw baseline for {mode:?} on the {backend} backend"),
        )),
    }
}

fn ms(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1}ms", us as f64 / 1000.0)
    } else {
        format!("{:.2}ms", us as f64 / 1000.0)
    }
}

/// The human-readable report.
pub fn print(report: &Report, options: &BenchOptions) {
    let duration = match options.budget {
        Budget::Duration(d) => format!("{:.1} s", d.as_secs_f64()),
        Budget::Messages(n) => format!("{n} messages"),
    };
    println!(
        "novarpc bench: {:?} on {}, {} in flight, {}-byte payload, {} server(s), {duration}",
        report.mode, report.backend, report.concurrency, report.payload_bytes, report.servers
    );
    println!(
        "{:<10} {:>11} {:>11} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "", "msgs/s", "delivered/s", "p50", "p90", "p99", "p99.9", "errors"
    );
    let row = |name: &str, s: &Stats| {
        println!(
            "{:<10} {:>11.0} {:>11} {:>9} {:>9} {:>9} {:>9} {:>7}",
            name,
            s.rate,
            s.delivered_rate
                .map_or("-".to_owned(), |r| format!("{r:.0}")),
            ms(s.p50_us),
            ms(s.p90_us),
            ms(s.p99_us),
            ms(s.p999_us),
            s.errors
        )
    };
    row("novarpc", &report.novarpc);
    match &report.raw {
        Some(raw) => {
            row("raw", raw);
            println!(
                "novarpc/raw: throughput {:.2}x, p50 latency {:.2}x   (raw: {})",
                report.ratio.unwrap_or_default(),
                report.p50_ratio.unwrap_or_default(),
                report.raw_client
            );
        }
        None => println!("raw baseline: {}", report.raw_client),
    }
    println!(
        "peak RSS {:.1} MB (grew {:.1} MB during the run)",
        report.peak_rss_mb, report.rss_growth_mb
    );
}
