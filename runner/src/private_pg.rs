//! A private PostgreSQL cluster, for starting with no database configured.
//!
//! When neither `DATABASE_URL` nor `--database-url` is set and nothing answers on the default
//! local address, the runner initialises a cluster of its own with the machine's Postgres
//! binaries (`initdb`, `pg_ctl`), starts it on a free port on 127.0.0.1 and stops it on exit.
//! The data directory persists, so the next start finds its jobs again; a cluster already
//! running in it (started by another runner process) is reused and left running.
//!
//! Postgres refuses to run as root, so as root the cluster runs as the `postgres` user.
//! Everything here blocks: call it from `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nix::unistd::{Uid, User};

/// Why a private cluster could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum PrivatePgError {
    /// No Postgres server binaries on this machine.
    #[error(
        "no PostgreSQL server binaries found (looked in $JOBRUNNER_PG_BIN, \
         /usr/lib/postgresql/*/bin, /usr/local/pgsql/bin and $PATH). Either set DATABASE_URL to \
         an existing server, or install PostgreSQL (e.g. `apt install postgresql`, \
         `dnf install postgresql-server`, `brew install postgresql`) so the runner can start a \
         private one"
    )]
    NoBinaries,
    /// Running as root without a `postgres` user to run the server as.
    #[error(
        "running as root, and PostgreSQL refuses to run as root: create a `postgres` user, \
         run as a normal user, or set DATABASE_URL"
    )]
    NoPostgresUser,
    /// A file system operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// initdb or pg_ctl failed.
    #[error("{command} failed: {detail}")]
    Command {
        /// The command.
        command: String,
        /// Its output, or why it could not run.
        detail: String,
    },
}

type Result<T, E = PrivatePgError> = std::result::Result<T, E>;

/// A running private cluster. Stopped on drop if this process started it.
#[derive(Debug)]
pub struct PrivatePostgres {
    data_dir: PathBuf,
    bin_dir: PathBuf,
    run_as: Option<User>,
    url: String,
    owned: bool,
}

impl PrivatePostgres {
    /// Where the cluster lives unless configured: the user's data directory, or
    /// `/var/lib/jobrunner/postgres` for root (whose home the `postgres` user cannot enter).
    pub fn default_data_dir() -> PathBuf {
        if Uid::effective().is_root() {
            return PathBuf::from("/var/lib/jobrunner/postgres");
        }
        dirs::data_local_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("jobrunner")
            .join("postgres")
    }

    /// Starts (or joins) the cluster in `data_dir`, initialising it on first use.
    pub fn start(data_dir: &Path) -> Result<Self> {
        let bin_dir = bin_dir().ok_or(PrivatePgError::NoBinaries)?;
        let run_as = if Uid::effective().is_root() {
            Some(
                User::from_name("postgres")
                    .ok()
                    .flatten()
                    .ok_or(PrivatePgError::NoPostgresUser)?,
            )
        } else {
            None
        };
        let mut cluster = Self {
            data_dir: data_dir.to_owned(),
            bin_dir,
            run_as,
            url: String::new(),
            owned: false,
        };
        if !data_dir.join("PG_VERSION").exists() {
            cluster.init()?;
        }
        if let Some(port) = cluster.running_port() {
            cluster.url = url_for(port);
            return Ok(cluster);
        }
        // The port of its last run, if it is free, so that a restarted cluster keeps its address
        // and other processes connected to it can reconnect.
        let port = match previous_port(data_dir) {
            Some(port) if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() => port,
            _ => free_port(data_dir)?,
        };
        cluster.pg_ctl(&[
            "start",
            "-w",
            "-t",
            "60",
            "-l",
            &cluster.log_file().to_string_lossy(),
            "-o",
            &format!("-p {port}"),
        ])?;
        cluster.owned = true;
        cluster.url = url_for(port);
        Ok(cluster)
    }

    /// Connection URL (superuser `postgres`, database `postgres`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Whether this process started the cluster (and so stops it).
    pub fn is_owned(&self) -> bool {
        self.owned
    }

    /// Stops the cluster if this process started it: `fast` lets the server finish cleanly,
    /// `immediate` is for an exit that cannot wait.
    pub fn stop(&mut self, immediate: bool) -> Result<()> {
        if !self.owned {
            return Ok(());
        }
        self.owned = false;
        let mode = if immediate { "immediate" } else { "fast" };
        self.pg_ctl(&["stop", "-w", "-m", mode]).map(drop)
    }

    fn log_file(&self) -> PathBuf {
        self.data_dir.join("postgres.log")
    }

    fn init(&self) -> Result<()> {
        let io = |what, source| PrivatePgError::Io {
            what,
            path: self.data_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&self.data_dir).map_err(|e| io("cannot create", e))?;
        if let Some(user) = &self.run_as {
            nix::unistd::chown(&self.data_dir, Some(user.uid), Some(user.gid))
                .map_err(|e| io("cannot hand to user postgres", e.into()))?;
        }
        let data_dir = self.data_dir.to_string_lossy().into_owned();
        let mut initdb = self.command("initdb");
        run(initdb.args([
            "-D",
            &data_dir,
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
        ]))
        .map_err(|e| match (e, &self.run_as) {
            (PrivatePgError::Command { command, detail }, Some(_)) => PrivatePgError::Command {
                command,
                detail: format!(
                    "{detail} (the directory and every parent must be accessible to user \
                     postgres)"
                ),
            },
            (e, _) => e,
        })?;
        // Loopback TCP only: no socket file to collide with a system cluster's.
        let conf = self.data_dir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).map_err(|e| io("cannot read", e))?;
        text.push_str(
            "\n# jobrunner's private cluster\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = ''\n",
        );
        std::fs::write(&conf, text).map_err(|e| io("cannot write", e))
    }

    /// The port of a server already running in the data directory, if any.
    fn running_port(&self) -> Option<u16> {
        let pid_file = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        let port = pid_file.lines().nth(3)?.trim().parse().ok()?;
        self.pg_ctl(&["status"]).ok().map(|_| port)
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<Output> {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl.arg("-D").arg(&self.data_dir).args(args);
        run(&mut pg_ctl).map_err(|e| match e {
            PrivatePgError::Command { command, detail } => {
                let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                PrivatePgError::Command {
                    command,
                    detail: format!("{detail}\n{}", tail.join("\n")),
                }
            }
            e => e,
        })
    }

    fn command(&self, program: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(self.bin_dir.join(program));
        if let Some(user) = &self.run_as {
            command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
            // The child keeps our working directory, which the postgres user may not enter.
            command.current_dir("/");
        }
        command
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if let Err(error) = self.stop(false) {
            tracing::error!(%error, data_dir = %self.data_dir.display(),
                            "stopping the private PostgreSQL cluster failed");
        }
    }
}

fn url_for(port: u16) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

fn run(command: &mut Command) -> Result<Output> {
    let name = command.get_program().to_string_lossy().into_owned();
    let output = command.output().map_err(|e| PrivatePgError::Command {
        command: name.clone(),
        detail: e.to_string(),
    })?;
    if output.status.success() {
        return Ok(output);
    }
    let streams = [&output.stderr, &output.stdout].map(|s| String::from_utf8_lossy(s).into_owned());
    let said: Vec<&str> = streams
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    let text = format!("{}: {}", output.status, said.join("\n"));
    Err(PrivatePgError::Command {
        command: name,
        detail: text,
    })
}

/// The port the cluster last ran on, from the options `pg_ctl` recorded for its last start
/// (`postmaster.opts`: the server's command line, arguments quoted).
fn previous_port(data_dir: &Path) -> Option<u16> {
    let options = std::fs::read_to_string(data_dir.join("postmaster.opts")).ok()?;
    let mut words = options
        .split_whitespace()
        .map(|word| word.trim_matches('"'));
    words.find(|word| *word == "-p")?;
    words.next()?.parse().ok()
}

fn free_port(data_dir: &Path) -> Result<u16> {
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|source| PrivatePgError::Io {
            what: "cannot find a free port for",
            path: data_dir.into(),
            source,
        })?;
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    Ok(port)
}

/// The directory holding `initdb` and `pg_ctl`: `$JOBRUNNER_PG_BIN`, the newest Debian-style
/// `/usr/lib/postgresql/<version>/bin`, `/usr/local/pgsql/bin`, or `$PATH`.
pub fn bin_dir() -> Option<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("JOBRUNNER_PG_BIN").map(PathBuf::from) {
        return has_tools(&dir).then_some(dir);
    }
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versioned.sort();
    let path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    versioned
        .into_iter()
        .rev()
        .map(|(_, dir)| dir)
        .chain([PathBuf::from("/usr/local/pgsql/bin")])
        .chain(path)
        .find(|dir| has_tools(dir))
}
