//! jobrunner: background jobs stored in PostgreSQL, each job type a sandboxed WebAssembly
//! component.
//!
//! The crate reads like the architecture:
//! - [`client`] (the `jobrunner-client` crate, re-exported) is what applications use: enqueue,
//!   admin, migrations. It does not depend on the rest.
//! - [`driver`] is the runner's side of the queue: claims, outcome batches, leases, floors.
//! - [`worker`] is the loop that claims ripe jobs, runs them through an [`Executor`] and writes
//!   their outcomes back in batches, with heartbeats, a lease rescuer and a graceful shutdown.
//! - [`executor`] is the seam between the queue and whatever runs a job; [`WasmExecutor`] runs
//!   each job in the [`sandbox`], a fresh WebAssembly component instance of the job type's
//!   plugin, loaded from the [`plugins`] directory.
//! - [`tenants`] is the tenant policy: what each tenant may run, and its share of the runners.
//! - [`retry`] decides when a failed attempt runs again; [`clock`] is the one source of "now".
//! - [`runner`] puts it all together: [`Runner::builder`] is what `runner run` runs, and what
//!   tests and embedders start in process.
//! - [`web`] is the HTTP listener: health checks, the Prometheus [`metrics`] and the dashboard.
//! - [`config`] merges flags, environment and the TOML file; [`cli`] is the `runner` binary;
//!   [`private_pg`] starts a throwaway PostgreSQL when none is configured.

pub mod cli;
pub mod config;
pub mod driver;
pub mod executor;
pub mod job;
pub mod metrics;
pub mod plugins;
pub mod private_pg;
pub mod retry;
pub mod runner;
pub mod sandbox;
pub mod secrets;
pub mod tenants;
pub mod text;
pub mod web;
pub mod worker;

pub use jobrunner_client as client;
pub use jobrunner_client::{
    Clock, JobState, ManualClock, NewJob, Queue, QueueError, Schedule, SystemClock, Unique, clock,
};

pub use executor::{Executor, Handlers, JobError, JobResult, WasmExecutor};
pub use job::Job;
pub use retry::{Backoff, RetryPolicy};
pub use runner::{RunConfig, Runner, RunnerBuilder};
pub use sandbox::{Limits, Sandbox, SandboxConfig};
pub use worker::{Worker, WorkerConfig, WorkerHandle};
