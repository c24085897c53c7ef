//! A `runner run` process on a plugin directory of the test's own, with JSON logs (read back
//! as events) and retained results: the harness for tests that watch a runner at work.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use super::process::{Process, run_cli, runner};
use super::{TestDb, eventually};

/// How long a runner may take to load its plugins and start: compiling the Python and
/// JavaScript components takes seconds in a debug build, more when tests share the cores.
const READY: Duration = Duration::from_secs(150);

/// How long to wait for any one event once the runner is up.
const WAIT: Duration = Duration::from_secs(30);

/// A running runner whose log is kept.
pub struct Live {
    process: Process,
    /// The database it works on.
    pub url: String,
}

impl Live {
    /// Starts `runner run` on `dir` with `args` added, and waits until it has started.
    pub async fn start(db: &TestDb, dir: &Path, args: &[&str]) -> Live {
        Self::start_on(&db.url(), dir, args).await
    }

    /// [`Live::start`] on the database at `url`. Completed jobs are kept an hour and idle
    /// runners poll every 100 ms, unless `args` set those flags themselves.
    pub async fn start_on(url: &str, dir: &Path, args: &[&str]) -> Live {
        Self::start_with_env(url, dir, args, &[]).await
    }

    /// [`Live::start_on`] with environment variables `env` set, e.g. a `RUST_LOG`.
    pub async fn start_with_env(
        url: &str,
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Live {
        let mut all = vec![
            "run",
            "--plugins",
            dir.to_str().unwrap(),
            "--log-format",
            "json",
        ];
        for (flag, value) in [("--keep-completed", "1h"), ("--poll-interval", "100ms")] {
            if !args.contains(&flag) {
                all.extend([flag, value]);
            }
        }
        all.extend_from_slice(args);
        let mut command = runner(&all);
        command.env("DATABASE_URL", url).envs(env.iter().copied());
        let process = Process::spawn(command);
        process.wait_for_output("runner started", READY).await;
        Live {
            process,
            url: url.to_owned(),
        }
    }

    /// Its lease owner name, as it logged it at start.
    pub fn owner(&self) -> String {
        let started = self.events("runner started");
        let owner = started.first().and_then(|event| event["owner"].as_str());
        owner.expect("the start event names the owner").to_owned()
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: Signal) {
        self.process.signal(signal);
    }

    /// Its peak resident set so far, in bytes.
    pub fn peak_rss(&self) -> u64 {
        self.process.peak_rss()
    }

    /// SIGSTOP, once every thread has stopped: a runner frozen mid-work, as by a long pause
    /// of its machine. [`Live::thaw`] lets it go on.
    pub async fn freeze(&self) {
        self.process.freeze().await;
    }

    /// SIGCONT to a frozen runner.
    pub fn thaw(&self) {
        self.signal(Signal::SIGCONT);
    }

    /// Waits for the process to exit, failing the test after `deadline`.
    pub async fn exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        self.process.exit(deadline).await
    }

    /// SIGKILL, and waits until the process is gone.
    pub async fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
        self.exit(WAIT).await;
    }

    /// Every event logged so far (the JSON objects on stdout).
    pub fn log(&self) -> Vec<Value> {
        self.process
            .stdout()
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .collect()
    }

    /// Events with this message.
    pub fn events(&self, message: &str) -> Vec<Value> {
        let mut events = self.log();
        events.retain(|event| event["message"] == message);
        events
    }

    /// Waits for an event with `message` for which `matches` holds.
    pub async fn event(&self, message: &str, matches: impl Fn(&Value) -> bool) -> Value {
        eventually(&format!("a {message:?} event"), WAIT, || async {
            self.events(message).into_iter().find(&matches)
        })
        .await
    }

    /// The sha256 of every version the runner loaded.
    pub fn loaded(&self) -> Vec<String> {
        self.events("plugin loaded")
            .iter()
            .map(|e| e["sha256"].as_str().unwrap().to_owned())
            .collect()
    }

    /// `runner plugins --json`.
    pub async fn plugins(&self) -> Value {
        let (status, stdout, stderr) = run_cli(&self.url, &["plugins", "--json"]).await;
        assert!(status.success(), "{stderr}");
        serde_json::from_str(&stdout).unwrap()
    }

    /// SIGTERM, and a clean exit.
    pub async fn stop(self) {
        self.process.signal(Signal::SIGTERM);
        self.stop_signalled().await;
    }

    /// A clean exit, once a shutdown signal has been sent.
    pub async fn stop_signalled(mut self) {
        let status = self.process.exit(WAIT).await;
        assert!(
            status.success(),
            "graceful shutdown exits 0: {status}\nstderr:\n{}",
            self.process.stderr().join("\n")
        );
    }
}
