//! Runs `example-plugins/build` so that every test build has fresh plugins, rebuilding them
//! only when their sources (the SDK, the WIT contract, the examples) changed.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let root = root.canonicalize().expect("workspace root");
    for watched in ["example-plugins", "plugin-sdk", "wit"] {
        println!("cargo::rerun-if-changed={}", root.join(watched).display());
    }
    let output = Command::new(root.join("example-plugins/build"))
        // The outer build's flags are for the host, not for wasm32-wasip2, and under
        // `cargo clippy` the guests are still plainly built (and not rebuilt for it).
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CLIPPY_ARGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("example-plugins/build runs");
    if !output.status.success() {
        panic!(
            "example-plugins/build failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let dir = String::from_utf8(output.stdout).expect("utf-8 path");
    println!("cargo::rustc-env=JOBRUNNER_TEST_PLUGINS={}", dir.trim());
}
