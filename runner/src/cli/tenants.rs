//! `runner tenants`: every tenant's jobs by state, what it has running now, and its limits.

use std::process::ExitCode;
use std::time::Duration;

use bytesize::ByteSize;

use super::database::Database;
use crate::driver::{Driver, TenantOverview};
use crate::tenants::TenantPolicy;

/// Flags of `runner tenants`.
#[derive(Debug, clap::Args)]
pub struct TenantsArgs {
    /// Print JSON: one object per tenant, with its counts and its policy.
    #[arg(long)]
    json: bool,
}

/// Lists every tenant that has jobs or a policy of its own.
pub async fn tenants(db: &Database, args: TenantsArgs) -> anyhow::Result<ExitCode> {
    let queue = db.queue();
    queue.migrate().await?;
    let tenants = Driver::new(queue).tenant_overview().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&tenants)?);
        return Ok(ExitCode::SUCCESS);
    }
    print_tenants(&tenants);
    Ok(ExitCode::SUCCESS)
}

/// Prints one row per tenant: its jobs per state and its limits.
pub(super) fn print_tenants(tenants: &[TenantOverview]) {
    let header = [
        "TENANT",
        "AVAILABLE",
        "RUNNING",
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "MAX RUNNING",
        "RATE/S",
        "WEIGHT",
        "JOB TYPES",
        "SANDBOX",
    ];
    let rows: Vec<[String; 11]> = tenants
        .iter()
        .map(|t| {
            let p = &t.policy;
            [
                t.tenant.clone(),
                t.available.to_string(),
                t.running.to_string(),
                t.completed.to_string(),
                t.failed.to_string(),
                t.cancelled.to_string(),
                p.max_running.map_or("-".into(), |n| n.to_string()),
                p.rate.map_or("-".into(), |r| {
                    format!("{r} (burst {})", p.burst.unwrap_or(1.0))
                }),
                p.weight.to_string(),
                p.job_types
                    .as_ref()
                    .map_or("all".into(), |types| types.join(",")),
                sandbox_overrides(p),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no tenant has jobs or a policy yet");
    } else {
        super::print_table(header, &rows);
    }
}

fn sandbox_overrides(p: &TenantPolicy) -> String {
    let ms = |ms: i64| humantime::format_duration(Duration::from_millis(ms as u64)).to_string();
    let parts: Vec<String> = [
        p.memory.map(|m| format!("memory={}", ByteSize(m as u64))),
        p.cpu_budget_ms.map(|v| format!("cpu_budget={}", ms(v))),
        p.timeout_ms.map(|v| format!("timeout={}", ms(v))),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}
