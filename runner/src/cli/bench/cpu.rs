//! CPU time spent per job, by the runner and by the database backends serving it.
//!
//! Jobs per second depend on whatever else the machine runs; on a shared 2-core VM they
//! varied by ±15% from run to run. CPU time per job varies far less, so it is what shows
//! whether a change made the runner or its SQL cheaper.

use std::collections::HashMap;
use std::time::Duration;

use crate::Queue;

/// CPU time used so far by this process and by each backend of the bench database.
pub(super) struct CpuTimes {
    runner: Duration,
    /// By backend pid; empty when the server runs on another machine.
    backends: HashMap<i32, Duration>,
}

impl CpuTimes {
    /// Reads the times now.
    pub async fn now(queue: &Queue) -> Self {
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()",
        )
        .fetch_all(queue.db())
        .await
        .unwrap_or_default();
        let backends = pids
            .into_iter()
            .filter_map(|pid| Some((pid, postgres_cpu(pid)?)))
            .collect();
        Self {
            runner: process_cpu("self").unwrap_or_default(),
            backends,
        }
    }

    /// What was spent since `earlier`, per job, as printed: runner, then the database's
    /// backends if they run here.
    pub fn per_job_since(&self, earlier: &CpuTimes, jobs: usize) -> String {
        let per_job = |d: Duration| d.as_secs_f64() * 1e6 / jobs.max(1) as f64;
        let runner = per_job(self.runner.saturating_sub(earlier.runner));
        if self.backends.is_empty() {
            return format!("runner {runner:.1} us");
        }
        // A backend that connected during the drain started from zero.
        let database = self
            .backends
            .iter()
            .map(|(pid, now)| {
                now.saturating_sub(earlier.backends.get(pid).copied().unwrap_or_default())
            })
            .sum();
        format!(
            "runner {runner:.1} us, database backends {:.1} us",
            per_job(database)
        )
    }
}

/// The CPU time of a local PostgreSQL process; `None` if `pid` is not one here.
fn postgres_cpu(pid: i32) -> Option<Duration> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    if comm.trim() != "postgres" {
        return None;
    }
    process_cpu(&pid.to_string())
}

/// User plus system time of `/proc/<pid>`.
fn process_cpu(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces: utime and
    // stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    Some(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}
