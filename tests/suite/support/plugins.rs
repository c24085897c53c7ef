//! Workers that run the example plugins in a real sandbox.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use runner::plugins::{Files, Loader, Policy, Registry};
use runner::secrets::{SecretSource, SecretTable, Secrets};
use runner::{
    Limits, Queue, RetryPolicy, Sandbox, SandboxConfig, WasmExecutor, Worker, WorkerConfig,
    WorkerHandle,
};

use super::driver;

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

/// A worker running `job_types` from the example plugins in a sandbox set up by `config`,
/// under `limits`, applying the published tenant policy.
pub async fn tenant_worker(
    queue: &Queue,
    job_types: &[&str],
    config: SandboxConfig,
    limits: Limits,
) -> WorkerHandle {
    secret_worker(queue, job_types, config, limits, Secrets::default()).await
}

/// Secrets named `(name, value)`, each read from a file written into `dir` (as a mounted
/// secret would be).
pub fn file_secrets(dir: &std::path::Path, secrets: &[(&str, &str)]) -> Secrets {
    let table: SecretTable = secrets
        .iter()
        .map(|(name, value)| {
            let file = dir.join(name);
            std::fs::write(&file, value).unwrap();
            ((*name).to_owned(), SecretSource::File(file))
        })
        .collect();
    Secrets::read(&table, &Default::default()).unwrap()
}

/// [`tenant_worker`], its guests granted what `limits` names of `secrets`.
pub async fn secret_worker(
    queue: &Queue,
    job_types: &[&str],
    config: SandboxConfig,
    limits: Limits,
    secrets: Secrets,
) -> WorkerHandle {
    let tenants = Arc::new(ArcSwap::from_pointee(
        driver(queue).tenants().await.unwrap(),
    ));
    let policy = Policy::new(limits, RetryPolicy::default());
    let executor = executor(job_types, config, policy).with_tenants(tenants);
    executor.sandbox().set_secrets(secrets);
    let config = WorkerConfig {
        poll_interval: Duration::from_millis(20),
        keep_completed: Some(Duration::from_secs(3600)),
        ..WorkerConfig::default()
    };
    Worker::new(queue.clone(), executor, config).start()
}

/// A plugin directory of links to the test plugins of `job_types`.
pub fn linked(job_types: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for job_type in job_types {
        let link = dir.path().join(format!("{job_type}.wasm"));
        std::os::unix::fs::symlink(test_plugins::path(job_type), link).unwrap();
    }
    dir
}
