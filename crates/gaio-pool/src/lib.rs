//! gaio-pool: N watchers on N CPU-pinned threads, with pluggable load balancing
//! and SO_REUSEPORT acceptors.
//!
//! Not built yet: this crate is reserved for the pool (tracked as its own issue).
//! Until then, run one [`gaio_core::Watcher`] per thread and hand connections to
//! them with your own strategy, as Go gaio's README advises.
#![forbid(unsafe_code)]

pub use gaio_core;
