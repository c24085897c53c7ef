//! The demo's outgoing HTTP: a small web server of its own on 127.0.0.2, granted to the
//! `webhook` plugin by a manifest and let through the SSRF guard by the runner's config, and
//! webhook jobs that reach it, retry on its 503, and are refused: a host the manifest does
//! not grant, and a granted name (`localhost`) whose address is outside `allow_networks`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::Queue;
use crate::cli::local_server::{Answer, serve};
use crate::job::NewJob;
use crate::runner::RunConfig;

use super::SERVER_IP;

/// What the server received: path and body, in order.
type Received = Arc<Mutex<Vec<(String, String)>>>;

/// The demo's web server, running until dropped.
pub struct Receiver {
    addr: SocketAddr,
    received: Received,
    task: JoinHandle<()>,
    /// The manifest granting the server to `webhook`, as written.
    manifest: String,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Starts the server, grants it to `webhook` by a manifest in `config`'s (the demo's)
    /// plugin directory, and allows the server's network.
    pub async fn start(config: &mut RunConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((SERVER_IP, 0))
            .await
            .with_context(|| format!("the demo's web server binds {SERVER_IP}"))?;
        let addr = listener.local_addr()?;
        let received = Received::default();
        let answering = Arc::clone(&received);
        let task = tokio::spawn(serve(listener, move |request| {
            answer(Arc::clone(&answering), request)
        }));
        let port = addr.port();
        let manifest = format!(
            "[http]\nallowed_hosts = [\"http://{SERVER_IP}:{port}\", \"http://localhost:{port}\"]\n"
        );
        super::write_manifest(&config.plugins, "webhook", &manifest)?;
        super::allow_network(config, SERVER_IP)?;
        Ok(Self {
            addr,
            received,
            task,
            manifest,
        })
    }

    /// Enqueues the webhook jobs and says what each shows.
    pub async fn enqueue(&self, queue: &Queue) -> anyhow::Result<()> {
        println!("Config:            [http] allow_networks = [\"{SERVER_IP}/32\"]");
        println!(
            "webhook.toml:      {}",
            self.manifest.trim().replace('\n', "  ")
        );
        let port = self.addr.port();
        for (what, url) in [
            (
                "delivered",
                format!("http://{SERVER_IP}:{port}/hooks/deploy"),
            ),
            (
                "503 once, retried",
                format!("http://{SERVER_IP}:{port}/hooks/flaky"),
            ),
            (
                "host not granted",
                format!("http://127.0.0.3:{port}/hooks/deploy"),
            ),
            (
                "granted, but localhost is outside allow_networks",
                format!("http://localhost:{port}/hooks/deploy"),
            ),
        ] {
            let body = json!({"text": format!("webhook demo: {what}")});
            let job = NewJob::new("webhook", json!({"url": url, "body": body})).max_attempts(3);
            let id = queue.enqueue(queue.db(), &job).await?.id;
            println!("Rust, webhook:     {what} ({url}) -> id {id}");
        }
        Ok(())
    }

    /// How each webhook job ended, and what the server received.
    pub async fn report(&self, queue: &Queue) -> anyhow::Result<()> {
        let jobs: Vec<(i64, String, String, String)> = sqlx::query_as(
            "SELECT id, payload->>'url', state::text,
                    coalesce(result::text, errors->-1->>'error', '')
               FROM jobrunner.jobs WHERE job_type = 'webhook' ORDER BY id",
        )
        .fetch_all(queue.db())
        .await?;
        println!("\nWebhooks (outgoing HTTP, one `jobrunner::http` log line per request above):");
        for (id, url, state, outcome) in jobs {
            println!("  {id:>4} {state:<9} {url:<40} {outcome}");
        }
        println!("The demo's server at {} received:", self.addr);
        for (path, body) in self.received.lock().expect("not poisoned").iter() {
            println!("  POST {path} {body}");
        }
        Ok(())
    }
}

/// 204 for every request, but a 503 for the first to `/hooks/flaky`.
async fn answer(received: Received, request: hyper::Request<Incoming>) -> Answer {
    let path = request.uri().path().to_owned();
    let body = match request.into_body().collect().await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    let mut received = received.lock().expect("not poisoned");
    let first_flaky = path == "/hooks/flaky" && !received.iter().any(|(p, _)| *p == path);
    received.push((path, body));
    let status = if first_flaky { 503 } else { 204 };
    hyper::Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .expect("a valid response")
}
