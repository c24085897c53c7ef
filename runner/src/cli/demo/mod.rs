//! `runner demo`: starts from nothing and shows jobs running.

mod reminders;
mod webhooks;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio_util::sync::CancellationToken;

use super::database::Database;
use super::jobs::print_list;
use super::run::{Listener, RunArgs, Signals};
use super::tenants::print_tenants;
use crate::Queue;
use crate::client::admin::JobFilter;
use crate::config::{FileConfig, SandboxSettings, WorkerSettings};
use crate::driver::Driver;
use crate::job::NewJob;
use crate::runner::{RunConfig, Runner};
use crate::web::Readiness;

/// The database the demo creates afresh on every run.
const DEMO_DATABASE: &str = "jobrunner_demo";

/// Flags of `runner demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// End once the jobs have settled, even in a terminal (where the demo otherwise keeps the
    /// runner and the dashboard up until Ctrl-C)
    #[arg(long)]
    pub exit: bool,
}

/// What the demo does once its jobs have settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Keep the runner and the dashboard up until a signal: a person is watching.
    StayUp,
    /// End, as a script expects.
    Exit,
}

impl Ending {
    /// Stay up only in a terminal, and without `--exit`.
    pub fn of(exit: bool) -> Self {
        use std::io::IsTerminal;
        if !exit && std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
            Ending::StayUp
        } else {
            Ending::Exit
        }
    }
}

/// Demo defaults that make retries show up within a second, keep completed jobs so their
/// results can be shown, and stop a runaway guest within a second. Flags and the config file
/// still win.
pub fn with_demo_defaults(args: RunArgs) -> RunArgs {
    RunArgs {
        plugins: args.plugins,
        plugin_cache: args.plugin_cache,
        worker: args.worker.or(WorkerSettings {
            backoff_base: Some(Duration::from_millis(250)),
            backoff_cap: Some(Duration::from_secs(2)),
            keep_completed: Some(Duration::from_secs(3600)),
            ..WorkerSettings::default()
        }),
        sandbox: args.sandbox.or(SandboxSettings {
            cpu_budget: Some(Duration::from_secs(1)),
            timeout: Some(Duration::from_secs(5)),
            memory: Some(bytesize::ByteSize::mib(64)),
            ..SandboxSettings::default()
        }),
        web: args.web.or(&crate::web::WebSettings {
            http: crate::web::EXAMPLE_ADDR.parse().ok(),
            ..crate::web::WebSettings::default()
        }),
    }
}

/// Runs the demo.
pub async fn demo(
    db: &Database,
    mut config: RunConfig,
    ending: Ending,
) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::new()?;
    let pool = db
        .fresh_database(DEMO_DATABASE, 10)
        .await
        .with_context(|| format!("the demo needs to (re)create database {DEMO_DATABASE}"))?;
    let queue = Queue::new(pool.clone());
    let file: FileConfig = toml::from_str(TENANT_POLICY).context("the demo's tenant policy")?;
    config.tenants = file.tenants(&config.sandbox)?;
    let plugins = plugin_dir(&config.plugins)?;
    config.plugins = plugins.path().to_owned();
    let webhooks = webhooks::Receiver::start(&mut config).await?;
    let reminders = reminders::Reminders::start(&mut config).await?;
    let readiness = Readiness::runner();
    let web = Listener::start(&config, queue.clone(), &readiness).await?;
    // Migrates, loads the plugins and publishes the policy; runs nothing yet.
    let runner = Runner::builder(config).queue(queue.clone()).build().await?;
    readiness.plugins_loaded();
    let url = demo_url(db.options());
    println!("== 1. Fresh database {DEMO_DATABASE}, schema `jobrunner` migrated");

    println!("\n== 2. Tenants: a policy, a refusal, and a backlog");
    tenant_policy(&queue).await?;

    println!("\n== 3. Enqueue jobs through every door");
    enqueue_jobs(&queue, &languages(plugins.path())).await?;
    webhooks.enqueue(&queue).await?;
    reminders.schedule(&queue).await?;

    println!(
        "\n== 4. A runner works the queue (failed attempts logged on stderr, the backlog as \
         progress)"
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(runner.run(shutdown.clone()));
    let finished = tokio::select! {
        result = wait_until_settled(&pool, &reminders) => { result?; true }
        signal = signals.next() => { println!("{signal}: stopping early"); false }
    };

    println!("\n== 5. Where every job ended up (the backlog aside)");
    let mut jobs = queue
        .list_jobs(&JobFilter {
            limit: 100,
            ..JobFilter::default()
        })
        .await?;
    jobs.retain(|job| job.tenant != BACKLOG_TENANT);
    print_list(&jobs, &crate::retry::RetryPolicy::default());
    print_reminders(&queue).await?;
    webhooks.report(&queue).await?;
    reminders.report(&queue).await?;
    print_fairness(&queue).await?;
    if !db.is_private() {
        println!("\nLook closer:  runner --database-url '{url}' jobs show <ID>");
    }
    if let Some(dashboard) = web.url() {
        println!("Dashboard:    {dashboard}");
    }
    if finished && ending == Ending::StayUp {
        println!(
            "\nThe runner and the dashboard keep running (the schedule ticks every 10 s). \
                  Ctrl-C to stop."
        );
        let signal = signals.next().await;
        println!("{signal}: stopping");
    }
    readiness.shutting_down();
    shutdown.cancel();
    running.await??;
    web.stop().await;
    if db.is_private() {
        println!("\nThe private cluster stops now; its data stays for the next command.");
    }
    pool.close().await;
    Ok(if finished {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Where the demo's servers listen: a loopback address of their own, allowed by the demo's
/// config, so that the rest of loopback stays refused.
const SERVER_IP: &str = "127.0.0.2";

/// The job types the demo enqueues.
const DEMO_PLUGINS: [&str; 11] = [
    "echo",
    "sleep",
    "flaky",
    "poison",
    "webhook",
    "pr-reminders",
    "slack-notify",
    "review-reminder-rust",
    "review-reminder-python",
    "review-reminder-js",
    "review-reminder-c",
];

/// A plugin directory of the demo's own: links to the plugins of `from` that the demo uses
/// (and no others: each large Python or JavaScript component costs seconds to compile),
/// beside which the demo writes the manifests that grant its servers.
fn plugin_dir(from: &Path) -> anyhow::Result<tempfile::TempDir> {
    std::fs::read_dir(from)
        .with_context(|| format!("cannot read plugin directory {}", from.display()))?;
    let dir = tempfile::Builder::new()
        .prefix("jobrunner-demo-plugins")
        .tempdir()?;
    for job_type in DEMO_PLUGINS {
        for extension in ["wasm", "toml"] {
            let name = format!("{job_type}.{extension}");
            let path = from.join(&name);
            if path.is_file() {
                std::os::unix::fs::symlink(path.canonicalize()?, dir.path().join(name))?;
            }
        }
    }
    Ok(dir)
}

/// Writes `<job_type>.toml` into the demo's plugin directory `dir`.
fn write_manifest(dir: &Path, job_type: &str, manifest: &str) -> anyhow::Result<()> {
    let path = dir.join(format!("{job_type}.toml"));
    // A manifest linked from the given directory is replaced, not written through.
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, manifest).with_context(|| format!("cannot write {}", path.display()))
}

/// Lets the SSRF guard through to `ip`, where the demo's servers listen.
fn allow_network(config: &mut RunConfig, ip: &str) -> anyhow::Result<()> {
    let network = format!("{ip}/32").parse()?;
    if !config.sandbox.http.allow_networks.contains(&network) {
        config.sandbox.http.allow_networks.push(network);
    }
    Ok(())
}

/// The tenant whose backlog the others' jobs overtake.
const BACKLOG_TENANT: &str = "bulk";

/// Jobs in that backlog.
const BACKLOG: usize = 2000;

/// The demo's tenant policy, as it would appear in a config file.
const TENANT_POLICY: &str = r#"
[tenant_defaults]
max_running = 20
[tenants.acme]
weight = 2
memory = "96MiB"
[tenants.bulk]
job_types = ["echo"]
"#;

/// Shows the demo's tenant policy (published by the runner), enqueue refusing a type the
/// policy forbids, and enqueues one tenant's backlog ahead of everything else.
async fn tenant_policy(queue: &Queue) -> anyhow::Result<()> {
    println!("Policy: {}", TENANT_POLICY.trim().replace('\n', "  "));
    let refused = NewJob::new("poison", json!({ "do": "trap" })).tenant(BACKLOG_TENANT);
    if let Err(error) = queue.enqueue(queue.db(), &refused).await {
        println!("Refused:           {error}");
    }
    let backlog: Vec<NewJob> = (0..BACKLOG)
        .map(|i| NewJob::new("echo", json!({ "n": i })).tenant(BACKLOG_TENANT))
        .collect();
    queue.enqueue_many(queue.db(), &backlog).await?;
    println!(
        "Backlog:           {BACKLOG} echo jobs for tenant {BACKLOG_TENANT}, ahead of every job \
         below"
    );
    Ok(())
}

/// How acme's reminders fared behind the backlog, and every tenant's counts.
async fn print_fairness(queue: &Queue) -> anyhow::Result<()> {
    let overtaken: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobrunner.jobs
          WHERE tenant = $1
            AND updated_at > (SELECT max(updated_at) FROM jobrunner.jobs WHERE tenant = 'acme')",
    )
    .bind(BACKLOG_TENANT)
    .fetch_one(queue.db())
    .await?;
    println!(
        "\nFair claiming: acme's reminders were done while {overtaken} of {BACKLOG_TENANT}'s \
         {BACKLOG} jobs, enqueued before them, still waited.\n"
    );
    print_tenants(&Driver::new(queue.clone()).tenant_overview().await?);
    Ok(())
}

/// A URL for the demo database, to paste into other commands (password left out).
fn demo_url(options: &PgConnectOptions) -> String {
    // A socket directory goes in the host part, percent-encoded.
    let host = options.get_host().replace('/', "%2F");
    format!(
        "postgres://{}@{host}:{}/{DEMO_DATABASE}",
        options.get_username(),
        options.get_port()
    )
}

async fn enqueue_jobs(queue: &Queue, languages: &[&str]) -> anyhow::Result<()> {
    let greetings: Vec<NewJob> = ["hello", "bonjour", "hola", "hallo", "ciao"]
        .iter()
        .map(|word| NewJob::new("echo", json!({ "greeting": word })))
        .collect();
    let ids = queue.enqueue_many(queue.db(), &greetings).await?;
    let ids: Vec<i64> = ids.iter().map(|e| e.id).collect();
    println!("Rust, bulk:        5 echo jobs in one statement -> ids {ids:?}");

    let again = queue.enqueue(queue.db(), &greetings[0]).await?;
    println!(
        "Rust, duplicate:   the first greeting again -> id {} (inserted: {}; same job pending)",
        again.id, again.inserted
    );

    let mut tx = queue.db().begin().await?;
    let sleepy = queue
        .enqueue(&mut *tx, &NewJob::new("sleep", json!({ "ms": 700 })))
        .await?;
    let urgent = NewJob::new("echo", json!({ "urgent": true })).priority(-10);
    let urgent = queue.enqueue(&mut *tx, &urgent).await?;
    tx.commit().await?;
    println!(
        "Rust, transaction: sleep -> id {}, urgent echo (priority -10) -> id {}, committed \
         together",
        sleepy.id, urgent.id
    );

    let mut tx = queue.db().begin().await?;
    let unseen = NewJob::new("echo", json!({ "never": "seen" }));
    queue.enqueue(&mut *tx, &unseen).await?;
    tx.rollback().await?;
    println!("Rust, rollback:    a job enqueued in a rolled-back transaction leaves nothing");

    for (what, sql) in [
        (
            "flaky, asks for a retry twice, then succeeds",
            r#"SELECT jobrunner.enqueue('flaky', '{"succeed_on_attempt": 3}')"#,
        ),
        (
            "review-reminder-python without pull_requests: a permanent fail",
            r#"SELECT jobrunner.enqueue('review-reminder-python', '{"user": "bob"}')"#,
        ),
        (
            "poison: panics (a trap), retried once, then failed",
            r#"SELECT jobrunner.enqueue('poison', '{"do": "trap"}', max_attempts => 2)"#,
        ),
        (
            "poison: spins forever, stopped by its 1s CPU budget",
            r#"SELECT jobrunner.enqueue('poison', '{"do": "loop"}', max_attempts => 1)"#,
        ),
        (
            "poison: eats memory, stopped at its 64MiB cap",
            r#"SELECT jobrunner.enqueue('poison', '{"do": "memory"}', max_attempts => 1)"#,
        ),
        (
            "poison: looks for /etc/passwd, finds nothing",
            r#"SELECT jobrunner.enqueue('poison', '{"do": "read-file"}')"#,
        ),
    ] {
        let id: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(queue.db())
            .await?;
        println!("SQL:               {what} -> id {id}");
    }

    for language in languages {
        let id: i64 = sqlx::query_scalar(
            "SELECT jobrunner.enqueue('review-reminder-' || $1, $2, tenant => 'acme')",
        )
        .bind(language)
        .bind(reminder_payload())
        .fetch_one(queue.db())
        .await?;
        println!("SQL:               the same review reminder in {language:<6} -> id {id}");
    }

    let later =
        NewJob::new("echo", json!({ "scheduled": "3s later" })).delay(Duration::from_secs(3));
    let later = queue.enqueue(queue.db(), &later).await?;
    println!("Rust, scheduled:   echo due in 3 s -> id {}", later.id);
    Ok(())
}

/// The languages the reference job is written in: `review-reminder-<language>`.
const LANGUAGES: [&str; 4] = ["rust", "python", "js", "c"];

/// The languages whose reference job is in the plugin directory `dir`: `example-plugins/build
/// --demo` leaves out C until its toolchain is installed.
fn languages(dir: &Path) -> Vec<&'static str> {
    let present = |l: &&str| dir.join(format!("review-reminder-{l}.wasm")).exists();
    let languages: Vec<&str> = LANGUAGES.iter().copied().filter(present).collect();
    for missing in LANGUAGES.iter().filter(|l| !languages.contains(l)) {
        println!(
            "(no review-reminder-{missing} plugin: `example-plugins/build` without --demo \
             builds it)"
        );
    }
    languages
}

fn reminder_payload() -> serde_json::Value {
    json!({"user": "ada", "pull_requests": [
        {"title": "Fix login redirect", "url": "https://git.example/pr/12", "age_days": 2},
        {"title": "Bump sqlx", "url": "https://git.example/pr/9", "age_days": 6},
        {"title": "Faster claims", "url": "https://git.example/pr/15", "age_days": 1}]})
}

/// Shows the reference job's results: the same reminder, computed by the plugin of each
/// language.
async fn print_reminders(queue: &Queue) -> anyhow::Result<()> {
    let results: Vec<(String, Option<serde_json::Value>)> = sqlx::query_as(
        "SELECT job_type, result FROM jobrunner.jobs
          WHERE job_type LIKE 'review-reminder-%' AND tenant = 'acme' ORDER BY id",
    )
    .fetch_all(queue.db())
    .await?;
    let Some((_, Some(first))) = results.first() else {
        return Ok(());
    };
    if results
        .iter()
        .all(|(_, result)| result.as_ref() == Some(first))
    {
        let languages: Vec<&str> = results.iter().map(|(t, _)| t.as_str()).collect();
        println!("\nThe same result from {}:", languages.join(", "));
        println!("{}", first["message"].as_str().unwrap_or_default());
    } else {
        println!("\nThe reference job's results differ between languages:");
        for (job_type, result) in &results {
            let result = result.as_ref().map_or("-".into(), |r| r.to_string());
            println!("{job_type}: {result}");
        }
    }
    Ok(())
}

/// Waits until the schedule's reminders are in and no job is available or running, for at
/// most a minute and a half.
async fn wait_until_settled(pool: &PgPool, reminders: &reminders::Reminders) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut progress = Progress::new();
    loop {
        let (pending, backlog): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE tenant = $1)
               FROM jobrunner.job_status WHERE state IN ('available', 'running')",
        )
        .bind(BACKLOG_TENANT)
        .fetch_one(pool)
        .await?;
        progress.show(BACKLOG as i64 - backlog, pending);
        if pending == 0 && reminders.ticks_delivered() {
            progress.done();
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{pending} jobs still pending, or the schedule's reminders not all delivered, after \
             a minute and a half"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The backlog's progress: one line rewritten in place in a terminal, else a line a second.
struct Progress {
    terminal: bool,
    started: std::time::Instant,
    last: Option<std::time::Instant>,
}

impl Progress {
    fn new() -> Self {
        Self {
            terminal: std::io::IsTerminal::is_terminal(&std::io::stdout()),
            started: std::time::Instant::now(),
            last: None,
        }
    }

    fn show(&mut self, backlog_done: i64, pending: i64) {
        let every = if self.terminal { 0.2 } else { 1.0 };
        if self
            .last
            .is_some_and(|last| last.elapsed().as_secs_f64() < every)
        {
            return;
        }
        self.last = Some(std::time::Instant::now());
        let line = format!(
            "backlog: {backlog_done}/{BACKLOG} jobs done, {pending} jobs pending in all ({:.0} s)",
            self.started.elapsed().as_secs_f64()
        );
        if self.terminal {
            print!("\r{line}   ");
            let _ = std::io::Write::flush(&mut std::io::stdout());
        } else {
            println!("{line}");
        }
    }

    fn done(&mut self) {
        self.last = None;
        self.show(BACKLOG as i64, 0);
        if self.terminal {
            println!();
        }
    }
}
