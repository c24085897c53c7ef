//! The plugin directory: which job types this runner can run, and the plugin version that runs
//! each, kept in step with the directory while the runner runs.
//!
//! ```text
//!  plugins/<job-type>.wasm  (+ optional <job-type>.toml manifest)
//!     │ notify, debounced (watch)        ┌── artifact cache: <sha256>.cwasm per engine (cache)
//!     ▼                                  │
//!  reconcile (dir) ──changed type──> load (load): read → sha256 → cache / compile → world check
//!                                        │
//!                                        ▼
//!                   registry: swap per type, generation-checked (registry) ──> claim filter,
//!                                                                              executor
//! ```
//!
//! The file name is the job type. Hidden files, temp files and other extensions are ignored.
//! A file that fails to load is reported (log and `runner plugins`) and the last good version
//! of its type keeps serving; a deleted file stops new claims of its type while running jobs
//! finish on the version they started with.

mod cache;
mod dir;
mod load;
mod manifest;
mod presence;
mod registry;
pub mod schedules;
mod watch;

use std::path::PathBuf;

pub use cache::ArtifactCache;
pub use dir::{PluginDir, job_type_of};
pub use load::{Files, LoadError, Loader, Origin, Version};
pub use manifest::{ManifestError, ManifestSchedule, Policy, read as read_manifest};
pub use presence::Presence;
pub use registry::{Grants, PluginStatus, Registry, ServingVersion, Superseded};
pub use watch::{Watching, watch};

/// The plugin directory itself cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the plugin directory {}: {source}", path.display())]
pub struct PluginDirError {
    /// The directory.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}
