//! [`Registry`]: the plugin version serving each job type, swapped atomically, plus what
//! `runner plugins` shows about each type (the last load's status).
//!
//! Readers (every attempt, every claim) take a snapshot without locking. A job holds the
//! `Arc<Version>` it started with, so a swap never changes the code under a running job.
//! Every load gets a generation number when it starts; its result is applied only if no
//! newer load has been applied, so a slow compile of an old file cannot undo a newer one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;

use super::load::{LoadError, Version};
use super::manifest::Policy;
use crate::driver::ClaimType;

/// What the runner serves now.
#[derive(Debug, Default)]
struct Serving {
    versions: HashMap<String, Arc<Version>>,
    claim_types: Arc<[ClaimType]>,
}

/// The load history of one job type.
#[derive(Debug, Default)]
struct Entry {
    /// The newest load started.
    started: u64,
    /// The newest load applied.
    applied: u64,
    /// The last applied load's error, if it failed.
    failure: Option<Failure>,
}

#[derive(Debug, Clone)]
struct Failure {
    error: String,
    at: DateTime<Utc>,
}

/// A newer load of the same job type was applied first; this one is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superseded;

/// The plugin versions serving each job type.
#[derive(Debug)]
pub struct Registry {
    serving: ArcSwap<Serving>,
    entries: Mutex<BTreeMap<String, Entry>>,
    changes: watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            serving: ArcSwap::default(),
            entries: Mutex::default(),
            changes: watch::Sender::new(0),
        }
    }
}

impl Registry {
    /// The version serving `job_type`, pinned for as long as the caller holds it.
    pub fn get(&self, job_type: &str) -> Option<Arc<Version>> {
        self.serving.load().versions.get(job_type).cloned()
    }

    /// Every serving version, by job type.
    pub fn versions(&self) -> HashMap<String, Arc<Version>> {
        self.serving.load().versions.clone()
    }

    /// The job types with a version serving, with their claim rules: the claim filter.
    pub fn claim_types(&self) -> Arc<[ClaimType]> {
        Arc::clone(&self.serving.load().claim_types)
    }

    /// The sha256 of every serving version.
    pub fn live_hashes(&self) -> HashSet<String> {
        let serving = self.serving.load();
        serving
            .versions
            .values()
            .map(|v| v.sha256.to_string())
            .collect()
    }

    /// Ticks whenever what is served or a status changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Starts a load of `job_type`: its generation.
    pub fn begin(&self, job_type: &str) -> u64 {
        let mut entries = self.entries.lock().expect("registry lock");
        let entry = entries.entry(job_type.to_owned()).or_default();
        entry.started += 1;
        entry.started
    }

    /// Serves `version` for `job_type`, from the load that started as `generation`; returns
    /// the sha256 of the version it replaced.
    pub fn install(
        &self,
        job_type: &str,
        generation: u64,
        version: Version,
    ) -> Result<Option<Arc<str>>, Superseded> {
        self.apply(job_type, generation, |registry, entry| {
            entry.failure = None;
            let previous = registry.swap(job_type, Some(Arc::new(version)));
            previous.map(|v| Arc::clone(&v.sha256))
        })
    }

    /// Records that the load of `job_type` that started as `generation` failed; returns the
    /// sha256 of the version that keeps serving, if any.
    pub fn fail(
        &self,
        job_type: &str,
        generation: u64,
        error: &LoadError,
    ) -> Result<Option<Arc<str>>, Superseded> {
        self.apply(job_type, generation, |registry, entry| {
            entry.failure = Some(Failure {
                error: error.to_string(),
                at: Utc::now(),
            });
            registry.get(job_type).map(|v| Arc::clone(&v.sha256))
        })
    }

    /// Stops serving `job_type` (its file was deleted), unless a newer load was applied first;
    /// returns the version it served. Running jobs keep the version they hold.
    pub fn remove(
        &self,
        job_type: &str,
        generation: u64,
    ) -> Result<Option<Arc<Version>>, Superseded> {
        // The entry itself stays, with its generations: a load that started before the
        // deletion must not bring the type back when it finishes.
        self.apply(job_type, generation, |registry, entry| {
            entry.failure = None;
            registry.swap(job_type, None)
        })
    }

    /// Runs `change` for the load that started as `generation`, unless a newer one was
    /// applied, then tells subscribers.
    fn apply<T>(
        &self,
        job_type: &str,
        generation: u64,
        change: impl FnOnce(&Self, &mut Entry) -> T,
    ) -> Result<T, Superseded> {
        let mut entries = self.entries.lock().expect("registry lock");
        let entry = entries.entry(job_type.to_owned()).or_default();
        if generation <= entry.applied {
            return Err(Superseded);
        }
        entry.applied = generation;
        let result = change(self, entry);
        drop(entries);
        self.changes.send_modify(|n| *n += 1);
        Ok(result)
    }

    /// Every job type with a version serving or a failed load, with its status.
    pub fn statuses(&self) -> Vec<PluginStatus> {
        let entries = self.entries.lock().expect("registry lock");
        let serving = self.serving.load();
        entries
            .iter()
            .filter(|(job_type, entry)| {
                entry.failure.is_some() || serving.versions.contains_key(*job_type)
            })
            .map(|(job_type, entry)| {
                PluginStatus::new(
                    job_type,
                    serving.versions.get(job_type),
                    entry.failure.clone(),
                )
            })
            .collect()
    }

    /// Installs (or with `None` removes) the version of `job_type`; returns the old one.
    /// Called with the entries lock held, so swaps never interleave.
    fn swap(&self, job_type: &str, version: Option<Arc<Version>>) -> Option<Arc<Version>> {
        let current = self.serving.load();
        let mut versions = current.versions.clone();
        let previous = match version {
            Some(version) => versions.insert(job_type.to_owned(), version),
            None => versions.remove(job_type),
        };
        let mut claim_types: Vec<ClaimType> = versions
            .iter()
            .map(|(job_type, version)| ClaimType {
                job_type: job_type.clone(),
                max_attempts: Some(version.policy.retry.max_attempts),
                concurrency: version.policy.concurrency,
            })
            .collect();
        claim_types.sort_by(|a, b| a.job_type.cmp(&b.job_type));
        self.serving.store(Arc::new(Serving {
            versions,
            claim_types: claim_types.into(),
        }));
        previous
    }
}

/// One job type as `runner plugins` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct PluginStatus {
    /// The job type.
    pub job_type: String,
    /// `ok`, or `failed` when the last load failed (an older version may still serve).
    pub status: String,
    /// Why the last load failed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// When it failed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub failed_at: Option<DateTime<Utc>>,
    /// The serving version, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub serving: Option<ServingVersion>,
}

/// The version serving a job type.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ServingVersion {
    /// The sha256 of its `.wasm` file.
    pub sha256: String,
    /// The file it was loaded from.
    pub source: String,
    /// When it was loaded.
    pub loaded_at: DateTime<Utc>,
    /// How long loading took, in milliseconds.
    pub load_ms: f64,
    /// `cache` or `compiled`.
    pub from: String,
    /// The manifest beside it, if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// What its manifest grants and sets (the runner's defaults where it has none).
    #[serde(default)]
    pub grants: Grants,
}

/// What a version may reach and use, from its manifest over the runner's settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Grants {
    /// The origins it may call over HTTP.
    pub http_hosts: Vec<String>,
    /// The config keys it reads.
    pub config_keys: Vec<String>,
    /// The secrets it is granted (names only).
    pub secrets: Vec<String>,
    /// The job types it may enqueue as follow-ups.
    pub follow_ups: Vec<String>,
    /// The tenants whose jobs it runs; `None`: all.
    pub tenants: Option<Vec<String>>,
    /// Most of its jobs running at once across the runners; `None`: no limit.
    pub concurrency: Option<u32>,
    /// Attempts for its jobs that set none.
    pub max_attempts: u32,
    /// Wall-clock time per attempt, in milliseconds.
    pub timeout_ms: u64,
    /// CPU time per attempt, in milliseconds.
    pub cpu_budget_ms: u64,
    /// Linear memory per attempt, in bytes.
    pub memory: u64,
}

impl Grants {
    fn of(policy: &Policy) -> Self {
        let limits = &policy.limits;
        let names = |items: &[String]| items.to_vec();
        Self {
            http_hosts: limits
                .http
                .hosts
                .plugin
                .iter()
                .map(ToString::to_string)
                .collect(),
            config_keys: limits.config.values.keys().cloned().collect(),
            secrets: names(&limits.config.secrets),
            follow_ups: names(&limits.jobs.enqueue),
            tenants: policy.tenants.clone(),
            concurrency: policy.concurrency,
            max_attempts: policy.retry.max_attempts,
            timeout_ms: limits.timeout.as_millis() as u64,
            cpu_budget_ms: limits.cpu_budget.as_millis() as u64,
            memory: limits.memory,
        }
    }
}

impl PluginStatus {
    fn new(job_type: &str, serving: Option<&Arc<Version>>, failure: Option<Failure>) -> Self {
        Self {
            job_type: job_type.to_owned(),
            status: if failure.is_some() { "failed" } else { "ok" }.to_owned(),
            failed_at: failure.as_ref().map(|f| f.at),
            error: failure.map(|f| f.error),
            serving: serving.map(|v| ServingVersion {
                sha256: v.sha256.to_string(),
                source: v.source.display().to_string(),
                loaded_at: v.loaded_at,
                load_ms: v.load_time.as_secs_f64() * 1e3,
                from: v.origin.as_str().to_owned(),
                manifest: Some(v.source.with_extension("toml"))
                    .filter(|manifest| manifest.exists())
                    .map(|manifest| manifest.display().to_string()),
                grants: Grants::of(&v.policy),
            }),
        }
    }
}
