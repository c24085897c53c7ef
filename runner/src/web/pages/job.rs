//! `/jobs/{id}`: one job — its payload and result, every failed attempt with its error (a
//! trap's kind and backtrace are part of it), what each attempt logged and requested, its
//! parent and follow-ups — and the actions its state allows: retry a failed job, cancel an
//! available or running one.

use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect};
use jobrunner_client::{AttemptLog, Cancellation, JobFilter, JobRecord, JobState};
use maud::{Markup, html};
use serde::Deserialize;

use super::{PageError, PageResult, action_button, layout, state_badge, time};
use crate::web::AppState;

/// Follow-ups listed on a job's page; the jobs list shows them all.
const FOLLOW_UPS_SHOWN: u32 = 20;

/// A job's page.
pub async fn page(State(state): State<AppState>, Path(id): Path<String>) -> PageResult {
    let id = parse_id(&id)?;
    let job = state.queue.job(id).await?;
    let follow_ups = state
        .queue
        .job_summaries(&JobFilter {
            parent: Some(id),
            limit: FOLLOW_UPS_SHOWN,
            ..JobFilter::default()
        })
        .await?;
    let body = html! {
        h1 { "Job " (job.id) " " (state_badge(job.state.as_str())) }
        (actions(&state, &job))
        (facts(&job))
        h2 { "Payload" }
        pre #payload { (pretty(&job.payload)) }
        @if let Some(result) = &job.result {
            h2 { "Result" }
            pre #result { (pretty(result)) }
        }
        h2 { "Failed attempts" }
        @if job.errors.is_empty() {
            p.muted { "None." }
        } @else {
            table #attempts {
                tr { th.num { "Attempt" } th { "At" } th { "Plugin" } th { "Error" } }
                @for error in &job.errors {
                    tr {
                        td.num { (error.attempt) } td { (time(error.at)) }
                        td { (error.plugin_sha256.as_deref().map(|s| &s[..s.len().min(12)]).unwrap_or("-")) }
                        td { pre.error { (error.error) } }
                    }
                }
            }
        }
        h2 { "What each attempt logged and requested" }
        @if job.attempt_logs.is_empty() {
            p.muted { "Nothing kept: no attempt logged or requested anything, or none ended yet." }
        }
        @for log in &job.attempt_logs { (attempt_log(log)) }
        h2 { "Follow-ups" }
        @if follow_ups.is_empty() {
            p.muted { "None." }
        } @else {
            ul {
                @for f in &follow_ups {
                    li { a href={"/jobs/" (f.id)} { "job " (f.id) } " " (f.job_type) " " (state_badge(&f.state)) }
                }
            }
            p { a href={"/jobs?parent=" (id)} { "All follow-ups of this job" } }
        }
    };
    Ok(layout(&format!("Job {id}"), "/jobs", body).into_response())
}

fn attempt_log(log: &AttemptLog) -> Markup {
    html! {
        section.attempt id={"attempt-" (log.attempt)} {
            h3 { "Attempt " (log.attempt) }
            @if !log.log.is_empty() {
                @if log.log_cut { p.muted { "Older lines were cut: the last ones are kept." } }
                pre.log { (log.log) }
            }
            @if !log.http.is_empty() {
                table.http {
                    tr { th { "Method" } th { "URL" } th.num { "Status" } th.num { "ms" } th { "Error" } }
                    @for call in &log.http {
                        tr {
                            td { (call.method) } td { (call.url) }
                            td.num { (call.status.map_or("-".to_owned(), |s| s.to_string())) }
                            td.num { (call.duration_ms) }
                            td.error { (call.error.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    }
}

fn facts(job: &JobRecord) -> Markup {
    html! {
        dl {
            dt { "Type" } dd { a href={"/jobs?type=" (crate::web::auth::urlencode(&job.job_type))} { (job.job_type) } }
            dt { "Tenant" } dd { (job.tenant) }
            dt { "Attempt" } dd { (job.attempt) @if let Some(max) = job.max_attempts { " of " (max) } @else { " (runner's default limit)" } }
            dt { "Priority" } dd { (job.priority) }
            dt { "Enqueued" } dd { (time(job.created_at)) " UTC" }
            dt { "Run at" } dd { (time(job.run_at)) " UTC" }
            dt { "Updated" } dd { (time(job.updated_at)) " UTC" }
            @if let Some(owner) = &job.lease_owner { dt { "Held by" } dd { (owner) } }
            @if let Some(key) = &job.unique_key { dt { "Unique key" } dd { (key) } }
            @if let Some(parent) = job.parent_id { dt { "Parent" } dd { a href={"/jobs/" (parent)} { "job " (parent) } } }
            @if let Some(schedule) = &job.schedule { dt { "Schedule" } dd { a href="/schedules" { (schedule) } } }
            @if let Some(by) = &job.cancelled_by { dt { "Cancelled by" } dd #cancelled-by { (by) } }
        }
    }
}

fn actions(state: &AppState, job: &JobRecord) -> Markup {
    let id = job.id;
    html! {
        p {
            @if job.state == JobState::Failed { (action_button(state, &format!("/jobs/{id}/retry"), "Retry", &[])) }
            @if matches!(job.state, JobState::Available | JobState::Running) {
                (action_button(state, &format!("/jobs/{id}/cancel"), "Cancel", &[]))
            }
        }
    }
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn parse_id(id: &str) -> Result<i64, PageError> {
    id.parse()
        .map_err(|_| PageError::NotFound(format!("{id:?} is not a job id")))
}

/// An action form's only field.
#[derive(Deserialize)]
pub struct ActionForm {
    /// The CSRF token; missing is refused like wrong.
    #[serde(default)]
    pub csrf: String,
}

/// Who the dashboard says cancels.
pub const DASHBOARD: &str = "dashboard";

/// Retries a failed job, or cancels a job (a running one is stopped by its runner), then
/// shows it.
pub async fn act(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> PageResult {
    state.auth.check_csrf(&form.csrf)?;
    let id = parse_id(&id)?;
    let queue = &state.queue;
    match action.as_str() {
        "retry" => {
            queue.retry_job(id, state.default_max_attempts).await?;
        }
        "cancel" => {
            if let Cancellation::Cancelled(job) = queue.cancel(id, DASHBOARD).await? {
                crate::metrics::cancelled(&job.job_type, &job.tenant);
            }
        }
        other => return Err(PageError::NotFound(format!("no job action {other:?}"))),
    }
    tracing::info!(job_id = id, action, "job changed from the dashboard");
    Ok(Redirect::to(&format!("/jobs/{id}")).into_response())
}
