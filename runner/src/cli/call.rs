//! `runner call`: one job through the production sandbox and limits, without a database. The
//! plugin author's loop: build, call, read the result or the classified error. The plugin's
//! manifest (`<job-type>.toml` beside the `.wasm`) and the config file's policy for the job's
//! tenant apply as they would in a runner: its limits, the hosts it may call, its config, and
//! the config file's secrets.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::config::{FileConfig, SandboxSettings};
use crate::job::{InvalidJob, Job, validate_job_type};
use crate::plugins::{Policy, read_manifest};
use crate::retry::RetryPolicy;
use crate::sandbox::{Disposition, Limits, Sandbox, SandboxConfig, wasm_job_type};
use crate::secrets::Secrets;

/// Flags of `runner call`.
#[derive(Debug, clap::Args)]
pub struct CallArgs {
    /// The plugin: a WebAssembly component for the `job-handler` world.
    plugin: PathBuf,
    /// The payload, JSON text.
    #[arg(long, default_value = "{}")]
    payload: String,
    /// The tenant the job belongs to.
    #[arg(long, default_value = "default")]
    tenant: String,
    /// The job type the guest sees [default: the file name without .wasm]
    #[arg(long)]
    job_type: Option<String>,
    /// The attempt number the guest sees.
    #[arg(long, default_value_t = 1)]
    attempt: u32,
    /// The attempt limit the guest sees.
    #[arg(long, default_value_t = 25)]
    max_attempts: u32,
    #[command(flatten)]
    sandbox: SandboxSettings,
}

/// A checked `runner call`.
#[derive(Debug)]
pub struct Call {
    plugin: PathBuf,
    job: Job,
    sandbox: SandboxConfig,
    limits: Limits,
    secrets: Secrets,
}

impl CallArgs {
    /// Checks the flags (over the config file's `[sandbox]`) before anything runs.
    pub fn resolve(self, file: &FileConfig) -> anyhow::Result<Call> {
        serde_json::from_str::<serde::de::IgnoredAny>(&self.payload)
            .map_err(|e| InvalidJob::MalformedPayload(e.to_string()))?;
        let job_type = match self.job_type {
            Some(job_type) => {
                validate_job_type(&job_type)?;
                job_type
            }
            None => wasm_job_type(&self.plugin)?,
        };
        let (sandbox, limits) = file.sandbox(self.sandbox)?;
        let limits = policy_limits(&self.plugin, &self.tenant, file, &sandbox, limits)?;
        let job = Job {
            tenant: self.tenant,
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            ..Job::standalone(job_type, self.payload)
        };
        Ok(Call {
            plugin: self.plugin,
            job,
            sandbox,
            limits,
            secrets: file.secrets()?,
        })
    }
}

/// `limits` with the manifest beside `plugin`, if there is one, and `tenant`'s policy from the
/// config file.
fn policy_limits(
    plugin: &Path,
    tenant: &str,
    file: &FileConfig,
    sandbox: &SandboxConfig,
    limits: Limits,
) -> anyhow::Result<Limits> {
    let manifest = plugin.with_extension("toml");
    let limits = if manifest.exists() {
        let defaults = Policy::new(limits, RetryPolicy::default());
        read_manifest(&manifest, &defaults, sandbox.largest_memory())?.limits
    } else {
        limits
    };
    Ok(match file.tenants(sandbox)? {
        Some(tenants) => tenants.policy(tenant).limits(&limits, sandbox),
        None => limits,
    })
}

/// Runs the call: the result on stdout, or the classified error on stderr and exit code 1.
pub async fn call(call: Call) -> anyhow::Result<ExitCode> {
    let sandbox = Sandbox::new(call.sandbox)?;
    sandbox.set_secrets(call.secrets);
    let plugin = tokio::task::block_in_place(|| sandbox.load_as(&call.plugin, &call.job.job_type))
        .with_context(|| format!("cannot load {}", call.plugin.display()))?;
    let run = sandbox.run(&plugin, &call.job, &call.limits).await;
    for follow_up in &run.follow_ups {
        eprintln!(
            "follow-up (a runner would enqueue it with the completion): {} {}",
            follow_up.job_type(),
            follow_up.payload()
        );
    }
    let report = run.error_report();
    match run.result {
        Ok(Some(json)) => println!("{json}"),
        Ok(None) => eprintln!("completed with no result"),
        Err(error) => {
            let verdict = match error.disposition() {
                Disposition::Retry => "the runner would retry the job",
                Disposition::Fail => "the runner would fail the job",
                Disposition::Requeue => "the job did not run; the runner would requeue it",
            };
            eprintln!(
                "error ({verdict}): {}",
                report.unwrap_or_else(|| error.to_string())
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}
