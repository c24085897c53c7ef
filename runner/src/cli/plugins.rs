//! `runner plugins`: what every live runner serves, as the runners announced it.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

use chrono::Utc;

use super::database::Database;
use super::jobs::one_line;
use crate::Queue;
use crate::driver::{Driver, RunnerInfo};
use crate::plugins::{PluginStatus, ServingVersion};

/// A runner that has not refreshed its announcement for this long is not listed.
const LIVE: Duration = Duration::from_secs(30);

/// Flags of `runner plugins`.
#[derive(Debug, clap::Args)]
pub struct PluginsArgs {
    /// Print JSON: one object per runner, with its plugins.
    #[arg(long)]
    json: bool,
}

/// Lists the plugins of every runner seen in the last 30 seconds.
pub async fn plugins(db: &Database, args: PluginsArgs) -> anyhow::Result<ExitCode> {
    let queue = db.queue();
    queue.migrate().await?;
    let runners = Driver::new(queue).runners(LIVE).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&runners)?);
    } else if runners.is_empty() {
        println!("no runner is running (none announced itself in the last {LIVE:?})");
    } else {
        runners.iter().for_each(print_runner);
    }
    Ok(ExitCode::SUCCESS)
}

/// The job types some live runner serves now; `None` when no runner is live.
pub(super) async fn served_job_types(queue: &Queue) -> anyhow::Result<Option<BTreeSet<String>>> {
    let runners = Driver::new(queue.clone()).runners(LIVE).await?;
    if runners.is_empty() {
        return Ok(None);
    }
    let served = runners
        .iter()
        .flat_map(statuses)
        .filter(|plugin| plugin.serving.is_some())
        .map(|plugin| plugin.job_type);
    Ok(Some(served.collect()))
}

fn statuses(runner: &RunnerInfo) -> Vec<PluginStatus> {
    serde_json::from_value(runner.plugins.clone()).unwrap_or_default()
}

fn print_runner(runner: &RunnerInfo) {
    let seen = (Utc::now() - runner.seen_at).num_seconds().max(0);
    println!(
        "runner {}  plugins {}  (started {}, seen {seen}s ago)",
        runner.owner,
        runner.plugin_dir,
        runner.started_at.format("%Y-%m-%d %H:%M:%S")
    );
    let plugins = statuses(runner);
    let header = [
        "JOB TYPE",
        "SHA256",
        "LOADED AT",
        "LOAD MS",
        "FROM",
        "SOURCE",
        "STATUS",
    ];
    let rows: Vec<[String; 7]> = plugins
        .iter()
        .map(|p| {
            let serving = p.serving.as_ref();
            let show = |f: &dyn Fn(&ServingVersion) -> String| serving.map_or("-".into(), f);
            [
                p.job_type.clone(),
                show(&|v| v.sha256[..12].to_owned()),
                show(&|v| v.loaded_at.format("%Y-%m-%d %H:%M:%S").to_string()),
                show(&|v| format!("{:.1}", v.load_ms)),
                show(&|v| v.from.clone()),
                show(&|v| v.source.clone()),
                match &p.error {
                    Some(error) => format!("failed: {}", one_line(error, 100)),
                    None => p.status.clone(),
                },
            ]
        })
        .collect();
    super::print_table(header, &rows);
    println!();
}
