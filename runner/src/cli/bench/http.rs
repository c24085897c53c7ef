//! Phase 5: outgoing HTTP. Each of N `fetch-rust` jobs makes one GET to a server of the
//! benchmark's own on 127.0.0.1 (granted by a manifest, its address allowed), drained by the
//! worker; then a native tokio/hyper client makes the same N requests at the worker's
//! concurrency, each on a new connection as the guest's are. The ratio of the two rates is
//! what the sandbox, the queue and the policy cost a job that calls an API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

use super::ENQUEUE_CHUNK;
use crate::Queue;
use crate::cli::local_server::serve;
use crate::executor::WasmExecutor;
use crate::job::{NewJob, Unique};
use crate::worker::{Worker, WorkerConfig};

/// The plugin the phase runs: one GET per job.
pub(super) const JOB_TYPE: &str = "fetch-rust";

/// The phase's rates.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Rates {
    pub jobs_per_s: f64,
    pub native_per_s: f64,
}

/// The benchmark's web server: `200 ok` to everything, requests counted. It runs on a thread
/// of its own, as a server in another process would, so that neither client shares its
/// runtime's threads with it.
pub(super) struct Server {
    addr: SocketAddr,
    served: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.take().map(|stop| stop.send(()));
    }
}

impl Server {
    /// Starts the server on a free port of 127.0.0.1.
    pub fn start() -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .context("the HTTP phase's server binds 127.0.0.1")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let served = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let counter = Arc::clone(&served);
        std::thread::Builder::new()
            .name("bench-http-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("a tokio listener");
                    let answer = move |_request| {
                        counter.fetch_add(1, Ordering::Relaxed);
                        std::future::ready(hyper::Response::new(Full::new(Bytes::from_static(
                            b"ok",
                        ))))
                    };
                    tokio::select! {
                        () = serve(listener, answer) => {}
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(Self {
            addr,
            served,
            stop: Some(stop),
        })
    }

    /// Puts the phase's plugin into the plugin directory `dir`, with a manifest granting this
    /// server.
    pub fn stage(&self, plugin: &Path, dir: &Path) -> anyhow::Result<()> {
        std::fs::copy(plugin, dir.join(format!("{JOB_TYPE}.wasm")))
            .with_context(|| format!("cannot copy {}", plugin.display()))?;
        let manifest = format!("[http]\nallowed_hosts = [\"http://{}\"]\n", self.addr);
        std::fs::write(dir.join(format!("{JOB_TYPE}.toml")), manifest)?;
        Ok(())
    }

    fn url(&self) -> String {
        format!("http://{}/ok", self.addr)
    }
}

/// Where the phase's plugin is by default: beside the benchmark's plugin.
pub(super) fn default_plugin(beside: &Path) -> PathBuf {
    beside.with_file_name(format!("{JOB_TYPE}.wasm"))
}

/// Runs `jobs` one-GET jobs through the worker, then the same requests natively.
pub(super) async fn run(
    jobs: usize,
    queue: &Queue,
    executor: WasmExecutor,
    config: &WorkerConfig,
    server: &Server,
) -> anyhow::Result<Rates> {
    let url = server.url();
    let all: Vec<NewJob> = (0..jobs)
        .map(|_| NewJob::new(JOB_TYPE, json!({ "url": url })).unique(Unique::Off))
        .collect();
    for chunk in all.chunks(ENQUEUE_CHUNK) {
        queue.enqueue_many(queue.db(), chunk).await?;
    }
    let started = Instant::now();
    let worker = Worker::new(queue.clone(), executor, config.clone()).start();
    let drained = wait_until_drained(queue).await;
    let elapsed = started.elapsed();
    worker.shutdown().await;
    drained?;
    let served = server.served.swap(0, Ordering::Relaxed);
    anyhow::ensure!(
        served == jobs,
        "{served} of {jobs} requests reached the server: look at the {JOB_TYPE} jobs' results"
    );
    let jobs_per_s = jobs as f64 / elapsed.as_secs_f64();
    let native = native(server.addr, jobs, config.concurrency).await?;
    let native_per_s = jobs as f64 / native.as_secs_f64();
    let concurrency = config.concurrency as f64;
    println!(
        "5. http     {jobs} jobs, one GET each to 127.0.0.1: {:.2} s, {jobs_per_s:.0} jobs/s; \
         native hyper client, same requests at concurrency {}: {native_per_s:.0} requests/s; \
         {:.0}% of native, {:.0} us more per request",
        elapsed.as_secs_f64(),
        config.concurrency,
        100.0 * jobs_per_s / native_per_s,
        (concurrency / jobs_per_s - concurrency / native_per_s) * 1e6,
    );
    Ok(Rates {
        jobs_per_s,
        native_per_s,
    })
}

async fn wait_until_drained(queue: &Queue) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (pending, failed): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state IN ('available', 'running')),
                    count(*) FILTER (WHERE state = 'failed')
               FROM jobrunner.jobs WHERE job_type = $1",
        )
        .bind(JOB_TYPE)
        .fetch_one(queue.db())
        .await?;
        anyhow::ensure!(failed == 0, "{failed} {JOB_TYPE} jobs failed");
        if pending == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{pending} {JOB_TYPE} jobs still pending after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `jobs` GETs on `concurrency` tasks, a new connection each: the time they took.
async fn native(addr: SocketAddr, jobs: usize, concurrency: usize) -> anyhow::Result<Duration> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < jobs {
                    get(addr).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed())
}

async fn get(addr: SocketAddr) -> anyhow::Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get("/ok")
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    anyhow::ensure!(response.status() == 200, "status {}", response.status());
    response.into_body().collect().await?;
    drop(sender);
    let _ = connection.await;
    Ok(())
}
