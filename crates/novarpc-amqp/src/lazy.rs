//! A value made on first use by many concurrent callers (the drivers' reply
//! queue and reply receiver).

use std::future::Future;

use tokio::sync::OnceCell;

/// The value in `cell`, made by `init` when it is first asked for.
///
/// Callers that come while it is being made wait on the cell, and only the
/// one making it holds `init`'s future, boxed: with `init` inline, each of
/// 10,000 calls made at once held its own copy of a large future.
pub async fn get_or_try_init_boxed<T, E, F>(
    cell: &OnceCell<T>,
    init: impl FnOnce() -> F,
) -> Result<&T, E>
where
    F: Future<Output = Result<T, E>>,
{
    if let Some(value) = cell.get() {
        return Ok(value);
    }
    cell.get_or_try_init(|| Box::pin(init())).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn makes_the_value_once() {
        let cell = OnceCell::new();
        let made = std::sync::atomic::AtomicUsize::new(0);
        let make = || async {
            made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::task::yield_now().await;
            Ok::<_, ()>("reply_1".to_owned())
        };
        let (a, b) = tokio::join!(
            get_or_try_init_boxed(&cell, make),
            get_or_try_init_boxed(&cell, make)
        );
        assert_eq!(
            (a, b),
            (Ok(&"reply_1".to_owned()), Ok(&"reply_1".to_owned()))
        );
        assert_eq!(made.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_failure_leaves_the_cell_empty() {
        let cell = OnceCell::<String>::new();
        assert_eq!(
            get_or_try_init_boxed(&cell, || async { Err("down") }).await,
            Err("down")
        );
        assert!(cell.get().is_none());
    }
}
