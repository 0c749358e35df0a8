//! The load driver: `concurrency` loops of one operation, until a deadline or
//! a message budget, recording latencies in an HDR histogram.

use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// Records a loop's latency samples into its shard.
fn record(latency: &Mutex<Histogram<u64>>, samples: &[u32]) {
    let mut latency = latency
        .lock()
        .expect("a load task panicked while recording");
    for &sample in samples {
        latency.saturating_record(u64::from(sample));
    }
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
    F: Fn(i64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    // What every loop shares, behind one pointer: with 10,000 loops in
    // flight, a copy of each part per task would be measured as the
    // operation's memory.
    struct Shared<F> {
        op: F,
        start: Instant,
        budget: Budget,
        /// Operations claimed at once: one shared counter bumped per
        /// operation by every loop would cost more than a memory call.
        batch: i64,
        next: AtomicI64,
        errors: AtomicU64,
        progress: Arc<AtomicU64>,
        /// Latencies, sharded by loop: each loop keeps at most `FLUSH`
        /// samples of its own (a sample list that grew with the run was
        /// 1.3 MB at 10,000 in flight), then records them under one lock.
        latency: Vec<Mutex<Histogram<u64>>>,
    }
    const FLUSH: usize = 4;
    const SHARDS: usize = 8;
    let shared = Arc::new(Shared {
        op,
        start: Instant::now(),
        budget,
        batch: match budget {
            Budget::Messages(n) => (n / (concurrency.max(1) as u64 * 8)).clamp(1, 64) as i64,
            Budget::Duration(_) => 64,
        },
        next: AtomicI64::new(0),
        errors: AtomicU64::new(0),
        progress,
        latency: (0..SHARDS).map(|_| Mutex::new(histogram())).collect(),
    });
    let mut tasks = Vec::with_capacity(concurrency);
    for index in 0..concurrency.max(1) {
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            // A few raw samples, not a histogram per task: with 10,000
            // tasks in flight the histograms alone would weigh hundreds of MB.
            // Small: this task's future is measured with the operation's.
            let mut samples = [0u32; FLUSH];
            let mut held = 0u8;
            let shard = (index % SHARDS) as u8;
            let (mut i, mut end) = (0i64, 0i64);
            loop {
                if i == end {
                    i = shared.next.fetch_add(shared.batch, Ordering::Relaxed);
                    end = i + shared.batch;
                }
                let more = match shared.budget {
                    Budget::Duration(d) => shared.start.elapsed() < d,
                    Budget::Messages(n) => (i as u64) < n,
                };
                if !more {
                    break;
                }
                let t = Instant::now();
                if !(shared.op)(i).await {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
                samples[usize::from(held)] = t.elapsed().as_micros().min(u32::MAX as u128) as u32;
                held += 1;
                i += 1;
                if usize::from(held) == FLUSH {
                    record(&shared.latency[usize::from(shard)], &samples);
                    held = 0;
                    shared.progress.fetch_add(FLUSH as u64, Ordering::Relaxed);
                }
            }
            record(
                &shared.latency[usize::from(shard)],
                &samples[..usize::from(held)],
            );
        }));
    }
    for task in tasks {
        task.await.expect("a load task panicked");
    }
    let mut latency = histogram();
    for shard in &shared.latency {
        latency
            .add(&*shard.lock().expect("a load task panicked while recording"))
            .expect("histograms of the same bounds");
    }
    let elapsed = shared.start.elapsed();
    Figure {
        operations: latency.len(),
        errors: shared.errors.load(Ordering::Relaxed),
        elapsed,
        latency,
    }
}
