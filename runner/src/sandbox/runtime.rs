//! The guests' own threads. A worker's executors, which run guest code, live on a tokio
//! runtime of their own, so that however much CPU the guests want, the runner's duties
//! (claims, heartbeats, outcome writes, the listener) keep running on the runner's threads,
//! which the operating system schedules beside the guests' instead of behind them. The
//! executors already take their jobs and hand back outcomes through channels, so this costs
//! no extra hand-off per job.

use tokio::runtime::{Builder, Handle, Runtime};

/// A runtime for guest code, one thread per core.
#[derive(Debug)]
pub struct GuestRuntime {
    /// Always `Some` until dropped: shut down in the background, as a runtime may not block
    /// the async context that drops it.
    runtime: Option<Runtime>,
}

impl GuestRuntime {
    /// Starts the guest threads.
    pub fn new() -> std::io::Result<Self> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let runtime = Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("jobrunner-guest")
            .enable_all()
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    /// A handle to spawn the tasks that run guests on.
    pub fn handle(&self) -> Handle {
        let runtime = self
            .runtime
            .as_ref()
            .expect("the runtime lives until dropped");
        runtime.handle().clone()
    }
}

impl Drop for GuestRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
