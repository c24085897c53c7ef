//! `/types`: every job type with its jobs by state, and pause/resume: a paused type is claimed
//! by no runner until it is resumed.

use std::collections::BTreeMap;

use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect};
use jobrunner_client::JobState;
use maud::html;

use super::job::{ActionForm, DASHBOARD};
use super::{PageError, PageResult, action_button, layout, time};
use crate::web::AppState;
use crate::web::auth::urlencode;
use crate::web::sampler::PAGE_FRESH;

/// The job types page.
pub async fn page(State(state): State<AppState>) -> PageResult {
    let snapshot = state.sampler.snapshot(PAGE_FRESH).await?;
    let paused: BTreeMap<String, _> = state
        .queue
        .paused_job_types()
        .await?
        .into_iter()
        .map(|p| (p.job_type.clone(), p))
        .collect();
    let mut counts: BTreeMap<&str, [i64; 5]> = BTreeMap::new();
    for count in &snapshot.states {
        if let Some(column) = JobState::ALL.iter().position(|s| s.as_str() == count.state) {
            counts.entry(&count.job_type).or_default()[column] += count.count;
        }
    }
    for job_type in paused.keys() {
        counts.entry(job_type).or_default();
    }
    let body = html! {
        h1 { "Job types" }
        @if counts.is_empty() {
            p.muted { "No jobs yet." }
        } @else {
            table #types {
                tr { th { "Job type" } @for s in JobState::ALL { th.num { (s.as_str()) } } th { "Claiming" } th {} }
                @for (job_type, n) in &counts {
                    tr data-type=(job_type) {
                        td { a href={"/jobs?type=" (urlencode(job_type))} { (job_type) } }
                        @for count in n { td.num { (count) } }
                        @if let Some(p) = paused.get(*job_type) {
                            td.claiming { "paused" span.muted { " since " (time(p.paused_at)) " by " (p.paused_by) } }
                            td { (action_button(&state, &format!("/types/{}/resume", urlencode(job_type)), "Resume", &[])) }
                        } @else {
                            td.claiming { "claimed" }
                            td { (action_button(&state, &format!("/types/{}/pause", urlencode(job_type)), "Pause", &[])) }
                        }
                    }
                }
            }
        }
    };
    Ok(layout("Job types", "/types", body).into_response())
}

/// Pauses or resumes a job type, then shows the list.
pub async fn act(
    State(state): State<AppState>,
    Path((job_type, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> PageResult {
    state.auth.check_csrf(&form.csrf)?;
    match action.as_str() {
        "pause" => {
            state.queue.pause_job_type(&job_type, DASHBOARD).await?;
        }
        "resume" => {
            state.queue.resume_job_type(&job_type).await?;
        }
        other => return Err(PageError::NotFound(format!("no job type action {other:?}"))),
    }
    tracing::info!(job_type, action, "job type changed from the dashboard");
    Ok(Redirect::to("/types").into_response())
}
