//! `/plugins`: what each live runner serves — every job type's loaded version (sha256, when
//! and where from, its manifest, what it grants and limits) and the last load error of each
//! file — as the runners announce it.

use axum::extract::State;
use axum::response::IntoResponse;
use maud::{Markup, html};

use super::{PageResult, cut, layout, time};
use crate::plugins::{Grants, PluginStatus};
use crate::web::AppState;
use crate::web::sampler::PAGE_FRESH;

/// A version's grants and limits, one line each; what it is not granted is left out.
fn grants(g: &Grants) -> Markup {
    let list = |items: &[String]| items.join(", ");
    html! {
        @if !g.http_hosts.is_empty() { "http: " (list(&g.http_hosts)) br; }
        @if !g.config_keys.is_empty() { "config: " (list(&g.config_keys)) br; }
        @if !g.secrets.is_empty() { "secrets: " (list(&g.secrets)) br; }
        @if !g.follow_ups.is_empty() { "follow-ups: " (list(&g.follow_ups)) br; }
        @if let Some(tenants) = &g.tenants { "tenants: " (list(tenants)) br; }
        span.muted {
            "timeout " (g.timeout_ms) " ms, cpu " (g.cpu_budget_ms) " ms, memory "
            (bytesize::ByteSize(g.memory)) ", " (g.max_attempts) " attempts"
            @if let Some(n) = g.concurrency { ", at most " (n) " at once" }
        }
    }
}

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
                tr { th { "Job type" } th { "SHA-256" } th { "Loaded at" } th.num { "Load ms" } th { "From" } th { "Source, manifest" } th { "Grants and limits" } th { "Status" } }
                @for p in &plugins {
                    tr {
                        td { a href={"/jobs?type=" (crate::web::auth::urlencode(&p.job_type))} { (p.job_type) } }
                        @if let Some(v) = &p.serving {
                            td { code title=(v.sha256) { (&v.sha256[..v.sha256.len().min(16)]) } }
                            td { (time(v.loaded_at)) } td.num { (format!("{:.1}", v.load_ms)) }
                            td { (v.from) }
                            td { (v.source) @if let Some(m) = &v.manifest { br; (m) } @else { br; span.muted { "no manifest" } } }
                            td.grants { (grants(&v.grants)) }
                        } @else {
                            td.muted colspan="6" { "no version serves" }
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
