//! The fault-injection harness: several `runner run` processes on one database, signals to any
//! of them, and an audit, kept by the database itself, of every job that reached an end.
//!
//! The audit counts what was committed, not what was logged: a completion rejected by fencing,
//! or lost with its runner before it committed, is logged but never written (a later line for
//! the same attempt corrects it). The logs of killed runners are kept.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use runner::NewJob;
use serde_json::Value;
use sqlx::PgPool;

use super::eventually;
use super::live::Live;

/// Runner processes sharing one database and one set of flags.
pub struct Fleet {
    url: String,
    dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// The runners, in start order; a replaced one takes its predecessor's place.
    pub runners: Vec<Live>,
    /// The runners killed and replaced, for their logs.
    killed: Vec<Live>,
}

impl Fleet {
    /// Starts `size` runners on the database at `url`, serving the plugins in `dir`.
    pub async fn start(url: &str, dir: &Path, size: usize, args: &[&str]) -> Fleet {
        Self::start_with_env(url, dir, size, args, &[]).await
    }

    /// [`Fleet::start`] with environment variables `env` set in every runner, e.g. a
    /// `RUST_LOG`.
    pub async fn start_with_env(
        url: &str,
        dir: &Path,
        size: usize,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Fleet {
        let mut fleet = Fleet {
            url: url.to_owned(),
            dir: dir.to_owned(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            runners: Vec::with_capacity(size),
            killed: Vec::new(),
        };
        for _ in 0..size {
            let runner = fleet.spawn().await;
            fleet.runners.push(runner);
        }
        fleet
    }

    async fn spawn(&self) -> Live {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = (self.env.iter())
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Live::start_with_env(&self.url, &self.dir, &args, &env).await
    }

    /// Freezes every runner (see [`Live::freeze`]).
    pub async fn freeze(&self) {
        for runner in &self.runners {
            runner.freeze().await;
        }
    }

    /// Lets every frozen runner go on.
    pub fn thaw(&self) {
        self.runners.iter().for_each(Live::thaw);
    }

    /// SIGKILLs runner `i` and starts a fresh one in its place. Returns the killed runner's
    /// lease owner name.
    pub async fn kill_and_replace(&mut self, i: usize) -> String {
        let owner = self.runners[i].owner();
        self.runners[i].kill().await;
        let replacement = self.spawn().await;
        self.killed
            .push(std::mem::replace(&mut self.runners[i], replacement));
        owner
    }

    /// Every runner's log events with `message`, the killed runners' included.
    pub fn events(&self, message: &str) -> Vec<Value> {
        let each = self.runners.iter().chain(&self.killed);
        each.flat_map(|runner| runner.events(message)).collect()
    }

    /// Every runner's outcome lines (target `jobrunner::outcome`), the killed runners'
    /// included, in the order each runner wrote them, runner by runner.
    pub fn outcome_lines(&self) -> Vec<Value> {
        let each = self.runners.iter().chain(&self.killed);
        each.flat_map(|runner| runner.log())
            .filter(|event| event["target"] == "jobrunner::outcome")
            .collect()
    }

    /// Every runner's log events about job `id`, each with the runner's lease owner name:
    /// what a failed assertion about the job should show.
    pub fn job_events(&self, id: i64) -> Vec<(String, Value)> {
        let mut events = Vec::new();
        for runner in &self.runners {
            let about_it = runner.log().into_iter().filter(|e| e["job_id"] == id);
            events.extend(about_it.map(|event| (runner.owner(), event)));
        }
        events
    }

    /// SIGTERM to every runner, and a clean exit from each.
    pub async fn stop(self) {
        for runner in &self.runners {
            runner.signal(Signal::SIGTERM);
        }
        for runner in self.runners {
            runner.stop_signalled().await;
        }
    }
}

/// Records every job that ends (completed, failed, or deleted while running, which is how a
/// completion without retention is written) with the attempt and the lease owner that ended
/// it. Install it before the jobs run.
pub async fn install_audit(pool: &PgPool) {
    for statement in [
        "CREATE TABLE public.endings (
             job_id bigint NOT NULL, attempt integer NOT NULL, owner text,
             state text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())",
        "CREATE FUNCTION public.record_ending() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF TG_OP = 'DELETE' THEN
                 -- A job completed in a batch transaction is deleted as claimed: available,
                 -- its attempt not yet counted.
                 INSERT INTO public.endings (job_id, attempt, owner, state)
                 VALUES (OLD.id, OLD.attempt + (OLD.state = 'available')::int,
                         OLD.lease_owner, 'completed');
             ELSE
                 INSERT INTO public.endings (job_id, attempt, owner, state)
                 VALUES (NEW.id, NEW.attempt, OLD.lease_owner, NEW.state::text);
             END IF;
             RETURN NULL;
         END $$",
        "CREATE TRIGGER record_ending AFTER UPDATE ON jobrunner.jobs FOR EACH ROW
         WHEN (NEW.state IN ('completed', 'failed')) EXECUTE FUNCTION public.record_ending()",
        "CREATE TRIGGER record_completed_delete AFTER DELETE ON jobrunner.jobs FOR EACH ROW
         WHEN (OLD.state IN ('running', 'available')) EXECUTE FUNCTION public.record_ending()",
    ] {
        sqlx::query(statement).execute(pool).await.expect(statement);
    }
}

/// What the audit saw.
#[derive(Debug, PartialEq, Eq)]
pub struct Endings {
    /// Jobs that ended at least once.
    pub jobs: i64,
    /// Jobs that ended as completed.
    pub completed: i64,
    /// Jobs that ended as failed.
    pub failed: i64,
    /// Jobs that ended more than once: must stay empty.
    pub twice: Vec<i64>,
}

impl Endings {
    /// Reads the audit.
    pub async fn read(pool: &PgPool) -> Endings {
        let (jobs, completed, failed): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(DISTINCT job_id),
                    count(DISTINCT job_id) FILTER (WHERE state = 'completed'),
                    count(DISTINCT job_id) FILTER (WHERE state = 'failed')
               FROM public.endings",
        )
        .fetch_one(pool)
        .await
        .expect("read the audit");
        let twice = sqlx::query_scalar(
            "SELECT job_id FROM public.endings GROUP BY job_id HAVING count(*) > 1 ORDER BY 1",
        )
        .fetch_all(pool)
        .await
        .expect("read the audit");
        Endings {
            jobs,
            completed,
            failed,
            twice,
        }
    }

    /// Waits until `n` jobs have ended, then checks that each ended once, as completed.
    pub async fn all_completed_once(pool: &PgPool, n: i64, deadline: Duration) -> Endings {
        eventually(&format!("{n} jobs to end"), deadline, || async {
            let endings = Endings::read(pool).await;
            (endings.jobs >= n).then_some(endings)
        })
        .await;
        let endings = Endings::read(pool).await;
        assert_eq!(
            endings,
            Endings {
                jobs: n,
                completed: n,
                failed: 0,
                twice: vec![]
            },
            "every job completes exactly once"
        );
        endings
    }
}

/// Enqueues `n` jobs of `job_type`, each with the payload `payload(i)`, in batches.
pub async fn enqueue_n(pool: &PgPool, job_type: &str, n: usize, payload: impl Fn(usize) -> Value) {
    let queue = runner::Queue::new(pool.clone());
    let jobs: Vec<NewJob> = (0..n)
        .map(|i| NewJob::new(job_type, payload(i)).unique(runner::Unique::Off))
        .collect();
    for chunk in jobs.chunks(5000) {
        queue.enqueue_many(pool, chunk).await.expect("enqueue");
    }
}
