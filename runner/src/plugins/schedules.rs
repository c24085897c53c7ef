//! Keeps the schedules that plugin manifests declare (`[[schedules]]`) in the database: when
//! a plugin version loads, its job type's manifest schedules become exactly those it declares;
//! when its file goes, they go. Schedules made by the CLI, SQL or the client are never touched
//! (`jobrunner.sync_manifest_schedules`). Every runner serving the type syncs it; the sync is
//! idempotent, and announces only real changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::Registry;
use super::manifest::ManifestSchedule;
use crate::Queue;
use crate::client::schedules::NewSchedule;

/// How soon a failed sync is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// Syncs on every registry change, until the registry is dropped.
pub fn follow(queue: Queue, registry: Arc<Registry>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut changes = registry.subscribe();
        let mut synced: HashMap<String, Arc<[ManifestSchedule]>> = HashMap::new();
        loop {
            let settled = sync(&queue, &registry, &mut synced).await;
            let changed = if settled {
                changes.changed().await.is_ok()
            } else {
                tokio::select! {
                    changed = changes.changed() => changed.is_ok(),
                    _ = tokio::time::sleep(RETRY) => true,
                }
            };
            if !changed {
                return;
            }
        }
    })
}

/// Syncs every job type whose declared schedules differ from what was synced last; false if
/// one failed (it is tried again).
async fn sync(
    queue: &Queue,
    registry: &Registry,
    synced: &mut HashMap<String, Arc<[ManifestSchedule]>>,
) -> bool {
    let mut wanted: HashMap<String, Arc<[ManifestSchedule]>> = registry
        .versions()
        .into_iter()
        .map(|(job_type, version)| (job_type, Arc::clone(&version.policy.schedules)))
        .collect();
    // A job type this runner served and no longer does: its manifest schedules go too.
    for job_type in synced.keys() {
        wanted
            .entry(job_type.clone())
            .or_insert_with(|| Arc::new([]));
    }
    let mut settled = true;
    for (job_type, declared) in wanted {
        if synced.get(&job_type) == Some(&declared) {
            continue;
        }
        let schedules: Vec<NewSchedule> =
            declared.iter().map(|s| s.to_schedule(&job_type)).collect();
        match queue.sync_manifest_schedules(&job_type, &schedules).await {
            Ok(changes) => {
                for (tenant, name, action) in changes {
                    if action == "conflict" {
                        tracing::warn!(
                            job_type,
                            tenant,
                            schedule = name,
                            "manifest schedule not applied: the tenant has a \
                                        schedule of that name made by another door"
                        );
                    } else {
                        tracing::info!(
                            job_type,
                            tenant,
                            schedule = name,
                            action,
                            "manifest schedule synced"
                        );
                    }
                }
                if declared.is_empty() && !registry.versions().contains_key(&job_type) {
                    synced.remove(&job_type);
                } else {
                    synced.insert(job_type, declared);
                }
            }
            Err(error) => {
                tracing::warn!(job_type, %error, "cannot sync the manifest's schedules");
                settled = false;
            }
        }
    }
    settled
}
