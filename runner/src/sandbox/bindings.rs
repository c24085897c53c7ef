//! Host-side bindings for the `job-handler` world in `wit/`, generated at compile time.
#![allow(missing_docs, clippy::all)]

wasmtime::component::bindgen!({
    world: "job-handler",
    path: "../wit",
    imports: { default: async },
    exports: { default: async },
});

pub use jobrunner::plugin::host::Level;
pub use jobrunner::plugin::types::{Job as WitJob, JobError as WitJobError};
