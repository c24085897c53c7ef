//! Workers that run the example plugins in a real sandbox.

use std::sync::Arc;

use runner::plugins::Registry;
use runner::{Limits, Sandbox, SandboxConfig, WasmExecutor};

/// An executor for the example plugins `job_types`, built from the test build's plugin
/// directory.
pub fn executor(job_types: &[&str], config: SandboxConfig, limits: Limits) -> WasmExecutor {
    let sandbox = Arc::new(Sandbox::new(config).expect("sandbox"));
    let mut registry = Registry::default();
    for job_type in job_types {
        let plugin = sandbox
            .load(&test_plugins::path(job_type))
            .unwrap_or_else(|e| panic!("example plugin {job_type}: {e}"));
        registry.insert(plugin);
    }
    WasmExecutor::new(sandbox, Arc::new(registry), limits)
}
