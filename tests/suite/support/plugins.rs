//! Workers that run the example plugins in a real sandbox.

use std::sync::Arc;

use runner::plugins::{Files, Loader, Policy, Registry};
use runner::{Sandbox, SandboxConfig, WasmExecutor};

/// An executor for the example plugins `job_types`, built from the test build's plugin
/// directory, each run under `policy`.
pub fn executor(job_types: &[&str], config: SandboxConfig, policy: Policy) -> WasmExecutor {
    let sandbox = Arc::new(Sandbox::new(config).expect("sandbox"));
    let loader = Loader::new(Arc::clone(&sandbox), None, policy);
    let registry = Arc::new(Registry::default());
    for job_type in job_types {
        let files = Files::of(test_plugins::dir(), job_type);
        let version = loader
            .load_blocking(job_type, files)
            .unwrap_or_else(|e| panic!("example plugin {job_type}: {e}"));
        let generation = registry.begin(job_type);
        registry.install(job_type, generation, version).unwrap();
    }
    WasmExecutor::new(sandbox, registry)
}
