//! Nothing but tests: `tests/resp.rs` drives the `resp-server` example (built
//! by `cargo test --workspace`) with the `redis` crate's client.
