//! Where the tests find the example plugins, built by this crate's build script
//! (`example-plugins/build`).

use std::path::{Path, PathBuf};

/// The directory of every example plugin, in every language, each as `<job-type>.wasm`.
pub fn dir() -> &'static Path {
    Path::new(env!("JOBRUNNER_TEST_PLUGINS"))
}

/// A directory of the Rust examples alone: a runner serving it is ready in milliseconds.
pub fn rust_dir() -> &'static Path {
    Path::new(env!("JOBRUNNER_TEST_RUST_PLUGINS"))
}

/// The built plugin for `job_type`.
pub fn path(job_type: &str) -> PathBuf {
    dir().join(format!("{job_type}.wasm"))
}
