//! Where the tests find the example plugins: a directory holding `<job-type>.wasm` for every
//! example, built by this crate's build script (`example-plugins/build`).

use std::path::{Path, PathBuf};

/// The directory of built example plugins.
pub fn dir() -> &'static Path {
    Path::new(env!("JOBRUNNER_TEST_PLUGINS"))
}

/// The built plugin for `job_type`.
pub fn path(job_type: &str) -> PathBuf {
    dir().join(format!("{job_type}.wasm"))
}
