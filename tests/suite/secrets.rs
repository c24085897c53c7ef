//! Config and secrets through `wasi:config`: what a plugin reads (its manifest's grant, its
//! tenant's values), and that a secret it echoes is redacted on every path to a log, an error,
//! a result, a follow-up's payload and the CLI's output. Secret values come from files here,
//! as they would from mounted secrets.

use std::path::Path;
use std::sync::Arc;

use nix::sys::signal::Signal;
use runner::client::JobState;
use runner::config::FileConfig;
use runner::secrets::Secrets;
use runner::{Job, Limits, NewJob, Sandbox, SandboxConfig};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::live::Live;
use crate::support::process::run_cli;
use crate::support::{TestDb, settled};

const RUNNER_TOKEN: &str = "ghp_runner_wide_token_0123456789";
const ACME_TOKEN: &str = "ghp_acme_own_token_9876543210";
const WEBHOOK: &str = "https://hooks.slack.example/services/T00/B00/webhook-secret-part";

/// Writes each `(name, value)` into `dir` and returns config-file TOML reading them: `[secrets]`
/// for `runner`, `[tenants.<t>.secrets]` for the rest.
fn secret_files(
    dir: &Path,
    runner: &[(&str, &str)],
    tenants: &[(&str, &[(&str, &str)])],
) -> String {
    let mut toml = String::from("[secrets]\n");
    let line = |toml: &mut String, owner: &str, name: &str, value: &str| {
        let file = dir.join(format!("{owner}-{name}"));
        std::fs::write(&file, format!("{value}\n")).unwrap();
        toml.push_str(&format!(
            "{name} = {{ file = {:?} }}\n",
            file.to_str().unwrap()
        ));
    };
    for (name, value) in runner {
        line(&mut toml, "runner", name, value);
    }
    for (tenant, secrets) in tenants {
        toml.push_str(&format!("[tenants.{tenant}.secrets]\n"));
        for (name, value) in *secrets {
            line(&mut toml, tenant, name, value);
        }
    }
    toml
}

fn read_secrets(toml: &str) -> Secrets {
    let file: FileConfig = toml::from_str(toml).expect("config TOML");
    file.secrets().expect("readable secrets")
}

fn sha256(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// Limits granting `probe` the config value `github_api` and the secret `github_token`.
fn probe_grant() -> Limits {
    let mut limits = Limits::default();
    limits.config.values =
        Arc::new([("github_api".into(), "https://api.github.com".into())].into());
    limits.config.secrets = Arc::from(["github_token".to_owned()]);
    limits
}

async fn probe(sandbox: &Arc<Sandbox>, tenant: &str, payload: Value, limits: &Limits) -> Value {
    let (loading, path) = (Arc::clone(sandbox), test_plugins::path("probe"));
    let plugin = tokio::task::spawn_blocking(move || loading.load_as(&path, "probe").unwrap())
        .await
        .unwrap();
    let mut job = Job::standalone("probe", payload.to_string());
    job.tenant = tenant.to_owned();
    let run = sandbox.run(&plugin, &job, limits).await;
    let json = run.result.expect("the probe completes").expect("a result");
    serde_json::from_str(&json).unwrap()
}

#[tokio::test]
async fn a_plugin_reads_its_config_and_the_secrets_it_is_granted_with_its_tenants_values() {
    let dir = tempfile::tempdir().unwrap();
    let toml = secret_files(
        dir.path(),
        &[("github_token", RUNNER_TOKEN), ("slack_webhook", WEBHOOK)],
        &[("acme", &[("github_token", ACME_TOKEN)])],
    );
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
    sandbox.set_secrets(read_secrets(&toml));
    let asked = json!({
        "read": ["github_api", "github_token", "slack_webhook", "no_such_key"],
        "all": true,
    });
    let digest = |value: &str| json!({"sha256": sha256(value), "len": value.len()});
    for (tenant, token) in [
        ("default", RUNNER_TOKEN),
        ("globex", RUNNER_TOKEN),
        ("acme", ACME_TOKEN),
    ] {
        let result = probe(&sandbox, tenant, asked.clone(), &probe_grant()).await;
        assert_eq!(
            result["read"],
            json!({
                "github_api": digest("https://api.github.com"),
                "github_token": digest(token),
                "slack_webhook": null,
                "no_such_key": null,
            }),
            "tenant {tenant}: its own token, no secret the manifest does not name"
        );
        assert_eq!(result["all_keys"], json!(["github_api", "github_token"]));
    }
    // Without a grant, nothing at all.
    let none = probe(&sandbox, "acme", asked, &Limits::default()).await;
    assert_eq!(
        none["read"],
        json!({"github_api": null, "github_token": null, "slack_webhook": null, "no_such_key": null})
    );
    assert_eq!(none["all_keys"], json!([]));
}

#[tokio::test]
async fn a_tenants_config_overrides_its_plugins_values_through_the_published_policy() {
    let db = TestDb::new().await;
    let queue = db.queue();
    crate::support::publish(
        &queue,
        "[tenants.acme.config]\ngithub_api = \"https://github.acme.example/api/v3\"\n",
    )
    .await;
    let worker = crate::support::plugins::tenant_worker(
        &queue,
        &["probe"],
        SandboxConfig::default(),
        probe_grant(),
    )
    .await;
    let mut ids = Vec::new();
    for tenant in ["acme", "globex"] {
        let job = NewJob::new("probe", json!({"read": ["github_api"]})).tenant(tenant);
        ids.push(queue.enqueue(&db.pool, &job).await.unwrap().id);
    }
    let read = |job: runner::client::JobRecord| {
        job.result.unwrap()["read"]["github_api"]["sha256"].clone()
    };
    let acme = read(settled(&queue, ids[0], JobState::Completed).await);
    let globex = read(settled(&queue, ids[1], JobState::Completed).await);
    assert_eq!(acme, json!(sha256("https://github.acme.example/api/v3")));
    assert_eq!(globex, json!(sha256("https://api.github.com")));
    worker.shutdown().await;
}

/// A plugin directory with `probe` and `echo`, `probe` granted `github_token` and follow-ups
/// of type `echo`; and a runner config file whose `[secrets]` holds `token`.
fn probe_runner_files(dir: &Path, token: &str) -> std::path::PathBuf {
    for plugin in ["probe", "echo"] {
        std::os::unix::fs::symlink(
            test_plugins::path(plugin),
            dir.join(format!("{plugin}.wasm")),
        )
        .unwrap();
    }
    std::fs::write(
        dir.join("probe.toml"),
        "secrets = [\"github_token\"]\nenqueue = [\"echo\"]\nmax_attempts = 1\n",
    )
    .unwrap();
    let config = dir.join("runner.toml");
    let secrets = tempfile::tempdir().unwrap().keep();
    std::fs::write(
        &config,
        secret_files(&secrets, &[("github_token", token)], &[]),
    )
    .unwrap();
    config
}

#[tokio::test]
async fn a_secret_a_guest_echoes_is_redacted_from_logs_errors_results_payloads_and_the_cli() {
    let db = TestDb::new().await;
    let queue = db.queue();
    let dir = tempfile::tempdir().unwrap();
    let config = probe_runner_files(dir.path(), RUNNER_TOKEN);
    let live = Live::start(&db, dir.path(), &["--config", config.to_str().unwrap()]).await;
    let echo = |then: &str| {
        json!({
            "echo": "github_token",
            "via": ["log", "stdout", "stderr", "result", "enqueue"],
            "read": ["slack_webhook"],
            "then": then,
        })
    };
    let mut ids = Vec::new();
    for then in ["complete", "retry", "fail", "panic"] {
        let job = NewJob::new("probe", echo(then));
        ids.push(queue.enqueue(&db.pool, &job).await.unwrap().id);
    }
    let completed = settled(&queue, ids[0], JobState::Completed).await;
    for id in &ids[1..] {
        settled(&queue, *id, JobState::Failed).await;
    }
    let marker = "[redacted:github_token]";
    assert_eq!(completed.result.as_ref().unwrap()["echo"], json!(marker));
    let children = queue
        .list_jobs(&runner::client::JobFilter {
            parent: Some(ids[0]),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(children.len(), 1, "the completed probe's follow-up");
    assert_eq!(children[0].payload, json!({"echo": marker}));
    for id in &ids[1..] {
        let error = &queue.job(*id).await.unwrap().errors[0].error;
        assert!(error.contains(marker), "job {id}: {error}");
    }
    // What the CLI prints, job by job and as a list.
    let mut printed = String::new();
    for id in ids.iter().chain([&children[0].id]) {
        let (status, out, err) = run_cli(&db.url(), &["jobs", "show", &id.to_string()]).await;
        assert!(status.success(), "{err}");
        printed.push_str(&out);
    }
    let (_, listed, _) = run_cli(&db.url(), &["jobs", "list", "--json"]).await;
    printed.push_str(&listed);
    assert!(printed.contains(marker), "{printed}");
    // The runner's log: the guest's line, its stdout and stderr, the outcome lines.
    live.event(&format!("the value is {marker}"), |e| {
        e["target"] == "jobrunner::guest" && e["job_id"] == ids[0]
    })
    .await;
    let refused = live
        .event("config key asked for and not granted", |e| {
            e["key"] == "slack_webhook"
        })
        .await;
    assert_eq!(refused["job_type"], "probe");
    let log: String = live.log().iter().map(|e| e.to_string()).collect();
    for text in [&printed, &log] {
        assert!(!text.contains(RUNNER_TOKEN), "the token leaked: {text}");
    }
    live.stop().await;
}

#[tokio::test]
async fn sighup_reads_the_secrets_again() {
    let db = TestDb::new().await;
    let queue = db.queue();
    let dir = tempfile::tempdir().unwrap();
    let config = probe_runner_files(dir.path(), RUNNER_TOKEN);
    let live = Live::start(&db, dir.path(), &["--config", config.to_str().unwrap()]).await;
    let token_digest = |job: runner::client::JobRecord| {
        job.result.unwrap()["read"]["github_token"]["sha256"].clone()
    };
    let read = json!({"read": ["github_token"]});
    let before = queue
        .enqueue(&db.pool, &NewJob::new("probe", read.clone()))
        .await
        .unwrap()
        .id;
    assert_eq!(
        token_digest(settled(&queue, before, JobState::Completed).await),
        json!(sha256(RUNNER_TOKEN))
    );
    // The file the config names now holds a new token (a rotated mounted secret).
    let text = std::fs::read_to_string(&config).unwrap();
    let file = text.split('"').nth(1).unwrap();
    std::fs::write(file, "ghp_rotated_token_abcdefghijkl\n").unwrap();
    live.signal(Signal::SIGHUP);
    live.event("SIGHUP: secrets read again", |_| true).await;
    let rotated = json!(sha256("ghp_rotated_token_abcdefghijkl"));
    let after = queue
        .enqueue(&db.pool, &NewJob::new("probe", read).unique_key("after"))
        .await
        .unwrap()
        .id;
    assert_eq!(
        token_digest(settled(&queue, after, JobState::Completed).await),
        rotated
    );
    // A file that cannot be read keeps the values read before.
    std::fs::remove_file(file).unwrap();
    live.signal(Signal::SIGHUP);
    let kept = live
        .event(
            "SIGHUP: cannot read the secrets again; keeping the ones read before",
            |_| true,
        )
        .await;
    assert!(!kept.to_string().contains("ghp_rotated"), "{kept}");
    let last = NewJob::new("probe", json!({"read": ["github_token"]})).unique_key("last");
    let last = queue.enqueue(&db.pool, &last).await.unwrap().id;
    assert_eq!(
        token_digest(settled(&queue, last, JobState::Completed).await),
        rotated
    );
    live.stop().await;
}
