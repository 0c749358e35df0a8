//! Bounding a future in time without a timer when it needs none.
//!
//! A `tokio::time::Timeout` sets up a timer entry (the runtime's handle, a
//! deadline) even for a future that is ready at once, which most sends are
//! (an in-process queue, a broker whose socket takes the frame): a few
//! hundred instructions per message for nothing. [`Within`] polls its
//! future first and arms the timer only when that future has to wait; the
//! timer is then boxed, so a call's future (which holds one for its send)
//! is not 112 bytes larger for a timer it seldom needs.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The deadline passed before the future finished.
#[derive(Debug)]
pub(crate) struct Elapsed;

/// When a [`Within`] gives up.
enum Limit {
    At(Instant),
    /// Counted from the first poll that has to wait.
    After(Duration),
}

pin_project_lite::pin_project! {
    /// A future bounded in time: see the module's documentation.
    pub(crate) struct Within<F> {
        #[pin]
        future: F,
        sleep: Option<Pin<Box<Sleep>>>,
        limit: Limit,
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        let limit = &*this.limit;
        let sleep = this.sleep.get_or_insert_with(|| {
            Box::pin(tokio::time::sleep_until(match *limit {
                Limit::At(deadline) => deadline,
                Limit::After(limit) => Instant::now() + limit,
            }))
        });
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// `future`'s output, or `Elapsed` if `deadline` passes first.
pub(crate) fn within_at<F: Future>(deadline: Instant, future: F) -> Within<F> {
    Within {
        future,
        sleep: None,
        limit: Limit::At(deadline),
    }
}

/// `future`'s output, or `Elapsed` if it waits longer than `limit`.
pub(crate) fn within<F: Future>(limit: Duration, future: F) -> Within<F> {
    Within {
        future,
        sleep: None,
        limit: Limit::After(limit),
    }
}
