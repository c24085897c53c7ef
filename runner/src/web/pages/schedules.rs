//! `/schedules`: every cron schedule with its next fire times (in its zone and in UTC), its
//! last tick and job, its last error, and pause/resume.

use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect};
use jobrunner_client::schedules::ScheduleRecord;
use maud::{Markup, html};

use super::job::ActionForm;
use super::{PageError, PageResult, action_button, layout, state_badge, time};
use crate::web::AppState;

/// Next fire times shown per schedule.
const NEXT_TICKS: usize = 3;

/// The schedules page.
pub async fn page(State(state): State<AppState>) -> PageResult {
    let schedules = state.queue.schedules(None).await?;
    let now = state.queue.now();
    let body = html! {
        h1 { "Schedules" }
        @if schedules.is_empty() {
            p.muted { "No schedule yet: add one with `runner schedules add` or a plugin manifest." }
        } @else {
            table #schedules {
                tr {
                    th { "Tenant" } th { "Name" } th { "Cron" } th { "Job type" } th { "Next ticks" }
                    th { "Last tick" } th { "Last job" } th { "State" } th {}
                }
                @for s in &schedules {
                    tr data-schedule=(s.name) {
                        td { (s.tenant) } td { (s.name) }
                        td { code { (s.cron) } br; span.muted { (s.time_zone) } }
                        td { (s.job_type) }
                        td { (next_ticks(s, now)) }
                        td { (s.last_tick.map(time).unwrap_or_else(|| "-".into())) }
                        td {
                            @if let Some(id) = s.last_job_id {
                                a href={"/jobs/" (id)} { (id) }
                                @if let Some(js) = s.last_job_state { " " (state_badge(js.as_str())) }
                            } @else { "-" }
                            @if let Some(error) = &s.last_error { br; span.error { (error) } }
                        }
                        td.status { @if s.paused { "paused" } @else { "active" } }
                        td { (toggle(&state, s)) }
                    }
                }
            }
        }
    };
    Ok(layout("Schedules", "/schedules", body).into_response())
}

fn next_ticks(schedule: &ScheduleRecord, now: chrono::DateTime<chrono::Utc>) -> Markup {
    let Ok(recurrence) = schedule.recurrence() else {
        return html! { span.error { "cannot read this cron expression" } };
    };
    if schedule.paused {
        return html! { span.muted { "paused" } };
    }
    let zone = recurrence.zone();
    html! {
        @for tick in recurrence.ticks_after(now).take(NEXT_TICKS) {
            (tick.with_timezone(&zone).format("%Y-%m-%d %H:%M:%S %Z")) span.muted { " (" (time(tick)) " UTC)" } br;
        }
    }
}

fn toggle(state: &AppState, schedule: &ScheduleRecord) -> Markup {
    let base = format!(
        "/schedules/{}/{}",
        crate::web::auth::urlencode(&schedule.tenant),
        crate::web::auth::urlencode(&schedule.name)
    );
    if schedule.paused {
        action_button(state, &format!("{base}/resume"), "Resume", &[])
    } else {
        action_button(state, &format!("{base}/pause"), "Pause", &[])
    }
}

/// Pauses or resumes a schedule, then shows the list.
pub async fn act(
    State(state): State<AppState>,
    Path((tenant, name, action)): Path<(String, String, String)>,
    Form(form): Form<ActionForm>,
) -> PageResult {
    state.auth.check_csrf(&form.csrf)?;
    match action.as_str() {
        "pause" => state.queue.pause_schedule(&name, &tenant).await?,
        "resume" => state.queue.resume_schedule(&name, &tenant).await?,
        other => return Err(PageError::NotFound(format!("no schedule action {other:?}"))),
    }
    tracing::info!(
        tenant,
        schedule = name,
        action,
        "schedule changed from the dashboard"
    );
    Ok(Redirect::to("/schedules").into_response())
}
