//! Finding the database: the configured URL, else the local default server, else a private
//! cluster of our own. The URL may name several hosts (see [`super::failover`]) or go through
//! a pooler in transaction mode (PgBouncer), with a direct URL beside it for what needs a
//! session.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use jobrunner_client::{Db, Pooling, SystemClock, pooled_options};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use tokio_util::sync::CancellationToken;

use super::failover::{Follower, Hosts, describe};
use crate::Queue;
use crate::private_pg::PrivatePostgres;

/// Enough for the worker's long-lived users (listener, fetchers, open batch transactions,
/// completer, heartbeat, rescuer, pruner) with room for bursts.
pub const MAX_CONNECTIONS: u32 = 14;

/// The fewest a runner works with: the listener, its open batch transactions
/// ([`crate::worker::OPEN_BATCHES`]), a claim, an outcome write and a heartbeat.
pub const MIN_CONNECTIONS: u32 = crate::worker::OPEN_BATCHES as u32 + 4;

/// How the runner reaches PostgreSQL: flags and config.
#[derive(Debug, Default, Clone)]
pub struct Target {
    /// The database URL; `None` for the local default server or a private cluster.
    pub url: Option<String>,
    /// The URL goes through a pooler in transaction mode.
    pub pooled: bool,
    /// A direct URL, for LISTEN and migrations, when `url` goes through a pooler.
    pub listen_url: Option<String>,
    /// The most connections the pool opens; [`MAX_CONNECTIONS`] if `None`.
    pub max_connections: Option<u32>,
    /// The data directory of the private cluster.
    pub private_dir: Option<PathBuf>,
}

/// The `application_name` of the runner's connections.
pub const APPLICATION_NAME: &str = "jobrunner";

/// A connected database, and the private cluster behind it if we started one.
pub struct Database {
    options: PgConnectOptions,
    db: Db,
    private: Mutex<Option<PrivatePostgres>>,
    /// Stops the follower of a URL naming several hosts.
    following: CancellationToken,
}

impl Database {
    /// Connects to the target's URL; without one, to the local default server; if nothing
    /// answers there, to a private cluster in its `private_dir` (started if needed).
    pub async fn connect(target: Target) -> anyhow::Result<Self> {
        let max_connections = target.max_connections.unwrap_or(MAX_CONNECTIONS);
        if max_connections < MIN_CONNECTIONS {
            bail!(
                "--max-connections {max_connections} is too few: a runner needs at least \
                 {MIN_CONNECTIONS} (LISTEN, {} open batch transactions, a claim, an outcome \
                 write and a heartbeat at once)",
                crate::worker::OPEN_BATCHES
            );
        }
        let hosts = match &target.url {
            Some(url) => Hosts::parse(url)?.map(|hosts| hosts.map(|o| named(o, target.pooled))),
            None => None,
        };
        let mut current = 0;
        let (options, private) = match (&target.url, &hosts) {
            (_, Some(hosts)) => {
                let (index, options) = hosts.find(None).await?;
                current = index;
                (options, None)
            }
            (Some(url), None) => (
                url.parse()
                    .context("DATABASE_URL is not a valid PostgreSQL URL")?,
                None,
            ),
            (None, None) => match default_server().await? {
                Some(options) => (options, None),
                None => {
                    let cluster = start_private(target.private_dir.clone()).await?;
                    (cluster.url().parse()?, Some(cluster))
                }
            },
        };
        let options = named(options, target.pooled);
        let mut pool_options = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10));
        if let Some(hosts) = &hosts {
            pool_options = hosts.pool_options(pool_options);
        }
        let pool = pool_options
            .connect_with(options.clone())
            .await
            .with_context(|| format!("cannot connect to PostgreSQL at {}", describe(&options)))?;
        let following = CancellationToken::new();
        if let Some(hosts) = hosts {
            let follower = Follower::new(hosts, pool.clone(), current);
            tokio::spawn(follower.run(following.clone()));
        }
        let pooling = match target.pooled {
            false => Pooling::Direct,
            true => Pooling::Transaction {
                session: match &target.listen_url {
                    Some(url) => Some(Box::new(named(
                        url.parse()
                            .context("the listen URL is not a valid PostgreSQL URL")?,
                        false,
                    ))),
                    None => None,
                },
            },
        };
        let db = Db::new(pool, pooling);
        if private.is_some() {
            // The private cluster is ours alone: keep its schema current without being asked.
            Queue::on(db.clone(), Arc::new(SystemClock))
                .migrate()
                .await?;
        }
        Ok(Self {
            options,
            db,
            private: Mutex::new(private),
            following,
        })
    }

    /// A queue on this database.
    pub fn queue(&self) -> Queue {
        Queue::on(self.db.clone(), Arc::new(SystemClock))
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
            .execute(&self.db)
            .await
            .with_context(|| format!("{statement} failed"))?;
        Ok(())
    }

    /// Closes the pool and stops the private cluster if we started it.
    pub async fn close(self) {
        self.following.cancel();
        self.db.pool().close().await;
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

/// `options` with our application name, unless the URL names one itself: operators (and the
/// fault-injection tests) tell runners' connections apart in pg_stat_activity by it. Through
/// a pooler, with the options it needs ([`pooled_options`]).
fn named(options: PgConnectOptions, pooled: bool) -> PgConnectOptions {
    let options = match options.get_application_name() {
        Some(_) => options,
        None => options.application_name(APPLICATION_NAME),
    };
    if pooled {
        pooled_options(options)
    } else {
        options
    }
}
