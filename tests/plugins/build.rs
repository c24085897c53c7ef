//! Runs `example-plugins/build` so that every test build has fresh plugins in every language,
//! rebuilding them only when their sources (the SDK, the WIT contract, the examples) changed;
//! and puts the Rust examples alone in a second directory, for runner processes that need no
//! other language (and should not spend seconds compiling the large Python and JavaScript
//! components).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let root = root.canonicalize().expect("workspace root");
    for watched in ["example-plugins", "plugin-sdk", "wit"] {
        println!("cargo::rerun-if-changed={}", root.join(watched).display());
    }
    let all = run(&root.join("example-plugins/build"), &[]);
    println!("cargo::rustc-env=JOBRUNNER_TEST_PLUGINS={}", all.trim());

    let rust = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("rust-plugins");
    std::fs::create_dir_all(&rust).expect("create the Rust plugin directory");
    run(&root.join("example-plugins/rust/build"), &[&rust]);
    println!(
        "cargo::rustc-env=JOBRUNNER_TEST_RUST_PLUGINS={}",
        rust.display()
    );
}

/// Runs a build script, failing the build with its output if it fails: its stdout.
fn run(script: &Path, args: &[&Path]) -> String {
    let output = Command::new(script)
        .args(args)
        // The outer build's flags are for the host, not for wasm32-wasip2, and under
        // `cargo clippy` the guests are still plainly built (and not rebuilt for it).
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CLIPPY_ARGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .unwrap_or_else(|e| panic!("{} runs: {e}", script.display()));
    if !output.status.success() {
        panic!(
            "{} failed ({}):\n{}{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8(output.stdout).expect("utf-8 output")
}
