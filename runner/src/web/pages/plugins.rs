//! `/plugins`: what each live runner serves — every job type's loaded version (sha256, when
//! and where from) and the last load error of each file — as the runners announce it.

use axum::extract::State;
use axum::response::IntoResponse;
use maud::html;

use super::{PageResult, cut, layout, time};
use crate::plugins::PluginStatus;
use crate::web::AppState;
use crate::web::sampler::PAGE_FRESH;

/// The plugins page.
pub async fn page(State(state): State<AppState>) -> PageResult {
    let snapshot = state.sampler.snapshot(PAGE_FRESH).await?;
    let body = html! {
        h1 { "Plugins" }
        @if snapshot.runners.is_empty() {
            p.muted { "No runner announced itself in the last 30 seconds." }
        }
        @for runner in &snapshot.runners {
            h2 { "Runner " (runner.owner) }
            p.muted { "Plugin directory " (runner.plugin_dir) ", started " (time(runner.started_at)) " UTC." }
            @let plugins: Vec<PluginStatus> = serde_json::from_value(runner.plugins.clone()).unwrap_or_default();
            table.plugins {
                tr { th { "Job type" } th { "SHA-256" } th { "Loaded at" } th.num { "Load ms" } th { "From" } th { "Source" } th { "Status" } }
                @for p in &plugins {
                    tr {
                        td { a href={"/jobs?type=" (crate::web::auth::urlencode(&p.job_type))} { (p.job_type) } }
                        @if let Some(v) = &p.serving {
                            td { code title=(v.sha256) { (&v.sha256[..v.sha256.len().min(16)]) } }
                            td { (time(v.loaded_at)) } td.num { (format!("{:.1}", v.load_ms)) }
                            td { (v.from) } td { (v.source) }
                        } @else {
                            td.muted colspan="5" { "no version serves" }
                        }
                        td {
                            @if let Some(error) = &p.error {
                                span.error title=(error) { "failed: " (cut(error, 200)) }
                                @if let Some(at) = p.failed_at { span.muted { " at " (time(at)) } }
                            } @else { (p.status) }
                        }
                    }
                }
            }
        }
    };
    Ok(layout("Plugins", "/plugins", body).into_response())
}
