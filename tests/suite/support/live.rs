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
        let url = db.url();
        let mut all = vec![
            "run",
            "--plugins",
            dir.to_str().unwrap(),
            "--log-format",
            "json",
            "--keep-completed",
            "1h",
            "--poll-interval",
            "100ms",
        ];
        all.extend_from_slice(args);
        let mut command = runner(&all);
        command.env("DATABASE_URL", &url);
        let process = Process::spawn(command);
        process.wait_for_output("runner started", READY).await;
        Live { process, url }
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
    pub async fn stop(mut self) {
        self.process.signal(Signal::SIGTERM);
        assert!(self.process.exit(WAIT).await.success());
    }
}
