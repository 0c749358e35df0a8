//! The load driver shared by the benchmarks.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// `--seconds N` from the command line (default 3): how long each figure runs.
pub fn seconds() -> Duration {
    let args: Vec<String> = std::env::args().collect();
    let secs = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(secs)
}

/// Operations per second and latencies (µs) of `in_flight` loops of `op`
/// running for `duration`.
pub struct Figure {
    pub rate: f64,
    pub latency: Histogram<u64>,
}

pub async fn drive<F, Fut>(in_flight: usize, duration: Duration, op: F) -> Figure
where
    F: Fn(i64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let op = op.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut latency =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 2).expect("histogram");
            let mut i = 0;
            while Instant::now() < deadline {
                let t = Instant::now();
                op(i).await;
                latency.saturating_record(t.elapsed().as_micros() as u64);
                i += 1;
            }
            done.fetch_add(i as u64, Ordering::Relaxed);
            latency
        }));
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 2).expect("histogram");
    for task in tasks {
        latency
            .add(task.await.expect("load task"))
            .expect("same histogram bounds");
    }
    Figure {
        rate: done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64(),
        latency,
    }
}

/// One line: novarpc's figure next to the raw client's.
pub fn report(name: &str, ours: &Figure, raw: &Figure) {
    println!(
        "{name:<26} novarpc {:>9.0}/s  raw {:>9.0}/s  ratio {:>5.2}  | p50 {:>5} vs {:>5} µs ({:.2}x)  p99 {:>6} vs {:>6} µs",
        ours.rate,
        raw.rate,
        ours.rate / raw.rate,
        ours.latency.value_at_quantile(0.5),
        raw.latency.value_at_quantile(0.5),
        ours.latency.value_at_quantile(0.5) as f64 / raw.latency.value_at_quantile(0.5).max(1) as f64,
        ours.latency.value_at_quantile(0.99),
        raw.latency.value_at_quantile(0.99),
    );
}
