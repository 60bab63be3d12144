//! Names for the platform groups the sources choose between, so each list of
//! operating systems is written once, here.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(gaio_kqueue)");
    println!("cargo::rustc-check-cfg=cfg(gaio_accept4)");
    println!("cargo::rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let kqueue = ["macos", "ios", "freebsd", "openbsd", "netbsd", "dragonfly"];
    // accept4 (flags set atomically with the accept); macOS and iOS lack it.
    let accept4 = [
        "linux",
        "android",
        "freebsd",
        "openbsd",
        "netbsd",
        "dragonfly",
    ];
    if kqueue.contains(&os.as_str()) {
        println!("cargo::rustc-cfg=gaio_kqueue");
    }
    if accept4.contains(&os.as_str()) {
        println!("cargo::rustc-cfg=gaio_accept4");
    }
}
