//! Pools of channels (0-9-1) or sender links (1.0) on deadpool. A driver
//! implements [`Manager`] for its channel type; the pool hands channels out,
//! recycles those still usable and drops broken ones.

pub use deadpool::managed::{
    Manager, Metrics, Object, Pool, PoolError, RecycleError, RecycleResult,
};

/// Builds a pool of at most `max_size` objects.
pub fn build<M: Manager>(manager: M, max_size: usize) -> Pool<M> {
    Pool::builder(manager)
        .max_size(max_size.max(1))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .expect("a pool with a runtime and a size always builds")
}
