//! `/`: the queue at a glance. Jobs by state for each type and tenant, throughput and queue
//! depth over the last hour as inline SVG charts, and the live runners.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::IntoResponse;
use chrono::Utc;
use jobrunner_client::JobState;
use maud::{Markup, html};

use super::{PageResult, layout, time};
use crate::web::AppState;
use crate::web::sampler::PAGE_FRESH;
use crate::web::sampler::{Sample, Snapshot};

/// The overview page.
pub async fn page(State(state): State<AppState>) -> PageResult {
    let snapshot = state.sampler.snapshot(PAGE_FRESH).await?;
    let history = state.sampler.history();
    let body = html! {
        h1 { "Overview" }
        (cards(&snapshot))
        h2 { "The last hour" }
        (charts(&history))
        h2 { "Jobs by type" }
        (by_state(&snapshot, |c| &c.job_type, "type"))
        h2 { "Jobs by tenant" }
        (by_state(&snapshot, |c| &c.tenant, "tenant"))
        h2 { "Live runners" }
        (runners(&snapshot))
    };
    Ok(layout("Overview", "/", body).into_response())
}

fn cards(snapshot: &Snapshot) -> Markup {
    let ripe: i64 = snapshot.ripe.iter().map(|r| r.count).sum();
    let oldest = snapshot
        .ripe
        .iter()
        .map(|r| r.oldest_secs)
        .fold(0.0, f64::max);
    let card = |label: &str, value: String, href: Option<&str>| {
        html! {
            div.card {
                div.muted { (label) }
                div.n { @if let Some(href) = href { a href=(href) { (value) } } @else { (value) } }
            }
        }
    };
    html! {
        div.cards {
            (card("Available", snapshot.in_state("available").to_string(), Some("/jobs?state=available")))
            (card("Ripe, waiting", ripe.to_string(), None))
            (card("Oldest ripe", format!("{oldest:.1} s"), None))
            (card("Running", snapshot.in_state("running").to_string(), Some("/jobs?state=running")))
            (card("Failed", snapshot.in_state("failed").to_string(), Some("/jobs?state=failed")))
            (card("Live runners", snapshot.runners.len().to_string(), Some("/plugins")))
        }
        p.muted { "As of " (time(snapshot.at)) " UTC." }
    }
}

/// A table of job counts: one row per key (type or tenant), one column per state.
fn by_state(
    snapshot: &Snapshot,
    key: impl Fn(&crate::web::sampler::StateCount) -> &String,
    param: &str,
) -> Markup {
    let mut rows: BTreeMap<&str, [i64; 5]> = BTreeMap::new();
    for count in &snapshot.states {
        let column = JobState::ALL.iter().position(|s| s.as_str() == count.state);
        if let Some(column) = column {
            rows.entry(key(count).as_str()).or_default()[column] += count.count;
        }
    }
    html! {
        @if rows.is_empty() {
            p.muted { "No jobs yet." }
        } @else {
            table id={"jobs-by-" (param)} {
                tr { th { (param) } @for s in JobState::ALL { th.num { (s.as_str()) } } }
                @for (name, counts) in &rows {
                    tr {
                        td { a href={"/jobs?" (param) "=" (crate::web::auth::urlencode(name))} { (name) } }
                        @for (s, n) in JobState::ALL.iter().zip(counts) {
                            td.num {
                                @if *n > 0 {
                                    a href={"/jobs?" (param) "=" (crate::web::auth::urlencode(name)) "&state=" (s.as_str())} { (n) }
                                } @else { span.muted { "0" } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn charts(history: &[Sample]) -> Markup {
    if history.len() < 2 {
        return html! {
            p.muted { "The charts fill in as this dashboard samples the queue (every 10 s)." }
        };
    }
    let series = |f: fn(&Sample) -> f64| history.iter().map(f).collect::<Vec<f64>>();
    html! {
        div.charts {
            (chart("Throughput (jobs/s)", &[
                ("completed", "#2e9e5b", series(|s| s.completed_per_s)),
                ("failed", "#d92d20", series(|s| s.failed_per_s)),
            ], history))
            (chart("Queue depth (jobs)", &[
                ("available", "#2357c6", series(|s| s.available as f64)),
                ("ripe", "#7a5af8", series(|s| s.ripe as f64)),
                ("running", "#dc8b0b", series(|s| s.running as f64)),
            ], history))
        }
    }
}

const WIDTH: f64 = 560.0;
const HEIGHT: f64 = 160.0;
const PAD: f64 = 30.0;

/// A line chart of `lines` over the samples' times, as inline SVG.
fn chart(title: &str, lines: &[(&str, &str, Vec<f64>)], history: &[Sample]) -> Markup {
    let max = lines
        .iter()
        .flat_map(|(_, _, values)| values.iter().copied())
        .fold(0.0, f64::max)
        .max(1.0);
    let n = history.len();
    let x = |i: usize| PAD + (WIDTH - 2.0 * PAD) * i as f64 / (n - 1) as f64;
    let y = |v: f64| HEIGHT - PAD + (-(HEIGHT - 2.0 * PAD) * v / max);
    let since = (Utc::now() - history[0].at).num_minutes();
    html! {
        div.chart {
            div { strong { (title) } span.muted { " — last " (since.max(1)) " min, max " (format!("{max:.1}")) } }
            svg width=(WIDTH) height=(HEIGHT) viewBox={"0 0 " (WIDTH) " " (HEIGHT)} role="img" aria-label=(title) {
                line x1=(PAD) y1=(HEIGHT - PAD) x2=(WIDTH - PAD) y2=(HEIGHT - PAD) stroke="#ccc" {}
                line x1=(PAD) y1=(PAD) x2=(PAD) y2=(HEIGHT - PAD) stroke="#ccc" {}
                text x="2" y=(PAD + 4.0) font-size="10" fill="#5c6778" { (format!("{max:.0}")) }
                text x="2" y=(HEIGHT - PAD) font-size="10" fill="#5c6778" { "0" }
                @for (i, (name, colour, values)) in lines.iter().enumerate() {
                    polyline fill="none" stroke=(colour) stroke-width="2"
                        points=(values.iter().enumerate().map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v))).collect::<Vec<_>>().join(" ")) {}
                    text x=(PAD + 90.0 * i as f64) y=(HEIGHT - 8.0) font-size="11" fill=(colour) { "■ " (name) }
                }
            }
        }
    }
}

fn runners(snapshot: &Snapshot) -> Markup {
    html! {
        @if snapshot.runners.is_empty() {
            p.muted { "No runner announced itself in the last 30 seconds." }
        } @else {
            table {
                tr { th { "Runner" } th { "Plugin directory" } th { "Started" } th { "Seen" } th.num { "Completed" } th.num { "Failed" } }
                @for r in &snapshot.runners {
                    tr {
                        td { (r.owner) } td { (r.plugin_dir) } td { (time(r.started_at)) }
                        td { (time(r.seen_at)) } td.num { (r.completed) } td.num { (r.failed) }
                    }
                }
            }
        }
    }
}
