//! The `runner` command line: parse, load the config file, set up logs, connect, dispatch.

mod bench;
mod call;
mod dashboard;
mod database;
mod demo;
mod enqueue;
mod failover;
pub mod fake_apis;
mod jobs;
mod local_server;
mod plugins;
mod run;
mod schedules;
mod tenants;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

use crate::worker::{LogStream, OUTCOME_TARGET, OutcomeWriter};

use crate::config::{FileConfig, LogFormat};

/// Runs background jobs stored in PostgreSQL; every job type is a sandboxed WebAssembly
/// component.
#[derive(Debug, Parser)]
#[command(name = "runner", version, propagate_version = true)]
pub struct Cli {
    /// PostgreSQL URL. Without one, the runner uses the local default server (PGHOST, PGPORT,
    /// ...), or starts a private cluster if nothing answers there.
    /// It may name several hosts, with `target_session_attrs=read-write` to follow the
    /// primary across a failover (`postgres://u@db1,db2/jobs?target_session_attrs=read-write`).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,

    /// The database URL goes through a pooler in transaction mode (PgBouncer's `pool_mode =
    /// transaction`): every statement runs in a transaction, with no prepared statement or
    /// session state outliving it.
    #[arg(long, env = "DATABASE_POOLED", global = true)]
    pooled: bool,

    /// A direct PostgreSQL URL, beside a pooled one, for what needs a session: LISTEN (without
    /// it, runners poll) and the migration lock (without it, migrating is refused).
    #[arg(
        long,
        env = "DATABASE_LISTEN_URL",
        global = true,
        hide_env_values = true
    )]
    listen_url: Option<String>,

    /// The most connections to PostgreSQL this process opens at once, LISTEN's included
    /// [default: 14, at least 8]. Across runners, their sum must stay below the server's
    /// max_connections (or PgBouncer's max_client_conn).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", global = true)]
    max_connections: Option<u32>,

    /// TOML config file (keys as in the flags; worker settings under [worker], sandbox
    /// settings under [sandbox], outgoing HTTP under [http], secrets under [secrets], tenant
    /// policy under [tenant_defaults] and [tenants.NAME]). `runner run` reads its secrets
    /// again on SIGHUP.
    #[arg(long, env = "JOBRUNNER_CONFIG", global = true)]
    config: Option<PathBuf>,

    /// Log format: text on stderr, or one JSON object per line on stdout [default: text]
    #[arg(long, value_enum, global = true)]
    log_format: Option<LogFormat>,

    /// Data directory for the private PostgreSQL cluster [default: ~/.local/share/jobrunner/postgres,
    /// or /var/lib/jobrunner/postgres as root]
    #[arg(long, env = "JOBRUNNER_PG_DIR", global = true)]
    private_pg_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply pending schema migrations and exit.
    Migrate,
    /// Run jobs with the plugins in a directory until SIGINT or SIGTERM (a second signal exits
    /// at once).
    Run(run::RunArgs),
    /// Run one job in the sandbox, without a database, and print its result or error.
    Call(call::CallArgs),
    /// Enqueue a job and print its id.
    Enqueue(enqueue::EnqueueArgs),
    /// List the plugins each live runner serves: version (sha256), load time, source and
    /// status (ok, or failed with the reason).
    Plugins(plugins::PluginsArgs),
    /// List tenants: their jobs by state, running now, and their limits (the published tenant
    /// policy).
    Tenants(tenants::TenantsArgs),
    /// List, show, retry and cancel jobs.
    Jobs {
        #[command(subcommand)]
        command: jobs::JobsCommand,
    },
    /// Add, list, show, pause, resume, remove and run cron schedules.
    Schedules {
        #[command(subcommand)]
        command: schedules::SchedulesCommand,
    },
    /// Measure enqueue and drain throughput, enqueue-to-start latency and sandbox
    /// instantiate+call, in a database of its own (created and dropped).
    Bench(bench::BenchArgs),
    /// Serve the health checks, metrics and dashboard of `runner run --http` without running
    /// jobs.
    Dashboard(dashboard::DashboardArgs),
    /// Start from nothing and show jobs running: a fresh database, jobs from every door,
    /// retries, a permanent failure, sandboxed misbehaviour, a delayed job and a cron schedule.
    Demo(demo::DemoArgs),
}

/// Entry point of the `runner` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match try_main(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main(cli: Cli) -> anyhow::Result<ExitCode> {
    let file = match &cli.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    // The demo's backlog would print a line per job: it shows a progress line instead.
    let default_filter = match cli.command {
        Command::Demo(_) => "info,sqlx=warn,jobrunner::outcome=warn",
        _ => "info,sqlx=warn",
    };
    let format = cli.log_format.or(file.log_format).unwrap_or_default();
    let _flush_logs_at_exit = init_logging(format, default_filter);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(dispatch(cli, file))
}

/// A command whose input has been checked: nothing touches the database before this.
enum Prepared {
    Migrate,
    Run(crate::runner::RunConfig),
    Call(call::Call),
    Enqueue(crate::job::NewJob),
    Jobs(jobs::JobsCommand, crate::retry::RetryPolicy),
    Schedules(schedules::SchedulesCommand),
    Plugins(plugins::PluginsArgs),
    Tenants(tenants::TenantsArgs),
    Demo(crate::runner::RunConfig, demo::Ending),
    Dashboard(dashboard::Dashboard),
    Bench(Box<bench::Bench>),
}

impl Command {
    fn prepare(self, file: &FileConfig) -> anyhow::Result<Prepared> {
        Ok(match self {
            Command::Migrate => Prepared::Migrate,
            Command::Run(args) => Prepared::Run(args.resolve(file)?),
            Command::Call(args) => Prepared::Call(args.resolve(file)?),
            Command::Enqueue(args) => Prepared::Enqueue(args.to_job()?),
            Command::Plugins(args) => Prepared::Plugins(args),
            Command::Tenants(args) => Prepared::Tenants(args),
            Command::Jobs { command } => Prepared::Jobs(command, file.worker.retry_policy()?),
            Command::Schedules { command } => {
                command.check()?;
                Prepared::Schedules(command)
            }
            Command::Demo(args) => Prepared::Demo(
                demo::with_demo_defaults(args.run).resolve(file)?,
                demo::Ending::of(args.exit),
            ),
            Command::Dashboard(args) => Prepared::Dashboard(args.resolve(file)?),
            Command::Bench(args) => Prepared::Bench(Box::new(args.resolve(file)?)),
        })
    }
}

async fn dispatch(cli: Cli, file: FileConfig) -> anyhow::Result<ExitCode> {
    let command = cli.command.prepare(&file)?;
    if let Prepared::Call(call) = command {
        return call::call(call).await;
    }
    let target = database::Target {
        url: cli.database_url.or(file.database_url),
        pooled: cli.pooled || file.database_pooled.unwrap_or(false),
        listen_url: cli.listen_url.or(file.database_listen_url),
        max_connections: cli.max_connections.or(file.database_max_connections),
        private_dir: cli.private_pg_dir,
    };
    let db = database::Database::connect(target).await?;
    let result = match command {
        Prepared::Migrate => {
            db.queue().migrate().await?;
            println!("jobrunner schema is up to date");
            Ok(ExitCode::SUCCESS)
        }
        Prepared::Run(config) => run::run(&db, config, cli.config).await,
        Prepared::Enqueue(job) => enqueue::enqueue(&db, job).await,
        Prepared::Jobs(command, policy) => jobs::jobs(&db, command, &policy).await,
        Prepared::Schedules(command) => schedules::schedules(&db, command).await,
        Prepared::Plugins(args) => plugins::plugins(&db, args).await,
        Prepared::Tenants(args) => tenants::tenants(&db, args).await,
        Prepared::Demo(config, ending) => demo::demo(&db, config, ending).await,
        Prepared::Bench(bench) => bench::bench(&db, *bench).await,
        Prepared::Dashboard(dashboard) => dashboard::dashboard(&db, dashboard).await,
        Prepared::Call(_) => unreachable!("handled before connecting"),
    };
    db.close().await;
    result
}

/// Log lines are formatted by the thread that logs them and written by a thread of their own,
/// in batches: a busy runner writes an outcome line per job, and one write(2) per line on the
/// job's path cost a tenth of the drain rate. Nothing is dropped (a full buffer blocks the
/// logger). The guard writes what is left when it is dropped at exit.
///
/// Outcome lines are the exception: a killed process loses what its buffer holds, so they
/// are written straight to the stream, a statement's lines at once, before the statement
/// ([`OutcomeWriter`]). They may come out ahead of older buffered lines.
fn init_logging(
    format: LogFormat,
    default_filter: &str,
) -> tracing_appender::non_blocking::WorkerGuard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let buffered = |out: Box<dyn std::io::Write + Send>, stream| {
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            .thread_name("jobrunner-log")
            .finish(std::io::BufWriter::new(out));
        let writer = writer
            .with_filter(|meta: &tracing::Metadata<'_>| meta.target() != OUTCOME_TARGET)
            .or_else(OutcomeWriter::to(stream));
        (writer, guard)
    };
    match format {
        LogFormat::Text => {
            // Colours only for a person: escape codes garble files and pipes, and cost time.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let (writer, guard) = buffered(Box::new(std::io::stderr()), LogStream::Stderr);
            builder.with_ansi(ansi).with_writer(writer).init();
            guard
        }
        LogFormat::Json => {
            let (writer, guard) = buffered(Box::new(std::io::stdout()), LogStream::Stdout);
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_writer(writer)
                .init();
            guard
        }
    }
}

/// Prints `rows` under `header`, each column as wide as its widest cell.
fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; N]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header);
    for row in rows {
        line(row.each_ref().map(String::as_str));
    }
}
