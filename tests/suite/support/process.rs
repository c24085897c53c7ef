//! Runner processes, for what only a real process shows: exit codes, signals, output.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// `runner` with `args`, its environment cleared of anything that would pick a database, and
/// the Rust example plugins as its plugin directory.
pub fn runner(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_runner"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("JOBRUNNER_CONFIG")
        .env("JOBRUNNER_PLUGINS", test_plugins::rust_dir())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs `runner args` against `url` to completion: (status, stdout, stderr).
pub async fn run_cli(url: &str, args: &[&str]) -> (ExitStatus, String, String) {
    let output = runner(args)
        .env("DATABASE_URL", url)
        .output()
        .await
        .expect("runner binary runs");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A running runner process whose output is collected line by line.
pub struct Process {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Starts `command` with piped output.
    pub fn spawn(mut command: Command) -> Process {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("runner binary starts");
        let stdout = collect(child.stdout.take().expect("piped stdout"));
        let stderr = collect(child.stderr.take().expect("piped stderr"));
        Process {
            child,
            stdout,
            stderr,
        }
    }

    /// Lines printed on stdout so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Lines printed on stderr so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until a line on stdout or stderr contains `needle`.
    pub async fn wait_for_output(&self, needle: &str, deadline: Duration) -> String {
        super::eventually(
            &format!("runner output containing {needle:?}"),
            deadline,
            || async {
                self.stdout()
                    .into_iter()
                    .chain(self.stderr())
                    .find(|line| line.contains(needle))
            },
        )
        .await
    }

    /// The largest resident set the process has had so far, in bytes (its `VmHWM`).
    pub fn peak_rss(&self) -> u64 {
        let pid = self.child.id().expect("process still running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("its status");
        let line = status.lines().find(|l| l.starts_with("VmHWM:"));
        let kib = line.and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok());
        kib.expect("VmHWM in kB") * 1024
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: Signal) {
        let pid = self.child.id().expect("process still running");
        kill(Pid::from_raw(pid as i32), signal).expect("signal delivered");
    }

    /// SIGSTOP, and waits until every thread of the process has stopped: from then on it
    /// sends nothing more (statements it sent before may still be committed).
    pub async fn freeze(&self) {
        self.signal(Signal::SIGSTOP);
        let pid = self.child.id().expect("process still running");
        super::eventually(
            &format!("process {pid} to stop"),
            Duration::from_secs(10),
            || async { all_threads_stopped(pid).then_some(()) },
        )
        .await;
    }

    /// Waits for the process to exit, failing the test after `deadline`.
    pub async fn exit(&mut self, deadline: Duration) -> ExitStatus {
        match tokio::time::timeout(deadline, self.child.wait()).await {
            Ok(status) => status.expect("wait for runner"),
            Err(_) => {
                let _ = self.child.kill().await;
                panic!(
                    "runner did not exit within {deadline:?}\nstderr:\n{}",
                    self.stderr().join("\n")
                );
            }
        }
    }
}

/// Whether every thread of `pid` is in the stopped state (`T` in `/proc/.../stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    threads.flatten().all(|thread| {
        let stat = std::fs::read_to_string(thread.path().join("stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses and may hold ") ".
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('T'))
    })
}

fn collect(stream: impl AsyncRead + Unpin + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}
