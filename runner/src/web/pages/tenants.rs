//! `/tenants`: every tenant's policy and its use of it — jobs running against `max_running`,
//! jobs by state, the job types it may run, its sandbox and HTTP overrides, and its config
//! keys (never their values' secrets: config holds no secrets, but is shown by key only).

use axum::extract::State;
use axum::response::IntoResponse;
use maud::html;

use super::{PageResult, layout};
use crate::driver::Driver;
use crate::web::AppState;

/// The tenants page.
pub async fn page(State(state): State<AppState>) -> PageResult {
    let tenants = Driver::new(state.queue.clone()).tenant_overview().await?;
    let body = html! {
        h1 { "Tenants" }
        @if tenants.is_empty() {
            p.muted { "No tenant has jobs or a policy yet." }
        } @else {
            table #tenants {
                tr {
                    th { "Tenant" } th.num { "Running / max" } th.num { "Available" } th.num { "Completed" }
                    th.num { "Failed" } th.num { "Cancelled" } th { "Rate /s (burst)" } th.num { "Weight" }
                    th { "Job types" } th { "Sandbox" } th { "HTTP hosts" } th { "Config keys" }
                }
                @for t in &tenants {
                    @let p = &t.policy;
                    tr {
                        td { a href={"/jobs?tenant=" (crate::web::auth::urlencode(&t.tenant))} { (t.tenant) } }
                        td.num { (t.running) " / " (p.max_running.map_or("∞".to_owned(), |n| n.to_string())) }
                        td.num { (t.available) } td.num { (t.completed) } td.num { (t.failed) } td.num { (t.cancelled) }
                        td { (p.rate.map_or("-".to_owned(), |r| format!("{r} ({})", p.burst.unwrap_or(1.0)))) }
                        td.num { (p.weight) }
                        td { (p.job_types.as_ref().map_or("all".to_owned(), |t| t.join(", "))) }
                        td {
                            @if let Some(m) = p.memory { "memory " (bytesize::ByteSize(m as u64)) " " }
                            @if let Some(ms) = p.cpu_budget_ms { "cpu " (ms) " ms " }
                            @if let Some(ms) = p.timeout_ms { "timeout " (ms) " ms" }
                        }
                        td { (p.http.0.allowed_hosts.as_ref().map_or("plugin's grant".to_owned(), |h| h.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))) }
                        td { (p.config.0.keys().cloned().collect::<Vec<_>>().join(", ")) }
                    }
                }
            }
        }
    };
    Ok(layout("Tenants", "/tenants", body).into_response())
}
