//! Watching the plugin directory: `notify` events, debounced, trigger a reconcile of the
//! [`PluginDir`]; a periodic rescan catches anything the events missed and cleans the cache.
//!
//! A file that a writer still holds open (a plain `cp` over a plugin: modified, not yet
//! closed) is left alone until the writer closes it, so half a file is not even read; a file
//! replaced by rename is loaded at once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{
    DebounceEventResult, DebouncedEvent, Debouncer, RecommendedCache, new_debouncer,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::PluginDirError;
use super::dir::{PluginDir, job_type_of};

/// How long events settle before a reconcile: short, so a renamed-in plugin serves quickly.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// How often the directory is rescanned without an event, and the cache cleaned.
const RESCAN: Duration = Duration::from_secs(30);

/// How often a plugin directory that cannot be read is looked for.
const LOOK_AGAIN: Duration = Duration::from_secs(1);

/// A writer that has not closed its file for this long is taken to be done (or gone).
const WRITE_GRACE: Duration = Duration::from_secs(5);

/// Watches a plugin directory until dropped.
pub struct Watching {
    stop: CancellationToken,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

type Watcher = Debouncer<notify::RecommendedWatcher, RecommendedCache>;

/// Starts watching `dir`: every change to its files is reconciled into its registry.
pub fn watch(dir: Arc<PluginDir>) -> Result<Watching, PluginDirError> {
    let (events_tx, events) = mpsc::unbounded_channel();
    let watch_error = |error: notify::Error| PluginDirError {
        path: dir.path().to_owned(),
        source: std::io::Error::other(error),
    };
    let mut watcher = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| {
        let _ = events_tx.send(result);
    })
    .map_err(watch_error)?;
    watcher
        .watch(dir.path(), RecursiveMode::NonRecursive)
        .map_err(watch_error)?;
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        let watcher = run(dir, watcher, events, stopped).await;
        // The debouncer's threads stop when it is dropped; keep it alive until then.
        watcher.stop_nonblocking();
    });
    Ok(Watching { stop })
}

async fn run(
    dir: Arc<PluginDir>,
    mut watcher: Watcher,
    mut events: mpsc::UnboundedReceiver<DebounceEventResult>,
    stop: CancellationToken,
) -> Watcher {
    let mut writers = Writers::default();
    let mut rescan = tokio::time::interval(RESCAN);
    rescan.tick().await;
    let mut look_again = tokio::time::interval(LOOK_AGAIN);
    // Set while the directory cannot be read: its watch died with it (a deleted directory,
    // an unmounted volume), so it is looked for often and watched again once it is back.
    let mut lost = false;
    loop {
        let reconciled = tokio::select! {
            _ = stop.cancelled() => return watcher,
            Some(result) = events.recv() => match result {
                Ok(events) => {
                    if !writers.track(&events) {
                        continue;
                    }
                    reconcile(&dir, &writers)
                }
                Err(errors) => {
                    for error in errors {
                        tracing::warn!(dir = %dir.path().display(), %error,
                                       "watching the plugin directory failed; rescanning");
                    }
                    reconcile(&dir, &writers)
                }
            },
            _ = look_again.tick(), if lost => reconcile(&dir, &writers),
            _ = rescan.tick() => {
                dir.clean_cache().await;
                reconcile(&dir, &writers)
            }
        };
        match (lost, reconciled) {
            (false, Err(error)) => {
                tracing::error!(%error, "cannot read the plugin directory; the loaded plugins \
                                         keep serving");
                lost = true;
            }
            (true, Ok(())) => lost = !rewatch(&dir, &mut watcher),
            _ => {}
        }
    }
}

/// Watches the directory again after it came back; whether that worked.
fn rewatch(dir: &PluginDir, watcher: &mut Watcher) -> bool {
    let _ = watcher.unwatch(dir.path());
    match watcher.watch(dir.path(), RecursiveMode::NonRecursive) {
        Ok(()) => {
            tracing::info!(dir = %dir.path().display(),
                           "the plugin directory is back; watching it again");
            true
        }
        Err(error) => {
            tracing::warn!(dir = %dir.path().display(), %error,
                           "cannot watch the plugin directory again yet");
            false
        }
    }
}

/// Reconciles the registry with the directory.
fn reconcile(dir: &Arc<PluginDir>, writers: &Writers) -> Result<(), PluginDirError> {
    dir.reconcile(&writers.busy()).map(drop)
}

/// Which job types' files a writer has open: modified (or created) and not yet closed.
#[derive(Debug, Default)]
struct Writers {
    open: HashMap<String, Instant>,
}

impl Writers {
    /// Takes note of `events`; whether any of them may have changed what should be loaded.
    fn track(&mut self, events: &[DebouncedEvent]) -> bool {
        let mut relevant = false;
        for event in events {
            let job_type = event.paths.first().and_then(|p| job_type_of(p));
            match (event.kind, job_type) {
                (EventKind::Access(AccessKind::Close(AccessMode::Write)), Some(job_type)) => {
                    self.open.remove(&job_type);
                    relevant = true;
                }
                // Reads, including the loader's own: nothing changed.
                (EventKind::Access(_), _) => {}
                (
                    EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any)
                    | EventKind::Create(CreateKind::File | CreateKind::Any),
                    Some(job_type),
                ) => {
                    self.open.insert(job_type, event.time);
                    relevant = true;
                }
                // Renames, removals, metadata, and any change to other entries (a symlink
                // swap of a mounted volume, say): look at the directory again.
                _ => relevant = true,
            }
        }
        relevant
    }

    /// The job types to leave alone for now.
    fn busy(&self) -> HashSet<String> {
        self.open
            .iter()
            .filter(|(_, since)| since.elapsed() < WRITE_GRACE)
            .map(|(job_type, _)| job_type.clone())
            .collect()
    }
}
