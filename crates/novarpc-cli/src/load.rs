//! The load driver: `concurrency` loops of one operation, until a deadline or
//! a message budget, recording latencies in an HDR histogram.

use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// When a run stops.
#[derive(Clone, Copy, Debug)]
pub enum Budget {
    Duration(Duration),
    Messages(u64),
}

/// What a run measured.
#[derive(Debug)]
pub struct Figure {
    pub operations: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latencies in microseconds.
    pub latency: Histogram<u64>,
}

impl Figure {
    pub fn rate(&self) -> f64 {
        self.operations as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

pub fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min at 2 significant digits: small enough to record into
    // from many tasks without thrashing caches.
    Histogram::new_with_bounds(1, 600_000_000, 2).expect("valid histogram bounds")
}

/// Runs `op` from `concurrency` loops; `progress` is bumped after each
/// operation. `op` returns whether the operation succeeded.
pub async fn drive<F, Fut>(
    concurrency: usize,
    budget: Budget,
    progress: Arc<AtomicU64>,
    op: F,
) -> Figure
where
    F: Fn(i64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let start = Instant::now();
    let next = Arc::new(AtomicI64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency.max(1) {
        let (op, next, errors, progress) =
            (op.clone(), next.clone(), errors.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let more = match budget {
                    Budget::Duration(d) => start.elapsed() < d,
                    Budget::Messages(n) => (i as u64) < n,
                };
                if !more {
                    break;
                }
                let t = Instant::now();
                if !op(i).await {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                latency.saturating_record(t.elapsed().as_micros() as u64);
                progress.fetch_add(1, Ordering::Relaxed);
            }
            latency
        }));
    }
    let mut latency = histogram();
    for task in tasks {
        latency
            .add(task.await.expect("a load task panicked"))
            .expect("same histogram bounds");
    }
    let elapsed = start.elapsed();
    Figure {
        operations: latency.len(),
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        latency,
    }
}
