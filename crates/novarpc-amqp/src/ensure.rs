use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// How often and how patiently to retry: exponential backoff with jitter from
/// `interval` up to `max_interval`, at most `max_retries` retries (`None`: forever).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// The first delay, and the least any delay can be.
    pub interval: Duration,
    /// The cap on the delay as it doubles (before jitter); taken as
    /// `interval` when smaller.
    pub max_interval: Duration,
    /// How many retries follow the first attempt; `None` retries forever.
    pub max_retries: Option<u32>,
}

impl Default for RetryPolicy {
    /// oslo's defaults: 1 s first, at most 30 s apart.
    fn default() -> Self {
        RetryPolicy {
            interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(30),
            max_retries: Some(3),
        }
    }
}

impl RetryPolicy {
    /// The same backoff, retrying for ever (for consumers that must come back).
    pub fn with_unlimited_retries(mut self) -> Self {
        self.max_retries = None;
        self
    }

    /// The delays between attempts.
    pub fn delays(&self) -> impl Iterator<Item = Duration> {
        let mut builder = ExponentialBuilder::new()
            .with_jitter()
            .with_factor(2.0)
            .with_min_delay(self.interval)
            .with_max_delay(self.max_interval.max(self.interval));
        builder = match self.max_retries {
            Some(n) => builder.with_max_times(n as usize),
            None => builder.without_max_times(),
        };
        builder.build()
    }
}

/// `ensure` gave up: the last error after `attempts` attempts.
#[derive(Debug)]
pub struct Exhausted<E> {
    /// How many attempts were made, the first one included.
    pub attempts: u32,
    /// The error of the last attempt.
    pub last_error: E,
}

/// Runs `operation` until it succeeds. After each failure, `on_error` is called
/// with the error and the attempt number (it may reset a connection, log, or
/// return `false` to give up at once); then `ensure` sleeps the policy's next
/// delay and tries again, until the policy's retries are spent.
pub async fn ensure<T, E, Op, Fut, OnError>(
    policy: &RetryPolicy,
    mut operation: Op,
    mut on_error: OnError,
) -> Result<T, Exhausted<E>>
where
    Op: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    OnError: FnMut(&E, u32) -> bool,
{
    // Made at the first failure: most operations succeed at once.
    let mut delays = None;
    let mut attempt = 1;
    loop {
        match operation(attempt).await {
            Ok(value) => return Ok(value),
            Err(error) => {
                let retry = on_error(&error, attempt);
                match delays.get_or_insert_with(|| policy.delays()).next() {
                    Some(delay) if retry => {
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                    _ => {
                        return Err(Exhausted {
                            attempts: attempt,
                            last_error: error,
                        })
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_then_gives_up_with_the_last_error() {
        let policy = RetryPolicy {
            interval: Duration::from_millis(10),
            max_interval: Duration::from_millis(40),
            max_retries: Some(3),
        };
        let mut seen = Vec::new();
        let result: Result<(), _> = ensure(
            &policy,
            |attempt| async move { Err::<(), _>(format!("fail {attempt}")) },
            |error, attempt| {
                seen.push((error.clone(), attempt));
                true
            },
        )
        .await;
        let exhausted = result.unwrap_err();
        assert_eq!(exhausted.attempts, 4);
        assert_eq!(exhausted.last_error, "fail 4");
        assert_eq!(seen.len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn succeeds_after_failures_and_stops_when_told() {
        let policy = RetryPolicy::default();
        let value = ensure(
            &policy,
            |attempt| async move {
                if attempt < 3 {
                    Err("not yet")
                } else {
                    Ok(attempt)
                }
            },
            |_, _| true,
        )
        .await
        .unwrap();
        assert_eq!(value, 3);
        let result = ensure(&policy, |_| async { Err::<(), _>("fatal") }, |_, _| false).await;
        assert_eq!(result.unwrap_err().attempts, 1);
    }

    #[test]
    fn delays_grow_and_are_capped() {
        let policy = RetryPolicy {
            interval: Duration::from_millis(100),
            max_interval: Duration::from_millis(300),
            max_retries: Some(6),
        };
        let delays: Vec<_> = policy.delays().collect();
        assert_eq!(delays.len(), 6);
        // Jitter adds up to one more min delay.
        assert!(delays
            .iter()
            .all(|d| *d >= Duration::from_millis(100) && *d <= Duration::from_millis(600)));
    }
}
