//! The compiled-artifact cache: native code for each plugin version, so that a restart or a
//! reload of an unchanged file does not run Cranelift again.
//!
//! Layout: `<cache>/engine-<hash>/<sha256>.cwasm`. The hash covers everything that decides
//! whether wasmtime can load an artifact (its version, compiler settings, enabled features),
//! so a runner upgrade starts a fresh directory instead of failing to load old files.
//!
//! Artifacts are memory-mapped while plugins run, so a file is never modified once it has its
//! name: it is written under a temporary name, synced, and renamed into place. Removing one is
//! safe even while it is mapped (the mapping keeps the data). Loading one executes its native
//! code, so the cache directory must be as protected as the runner binary itself.

use std::collections::HashSet;
use std::hash::Hasher;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Unused artifacts younger than this are kept: a load may have just stored one it has not
/// installed yet, and a quick rollback should not recompile.
const GRACE: Duration = Duration::from_secs(600);

const EXTENSION: &str = "cwasm";
const ENGINE_PREFIX: &str = "engine-";

/// A cache directory for one engine configuration.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    root: PathBuf,
    dir: PathBuf,
}

impl ArtifactCache {
    /// Opens (creating if needed) the cache under `root` for `engine`'s artifacts.
    pub fn open(root: &Path, engine: &Engine) -> std::io::Result<Self> {
        let dir = root.join(engine_key(engine));
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            root: root.to_owned(),
            dir,
        })
    }

    /// Where this engine's artifacts live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The compiled component for the source with this `sha256`, if cached. A file wasmtime
    /// refuses (truncated by a crash, say) is removed, so it is compiled again.
    pub fn load(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let path = self.path(sha256);
        if !path.exists() {
            return None;
        }
        match deserialize(engine, &path) {
            Ok(component) => Some(component),
            Err(error) => {
                tracing::warn!(file = %path.display(), error = %format!("{error:#}"),
                               "unusable compiled artifact; removing it and compiling again");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores `component` as the artifact for the source with this `sha256`.
    pub fn store(&self, sha256: &str, component: &Component) -> std::io::Result<()> {
        let path = self.path(sha256);
        if path.exists() {
            return Ok(());
        }
        let bytes = component.serialize().map_err(std::io::Error::other)?;
        let mut temp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&self.dir)?;
        temp.write_all(&bytes)?;
        // Synced before the rename: after a crash the name never points at a short file.
        temp.as_file().sync_all()?;
        temp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    }

    /// Removes artifacts no plugin in `live` (sha256s) uses and that are older than the grace
    /// period, leftover temporary files, and every other engine's directory. Returns how many
    /// files and directories it removed.
    pub fn clean(&self, live: &HashSet<String>) -> std::io::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.root)? {
            let path = entry?.path();
            let other_engine = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(ENGINE_PREFIX));
            if other_engine && path.is_dir() && path != self.dir {
                std::fs::remove_dir_all(&path)?;
                removed += 1;
            }
        }
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            let in_use = path
                .file_stem()
                .and_then(|s| s.to_str())
                .is_some_and(|sha| live.contains(sha))
                && path.extension().is_some_and(|e| e == EXTENSION);
            if !in_use && older_than(&entry, GRACE) {
                std::fs::remove_file(&path)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.{EXTENSION}"))
    }
}

fn older_than(entry: &std::fs::DirEntry, age: Duration) -> bool {
    entry
        .metadata()
        .and_then(|m| m.modified())
        .is_ok_and(|modified| {
            SystemTime::now()
                .duration_since(modified)
                .is_ok_and(|a| a > age)
        })
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime requires a file it serialized itself, for a compatible engine, that is
    // not modified while mapped. Only `store` writes this directory (a complete, synced file
    // renamed into place, never rewritten); the directory is per engine configuration, and
    // wasmtime checks the header's version and settings on load.
    unsafe { Component::deserialize_file(engine, path) }
}

/// A stable directory name for the engine's compatibility class: 16 hex digits of a sha256
/// over wasmtime's compatibility hash (std's hasher is not stable across Rust releases).
fn engine_key(engine: &Engine) -> String {
    struct Sha(Sha256);
    impl Hasher for Sha {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut hasher = Sha(Sha256::new());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
    format!("{ENGINE_PREFIX}{}", hex::encode(&hasher.0.finalize()[..8]))
}
