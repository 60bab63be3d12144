//! The fuzz target's body on stable: deterministic pseudo-random operation
//! sequences, plus every input of a local `fuzz/corpus/watcher_ops` (made by
//! `cargo fuzz`, not in git), through the same checks libFuzzer runs. `cargo
//! xtask ci` runs it on each backend.

#[allow(dead_code, clippy::all)]
#[path = "../../../fuzz/ops.rs"]
mod ops;

mod util;

#[test]
fn generated_operation_sequences_keep_every_promise() {
    let _serial = util::serial();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        // xorshift64*: the same inputs on every run.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    for case in 0..200 {
        let len = 8 + (next() % 120) as usize;
        let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        eprintln!("case {case}: {data:?}");
        ops::run(&data);
    }
}

#[test]
fn local_corpus_keeps_every_promise() {
    let _serial = util::serial();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/watcher_ops");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return; // no corpus here: the generated sequences above still ran
    };
    let mut files: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    files.sort();
    for f in files.iter().take(300) {
        ops::run(&std::fs::read(f).unwrap());
    }
}
