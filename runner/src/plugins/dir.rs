//! [`PluginDir`]: keeps a [`Registry`] in step with a plugin directory.
//!
//! A reconcile is level-triggered: it lists the directory, compares each job type's files
//! with the fingerprints it last loaded, and loads what changed, loads what is new and
//! removes what is gone. Events only say when to look, so a missed or coalesced event, a
//! symlink swap or an editor's odd save sequence all end in the same state.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

use super::PluginDirError;
use super::load::{Files, Fingerprint, LoadError, Loader};
use super::registry::{Registry, Superseded};

/// The fingerprints of a job type's files at the last load that started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    wasm: Fingerprint,
    manifest: Option<Fingerprint>,
}

/// A plugin directory and the registry that mirrors it.
#[derive(Debug)]
pub struct PluginDir {
    dir: PathBuf,
    loader: Arc<Loader>,
    registry: Arc<Registry>,
    /// Per job type in the directory: the fingerprints its last load started with, or
    /// `None` when it must be loaded again whatever they are.
    seen: Mutex<HashMap<String, Option<Seen>>>,
}

impl PluginDir {
    /// The directory `dir`, loaded by `loader` into an empty registry (call
    /// [`PluginDir::load_all`] next).
    pub fn new(dir: PathBuf, loader: Arc<Loader>) -> Arc<Self> {
        Arc::new(Self {
            dir,
            loader,
            registry: Arc::default(),
            seen: Mutex::default(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The registry this directory fills.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The loader.
    pub fn loader(&self) -> &Arc<Loader> {
        &self.loader
    }

    /// Loads every plugin in the directory and waits until all loads have finished, then
    /// cleans the artifact cache.
    pub async fn load_all(self: &Arc<Self>) -> Result<(), PluginDirError> {
        for load in self.reconcile(&HashSet::new())? {
            load.await.expect("plugin loads do not panic");
        }
        self.clean_cache().await;
        Ok(())
    }

    /// Brings the registry in line with the directory, skipping job types in `busy` (files
    /// a writer still has open). Returns the loads it started.
    pub fn reconcile(
        self: &Arc<Self>,
        busy: &HashSet<String>,
    ) -> Result<Vec<JoinHandle<()>>, PluginDirError> {
        let present = scan(&self.dir).map_err(|source| PluginDirError {
            path: self.dir.clone(),
            source,
        })?;
        let mut seen = self.seen.lock().expect("plugin dir lock");
        let gone: Vec<String> = seen
            .keys()
            .filter(|t| !present.contains_key(*t) && !busy.contains(*t))
            .cloned()
            .collect();
        for job_type in gone {
            seen.remove(&job_type);
            let generation = self.registry.begin(&job_type);
            if let Ok(Some(version)) = self.registry.remove(&job_type, generation) {
                tracing::info!(job_type, sha256 = %version.sha256,
                               "plugin removed; its jobs wait in the queue until it is back");
            }
        }
        let mut loads = Vec::new();
        for (job_type, files) in present {
            if busy.contains(&job_type) || seen.get(&job_type) == Some(&Some(files)) {
                continue;
            }
            seen.insert(job_type.clone(), Some(files));
            let generation = self.registry.begin(&job_type);
            loads.push(tokio::spawn(Arc::clone(self).load(job_type, generation)));
        }
        Ok(loads)
    }

    /// Removes cached artifacts no serving version uses.
    pub async fn clean_cache(&self) {
        let Some(cache) = self.loader.cache().cloned() else {
            return;
        };
        let live = self.registry.live_hashes();
        match tokio::task::spawn_blocking(move || cache.clean(&live)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(removed)) => tracing::info!(removed, "removed stale compiled plugins"),
            Ok(Err(error)) => tracing::warn!(%error, "cannot clean the compiled-plugin cache"),
            Err(panic) => std::panic::resume_unwind(panic.into_panic()),
        }
    }

    async fn load(self: Arc<Self>, job_type: String, generation: u64) {
        let files = Files::of(&self.dir, &job_type);
        let file = files.wasm.display().to_string();
        match self.loader.load(&job_type, files).await {
            Err(LoadError::Changing { .. }) => {
                // Forget the fingerprint, so that the writer's next event loads the whole file.
                if let Some(seen) = self
                    .seen
                    .lock()
                    .expect("plugin dir lock")
                    .get_mut(&job_type)
                {
                    *seen = None;
                }
                tracing::debug!(job_type, file, "plugin file is still being written");
            }
            Ok(version) => {
                let sha256 = Arc::clone(&version.sha256);
                let from = version.origin.as_str();
                let took_ms = version.load_time.as_secs_f64() * 1e3;
                if let Ok(replaced) = self.registry.install(&job_type, generation, version) {
                    tracing::info!(job_type, file, %sha256, from, took_ms,
                                   replaced = replaced.as_deref(), "plugin loaded");
                }
            }
            Err(error) => match self.registry.fail(&job_type, generation, &error) {
                Ok(Some(serving)) => tracing::error!(
                    job_type, file, %error, %serving,
                    "plugin not loaded; the previous version keeps serving"
                ),
                Ok(None) => tracing::error!(
                    job_type, file, %error,
                    "plugin not loaded; its jobs wait in the queue"
                ),
                Err(Superseded) => {}
            },
        }
    }
}

/// The job types in `dir` (`<job-type>.wasm`, not hidden) and their files' fingerprints.
fn scan(dir: &Path) -> std::io::Result<HashMap<String, Seen>> {
    let mut types = HashMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(job_type) = job_type_of(&path) else {
            continue;
        };
        // Gone since the listing, or a directory: not a plugin (yet).
        let Ok(wasm) = Fingerprint::of(&path) else {
            continue;
        };
        if path.is_dir() {
            continue;
        }
        let manifest = Fingerprint::of(&Files::of(dir, &job_type).manifest).ok();
        types.insert(job_type, Seen { wasm, manifest });
    }
    Ok(types)
}

/// The job type a plugin directory entry belongs to: `<job-type>.wasm` or `<job-type>.toml`,
/// not hidden. `None` for everything else (temp files, editor backups, the cache).
pub fn job_type_of(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    if name.starts_with('.') {
        return None;
    }
    let stem = name
        .strip_suffix(".wasm")
        .or_else(|| name.strip_suffix(".toml"))?;
    crate::job::validate_job_type(stem).ok()?;
    Some(stem.to_owned())
}
