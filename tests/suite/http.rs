//! Outgoing HTTP from guests, against real servers on loopback addresses that the tests start:
//! grants, tenant narrowing, the SSRF guard, every limit, TLS with a private CA, and the log
//! line of each request. No test sends a packet beyond 127.0.0.0/8.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use runner::client::JobState;
use runner::sandbox::{Disposition, HttpNetworkConfig, Plugin, Run, RunError};
use runner::{Job, Limits, NewJob, Queue, Sandbox, SandboxConfig};
use serde_json::{Value, json};

use crate::support::http_server::TestServer;
use crate::support::process::runner;
use crate::support::{TestDb, eventually, plugins, publish, settled};

/// Limits granting `hosts`, the runner's defaults otherwise.
fn granting(hosts: &[&str]) -> Limits {
    let mut limits = Limits::default();
    limits.http.hosts.plugin = hosts.iter().map(|h| h.parse().unwrap()).collect();
    limits
}

/// A sandbox whose SSRF guard lets `networks` through.
fn allowing(networks: &[&str]) -> SandboxConfig {
    SandboxConfig {
        http: HttpNetworkConfig {
            allow_networks: networks.iter().map(|n| n.parse().unwrap()).collect(),
            ..HttpNetworkConfig::default()
        },
        ..SandboxConfig::default()
    }
}

/// One attempt of the example plugin `job_type` on `payload`, without a database.
async fn call(job_type: &str, payload: Value, limits: &Limits, config: SandboxConfig) -> Run {
    call_file(
        &test_plugins::path(job_type),
        job_type,
        payload,
        limits,
        config,
    )
    .await
}

async fn call_file(
    file: &Path,
    job_type: &str,
    payload: Value,
    limits: &Limits,
    config: SandboxConfig,
) -> Run {
    let sandbox = Arc::new(Sandbox::new(config).unwrap());
    let plugin = load(&sandbox, file, job_type).await;
    let job = Job::standalone(job_type, payload.to_string());
    sandbox.run(&plugin, &job, limits).await
}

async fn load(sandbox: &Arc<Sandbox>, file: &Path, job_type: &str) -> Plugin {
    let (sandbox, file, name) = (Arc::clone(sandbox), file.to_owned(), job_type.to_owned());
    tokio::task::spawn_blocking(move || sandbox.load_as(&file, &name).unwrap())
        .await
        .unwrap()
}

fn result(run: Run) -> Value {
    let json = run
        .result
        .unwrap_or_else(|e| panic!("the job failed: {e}"))
        .expect("a result");
    serde_json::from_str(&json).unwrap()
}

fn error(run: &Run) -> &RunError {
    run.result.as_ref().expect_err("the job to fail")
}

/// The outcomes of `fetch-rust`'s requests.
fn requests(run: Run) -> Vec<Value> {
    result(run)["requests"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_granted_host_is_reached_by_rust_python_and_javascript_guests() {
    let server = TestServer::start("127.0.0.1").await;
    let limits = granting(&[&server.origin()]);
    let config = || allowing(&["127.0.0.1/32"]);

    let body = json!({"text": "build passed", "n": [1, 2]});
    let run = call(
        "webhook",
        json!({"url": server.url("/hook"), "body": body}),
        &limits,
        config(),
    )
    .await;
    // The attempt's journal, kept with the job, has the request (without its query).
    let journal = run.journal.clone().expect("the attempt's request is kept");
    let calls = &journal.http[..];
    assert_eq!(calls.len(), 1, "{journal:?}");
    assert_eq!(
        (
            calls[0].method.as_str(),
            calls[0].url.as_str(),
            calls[0].status
        ),
        (
            "POST",
            format!("{}/hook", server.origin()).as_str(),
            Some(200)
        )
    );
    assert_eq!(result(run), json!({"status": 200}));
    let seen = &server.seen()[0];
    assert_eq!(
        (seen.method.as_str(), seen.target.as_str()),
        ("POST", "/hook")
    );
    assert_eq!(serde_json::from_slice::<Value>(&seen.body).unwrap(), body);
    assert_eq!(seen.headers["content-type"], "application/json");

    for plugin in ["fetch-python", "fetch-js"] {
        let path = format!("/from/{plugin}");
        let run = call(plugin, json!({"url": server.url(&path)}), &limits, config()).await;
        assert_eq!(result(run), json!({"status": 200, "bytes": 2}), "{plugin}");
        assert!(
            server.seen().iter().any(|s| s.target == path),
            "{plugin} reached the server"
        );
    }
}

#[tokio::test]
async fn a_host_the_manifest_does_not_grant_is_refused_without_a_connection() {
    let server = TestServer::start("127.0.0.1").await;
    let other = TestServer::start("127.0.0.1").await;
    let config = || allowing(&["127.0.0.1/32"]);
    let payload = json!({"url": server.url("/hook"), "body": {}});

    for limits in [Limits::default(), granting(&[&other.origin()])] {
        let run = call("webhook", payload.clone(), &limits, config()).await;
        let error = error(&run);
        assert_eq!(error.disposition(), Disposition::Fail, "{error}");
        assert!(
            error
                .to_string()
                .contains("request denied: the host is not granted"),
            "{error}"
        );
    }
    // The same port over https, or the same host on another port, is another origin.
    let port = server.addr().port();
    let near_misses = granting(&[
        &format!("https://127.0.0.1:{port}"),
        &format!("http://127.0.0.1:{}", port ^ 1),
    ]);
    let run = call("webhook", payload, &near_misses, config()).await;
    assert!(error(&run).to_string().contains("not granted"));
    assert!(server.seen().is_empty() && other.seen().is_empty());
}

#[tokio::test]
async fn a_granted_name_that_resolves_to_loopback_is_refused_unless_its_network_is_allowed() {
    let server = TestServer::start("127.0.0.1").await;
    let limits = granting(&[&server.origin_as("localhost"), &server.origin()]);
    let by_name = json!({"url": format!("{}/by-name", server.origin_as("localhost"))});
    let by_ip = json!({"url": server.url("/by-ip")});

    for payload in [&by_name, &by_ip] {
        let outcome = &requests(
            call(
                "fetch-rust",
                payload.clone(),
                &limits,
                SandboxConfig::default(),
            )
            .await,
        )[0];
        assert_eq!(outcome["refused"], true, "{outcome}");
        assert!(
            outcome["error"]
                .as_str()
                .unwrap()
                .contains("network the runner blocks"),
            "{outcome}"
        );
    }
    // Allowed: an address outside the allowed network is still refused.
    let other = allowing(&["127.0.0.2/32"]);
    let outcome = &requests(call("fetch-rust", by_ip.clone(), &limits, other).await)[0];
    assert_eq!(outcome["refused"], true, "{outcome}");
    assert!(server.seen().is_empty(), "nothing reached the server");

    let allowed = || allowing(&["127.0.0.1/32", "::1/128"]);
    for payload in [by_name, by_ip] {
        let outcome = &requests(call("fetch-rust", payload, &limits, allowed()).await)[0];
        assert_eq!(outcome["status"], 200, "{outcome}");
    }
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn requests_per_attempt_are_capped() {
    let server = TestServer::start("127.0.0.1").await;
    let mut limits = granting(&[&server.origin()]);
    limits.http.max_requests = 3;
    let payload = json!({"url": server.url("/n"), "times": 5});
    let outcomes =
        requests(call("fetch-rust", payload, &limits, allowing(&["127.0.0.1/32"])).await);
    let statuses: Vec<&Value> = outcomes.iter().map(|o| &o["status"]).collect();
    assert_eq!(statuses[..3], [&json!(200); 3]);
    for outcome in &outcomes[3..] {
        assert!(
            outcome["error"]
                .as_str()
                .unwrap()
                .contains("request limit reached: 3 per attempt"),
            "{outcome}"
        );
    }
    assert_eq!(server.seen().len(), 3);
}

/// One request in flight for the whole runner: a second job's request waits for the slot no
/// longer than its connect timeout, and the slot is free again once the first attempt ends.
#[tokio::test]
async fn requests_in_flight_are_capped_across_the_runners_jobs() {
    let server = TestServer::start("127.0.0.1").await;
    let mut config = allowing(&["127.0.0.1/32"]);
    config.http.max_concurrent = 1;
    let sandbox = Arc::new(Sandbox::new(config).unwrap());
    let plugin = Arc::new(load(&sandbox, &test_plugins::path("fetch-rust"), "fetch-rust").await);
    let mut limits = granting(&[&server.origin()]);
    limits.timeout = Duration::from_secs(3);
    limits.http.connect_timeout = Duration::from_millis(300);
    let fetch =
        |path: &str| Job::standalone("fetch-rust", json!({"url": server.url(path)}).to_string());

    let holder = tokio::spawn({
        let (sandbox, plugin, limits, job) = (
            Arc::clone(&sandbox),
            Arc::clone(&plugin),
            limits.clone(),
            fetch("/never"),
        );
        async move { sandbox.run(&plugin, &job, &limits).await }
    });
    eventually(
        "the first request to reach the server",
        Duration::from_secs(10),
        || async { (!server.seen().is_empty()).then_some(()) },
    )
    .await;
    let waiter = requests(sandbox.run(&plugin, &fetch("/second"), &limits).await);
    assert_eq!(
        waiter[0]["error"], "http error: ErrorCode::ConnectionLimitReached",
        "{waiter:?}"
    );

    assert!(matches!(
        error(&holder.await.unwrap()),
        RunError::Timeout(_)
    ));
    let after = requests(sandbox.run(&plugin, &fetch("/third"), &limits).await);
    assert_eq!(
        after[0]["status"], 200,
        "the slot was given back: {after:?}"
    );
}

#[tokio::test]
async fn redirects_reach_the_guest_and_are_not_followed() {
    let server = TestServer::start("127.0.0.1").await;
    let limits = granting(&[&server.origin()]);
    let payload = json!({"url": server.url("/redirect")});
    let outcome =
        &requests(call("fetch-rust", payload, &limits, allowing(&["127.0.0.1/32"])).await)[0];
    assert_eq!(outcome["status"], 302);
    let targets: Vec<String> = server.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, ["/redirect"]);
}

#[tokio::test]
async fn a_response_over_the_cap_is_cut_while_it_streams() {
    let server = TestServer::start("127.0.0.1").await;
    let mut limits = granting(&[&server.origin()]);
    limits.http.max_response_body = 1 << 20;
    // Larger than the guest's memory: buffered anywhere, it could not fit.
    limits.memory = 32 << 20;
    let config = || allowing(&["127.0.0.1/32"]);

    let streamed = json!({"url": server.url("/stream/268435456")});
    let outcome = &requests(call("fetch-rust", streamed, &limits, config()).await)[0];
    let error = outcome["error"].as_str().unwrap();
    assert_eq!(
        error,
        "http error: HTTP response body size exceeds limit: 1048576 bytes"
    );
    let sent = server.streamed();
    assert!(
        sent < 16 << 20,
        "the server was stopped after {sent} bytes, not allowed to send 256 MiB"
    );

    let declared = json!({"url": server.url("/sized/2097152")});
    let outcome = &requests(call("fetch-rust", declared, &limits, config()).await)[0];
    assert!(
        outcome["error"]
            .as_str()
            .unwrap()
            .contains("HttpResponseBodySize"),
        "{outcome}"
    );

    let within = json!({"url": server.url("/stream/1048576")});
    let outcome = &requests(call("fetch-rust", within, &limits, config()).await)[0];
    assert_eq!(outcome["bytes"], 1 << 20);
}

#[tokio::test]
async fn a_request_body_over_the_cap_is_refused_before_it_is_sent() {
    let server = TestServer::start("127.0.0.1").await;
    let mut limits = granting(&[&server.origin()]);
    limits.http.max_request_body = 64;
    let body = json!({"padding": "x".repeat(100)});
    let run = call(
        "webhook",
        json!({"url": server.url("/hook"), "body": body}),
        &limits,
        allowing(&["127.0.0.1/32"]),
    )
    .await;
    assert!(
        error(&run).to_string().contains("HttpRequestBodySize"),
        "{}",
        error(&run)
    );
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn a_server_that_never_answers_is_stopped_by_the_wall_clock_not_the_cpu_budget() {
    let server = TestServer::start("127.0.0.1").await;
    let mut limits = granting(&[&server.origin()]);
    limits.timeout = Duration::from_secs(2);
    // Far less than the wait: waiting on the network costs no CPU time.
    limits.cpu_budget = Duration::from_millis(500);
    let payload = json!({"url": server.url("/never")});
    let run = call("fetch-rust", payload, &limits, allowing(&["127.0.0.1/32"])).await;
    match error(&run) {
        RunError::Timeout(timeout) => assert_eq!(timeout.limit, Duration::from_secs(2)),
        other => panic!("expected the wall-clock timeout, got {other}"),
    }
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn a_response_head_that_never_comes_is_stopped_by_the_first_byte_timeout() {
    let server = TestServer::start("127.0.0.1").await;
    let mut limits = granting(&[&server.origin()]);
    limits.http.first_byte_timeout = Duration::from_millis(300);
    let payload = json!({"url": server.url("/never")});
    let run = call("fetch-rust", payload, &limits, allowing(&["127.0.0.1/32"])).await;
    let outcome = &requests(run)[0];
    assert_eq!(
        outcome["error"], "http error: ErrorCode::HttpResponseTimeout",
        "{outcome}"
    );
}

/// The webhook's contract: 2xx completes, 5xx retries, 4xx fails.
#[tokio::test]
async fn the_webhook_retries_server_errors_and_fails_client_errors() {
    let server = TestServer::start("127.0.0.1").await;
    let limits = granting(&[&server.origin()]);
    for (status, expected) in [(503, Disposition::Retry), (404, Disposition::Fail)] {
        let payload = json!({"url": server.url(&format!("/status/{status}")), "body": {}});
        let run = call("webhook", payload, &limits, allowing(&["127.0.0.1/32"])).await;
        let error = error(&run);
        assert_eq!(error.disposition(), expected, "{status}: {error}");
        assert!(
            error.to_string().contains(&format!("status {status}")),
            "{error}"
        );
    }
}

#[tokio::test]
async fn a_server_that_trickles_is_stopped_by_the_idle_timeout() {
    let server = TestServer::start("127.0.0.1").await;
    let mut limits = granting(&[&server.origin()]);
    limits.http.between_bytes_timeout = Duration::from_millis(300);
    let payload = json!({"url": server.url("/trickle")});
    let outcome =
        &requests(call("fetch-rust", payload, &limits, allowing(&["127.0.0.1/32"])).await)[0];
    assert_eq!(
        outcome["error"], "http error: connection read timeout",
        "{outcome}"
    );
}

#[tokio::test]
async fn a_component_built_against_the_world_before_http_still_runs() {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/world-2026-11/echo.wasm");
    let run = call_file(
        &fixture,
        "echo",
        json!({"still": "here"}),
        &Limits::default(),
        SandboxConfig::default(),
    )
    .await;
    assert_eq!(result(run), json!({"still": "here"}));
}

#[tokio::test]
async fn https_is_verified_against_the_private_ca_in_the_runner_config() {
    let pki = Pki::new();
    let server = TestServer::start_tls("127.0.0.1", pki.acceptor()).await;
    let origin = server.origin_as("localhost");
    let limits = granting(&[&origin]);
    let payload = json!({"url": format!("{origin}/secure")});

    let untrusted = allowing(&["127.0.0.1/32", "::1/128"]);
    let outcome = &requests(call("fetch-rust", payload.clone(), &limits, untrusted).await)[0];
    assert!(
        outcome["error"]
            .as_str()
            .unwrap()
            .contains("TlsCertificateError"),
        "{outcome}"
    );

    let mut trusted = allowing(&["127.0.0.1/32", "::1/128"]);
    trusted.http.ca_file = Some(pki.ca_file());
    let outcome = &requests(call("fetch-rust", payload, &limits, trusted).await)[0];
    assert_eq!(outcome["status"], 200, "{outcome}");
    assert_eq!(server.seen().last().unwrap().target, "/secure");
}

#[tokio::test]
async fn a_ca_file_that_holds_no_certificate_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let mut config = SandboxConfig::default();
    config.http.ca_file = Some(empty);
    let error = Sandbox::new(config).unwrap_err().to_string();
    assert!(
        error.contains("http.ca_file") && error.contains("no PEM certificates"),
        "{error}"
    );
}

/// A certificate authority of the test's own, and a certificate it signed for `localhost`.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    leaf: rcgen::Certificate,
    leaf_key: rcgen::KeyPair,
}

impl Pki {
    fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "jobrunner test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        Self {
            dir: tempfile::tempdir().unwrap(),
            ca,
            leaf,
            leaf_key,
        }
    }

    fn ca_file(&self) -> std::path::PathBuf {
        let path = self.dir.path().join("ca.pem");
        std::fs::write(&path, self.ca.pem()).unwrap();
        path
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let chain = vec![CertificateDer::from(self.leaf.der().to_vec())];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()));
        #[allow(deprecated)] // as in the runner: ring's provider
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

/// Through the queue: the tenant's policy narrows what the manifest grants, never widens it.
#[tokio::test]
async fn a_tenant_narrows_the_plugins_grant_and_cannot_widen_it() {
    let db = TestDb::new().await;
    let queue = db.queue();
    let granted = TestServer::start("127.0.0.1").await;
    let also_granted = TestServer::start("127.0.0.1").await;
    let never_granted = TestServer::start("127.0.0.1").await;
    publish(
        &queue,
        &format!(
            "[tenants.acme.http]\nallowed_hosts = [{:?}, {:?}]",
            granted.origin(),
            never_granted.origin()
        ),
    )
    .await;
    let limits = granting(&[&granted.origin(), &also_granted.origin()]);
    let worker = webhook_worker(&queue, limits).await;

    let enqueue = |tenant: &'static str, server: &TestServer| {
        let job = NewJob::new(
            "webhook",
            json!({"url": server.url("/hook"), "body": tenant}),
        )
        .tenant(tenant)
        .max_attempts(1);
        let queue = queue.clone();
        async move { queue.enqueue(queue.pool(), &job).await.unwrap().id }
    };
    let acme_granted = enqueue("acme", &granted).await;
    let acme_narrowed = enqueue("acme", &also_granted).await;
    let acme_widened = enqueue("acme", &never_granted).await;
    let other_tenant = enqueue("globex", &also_granted).await;

    settled(&queue, acme_granted, JobState::Completed).await;
    settled(&queue, other_tenant, JobState::Completed).await;
    for id in [acme_narrowed, acme_widened] {
        let job = settled(&queue, id, JobState::Failed).await;
        assert!(
            job.errors[0].error.contains("request denied"),
            "{}",
            job.errors[0].error
        );
    }
    assert_eq!(granted.seen().len(), 1);
    assert_eq!(also_granted.seen()[0].body.as_ref(), b"\"globex\"");
    assert_eq!(also_granted.seen().len(), 1);
    assert!(never_granted.seen().is_empty());
    worker.shutdown().await;
}

async fn webhook_worker(queue: &Queue, limits: Limits) -> runner::WorkerHandle {
    plugins::tenant_worker(queue, &["webhook"], allowing(&["127.0.0.1/32"]), limits).await
}

/// Through the binary: the manifest and config file grant and allow, and each request's log
/// line names the job, the method and the URL's path, never its query string or headers.
#[tokio::test]
async fn runner_call_logs_one_line_per_request_without_query_or_headers() {
    let server = TestServer::start("127.0.0.1").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        test_plugins::path("fetch-rust"),
        dir.path().join("fetch-rust.wasm"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("fetch-rust.toml"),
        format!(
            "[http]\nallowed_hosts = [{:?}]\nmax_requests = 2\n",
            server.origin()
        ),
    )
    .unwrap();
    let config = dir.path().join("runner.toml");
    std::fs::write(&config, "[http]\nallow_networks = [\"127.0.0.1/32\"]\n").unwrap();
    let payload = json!({
        "url": server.url("/api/items?token=QUERY-SECRET"),
        "headers": [["authorization", "Bearer HEADER-SECRET"]],
        "times": 4,
    });
    let plugin = dir.path().join("fetch-rust.wasm");
    let call = |payload: Value| {
        let args = [
            "--config",
            config.to_str().unwrap(),
            "call",
            plugin.to_str().unwrap(),
        ];
        let mut command = runner(&args);
        command.arg("--payload").arg(payload.to_string());
        async move { command.output().await.unwrap() }
    };
    let output = call(payload).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stderr}");
    // The guest sent both secrets; the server got them.
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].target, "/api/items?token=QUERY-SECRET");
    assert_eq!(seen[0].headers["authorization"], "Bearer HEADER-SECRET");
    for secret in ["QUERY-SECRET", "HEADER-SECRET", "token="] {
        assert!(!stderr.contains(secret), "{secret} in the log:\n{stderr}");
    }
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("jobrunner::http"))
        .collect();
    let url = format!("url=\"{}/api/items\"", server.origin());
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("status=200") && l.contains(&url))
            .count(),
        2,
        "{stderr}"
    );
    let over = lines
        .iter()
        .filter(|l| l.contains("request limit reached: 2 per attempt"));
    assert_eq!(
        over.count(),
        1,
        "the first request over the cap is logged: {stderr}"
    );
    assert!(
        stderr.contains("more http requests refused over the attempt's cap")
            && stderr.contains("refused=1"),
        "{stderr}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.contains("job_id=0 job_type=fetch-rust tenant=default attempt=1")),
        "{stderr}"
    );
    assert!(
        stdout.contains("request limit reached: 2 per attempt"),
        "{stdout}"
    );

    // Refused hosts are named with the reason.
    let refused = json!({"url": "http://127.0.0.1:9/elsewhere?token=QUERY-SECRET"});
    let output = call(refused).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "refused http://127.0.0.1:9: the host is not in the plugin's [http] allowed_hosts"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("QUERY-SECRET"), "{stderr}");
}

#[tokio::test]
async fn the_config_file_refuses_hosts_and_bad_networks_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (toml, expected) in [
        (
            "[http]\nallowed_hosts = [\"https://a.test\"]",
            "http.allowed_hosts: hosts are granted per plugin",
        ),
        ("[http]\nallow_networks = [\"localhost\"]", "allow_networks"),
        (
            "[http]\nmax_requests = 0",
            "http.max_requests: must be positive",
        ),
    ] {
        let config = dir.path().join("runner.toml");
        std::fs::write(&config, toml).unwrap();
        let output = runner(&[
            "--config",
            config.to_str().unwrap(),
            "call",
            test_plugins::path("echo").to_str().unwrap(),
        ])
        .output()
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(expected),
            "{toml}: {stderr}"
        );
    }
}

/// The README's demo, from nothing: its webhooks reach its own server on 127.0.0.2, retry on
/// a 503, and the two it aims elsewhere are refused with the reason.
#[tokio::test]
async fn the_demo_delivers_webhooks_reminds_reviewers_on_slack_on_schedule_and_refuses_the_others()
{
    let db = TestDb::new().await;
    let plugins = test_plugins::dir().to_str().unwrap();
    // As a newcomer runs it: no RUST_LOG.
    let output = runner(&["demo", "--plugins", plugins, "--http", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .env("DATABASE_URL", db.url())
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let webhooks: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Webhooks"))
        .take(9)
        .collect();
    let row = |url: &str| {
        *webhooks
            .iter()
            .find(|l| l.contains(url))
            .unwrap_or_else(|| panic!("{url}:\n{stdout}"))
    };
    let delivered = row("127.0.0.2");
    assert!(
        delivered.contains("completed") && delivered.contains(r#"{"status": 204}"#),
        "{stdout}"
    );
    assert!(row("/hooks/flaky").contains("completed"), "{stdout}");
    assert!(
        row("127.0.0.3").contains("failed    ") && row("127.0.0.3").contains("not granted"),
        "{stdout}"
    );
    assert!(
        row("localhost").contains("network the runner blocks"),
        "{stdout}"
    );
    assert_eq!(
        webhooks
            .iter()
            .filter(|l| l.trim_start().starts_with("POST /hooks/flaky"))
            .count(),
        2,
        "{stdout}"
    );
    assert!(
        stderr.contains("localhost resolved only to refused addresses"),
        "{stderr}"
    );
    // The reminders: GitHub asked with the token, one Slack message per reviewer, the busy
    // Slack's reminder retried, and neither secret in anything the demo wrote.
    let scan = "GitHub <- GET /repos/acme/app/pulls?state=open&per_page=100 with the github_token \
                secret -> 200";
    assert!(stdout.contains(scan), "{stdout}");
    assert!(
        stdout.contains("-> 503 (retried after its Retry-After)"),
        "{stdout}"
    );
    for reminder in [
        "  | Hi ada, 2 pull requests are waiting for your review:\n  | - Bump sqlx (6 days) https://github.com/acme/app/pull/2",
        "  | Hi grace, 2 pull requests are waiting for your review:\n  | - Fix login redirect (2 days) https://github.com/acme/app/pull/1\n  | - Dark mode (1 day) https://github.com/acme/web/pull/1",
    ] {
        // Once per tick of the schedule, at least two ticks.
        assert!(
            stdout.matches(reminder).count() >= 2,
            "{reminder}\n{stdout}"
        );
    }
    let ticks: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("  tick ") && l.contains(": pr-reminders job "))
        .collect();
    assert!(ticks.len() >= 2, "{stdout}");
    // Ticks ten seconds apart, on the tens of seconds.
    for tick in &ticks {
        let seconds = &tick["  tick HH:MM:".len()..][..2];
        assert!(seconds.ends_with('0'), "{tick}");
    }
    let listed = stdout
        .split("$ runner schedules list\n")
        .nth(1)
        .and_then(|rest| rest.lines().nth(1))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        listed.contains("pr-reminders-every-10s") && listed.contains("*/10 * * * * *"),
        "{listed}"
    );
    assert_eq!(listed.matches(" UTC)").count(), 3, "{listed}");
    for secret in ["ghp_demo0000", "xoxdemowebhooksecret"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} leaked"
        );
    }
    // The backlog shows as progress, not as a line per job; the demo ends with the dashboard.
    assert!(stdout.contains("backlog: 2000/2000 jobs done"), "{stdout}");
    let completed_lines = stderr.matches("job completed").count();
    assert!(
        completed_lines < 10,
        "{completed_lines} completion lines:\n{stderr}"
    );
    assert!(stderr.lines().count() < 200, "{stderr}");
    let dashboard = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Dashboard:    http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(dashboard.ends_with('/'), "{dashboard}");
}
