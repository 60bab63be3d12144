//! Drives a Watcher with byte-encoded operation sequences (see `../ops.rs`).
//!
//! Run: `cargo +nightly fuzz run watcher_ops` (from the repository root); set
//! `GAIO_BACKEND=uring` to fuzz the io_uring driver.
#![no_main]

#[path = "../ops.rs"]
mod ops;

libfuzzer_sys::fuzz_target!(|data: &[u8]| ops::run(data));
