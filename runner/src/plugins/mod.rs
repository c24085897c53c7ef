//! The plugin directory: which job types this runner can run, and the plugin version that runs
//! each. `plugins/<job-type>.wasm` is the layout; the file name is the job type.
//!
//! Today the directory is read once, at start-up (`runner run --plugins DIR`); the hot-reload
//! issue makes it live. A file that fails to load is reported and skipped: the runner serves
//! the job types that did load, and jobs of the others wait in the queue.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::sandbox::{Plugin, Sandbox};

/// The loaded plugins, by job type.
#[derive(Debug, Default)]
pub struct Registry {
    plugins: HashMap<String, Arc<Plugin>>,
}

impl Registry {
    /// The plugin for `job_type`, pinned for as long as the caller holds it.
    pub fn get(&self, job_type: &str) -> Option<Arc<Plugin>> {
        self.plugins.get(job_type).cloned()
    }

    /// Every job type with a plugin, sorted.
    pub fn job_types(&self) -> Vec<String> {
        let mut types: Vec<String> = self.plugins.keys().cloned().collect();
        types.sort();
        types
    }

    /// Adds `plugin`, replacing any plugin of the same job type.
    pub fn insert(&mut self, plugin: Plugin) {
        self.plugins
            .insert(plugin.job_type().to_owned(), Arc::new(plugin));
    }
}

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

/// Loads every `*.wasm` file in `dir` (compiling off the async runtime), logging each success
/// and each failure. Hidden files and other extensions (temp files, manifests) are skipped.
pub async fn load_dir(sandbox: &Arc<Sandbox>, dir: &Path) -> Result<Registry, PluginDirError> {
    let files = plugin_files(dir).map_err(|source| PluginDirError {
        path: dir.to_owned(),
        source,
    })?;
    let sandbox = Arc::clone(sandbox);
    let loaded = tokio::task::spawn_blocking(move || {
        // One file at a time: Cranelift already compiles each one on every core.
        let load = |path: PathBuf| {
            let started = Instant::now();
            (sandbox.load(&path), path, started.elapsed())
        };
        files.into_iter().map(load).collect::<Vec<_>>()
    });
    let mut registry = Registry::default();
    for (result, path, took) in loaded.await.expect("plugin loading does not panic") {
        let file = path.display();
        match result {
            Ok(plugin) => {
                tracing::info!(job_type = plugin.job_type(), %file, took_ms = took.as_millis() as u64,
                               "plugin loaded");
                registry.insert(plugin);
            }
            Err(error) => tracing::error!(%file, %error, "plugin not loaded"),
        }
    }
    Ok(registry)
}

/// The candidate plugin files in `dir`, sorted by name.
fn plugin_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.starts_with('.') && name.ends_with(".wasm") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
