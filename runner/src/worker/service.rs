//! The one shape of a worker's duties. Each is a [`Service`]: a named task that runs until its
//! shutdown token fires (or its input closes), then drains what it holds and returns. Services
//! that stop together form a [`Stage`], which starts them, fires their token, joins them and
//! reports how each ended. State passes between services by channels and owned handles.

use std::future::Future;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A background duty of the worker.
pub(super) trait Service: Send + 'static {
    /// Its name in log lines.
    const NAME: &'static str;

    /// Runs until `shutdown` fires, then drains and returns.
    fn run(self, shutdown: CancellationToken) -> impl Future<Output = ()> + Send;
}

/// Services that stop together. Dropped without [`Stage::stop`], it fires their token and
/// leaves them to finish on their own.
pub(super) struct Stage {
    name: &'static str,
    shutdown: CancellationToken,
    tasks: JoinSet<&'static str>,
}

impl Stage {
    /// An empty stage; `name` says what its services do, in log lines.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            shutdown: CancellationToken::new(),
            tasks: JoinSet::new(),
        }
    }

    /// The stage's shutdown token, for services of later stages that must know it fired.
    pub fn token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Starts `service` on the current runtime.
    pub fn start<S: Service>(&mut self, service: S) {
        self.start_on(&Handle::current(), service);
    }

    /// Starts `service` on `runtime`.
    pub fn start_on<S: Service>(&mut self, runtime: &Handle, service: S) {
        let shutdown = self.shutdown.clone();
        let task = async move {
            service.run(shutdown).await;
            S::NAME
        };
        self.tasks.spawn_on(task, runtime);
    }

    /// Services still running.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Waits up to `grace` for every service to finish by itself; false if some are still
    /// running then.
    pub async fn finish_within(&mut self, grace: Duration) -> bool {
        tokio::time::timeout(grace, self.join_all()).await.is_ok()
    }

    /// Fires the stage's token; [`Stage::stop`] waits for the services later.
    pub fn cancel(&self) {
        self.shutdown.cancel();
    }

    /// Fires the stage's token and waits for every service to drain.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        self.join_all().await;
    }

    async fn join_all(&mut self) {
        while let Some(ended) = self.tasks.join_next().await {
            match ended {
                Ok(service) => tracing::debug!(stage = self.name, service, "service stopped"),
                Err(error) => tracing::error!(stage = self.name, %error, "service failed"),
            }
        }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.tasks.detach_all();
    }
}
