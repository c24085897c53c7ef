//! What the runner counts and times: every metric's name is written once, here, and recorded
//! through the `metrics` facade. Nothing is recorded until [`enable`] is called (by the web
//! listener, which installs the Prometheus recorder): a runner without `--http` pays one
//! relaxed load per call.
//!
//! Label values a guest or a client chooses (tenants, job types, hosts, schedules) are capped:
//! each label keeps the first [`MAX_LABEL_VALUES`] values it sees, and counts every later one
//! under [`OTHER`], so a flood of tenants cannot grow the exporter without bound.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use metrics::{counter, gauge, histogram};

/// Distinct values kept per label before later ones become [`OTHER`].
pub const MAX_LABEL_VALUES: usize = 100;

/// The label value of everything past the cap.
pub const OTHER: &str = "_other";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Outcomes counted whether or not metrics are enabled: runners announce them, and
/// dashboards chart the cluster's throughput from them.
static COMPLETED: AtomicI64 = AtomicI64::new(0);
static FAILED: AtomicI64 = AtomicI64::new(0);

/// The attempts this process completed, and failed for good, since it started.
pub fn totals() -> crate::driver::Totals {
    crate::driver::Totals {
        completed: COMPLETED.load(Ordering::Relaxed),
        failed: FAILED.load(Ordering::Relaxed),
    }
}

/// Starts recording (a recorder must be installed, or the values go nowhere).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The values one label has kept.
struct Capped(Mutex<HashSet<String>>);

impl Capped {
    fn new() -> Self {
        Self(Mutex::new(HashSet::new()))
    }

    /// `value`, or [`OTHER`] once the label holds its cap of other values.
    fn label(&self, value: &str) -> String {
        let mut seen = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.contains(value) {
            return value.to_owned();
        }
        if seen.len() >= MAX_LABEL_VALUES {
            return OTHER.to_owned();
        }
        seen.insert(value.to_owned());
        value.to_owned()
    }
}

static JOB_TYPES: LazyLock<Capped> = LazyLock::new(Capped::new);
static TENANTS: LazyLock<Capped> = LazyLock::new(Capped::new);
static HOSTS: LazyLock<Capped> = LazyLock::new(Capped::new);
static SCHEDULES: LazyLock<Capped> = LazyLock::new(Capped::new);

/// The capped `job_type` and `tenant` labels of a job.
pub fn job_labels(job_type: &str, tenant: &str) -> [(&'static str, String); 2] {
    [
        ("job_type", JOB_TYPES.label(job_type)),
        ("tenant", TENANTS.label(tenant)),
    ]
}

/// `job` was claimed at `now`; it had waited since it was ripe (enqueued, or due).
pub fn claimed(job: &crate::job::Job, now: chrono::DateTime<chrono::Utc>) {
    if !enabled() {
        return;
    }
    let ripe_since = job.run_at.max(job.created_at);
    let waited = (now - ripe_since).to_std().unwrap_or_default();
    let labels = job_labels(&job.job_type, &job.tenant);
    counter!("jobrunner_jobs_claimed_total", &labels).increment(1);
    histogram!("jobrunner_job_start_latency_seconds", &labels).record(waited.as_secs_f64());
}

/// An attempt's outcome was committed: `outcome` is `completed`, `retry`, `failed`,
/// `cancelled` or `requeued`; `duration` is how long it ran, when this runner ran it.
pub fn outcome(job_type: &str, tenant: &str, outcome: &str, duration: Option<Duration>) {
    match outcome {
        "completed" => COMPLETED.fetch_add(1, Ordering::Relaxed),
        "failed" => FAILED.fetch_add(1, Ordering::Relaxed),
        _ => 0,
    };
    if !enabled() {
        return;
    }
    let labels = job_labels(job_type, tenant);
    let name = match outcome {
        "completed" => "jobrunner_jobs_completed_total",
        "retry" => "jobrunner_jobs_retried_total",
        "failed" => "jobrunner_jobs_failed_total",
        "cancelled" => "jobrunner_jobs_cancelled_total",
        _ => "jobrunner_jobs_requeued_total",
    };
    counter!(name, &labels).increment(1);
    if let Some(duration) = duration {
        histogram!("jobrunner_attempt_duration_seconds", &labels).record(duration.as_secs_f64());
    }
}

/// A job a dead runner held was taken back.
pub fn rescued(job_type: &str, tenant: &str) {
    if enabled() {
        counter!(
            "jobrunner_jobs_rescued_total",
            &job_labels(job_type, tenant)
        )
        .increment(1);
    }
}

/// A job was cancelled through this process before it ran.
pub fn cancelled(job_type: &str, tenant: &str) {
    if enabled() {
        counter!(
            "jobrunner_jobs_cancelled_total",
            &job_labels(job_type, tenant)
        )
        .increment(1);
    }
}

/// This process enqueued `count` jobs of `job_type`; `source` is `follow_up` or `schedule`.
pub fn enqueued(job_type: &str, tenant: &str, source: &'static str, count: usize) {
    if !enabled() || count == 0 {
        return;
    }
    let [job_type, tenant] = job_labels(job_type, tenant);
    let labels = [job_type, tenant, ("source", source.to_owned())];
    counter!("jobrunner_jobs_enqueued_total", &labels).increment(count as u64);
}

/// A completed attempt of a `job_type` job enqueued `count` follow-ups.
pub fn follow_ups(job_type: &str, tenant: &str, count: usize) {
    if enabled() && count > 0 {
        counter!(
            "jobrunner_follow_ups_enqueued_total",
            &job_labels(job_type, tenant)
        )
        .increment(count as u64);
    }
}

/// A fresh instance of `job_type`'s component took `took` to instantiate.
pub fn instantiated(job_type: &str, took: Duration) {
    if enabled() {
        let labels = [("job_type", JOB_TYPES.label(job_type))];
        histogram!("jobrunner_sandbox_instantiate_seconds", &labels).record(took.as_secs_f64());
    }
}

/// A guest trapped; `kind` is the trap's kind in snake case.
pub fn trapped(job_type: &str, kind: &str) {
    if enabled() {
        let labels = [
            ("job_type", JOB_TYPES.label(job_type)),
            ("kind", kind.to_owned()),
        ];
        counter!("jobrunner_traps_total", &labels).increment(1);
    }
}

/// An attempt was stopped by a limit: `cpu`, `wall`, `memory`, `output` or `http`.
pub fn limit_tripped(job_type: &str, tenant: &str, limit: &'static str) {
    if !enabled() {
        return;
    }
    let [job_type, tenant] = job_labels(job_type, tenant);
    counter!(
        "jobrunner_limits_tripped_total",
        &[job_type, tenant, ("limit", limit.to_owned())]
    )
    .increment(1);
}

/// A guest's outgoing HTTP request to `host` ended, with `status` if a response came.
pub fn http_request(host: &str, status: Option<u16>) {
    if !enabled() {
        return;
    }
    let class = match status {
        Some(status) => format!("{}xx", status / 100),
        None => "error".to_owned(),
    };
    let labels = [("host", HOSTS.label(host)), ("status_class", class)];
    counter!("jobrunner_http_requests_total", &labels).increment(1);
}

/// A schedule's tick fired `late` after its time and enqueued `jobs` jobs.
pub fn schedule_fired(tenant: &str, schedule: &str, late: Duration, jobs: usize) {
    if !enabled() {
        return;
    }
    let labels = [
        ("tenant", TENANTS.label(tenant)),
        ("schedule", SCHEDULES.label(schedule)),
    ];
    counter!("jobrunner_schedule_ticks_total", &labels).increment(1);
    counter!("jobrunner_schedule_jobs_enqueued_total", &labels).increment(jobs as u64);
    histogram!("jobrunner_schedule_lateness_seconds", &labels).record(late.as_secs_f64());
}

/// The attempts this process is running now moved by `delta`.
pub fn running(delta: f64) {
    if enabled() {
        gauge!("jobrunner_attempts_running").increment(delta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_keeps_its_first_values_and_counts_the_rest_as_other() {
        let label = Capped::new();
        for i in 0..MAX_LABEL_VALUES {
            assert_eq!(label.label(&format!("t{i}")), format!("t{i}"));
        }
        assert_eq!(label.label("one-too-many"), OTHER);
        assert_eq!(label.label("t0"), "t0", "a kept value stays itself");
    }
}
