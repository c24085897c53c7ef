//! The load pipeline for one job type, off the async runtime: read the manifest and the
//! component → sha256 → compiled-artifact cache → compile if needed (bounded) → check the
//! `job-handler` world → a [`Version`] ready to serve.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::component::Component;

use super::cache::ArtifactCache;
use super::manifest::{self, ManifestError, Policy};
use crate::sandbox::{Plugin, PluginError, Sandbox};

/// One loaded version of a plugin: what runs its jobs, and what `runner plugins` shows.
#[derive(Debug)]
pub struct Version {
    /// The compiled, type-checked component; shared with the attempts running it.
    pub plugin: Arc<Plugin>,
    /// The sha256 of the `.wasm` file, hex: the version's identity in logs and error history.
    pub sha256: Arc<str>,
    /// Limits and retry policy, from the manifest over the runner's settings.
    pub policy: Policy,
    /// The file it was loaded from.
    pub source: PathBuf,
    /// When it was loaded.
    pub loaded_at: DateTime<Utc>,
    /// How long loading took, from reading the file to the type check.
    pub load_time: Duration,
    /// Whether the native code came from the cache or was compiled now.
    pub origin: Origin,
}

/// Where a version's native code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The compiled-artifact cache.
    Cache,
    /// Compiled by this load.
    Compiled,
}

impl Origin {
    /// `cache` or `compiled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Cache => "cache",
            Origin::Compiled => "compiled",
        }
    }
}

/// Why a job type's files did not make a version.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The manifest is unreadable or invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The component is unreadable, does not compile, or is not a `job-handler`.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The file changed while it was read: a writer is still at work, and its next event
    /// brings the complete file.
    #[error("{} changed while it was being read", path.display())]
    Changing {
        /// The file.
        path: PathBuf,
    },
}

/// The two files of a job type in the plugin directory.
#[derive(Debug, Clone)]
pub struct Files {
    /// `<job-type>.wasm`.
    pub wasm: PathBuf,
    /// `<job-type>.toml`.
    pub manifest: PathBuf,
}

impl Files {
    /// The files of `job_type` in `dir`.
    pub fn of(dir: &Path, job_type: &str) -> Self {
        Self {
            wasm: dir.join(format!("{job_type}.wasm")),
            manifest: dir.join(format!("{job_type}.toml")),
        }
    }
}

/// Loads plugin versions. Compilations run one at a time in blocking threads: Cranelift
/// already uses every core for one component, and a queue of them must not starve the
/// runtime's blocking pool.
#[derive(Debug)]
pub struct Loader {
    sandbox: Arc<Sandbox>,
    cache: Option<ArtifactCache>,
    defaults: Policy,
    compiling: Arc<Semaphore>,
    compilations: AtomicU64,
}

impl Loader {
    /// A loader for `sandbox`, caching artifacts in `cache` (`None`: compile every load),
    /// with `defaults` for plugins without a manifest.
    pub fn new(sandbox: Arc<Sandbox>, cache: Option<ArtifactCache>, defaults: Policy) -> Self {
        Self {
            sandbox,
            cache,
            defaults,
            compiling: Arc::new(Semaphore::new(1)),
            compilations: AtomicU64::new(0),
        }
    }

    /// The sandbox the versions are compiled for.
    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    /// The artifact cache, if any.
    pub fn cache(&self) -> Option<&ArtifactCache> {
        self.cache.as_ref()
    }

    /// How many components this loader has compiled (rather than found in the cache).
    pub fn compilations(&self) -> u64 {
        self.compilations.load(Ordering::Relaxed)
    }

    /// Loads `job_type` from `files`.
    pub async fn load(
        self: &Arc<Self>,
        job_type: &str,
        files: Files,
    ) -> Result<Version, LoadError> {
        let this = Arc::clone(self);
        let job_type = job_type.to_owned();
        let read = tokio::task::spawn_blocking(move || this.read(job_type, files));
        let source = match read.await.expect("reading a plugin does not panic")? {
            Read::Ready(version) => return Ok(version),
            Read::Compile(source) => source,
        };
        let _permit = self.compiling.acquire().await.expect("never closed");
        let this = Arc::clone(self);
        let compiled = tokio::task::spawn_blocking(move || this.compile(source));
        compiled.await.expect("compiling does not panic")
    }

    /// Loads `job_type` from `files` on the current thread, compiling at once if needed: for
    /// tools and tests that load a few plugins before any job runs.
    pub fn load_blocking(&self, job_type: &str, files: Files) -> Result<Version, LoadError> {
        match self.read(job_type.to_owned(), files)? {
            Read::Ready(version) => Ok(version),
            Read::Compile(source) => self.compile(source),
        }
    }

    /// Reads the files; a version if the cache has the component, else what to compile.
    fn read(&self, job_type: String, files: Files) -> Result<Read, LoadError> {
        let started = Instant::now();
        let policy = if files.manifest.exists() {
            manifest::read(
                &files.manifest,
                &self.defaults,
                self.sandbox.config().largest_memory(),
            )?
        } else {
            self.defaults.clone()
        };
        let wasm = read_settled(&files.wasm)?;
        let sha256: Arc<str> = hex::encode(Sha256::digest(&wasm)).into();
        let source = Source {
            job_type,
            policy,
            wasm,
            sha256,
            path: files.wasm,
            started,
        };
        let cached = self
            .cache
            .as_ref()
            .and_then(|cache| cache.load(self.sandbox.engine(), &source.sha256));
        match cached {
            Some(component) => Ok(Read::Ready(source.prepare(
                &self.sandbox,
                &component,
                Origin::Cache,
            )?)),
            None => Ok(Read::Compile(source)),
        }
    }

    fn compile(&self, source: Source) -> Result<Version, LoadError> {
        let component = self.sandbox.compile_component(&source.wasm)?;
        self.compilations.fetch_add(1, Ordering::Relaxed);
        // Only a component of the right world is worth caching.
        let version = source.prepare(&self.sandbox, &component, Origin::Compiled)?;
        let Some(cache) = &self.cache else {
            return Ok(version);
        };
        if let Err(error) = cache.store(&version.sha256, &component) {
            tracing::warn!(dir = %cache.dir().display(), %error,
                           "cannot store the compiled plugin; it will be compiled again next time");
            return Ok(version);
        }
        // Served from the stored artifact, as after a restart: its memory images map the
        // file (page cache shared by every runner on the machine) rather than a private copy,
        // and a slot resets faster (benches/sandbox.rs: Python's reference job 1.24 -> 1.02 ms).
        match cache.load(self.sandbox.engine(), &version.sha256) {
            Some(stored) => Ok(Version {
                plugin: Arc::new(self.sandbox.prepare(version.plugin.job_type(), &stored)?),
                ..version
            }),
            None => Ok(version),
        }
    }
}

/// What reading found.
enum Read {
    Ready(Version),
    Compile(Source),
}

/// A job type's files, read.
struct Source {
    job_type: String,
    policy: Policy,
    wasm: Vec<u8>,
    sha256: Arc<str>,
    path: PathBuf,
    /// When the load began: a version's load time includes any wait for the compiler.
    started: Instant,
}

impl Source {
    fn prepare(
        self,
        sandbox: &Sandbox,
        component: &Component,
        origin: Origin,
    ) -> Result<Version, PluginError> {
        Ok(Version {
            plugin: Arc::new(sandbox.prepare(&self.job_type, component)?),
            sha256: self.sha256,
            policy: self.policy,
            source: self.path,
            loaded_at: Utc::now(),
            load_time: self.started.elapsed(),
            origin,
        })
    }
}

/// Reads `path`, refusing a file that changed while it was read (a `cp` still writing).
fn read_settled(path: &Path) -> Result<Vec<u8>, LoadError> {
    let unreadable = |source| PluginError::Read {
        path: path.to_owned(),
        source,
    };
    let before = Fingerprint::of(path).map_err(unreadable)?;
    let bytes = std::fs::read(path).map_err(unreadable)?;
    let after = Fingerprint::of(path).map_err(unreadable)?;
    if before != after || after.len != bytes.len() as u64 {
        return Err(LoadError::Changing {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// What identifies a file's contents without reading it: size, modification time and inode
/// (after symlinks, so a swapped link target counts as a change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
}

impl Fingerprint {
    /// The fingerprint of the file at `path`.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode: meta.ino(),
        })
    }
}
