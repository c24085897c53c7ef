//! A PgBouncer in transaction pooling mode in front of the test server, on a loopback port of
//! its own: Debian's `pgbouncer`, started by the test and stopped when dropped.

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

use super::db::admin_url;
use super::eventually;

/// A running PgBouncer.
pub struct PgBouncer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl PgBouncer {
    /// Starts one that lends at most `server_connections` connections to the server, for all
    /// its clients together, one transaction at a time.
    pub async fn start(server_connections: u32) -> PgBouncer {
        let server: PgConnectOptions = admin_url().parse().unwrap();
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        std::fs::write(path.join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        let config = format!(
            "[databases]\n\
             * = host={host} port={server_port}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/users.txt\n\
             pool_mode = transaction\n\
             default_pool_size = {server_connections}\n\
             max_db_connections = {server_connections}\n\
             max_client_conn = 1000\n\
             logfile = {dir}/pgbouncer.log\n\
             pidfile = {dir}/pgbouncer.pid\n",
            host = server.get_host(),
            server_port = server.get_port(),
            dir = path.display(),
        );
        std::fs::write(path.join("pgbouncer.ini"), config).unwrap();
        let mut command = Command::new("pgbouncer");
        // PgBouncer refuses to run as root: as root, it runs as user postgres.
        if nix::unistd::Uid::effective().is_root() {
            let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
            nix::unistd::chown(path, Some(postgres.uid), Some(postgres.gid)).unwrap();
            std::fs::set_permissions(path, PermissionsExt::from_mode(0o755)).unwrap();
            command.args(["-u", "postgres"]);
        }
        let child = command
            .arg(path.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pgbouncer runs (Debian's package pgbouncer; tests/run installs it)");
        let bouncer = PgBouncer { child, port, dir };
        eventually("PgBouncer to listen", Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(drop)
        })
        .await;
        bouncer
    }

    /// The URL of `database` through this PgBouncer.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// What PgBouncer logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    listener.local_addr().unwrap().port()
}
