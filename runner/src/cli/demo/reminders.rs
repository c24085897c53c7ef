//! The demo's reference use case: on a schedule (every 10 seconds here, every weekday morning
//! for real), `pr-reminders` scans a fake GitHub API for the pull requests waiting for each
//! reviewer and enqueues one `slack-notify` per reviewer, which posts the reminder to a fake
//! Slack webhook. Both fakes listen on the demo's loopback address; the GitHub token and the
//! webhook URL are secrets in files of the demo's own.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use super::SERVER_IP;
use crate::Queue;
use crate::cli::fake_apis::{FakeGitHub, FakePull, FakeSlack};
use crate::client::schedules::NewSchedule;
use crate::job::NewJob;
use crate::runner::RunConfig;
use crate::secrets::{SecretSource, SecretTable, Secrets};

/// The demo's GitHub token: fake, and never sent anywhere but the fake GitHub.
const TOKEN: &str = "ghp_demo0000000000000000000000000000";

/// The schedule that runs the scan.
const SCHEDULE: &str = "pr-reminders-every-10s";

/// Its cron expression: six fields, the first the seconds.
const CRON: &str = "*/10 * * * * *";

/// The team's time zone: where "09:00 on weekdays" would be read.
const ZONE: &str = "Europe/Berlin";

/// Ticks the demo waits for, and the reviewers each one reminds.
const TICKS: usize = 2;
const REVIEWERS: usize = 2;

/// The fake APIs and the secret files, alive while the demo runs.
pub struct Reminders {
    github: FakeGitHub,
    slack: FakeSlack,
    _secrets: tempfile::TempDir,
}

fn pull(title: &str, days: i64, reviewers: &[&str]) -> FakePull {
    FakePull {
        title: title.to_owned(),
        created_at: Utc::now() - Duration::days(days) - Duration::hours(2),
        reviewers: reviewers.iter().map(|r| (*r).to_owned()).collect(),
    }
}

impl Reminders {
    /// Starts the fakes, writes the two plugins' manifests into `config`'s (the demo's) plugin
    /// directory, and gives `config` the secrets, read from files as a runner would.
    pub async fn start(config: &mut RunConfig) -> anyhow::Result<Self> {
        let repos = BTreeMap::from([
            (
                "acme/app".to_owned(),
                vec![
                    pull("Fix login redirect", 2, &["ada", "grace"]),
                    pull("Bump sqlx", 6, &["ada"]),
                ],
            ),
            (
                "acme/web".to_owned(),
                vec![
                    pull("Dark mode", 1, &["grace"]),
                    pull("Draft: new logo", 0, &[]),
                ],
            ),
        ]);
        let github = FakeGitHub::start(SERVER_IP, TOKEN, repos).await?;
        let slack = FakeSlack::start(SERVER_IP).await?;
        // Slack is busy once: that reminder is retried after its Retry-After, the scan is not.
        slack.fail_next(1, 503, Some(1));
        let api = github.origin();
        super::write_manifest(
            &config.plugins,
            "pr-reminders",
            &format!(
                "enqueue = [\"slack-notify\"]\nsecrets = [\"github_token\"]\n[http]\n\
                 allowed_hosts = [{api:?}]\n[config]\ngithub_api = {api:?}\n\
                 repos = \"acme/app,acme/web\"\n"
            ),
        )?;
        super::write_manifest(
            &config.plugins,
            "slack-notify",
            &format!(
                "secrets = [\"slack_webhook\"]\n[http]\nallowed_hosts = [{:?}]\n",
                slack.origin()
            ),
        )?;
        let secrets = tempfile::Builder::new()
            .prefix("jobrunner-demo-secrets")
            .tempdir()?;
        let mut table = SecretTable::new();
        for (name, value) in [
            ("github_token", TOKEN.to_owned()),
            ("slack_webhook", slack.webhook_url()),
        ] {
            let file = secrets.path().join(name);
            std::fs::write(&file, value)?;
            table.insert(name.to_owned(), SecretSource::File(file));
        }
        config.secrets = Secrets::read(&table, &BTreeMap::new())?;
        Ok(Self {
            github,
            slack,
            _secrets: secrets,
        })
    }

    /// Schedules the scan every ten seconds, as it would be every weekday morning.
    pub async fn schedule(&self, queue: &Queue) -> anyhow::Result<()> {
        println!(
            "Config:            [secrets] github_token, slack_webhook = {{ file = ... }} (fake \
             GitHub at {}, fake Slack at {})",
            self.github.origin(),
            self.slack.origin()
        );
        println!(
            "pr-reminders.toml: enqueue = [\"slack-notify\"]  secrets = [\"github_token\"]  \
             [config] repos = \"acme/app,acme/web\""
        );
        let schedule = NewSchedule::new(SCHEDULE, CRON, NewJob::new("pr-reminders", json!({})))
            .time_zone(ZONE);
        queue.add_schedule(queue.db(), &schedule).await?;
        println!(
            "Rust, schedule:    {SCHEDULE}: pr-reminders {{}} at {CRON:?} in {ZONE} (6 fields: \
             every 10 s; for real \"0 9 * * MON-FRI\"), each tick's follow-ups one \
             slack-notify per reviewer"
        );
        Ok(())
    }

    /// Whether the reminders of two ticks reached Slack.
    pub fn ticks_delivered(&self) -> bool {
        self.slack.messages().len() >= TICKS * REVIEWERS
    }

    /// What GitHub was asked (with the token), what Slack received, and the schedule.
    pub async fn report(&self, queue: &Queue) -> anyhow::Result<()> {
        println!("\nPull-request reminders (config, secrets, follow-up jobs):");
        for request in self.github.received() {
            let token = match request.authorization.as_deref() {
                Some(auth) if auth == format!("Bearer {TOKEN}") => "with the github_token secret",
                Some(_) => "with a wrong token",
                None => "without a token",
            };
            println!(
                "  GitHub <- {} {token} -> {}",
                request.request_line, request.status
            );
        }
        for request in self.slack.received() {
            let verdict = match request.status {
                200 => "ok".to_owned(),
                status => format!("{status} (retried after its Retry-After)"),
            };
            println!("  Slack  <- POST [the slack_webhook secret] -> {verdict}");
        }
        let ticks: Vec<(i64, DateTime<Utc>)> = sqlx::query_as(
            "SELECT id, run_at FROM jobrunner.jobs WHERE schedule = $1 ORDER BY run_at",
        )
        .bind(SCHEDULE)
        .fetch_all(queue.db())
        .await?;
        for (id, tick) in &ticks {
            println!(
                "  tick {}: pr-reminders job {id}",
                tick.format("%H:%M:%S UTC")
            );
        }
        println!("Slack messages received ({} ticks):", ticks.len());
        for message in self.slack.messages() {
            println!("  | {}", message.replace('\n', "\n  | "));
        }
        println!("\n$ runner schedules list");
        crate::cli::schedules::print_list(&queue.schedules(None).await?, queue.now());
        Ok(())
    }
}
