//! What the listener knows about the whole queue: a snapshot read from the database in a few
//! queries, shared by every page and scrape and read again when it is older than they accept
//! ([`SCRAPE_FRESH`], [`PAGE_FRESH`]), and the
//! last hour of samples taken from the snapshots, for the overview's charts.
//!
//! The samples are kept in this process: the charts cover the time since it started, up to an
//! hour. Throughput comes from the outcome counts every runner announces with its plugins.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::task::AbortOnDropHandle;

use crate::Queue;
use crate::driver::{Driver, RunnerInfo};

/// A scrape is served a snapshot up to this old: scrapes cost no query in between.
pub const SCRAPE_FRESH: Duration = Duration::from_secs(5);
/// A page is served a snapshot up to this old: what a person looks at is current.
pub const PAGE_FRESH: Duration = Duration::from_secs(1);
/// How often a sample is taken, whether or not anyone looks.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// How much history the charts keep.
pub const HISTORY: Duration = Duration::from_secs(3600);
/// A runner that has not announced itself for this long is not live.
pub const LIVE: Duration = Duration::from_secs(30);

/// Jobs in one state of one type and tenant.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StateCount {
    /// The state.
    pub state: String,
    /// The job type.
    pub job_type: String,
    /// The tenant.
    pub tenant: String,
    /// How many.
    pub count: i64,
}

/// Ripe jobs waiting for a runner, of one type and tenant.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Ripe {
    /// The job type.
    pub job_type: String,
    /// The tenant.
    pub tenant: String,
    /// How many are ripe.
    pub count: i64,
    /// How long the oldest has been ripe, in seconds.
    pub oldest_secs: f64,
}

/// The queue at one moment.
#[derive(Debug)]
pub struct Snapshot {
    /// When it was read.
    pub at: DateTime<Utc>,
    taken: Instant,
    /// Jobs by state, type and tenant.
    pub states: Vec<StateCount>,
    /// Ripe jobs by type and tenant.
    pub ripe: Vec<Ripe>,
    /// The live runners.
    pub runners: Vec<RunnerInfo>,
}

impl Snapshot {
    async fn take(queue: &Queue) -> jobrunner_client::Result<Self> {
        let now = queue.now();
        let states = sqlx::query_as(
            "SELECT state::text AS state, job_type, tenant, count(*) AS count
               FROM jobrunner.job_status GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        )
        .fetch_all(queue.db())
        .await?;
        let ripe = sqlx::query_as(
            "SELECT job_type, tenant, count(*) AS count,
                    extract(epoch FROM $1 - min(run_at))::float8 AS oldest_secs
               FROM jobrunner.jobs
              WHERE state = 'available' AND run_at <= $1
              GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .bind(now)
        .fetch_all(queue.db())
        .await?;
        let runners = Driver::new(queue.clone()).runners(LIVE).await?;
        Ok(Self {
            at: now,
            taken: Instant::now(),
            states,
            ripe,
            runners,
        })
    }

    /// Jobs in `state`, of every type and tenant.
    pub fn in_state(&self, state: &str) -> i64 {
        self.states
            .iter()
            .filter(|c| c.state == state)
            .map(|c| c.count)
            .sum()
    }
}

/// One point of the charts.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When.
    pub at: DateTime<Utc>,
    /// Available jobs, ripe or not.
    pub available: i64,
    /// Ripe jobs waiting for a runner.
    pub ripe: i64,
    /// Running jobs.
    pub running: i64,
    /// Attempts completed per second since the previous sample, by every live runner.
    pub completed_per_s: f64,
    /// Jobs failed for good per second since the previous sample.
    pub failed_per_s: f64,
}

/// A live runner's outcome counts at a sample, and how long it had been up.
#[derive(Debug, Clone, Copy)]
struct Announced {
    completed: i64,
    failed: i64,
    up_for: Duration,
}

/// Each live runner's counts, by owner.
type RunnerTotals = HashMap<String, Announced>;

/// The snapshot cache and the history.
pub struct Sampler {
    queue: Queue,
    cached: tokio::sync::Mutex<Option<Arc<Snapshot>>>,
    history: Mutex<VecDeque<Sample>>,
    /// Each runner's announced totals at the previous sample.
    previous: Mutex<Option<(Instant, RunnerTotals)>>,
}

impl Sampler {
    /// A sampler of `queue`, with no history yet.
    pub fn new(queue: Queue) -> Self {
        Self {
            queue,
            cached: tokio::sync::Mutex::new(None),
            history: Mutex::new(VecDeque::new()),
            previous: Mutex::new(None),
        }
    }

    /// Samples every [`SAMPLE_EVERY`] until the handle is dropped.
    pub fn start(self: &Arc<Self>) -> AbortOnDropHandle<()> {
        let sampler = Arc::clone(self);
        AbortOnDropHandle::new(tokio::spawn(async move {
            let mut every = tokio::time::interval(SAMPLE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                match sampler.snapshot(SCRAPE_FRESH).await {
                    Ok(snapshot) => sampler.record(&snapshot),
                    Err(error) => tracing::warn!(%error, "cannot sample the queue"),
                }
            }
        }))
    }

    /// A snapshot at most `max_age` old: the cached one, else one read now (once, however
    /// many ask at the same time).
    pub async fn snapshot(&self, max_age: Duration) -> jobrunner_client::Result<Arc<Snapshot>> {
        let mut cached = self.cached.lock().await;
        if let Some(snapshot) = cached.as_ref()
            && snapshot.taken.elapsed() < max_age
        {
            return Ok(Arc::clone(snapshot));
        }
        let snapshot = Arc::new(Snapshot::take(&self.queue).await?);
        *cached = Some(Arc::clone(&snapshot));
        Ok(snapshot)
    }

    /// The samples of the last hour, oldest first.
    pub fn history(&self) -> Vec<Sample> {
        self.history
            .lock()
            .expect("not poisoned")
            .iter()
            .copied()
            .collect()
    }

    fn record(&self, snapshot: &Snapshot) {
        let totals: RunnerTotals = snapshot
            .runners
            .iter()
            .map(|r| {
                let up_for = (snapshot.at - r.started_at).to_std().unwrap_or_default();
                let counts = Announced {
                    completed: r.completed,
                    failed: r.failed,
                    up_for,
                };
                (r.owner.clone(), counts)
            })
            .collect();
        let mut previous = self.previous.lock().expect("not poisoned");
        let earlier = previous
            .as_ref()
            .map(|(then, before)| (before, then.elapsed()));
        let (completed_per_s, failed_per_s) = rates(earlier, &totals);
        *previous = Some((snapshot.taken, totals));
        let sample = Sample {
            at: snapshot.at,
            available: snapshot.in_state("available"),
            ripe: snapshot.ripe.iter().map(|r| r.count).sum(),
            running: snapshot.in_state("running"),
            completed_per_s,
            failed_per_s,
        };
        let mut history = self.history.lock().expect("not poisoned");
        history.push_back(sample);
        let keep = (HISTORY.as_secs() / SAMPLE_EVERY.as_secs()) as usize;
        while history.len() > keep {
            history.pop_front();
        }
    }
}

/// Completed and failed per second since the `earlier` reading of the runners' counts (and
/// the time since it), summed over the runners. A runner not in it (started since, or the
/// first reading) counts everything it announced over the time it has been up, so that a
/// burst before the first reading still shows.
fn rates(earlier: Option<(&RunnerTotals, Duration)>, now: &RunnerTotals) -> (f64, f64) {
    let (mut completed, mut failed) = (0.0, 0.0);
    for (owner, counts) in now {
        let (base, over) = match earlier {
            Some((before, between)) => match before.get(owner) {
                Some(b) => ((b.completed, b.failed), between),
                None => ((0, 0), counts.up_for.min(between)),
            },
            None => ((0, 0), counts.up_for),
        };
        let secs = over.as_secs_f64().max(1.0);
        completed += (counts.completed - base.0).max(0) as f64 / secs;
        failed += (counts.failed - base.1).max(0) as f64 / secs;
    }
    (completed, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_count_each_runner_from_its_previous_totals_or_since_it_started() {
        let counts = |completed, failed, up: u64| Announced {
            completed,
            failed,
            up_for: Duration::from_secs(up),
        };
        let before = HashMap::from([
            ("a".to_owned(), counts(100, 1, 60)),
            ("gone".to_owned(), counts(50, 0, 60)),
        ]);
        let now = HashMap::from([
            ("a".to_owned(), counts(150, 3, 70)),
            ("new".to_owned(), counts(50, 0, 5)),
        ]);
        let between = Duration::from_secs(10);
        // a: 50 in 10 s; new: 50 in the 5 s it has been up.
        assert_eq!(rates(Some((&before, between)), &now), (15.0, 0.2));
        // The first reading: everything each runner did since it started.
        assert_eq!(rates(None, &now), (150.0 / 70.0 + 10.0, 3.0 / 70.0));
    }
}
