//! Finding the database: the configured URL, else the local default server, else a private
//! cluster of our own.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::Queue;
use crate::private_pg::PrivatePostgres;

/// Enough for the worker's long-lived users (listener, fetchers, open batch transactions,
/// completer, heartbeat, rescuer, pruner) with room for bursts.
const MAX_CONNECTIONS: u32 = 14;

/// The `application_name` of the runner's connections.
pub const APPLICATION_NAME: &str = "jobrunner";

/// A connected database, and the private cluster behind it if we started one.
pub struct Database {
    options: PgConnectOptions,
    pool: PgPool,
    private: Mutex<Option<PrivatePostgres>>,
}

impl Database {
    /// Connects to `url`; without one, to the local default server; if nothing answers
    /// there, to a private cluster in `private_dir` (started if needed).
    pub async fn connect(
        url: Option<String>,
        private_dir: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let (options, private) = match url {
            Some(url) => (
                url.parse()
                    .context("DATABASE_URL is not a valid PostgreSQL URL")?,
                None,
            ),
            None => match default_server().await? {
                Some(options) => (options, None),
                None => {
                    let cluster = start_private(private_dir).await?;
                    (cluster.url().parse()?, Some(cluster))
                }
            },
        };
        // Named, so operators (and the fault-injection tests) can tell runners' connections
        // apart in pg_stat_activity, unless the URL names them itself.
        let options = match options.get_application_name() {
            Some(_) => options,
            None => options.application_name(APPLICATION_NAME),
        };
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .with_context(|| format!("cannot connect to PostgreSQL at {}", describe(&options)))?;
        if private.is_some() {
            // The private cluster is ours alone: keep its schema current without being asked.
            Queue::new(pool.clone()).migrate().await?;
        }
        Ok(Self {
            options,
            pool,
            private: Mutex::new(private),
        })
    }

    /// A queue on this database.
    pub fn queue(&self) -> Queue {
        Queue::new(self.pool.clone())
    }

    /// Whether this is a private cluster this process started or joined.
    pub fn is_private(&self) -> bool {
        self.private.lock().expect("lock poisoned").is_some()
    }

    /// How to connect, for tools that need another database on the same server.
    pub fn options(&self) -> &PgConnectOptions {
        &self.options
    }

    /// Drops database `name` on the same server if it exists, creates it empty, and connects
    /// to it with a pool of `connections`.
    pub async fn fresh_database(&self, name: &str, connections: u32) -> anyhow::Result<PgPool> {
        self.drop_database(name).await?;
        self.admin(&format!("CREATE DATABASE {name}")).await?;
        Ok(PgPoolOptions::new()
            .max_connections(connections)
            .connect_with(self.options.clone().database(name))
            .await?)
    }

    /// Drops database `name` on the same server, closing its connections.
    pub async fn drop_database(&self, name: &str) -> anyhow::Result<()> {
        self.admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
    }

    async fn admin(&self, statement: &str) -> anyhow::Result<()> {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&self.pool)
            .await
            .with_context(|| format!("{statement} failed"))?;
        Ok(())
    }

    /// Closes the pool and stops the private cluster if we started it.
    pub async fn close(self) {
        self.pool.close().await;
        if let Some(cluster) = self.private.into_inner().expect("lock poisoned") {
            // Dropping stops it; pg_ctl blocks.
            let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
        }
    }

    /// For an exit that cannot wait: stops the private cluster at once, if we started it.
    pub fn stop_private_now(&self) {
        if let Some(mut cluster) = self.private.lock().expect("lock poisoned").take()
            && let Err(error) = cluster.stop(true)
        {
            eprintln!("error: stopping the private PostgreSQL cluster: {error}");
        }
    }
}

/// The server libpq's defaults point at (PGHOST, PGPORT, PGUSER, PGDATABASE, or the local
/// socket / localhost:5432), if it answers. An error if it answers but refuses us: starting a
/// private cluster then would hide a misconfiguration.
async fn default_server() -> anyhow::Result<Option<PgConnectOptions>> {
    let options = PgConnectOptions::new();
    let attempt = tokio::time::timeout(Duration::from_secs(3), options.connect()).await;
    match attempt {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(Some(options))
        }
        Ok(Err(sqlx::Error::Io(_))) | Err(_) => Ok(None),
        Ok(Err(error)) => Err(error).with_context(|| {
            format!(
                "PostgreSQL answers at the default address ({}) but refused the connection; set \
                 DATABASE_URL",
                describe(&options)
            )
        }),
    }
}

async fn start_private(dir: Option<PathBuf>) -> anyhow::Result<PrivatePostgres> {
    let dir = dir.unwrap_or_else(PrivatePostgres::default_data_dir);
    tracing::info!(data_dir = %dir.display(),
                   "no database configured and none answers locally; using a private cluster");
    let cluster = tokio::task::spawn_blocking(move || PrivatePostgres::start(&dir))
        .await
        .context("starting the private PostgreSQL cluster panicked")??;
    let message = if cluster.is_owned() {
        "started a private PostgreSQL cluster; it stops when this command exits"
    } else {
        "joined the private PostgreSQL cluster another runner started"
    };
    tracing::info!(data_dir = %cluster.data_dir().display(), url = cluster.url(), "{message}");
    Ok(cluster)
}

fn describe(options: &PgConnectOptions) -> String {
    format!(
        "{}:{} (user {}, database {})",
        options.get_host(),
        options.get_port(),
        options.get_username(),
        options.get_database().unwrap_or(options.get_username())
    )
}
