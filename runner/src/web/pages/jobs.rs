//! `/jobs`: jobs filtered by state, type, tenant, parent, schedule and enqueue time, newest
//! first, a page at a time (keyset pagination: `before=ID`, so page 1,000 costs what page 1
//! does), and bulk retry, cancel or delete of everything a filter selects, after a
//! confirmation that says how many jobs it will change.

use axum::Form;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use jobrunner_client::{BulkAction, JobFilter, JobState};
use maud::{Markup, html};
use serde::Deserialize;

use super::{PageError, PageResult, cut, layout, state_badge, time};
use crate::web::AppState;
use crate::web::auth::urlencode;

/// Jobs per page unless `limit` says otherwise.
const PAGE: u32 = 50;
/// The largest page.
const MAX_PAGE: u32 = 500;

/// The filters, as query parameters (and as the bulk form's fields).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct FilterParams {
    state: Option<String>,
    #[serde(rename = "type")]
    job_type: Option<String>,
    tenant: Option<String>,
    parent: Option<String>,
    schedule: Option<String>,
    /// Enqueued at or after (RFC 3339, or `YYYY-MM-DD[THH:MM]` in UTC).
    from: Option<String>,
    /// Enqueued before.
    until: Option<String>,
    before: Option<String>,
    limit: Option<String>,
}

impl FilterParams {
    /// The filter these parameters ask for, or why they are wrong.
    fn filter(&self) -> Result<JobFilter, PageError> {
        let given = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
        let state = given(&self.state)
            .map(|s| {
                s.parse::<JobState>()
                    .map_err(|_| bad(format!("unknown state {s:?}: use one of available, running, completed, failed, cancelled")))
            })
            .transpose()?;
        let number = |name: &str, value: &Option<String>| {
            given(value)
                .map(|v| {
                    v.trim()
                        .parse::<i64>()
                        .map_err(|_| bad(format!("{name} must be a job id, not {v:?}")))
                })
                .transpose()
        };
        let limit = match given(&self.limit) {
            None => PAGE,
            Some(v) => match v.trim().parse::<u32>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
                _ => {
                    return Err(bad(format!(
                        "limit must be between 1 and {MAX_PAGE}, not {v:?}"
                    )));
                }
            },
        };
        Ok(JobFilter {
            state,
            job_type: given(&self.job_type),
            tenant: given(&self.tenant),
            parent: number("parent", &self.parent)?,
            schedule: given(&self.schedule),
            created_from: given(&self.from)
                .map(|v| parse_time("from", &v))
                .transpose()?,
            created_until: given(&self.until)
                .map(|v| parse_time("until", &v))
                .transpose()?,
            before_id: number("before", &self.before)?,
            limit,
        })
    }

    /// The filter fields as `(name, value)` pairs, the cursor left out.
    fn fields(&self) -> Vec<(&'static str, String)> {
        [
            ("state", &self.state),
            ("type", &self.job_type),
            ("tenant", &self.tenant),
            ("parent", &self.parent),
            ("schedule", &self.schedule),
            ("from", &self.from),
            ("until", &self.until),
            ("limit", &self.limit),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.clone().filter(|v| !v.is_empty()).map(|v| (name, v)))
        .collect()
    }

    /// The query string of these filters, the cursor left out.
    fn query_string(&self) -> String {
        let fields: Vec<String> = self
            .fields()
            .into_iter()
            .map(|(name, value)| format!("{name}={}", urlencode(&value)))
            .collect();
        fields.join("&")
    }

    fn describe(&self) -> String {
        let fields = self.fields();
        if fields.is_empty() {
            return "every job".into();
        }
        let parts: Vec<String> = fields.iter().map(|(n, v)| format!("{n} = {v}")).collect();
        format!("jobs with {}", parts.join(", "))
    }
}

fn bad(message: String) -> PageError {
    PageError::BadRequest(message)
}

/// RFC 3339, or a date and time (or a date) taken as UTC.
fn parse_time(name: &str, value: &str) -> Result<DateTime<Utc>, PageError> {
    let value = value.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(value) {
        return Ok(at.to_utc());
    }
    for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"] {
        if let Ok(at) = NaiveDateTime::parse_from_str(value, format) {
            return Ok(at.and_utc());
        }
    }
    NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .map(|day| day.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc())
        .map_err(|_| {
            bad(format!(
                "{name} must be a time like 2026-12-07T08:00 (UTC) or RFC 3339, not {value:?}"
            ))
        })
}

/// The jobs list.
pub async fn page(State(state): State<AppState>, Query(params): Query<FilterParams>) -> PageResult {
    let filter = params.filter()?;
    let jobs = state.queue.job_summaries(&filter).await?;
    let next = (jobs.len() == filter.limit as usize)
        .then(|| jobs.last().map(|j| j.id))
        .flatten();
    let query = params.query_string();
    let body = html! {
        h1 { "Jobs" }
        (filters(&params))
        @if jobs.is_empty() {
            p.muted { "No job matches." }
        } @else {
            table #jobs {
                tr {
                    th.num { "ID" } th { "Type" } th { "Tenant" } th { "State" } th.num { "Attempt" }
                    th { "Enqueued" } th { "Run at" } th { "Last error" } th { "From" }
                }
                @for job in &jobs {
                    tr {
                        td.num { a href={"/jobs/" (job.id)} { (job.id) } }
                        td { (job.job_type) } td { (job.tenant) } td { (state_badge(&job.state)) }
                        td.num { (job.attempt) @if let Some(max) = job.max_attempts { " / " (max) } }
                        td { (time(job.created_at)) } td { (time(job.run_at)) }
                        td.error { (job.last_error.as_deref().map(|e| cut(e, 120)).unwrap_or_default()) }
                        td {
                            @if let Some(parent) = job.parent_id { "job " a href={"/jobs/" (parent)} { (parent) } }
                            @if let Some(schedule) = &job.schedule { "schedule " (schedule) }
                        }
                    }
                }
            }
        }
        div.pager {
            @if params.before.is_some() { a href={"/jobs?" (query)} { "« Newest" } " " }
            @if let Some(next) = next { a #next href={"/jobs?" (query) "&before=" (next)} { "Older »" } }
        }
        @if !state.read_only { (bulk_form(&state, &params)) }
    };
    Ok(layout("Jobs", "/jobs", body).into_response())
}

fn filters(params: &FilterParams) -> Markup {
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    let text = |label: &str, name: &str, v: &Option<String>, placeholder: &str| {
        html! { label { (label) input type="text" name=(name) value=(value(v)) placeholder=(placeholder); } }
    };
    html! {
        form.filters method="get" action="/jobs" {
            label { "State"
                select name="state" {
                    option value="" { "any" }
                    @for s in JobState::ALL {
                        option value=(s.as_str()) selected[params.state.as_deref() == Some(s.as_str())] { (s.as_str()) }
                    }
                }
            }
            (text("Type", "type", &params.job_type, "any"))
            (text("Tenant", "tenant", &params.tenant, "any"))
            (text("Parent job", "parent", &params.parent, "id"))
            (text("Schedule", "schedule", &params.schedule, "name"))
            (text("Enqueued from", "from", &params.from, "2026-12-07T08:00"))
            (text("until", "until", &params.until, "UTC"))
            button type="submit" { "Filter" }
            a href="/jobs" { "Clear" }
        }
    }
}

fn bulk_form(state: &AppState, params: &FilterParams) -> Markup {
    html! {
        h2 { "Act on every job of this filter" }
        form.filters method="post" action="/jobs/bulk" {
            input type="hidden" name="csrf" value=(state.auth.csrf());
            @for (name, value) in params.fields() { input type="hidden" name=(name) value=(value); }
            label { "Action"
                select name="action" {
                    option value="retry" { "retry the failed ones" }
                    option value="cancel" { "cancel the available ones" }
                    option value="delete" { "delete the finished ones" }
                }
            }
            button type="submit" { "Review…" }
        }
    }
}

/// The bulk form's fields: the action, its confirmation, the CSRF token and the filters.
#[derive(Debug, Deserialize)]
pub struct BulkForm {
    action: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    confirm: Option<String>,
    #[serde(flatten)]
    params: FilterParams,
}

/// Shows how many jobs an action would change and asks to confirm; once confirmed, does it.
pub async fn bulk(State(state): State<AppState>, Form(form): Form<BulkForm>) -> PageResult {
    state.auth.check_csrf(&form.csrf)?;
    let action = match form.action.as_str() {
        "retry" => BulkAction::Retry,
        "cancel" => BulkAction::Cancel,
        "delete" => BulkAction::Delete,
        other => {
            return Err(bad(format!(
                "unknown action {other:?}: use retry, cancel or delete"
            )));
        }
    };
    let mut params = form.params.clone();
    params.before = None;
    let filter = params.filter()?;
    let states: Vec<&str> = action.states().iter().map(|s| s.as_str()).collect();
    let what = format!("{} ({} only)", params.describe(), states.join(", "));
    let back = format!("/jobs?{}", params.query_string());
    if form.confirm.as_deref() != Some("yes") {
        let count = state.queue.count_for(&filter, action).await?;
        let body = html! {
            h1 { "Confirm: " (form.action) " " (count) " jobs" }
            div.confirm {
                p { "This will " strong { (form.action) } " " strong #count { (count) } " " (what) "." }
                form.inline method="post" action="/jobs/bulk" {
                    input type="hidden" name="csrf" value=(state.auth.csrf());
                    input type="hidden" name="action" value=(form.action);
                    input type="hidden" name="confirm" value="yes";
                    @for (name, value) in params.fields() { input type="hidden" name=(name) value=(value); }
                    button #confirm type="submit" { "Yes, " (form.action) " them" }
                }
                " " a href=(back) { "No, go back" }
            }
        };
        return Ok(layout("Confirm", "/jobs", body).into_response());
    }
    let changed = state
        .queue
        .bulk(&filter, action, state.default_max_attempts)
        .await?;
    if action == BulkAction::Cancel {
        for (job_type, tenant) in &changed {
            crate::metrics::cancelled(job_type, tenant);
        }
    }
    tracing::info!(action = %form.action, jobs = changed.len(), filter = %what, "dashboard bulk action");
    let body = html! {
        h1 { "Done" }
        p #done { (form.action) ": " (changed.len()) " jobs changed, of " (what) "." }
        p { a href=(back) { "Back to the list" } }
    };
    Ok(layout("Done", "/jobs", body).into_response())
}
