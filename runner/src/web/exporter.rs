//! `/metrics`: the process's counters and histograms ([`crate::metrics`]) in the Prometheus
//! text format, rendered by `metrics-exporter-prometheus`, and the queue's gauges, set from the
//! [sampler](super::sampler)'s snapshot on each scrape (so a scrape costs no query while the
//! snapshot is fresh, whatever the number of labels).

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::AppState;
use super::sampler::{SCRAPE_FRESH, Snapshot};

/// Histogram buckets, in seconds: from a microsecond job's instantiate to a slow attempt.
const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    120.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and starts recording.
pub fn install() {
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .expect("the buckets are not empty")
            .install_recorder()
            .expect("no other metrics recorder is installed in this process");
        describe();
        handle
    });
    crate::metrics::enable();
}

/// Serves the text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let Some(handle) = HANDLE.get() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics are not installed\n",
        )
            .into_response();
    };
    match state.sampler.snapshot(SCRAPE_FRESH).await {
        Ok(snapshot) => set_queue_gauges(&snapshot),
        Err(error) => tracing::warn!(%error, "cannot read the queue's gauges"),
    }
    let pool = state.queue.pool();
    let idle = pool.num_idle() as f64;
    gauge!("jobrunner_db_pool_connections", "state" => "idle").set(idle);
    gauge!("jobrunner_db_pool_connections", "state" => "in_use").set(f64::from(pool.size()) - idle);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

/// The label sets of the queue's gauges set at the previous scrape: one that is gone from the
/// snapshot (no failed jobs of that type any more) is set to zero rather than left stale.
static PREVIOUS: Mutex<Option<HashSet<Series>>> = Mutex::new(None);

type Series = (&'static str, Vec<(&'static str, String)>);

fn set_queue_gauges(snapshot: &Snapshot) {
    // Summed, as capped labels may merge several rows into `_other`.
    let mut values: HashMap<Series, f64> = HashMap::new();
    let job = |job_type: &str, tenant: &str| {
        let [job_type, tenant] = crate::metrics::job_labels(job_type, tenant);
        vec![job_type, tenant]
    };
    for count in &snapshot.states {
        let mut labels = job(&count.job_type, &count.tenant);
        labels.push(("state", count.state.clone()));
        *values.entry(("jobrunner_jobs", labels)).or_default() += count.count as f64;
    }
    for ripe in &snapshot.ripe {
        let labels = job(&ripe.job_type, &ripe.tenant);
        *values
            .entry(("jobrunner_jobs_ripe", labels.clone()))
            .or_default() += ripe.count as f64;
        let oldest = values
            .entry(("jobrunner_oldest_ripe_job_age_seconds", labels))
            .or_default();
        *oldest = oldest.max(ripe.oldest_secs);
    }
    let mut now = HashSet::new();
    let mut set = |name: &'static str, labels: Vec<(&'static str, String)>, value: f64| {
        gauge!(name, &labels).set(value);
        now.insert((name, labels));
    };
    for ((name, labels), value) in values {
        set(name, labels, value);
    }
    for runner in &snapshot.runners {
        let plugins: Vec<crate::plugins::PluginStatus> =
            serde_json::from_value(runner.plugins.clone()).unwrap_or_default();
        for plugin in plugins {
            let runner_label = ("runner", runner.owner.clone());
            if let Some(serving) = &plugin.serving {
                let labels = vec![
                    runner_label.clone(),
                    ("job_type", plugin.job_type.clone()),
                    ("sha256", serving.sha256.clone()),
                ];
                set("jobrunner_plugin_loaded", labels, 1.0);
            }
            let labels = vec![runner_label, ("job_type", plugin.job_type.clone())];
            let failed = if plugin.error.is_some() { 1.0 } else { 0.0 };
            set("jobrunner_plugin_load_failed", labels, failed);
        }
    }
    gauge!("jobrunner_runners_live").set(snapshot.runners.len() as f64);
    let mut previous = PREVIOUS.lock().unwrap_or_else(|p| p.into_inner());
    for (name, labels) in previous.iter().flatten() {
        if !now.contains(&(*name, labels.clone())) {
            gauge!(*name, labels).set(0.0);
        }
    }
    *previous = Some(now);
}

/// The HELP lines: what each metric means (the README lists them too).
fn describe() {
    use Unit::Seconds;
    let jobs = "Jobs this process";
    describe_counter!("jobrunner_jobs_claimed_total", format!("{jobs} claimed"));
    describe_counter!(
        "jobrunner_jobs_completed_total",
        format!("{jobs} completed")
    );
    describe_counter!(
        "jobrunner_jobs_retried_total",
        format!("{jobs} set to retry after a failed attempt")
    );
    describe_counter!(
        "jobrunner_jobs_failed_total",
        format!("{jobs} failed for good")
    );
    describe_counter!(
        "jobrunner_jobs_requeued_total",
        format!("{jobs} put back without counting the attempt")
    );
    describe_counter!(
        "jobrunner_jobs_cancelled_total",
        format!("{jobs} cancelled (dashboard)")
    );
    describe_counter!(
        "jobrunner_jobs_rescued_total",
        format!("{jobs} took back from runners that died")
    );
    describe_counter!(
        "jobrunner_jobs_enqueued_total",
        format!("{jobs} enqueued, by source")
    );
    describe_counter!(
        "jobrunner_follow_ups_enqueued_total",
        "Follow-up jobs enqueued by completed attempts"
    );
    describe_histogram!(
        "jobrunner_attempt_duration_seconds",
        Seconds,
        "How long attempts ran"
    );
    describe_histogram!(
        "jobrunner_job_start_latency_seconds",
        Seconds,
        "From a job's ripeness (enqueue or due time) to its claim"
    );
    describe_histogram!(
        "jobrunner_sandbox_instantiate_seconds",
        Seconds,
        "Time to instantiate a fresh component instance"
    );
    describe_counter!("jobrunner_traps_total", "Guest traps, by kind");
    describe_counter!(
        "jobrunner_limits_tripped_total",
        "Attempts stopped by a limit: cpu, wall, memory, output, http"
    );
    describe_counter!(
        "jobrunner_http_requests_total",
        "Outgoing HTTP requests of guests, by host and status class"
    );
    describe_counter!(
        "jobrunner_schedule_ticks_total",
        "Schedule ticks this process fired"
    );
    describe_counter!(
        "jobrunner_schedule_jobs_enqueued_total",
        "Jobs enqueued by schedule ticks this process fired"
    );
    describe_histogram!(
        "jobrunner_schedule_lateness_seconds",
        Seconds,
        "From a tick's time to its firing"
    );
    describe_gauge!(
        "jobrunner_attempts_running",
        "Attempts running in this process now"
    );
    describe_gauge!(
        "jobrunner_jobs",
        "Jobs by state, type and tenant (whole queue)"
    );
    describe_gauge!(
        "jobrunner_jobs_ripe",
        "Ripe jobs waiting for a runner (whole queue)"
    );
    describe_gauge!(
        "jobrunner_oldest_ripe_job_age_seconds",
        Seconds,
        "How long the oldest ripe job has waited"
    );
    describe_gauge!(
        "jobrunner_plugin_loaded",
        "Plugin versions each live runner serves (1)"
    );
    describe_gauge!(
        "jobrunner_plugin_load_failed",
        "1 if a live runner's last load of the job type's plugin failed"
    );
    describe_gauge!(
        "jobrunner_runners_live",
        "Runners that announced themselves in the last 30 s"
    );
    describe_gauge!(
        "jobrunner_db_pool_connections",
        "This process's database connections, in use and idle"
    );
}
