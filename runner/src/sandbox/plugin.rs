//! One plugin version: a compiled component, type-checked against the `job-handler` world,
//! ready to instantiate in microseconds.

use std::fmt;
use std::path::PathBuf;

use super::bindings::JobHandlerPre;
use super::host::GuestState;

/// A loaded plugin version. Cheap to share behind an `Arc`: jobs pin the version they started
/// with for as long as they run.
pub struct Plugin {
    pub(crate) job_type: String,
    pub(crate) pre: JobHandlerPre<GuestState>,
}

impl Plugin {
    /// The job type this plugin runs.
    pub fn job_type(&self) -> &str {
        &self.job_type
    }
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("job_type", &self.job_type)
            .finish_non_exhaustive()
    }
}

/// Why a plugin file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file name does not make a job type.
    #[error("{} does not name a job type: {reason}", path.display())]
    BadName {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Not a WebAssembly component, or Cranelift could not compile it.
    #[error("not a valid WebAssembly component: {0}")]
    Compile(String),
    /// A component, but not a `job-handler`: it imports something the sandbox does not
    /// provide, or lacks the `run` export.
    #[error("does not fit the job-handler world: {0}")]
    WrongWorld(String),
}
