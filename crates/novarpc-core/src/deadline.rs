//! Bounding a future in time without a timer when it needs none.
//!
//! A `tokio::time::Timeout` sets up a timer entry (the runtime's handle, a
//! deadline) even for a future that is ready at once, which most sends are
//! (an in-process queue, a broker whose socket takes the frame): a few
//! hundred instructions per message for nothing. These poll the future once
//! first and only then arm the timer.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use tokio::time::error::Elapsed;
use tokio::time::Instant;

/// `future`'s output, or `Elapsed` if `deadline` passes first.
pub(crate) async fn within_at<F: Future>(
    deadline: Instant,
    future: F,
) -> Result<F::Output, Elapsed> {
    let mut future = std::pin::pin!(future);
    if let Poll::Ready(output) = futures::poll!(future.as_mut()) {
        return Ok(output);
    }
    tokio::time::timeout_at(deadline, future).await
}

/// `future`'s output, or `Elapsed` if it takes longer than `limit` (counted
/// from its first poll).
pub(crate) async fn within<F: Future>(limit: Duration, future: F) -> Result<F::Output, Elapsed> {
    let mut future = std::pin::pin!(future);
    if let Poll::Ready(output) = futures::poll!(future.as_mut()) {
        return Ok(output);
    }
    tokio::time::timeout(limit, future).await
}
