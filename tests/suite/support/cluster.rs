//! PostgreSQL servers of a test's own, on loopback ports, made with the machine's binaries
//! (`initdb`, `pg_basebackup`, `pg_ctl`) in a temporary directory: a lone server with
//! settings of its own (a low `max_connections`), or a primary and a synchronous streaming
//! standby, a failover to stage. As root, the servers run as user postgres.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::unistd::{Uid, User};
use sqlx::{Connection, PgConnection};

use runner::private_pg::bin_dir;

use super::pgbouncer::free_port;
use super::{cluster_tempdir, eventually};

/// One server: its data directory and port.
struct Server {
    data: PathBuf,
    port: u16,
}

/// A lone server with settings of the test's own (`max_connections`), stopped when dropped.
pub struct Cluster {
    bin: PathBuf,
    server: Server,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts a server whose `postgresql.conf` ends with `settings`.
    pub fn start(settings: &str) -> Cluster {
        let dir = cluster_tempdir();
        let bin = bin_dir().expect("PostgreSQL's server binaries");
        let server = Server {
            data: owned_dir(&dir.path().join("data")),
            port: free_port(),
        };
        init(&bin, &server, settings);
        start(&bin, &server);
        Cluster {
            bin,
            server,
            _dir: dir,
        }
    }

    /// `database` on it.
    pub fn url(&self, database: &str) -> String {
        url(self.server.port, database)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        stop_now(&self.bin, &self.server);
    }
}

/// A primary and its synchronous standby, stopped when dropped.
pub struct Replicated {
    bin: PathBuf,
    primary: Server,
    standby: Server,
    _dir: tempfile::TempDir,
}

impl Replicated {
    /// Starts a primary, makes a standby of it, and waits until the standby replicates
    /// synchronously: from then on, a commit the primary acknowledges is on the standby too.
    pub async fn start() -> Replicated {
        let dir = cluster_tempdir();
        let bin = bin_dir().expect("PostgreSQL's server binaries");
        let server = |name: &str| Server {
            data: owned_dir(&dir.path().join(name)),
            port: free_port(),
        };
        let replicated = Replicated {
            primary: server("primary"),
            standby: server("standby"),
            bin,
            _dir: dir,
        };
        init(
            &replicated.bin,
            &replicated.primary,
            "wal_level = replica\nmax_wal_senders = 4\nsynchronous_standby_names = '*'\n",
        );
        start(&replicated.bin, &replicated.primary);
        replicated.init_standby();
        start(&replicated.bin, &replicated.standby);
        let primary = url(replicated.primary.port, "postgres");
        eventually(
            "the standby to replicate synchronously",
            Duration::from_secs(60),
            || async {
                let mut conn = PgConnection::connect(&primary).await.ok()?;
                let sync: Option<String> =
                    sqlx::query_scalar("SELECT sync_state FROM pg_stat_replication")
                        .fetch_optional(&mut conn)
                        .await
                        .ok()?;
                (sync.as_deref() == Some("sync")).then_some(())
            },
        )
        .await;
        replicated
    }

    /// `database` at the primary alone.
    pub fn primary_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}",
            self.primary.port
        )
    }

    /// `database` at the standby alone.
    pub fn standby_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}",
            self.standby.port
        )
    }

    /// A URL naming both hosts, primary first, that connects to whichever accepts writes.
    pub fn failover_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{database}\
             ?target_session_attrs=read-write",
            self.primary.port, self.standby.port
        )
    }

    /// Creates `database` (on the primary; it replicates).
    pub async fn create_database(&self, database: &str) {
        let mut conn = PgConnection::connect(&self.primary_url("postgres"))
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&mut conn)
            .await
            .unwrap();
    }

    /// Stops the primary at once, as a crash would: no checkpoint, connections cut.
    pub async fn crash_primary(&self) {
        let (bin, data) = (self.bin.clone(), self.primary.data.clone());
        tokio::task::spawn_blocking(move || {
            pg_ctl(&bin, &data, &["stop", "-w", "-m", "immediate"])
        })
        .await
        .unwrap();
    }

    /// Makes the primary refuse writes while it stays up, as a failover tool demoting it would:
    /// new transactions are read-only, and commits no longer wait for the standby.
    pub async fn make_primary_read_only(&self) {
        let mut conn = PgConnection::connect(&self.primary_url("postgres"))
            .await
            .unwrap();
        for statement in [
            "ALTER SYSTEM SET default_transaction_read_only = on",
            "ALTER SYSTEM SET synchronous_standby_names = ''",
            "SELECT pg_reload_conf()",
        ] {
            sqlx::raw_sql(statement).execute(&mut conn).await.unwrap();
        }
    }

    /// Promotes the standby to primary, and waits until it accepts writes.
    pub async fn promote_standby(&self) {
        let (bin, data) = (self.bin.clone(), self.standby.data.clone());
        tokio::task::spawn_blocking(move || pg_ctl(&bin, &data, &["promote", "-w", "-t", "60"]))
            .await
            .unwrap();
    }

    fn init_standby(&self) {
        let port = self.primary.port.to_string();
        let data = self.standby.data.to_str().unwrap();
        run(
            &self.bin,
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                data,
                "-R",
                "-X",
                "stream",
            ],
        );
        // Promoted, it has no standby of its own to wait for: commits must not wait for one.
        append(
            &self.standby.data.join("postgresql.conf"),
            &format!(
                "port = {}\nsynchronous_standby_names = ''\n",
                self.standby.port
            ),
        );
    }
}

fn pg_ctl(bin: &Path, data: &Path, args: &[&str]) {
    let mut all = vec!["-D", data.to_str().unwrap()];
    all.extend_from_slice(args);
    run(bin, "pg_ctl", &all);
}

/// Runs `program` of `bin` as the servers' user, and fails the test if it fails.
fn run(bin: &Path, program: &str, args: &[&str]) {
    let mut command = Command::new(bin.join(program));
    command.args(args).current_dir("/");
    if let Some(user) = postgres_user() {
        command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Drop for Replicated {
    fn drop(&mut self) {
        stop_now(&self.bin, &self.primary);
        stop_now(&self.bin, &self.standby);
    }
}

fn url(port: u16, database: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/{database}")
}

/// Makes a server's data directory: loopback TCP only, replication connections allowed,
/// `settings` last.
fn init(bin: &Path, server: &Server, settings: &str) {
    let data = server.data.to_str().unwrap();
    run(
        bin,
        "initdb",
        &[
            "-D",
            data,
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
        ],
    );
    append(
        &server.data.join("postgresql.conf"),
        &format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = ''\n\
             max_connections = 200\n{settings}",
            server.port
        ),
    );
    append(
        &server.data.join("pg_hba.conf"),
        "host replication all 127.0.0.1/32 trust\n",
    );
}

fn start(bin: &Path, server: &Server) {
    let log = server.data.join("postgres.log");
    let log = log.to_str().unwrap();
    pg_ctl(bin, &server.data, &["start", "-w", "-t", "60", "-l", log]);
}

/// Stops a server at once, if it runs.
fn stop_now(bin: &Path, server: &Server) {
    let mut command = Command::new(bin.join("pg_ctl"));
    command
        .arg("-D")
        .arg(&server.data)
        .args(["stop", "-m", "immediate"]);
    if let Some(user) = postgres_user() {
        command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    let _ = command.current_dir("/").output();
}

/// As root, the user the servers run as.
fn postgres_user() -> Option<User> {
    Uid::effective().is_root().then(|| {
        User::from_name("postgres")
            .unwrap()
            .expect("a postgres user")
    })
}

/// Creates `path` for the servers' user, private as PostgreSQL wants its data directory.
fn owned_dir(path: &Path) -> PathBuf {
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    if let Some(user) = postgres_user() {
        nix::unistd::chown(path, Some(user.uid), Some(user.gid)).unwrap();
    }
    path.to_owned()
}

fn append(file: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(file).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}
