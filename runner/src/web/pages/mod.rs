//! The dashboard's pages: server-rendered HTML (maud templates, which escape every value they
//! interpolate: payloads, errors and names are written by jobs and clients, so they are
//! attacker-controlled), one stylesheet compiled into the binary, and no JavaScript.

pub mod job;
pub mod jobs;
pub mod overview;
pub mod plugins;
pub mod schedules;
pub mod tenants;
pub mod types;

use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use super::AppState;

/// The stylesheet.
const STYLE: &str = include_str!("style.css");

/// Why a page or an action could not be served; shown as a page with the reason.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// No such job, schedule or page.
    #[error("{0}")]
    NotFound(String),
    /// The request's parameters are wrong.
    #[error("{0}")]
    BadRequest(String),
    /// Not allowed: read-only, or a missing CSRF token.
    #[error("{0}")]
    Forbidden(String),
    /// The queue refused or failed.
    #[error(transparent)]
    Queue(#[from] jobrunner_client::QueueError),
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        use jobrunner_client::QueueError;
        let status = match &self {
            PageError::NotFound(_)
            | PageError::Queue(QueueError::NotFound(_) | QueueError::ScheduleNotFound { .. }) => {
                StatusCode::NOT_FOUND
            }
            PageError::BadRequest(_) => StatusCode::BAD_REQUEST,
            PageError::Forbidden(_) => StatusCode::FORBIDDEN,
            PageError::Queue(QueueError::Database(_)) => StatusCode::SERVICE_UNAVAILABLE,
            PageError::Queue(_) => StatusCode::CONFLICT,
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(error = %self, "dashboard page failed");
        }
        let body = html! {
            h1 { (status.canonical_reason().unwrap_or("Error")) }
            p.error { (self.to_string()) }
            p { a href="/" { "Back to the overview" } }
        };
        (status, layout("Error", "", body)).into_response()
    }
}

/// A page's result.
pub type PageResult = Result<Response, PageError>;

/// Renders `body` in the dashboard's frame, with `current` highlighted in the navigation.
pub fn layout(title: &str, current: &str, body: Markup) -> Html<String> {
    let nav = [
        ("/", "Overview"),
        ("/jobs", "Jobs"),
        ("/types", "Job types"),
        ("/plugins", "Plugins"),
        ("/tenants", "Tenants"),
        ("/schedules", "Schedules"),
    ];
    page(
        title,
        html! {
            nav {
                span.brand { "jobrunner" }
                @for (href, name) in nav {
                    a href=(href) class=[(href == current).then_some("current")] { (name) }
                }
                a href="/metrics" { "Metrics" }
            }
            main { (body) }
        },
    )
}

/// A page without navigation (the login form).
pub fn layout_bare(title: &str, body: Markup) -> Html<String> {
    page(title, html! { main.narrow { (body) } })
}

fn page(title: &str, content: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · jobrunner" }
                    link rel="stylesheet" href="/assets/style.css";
                }
                body { (content) }
            }
        }
        .into_string(),
    )
}

/// The stylesheet.
pub async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        STYLE,
    )
        .into_response()
}

/// Any other path.
pub async fn not_found() -> PageError {
    PageError::NotFound("no such page".into())
}

/// A time as pages show it: UTC, to the second.
pub fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// A job's state as a coloured badge.
pub fn state_badge(state: &str) -> Markup {
    html! { span class={"state " (state)} { (state) } }
}

/// A POST form of one button, carrying the CSRF token; nothing on a read-only dashboard.
pub fn action_button(
    state: &AppState,
    action: &str,
    label: &str,
    fields: &[(&str, &str)],
) -> Markup {
    if state.read_only {
        return html! {};
    }
    html! {
        form.inline method="post" action=(action) {
            input type="hidden" name="csrf" value=(state.auth.csrf());
            @for (name, value) in fields {
                input type="hidden" name=(name) value=(value);
            }
            button type="submit" { (label) }
        }
    }
}

/// Cuts `text` to `max` characters, marking the cut.
pub fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}
