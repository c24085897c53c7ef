//! A fresh, migrated database per test, cloned from a template so that it costs milliseconds.
//!
//! The template's name carries the fingerprint of the schema this build migrates to, so
//! changing a migration or a definition makes a new template; it is created once per machine
//! under an advisory lock, whichever test process gets there first.

use std::sync::atomic::{AtomicU32, Ordering};

use runner::{Clock, Queue};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::sync::OnceCell;

/// The server tests create their databases on. Any database there will do as a base.
pub fn admin_url() -> String {
    std::env::var("JOBRUNNER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn admin_options() -> PgConnectOptions {
    admin_url()
        .parse::<PgConnectOptions>()
        .expect("JOBRUNNER_TEST_DATABASE_URL must be a URL")
}

async fn admin() -> PgConnection {
    admin_options()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test server at {}: {e}", admin_url()))
}

/// A database of the test's own, dropped when the test ends.
pub struct TestDb {
    pub name: String,
    pub pool: PgPool,
}

impl TestDb {
    /// A fresh database with the jobrunner schema.
    pub async fn new() -> TestDb {
        let template = template().await;
        Self::create(&format!("TEMPLATE {template}")).await
    }

    /// A fresh database without the schema.
    pub async fn empty() -> TestDb {
        Self::create("").await
    }

    async fn create(options: &str) -> TestDb {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "jobrunner_test_{}_{}_{:04x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            fastrand::u16(..)
        );
        let mut admin = admin().await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {name} {options}"
        )))
        .execute(&mut admin)
        .await
        .expect("create test database");
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .connect_with(admin_options().database(&name))
            .await
            .expect("connect to test database");
        TestDb { name, pool }
    }

    /// A connection of its own, outside the pool.
    pub async fn connect(&self) -> PgConnection {
        admin_options()
            .database(&self.name)
            .connect()
            .await
            .expect("connect to test database")
    }

    /// A connection URL, for runner processes.
    pub fn url(&self) -> String {
        let admin = admin_url();
        let base = admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(base, _)| base);
        format!("{base}/{}", self.name)
    }

    /// A queue on this database with the system clock.
    pub fn queue(&self) -> Queue {
        Queue::new(self.pool.clone())
    }

    /// A queue on this database with `clock`.
    pub fn queue_with(&self, clock: impl Clock) -> Queue {
        Queue::with_clock(self.pool.clone(), std::sync::Arc::new(clock))
    }

    /// A single-value query, for assertions.
    pub async fn scalar<T>(&self, sql: &'static str) -> T
    where
        T: Send + Unpin + for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .expect(sql)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread.
        let dropper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut admin = admin_options().connect().await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await?;
                admin.close().await
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        });
        if let Ok(Err(e)) = dropper.join() {
            eprintln!("warning: could not drop test database {}: {e}", self.name);
        }
    }
}

/// The migrated template's name, creating it if this build's migrations have none yet.
async fn template() -> &'static str {
    static TEMPLATE: OnceCell<String> = OnceCell::const_new();
    TEMPLATE.get_or_init(create_template).await
}

async fn create_template() -> String {
    let name = format!(
        "jobrunner_tpl_{}",
        &runner::client::schema_fingerprint()[..16]
    );
    let mut admin = admin().await;
    // Serialises template creation across test processes.
    sqlx::query("SELECT pg_advisory_lock(7312001)")
        .execute(&mut admin)
        .await
        .unwrap();
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    if !exists {
        let stale: Vec<String> = sqlx::query_scalar(
            "SELECT datname FROM pg_database WHERE datname LIKE 'jobrunner\\_tpl\\_%'",
        )
        .fetch_all(&mut admin)
        .await
        .unwrap();
        for old in stale {
            let drop = format!("DROP DATABASE IF EXISTS {old} WITH (FORCE)");
            sqlx::query(sqlx::AssertSqlSafe(drop))
                .execute(&mut admin)
                .await
                .unwrap();
        }
        let building = format!("{name}_building");
        for statement in [
            format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"),
            format!("CREATE DATABASE {building}"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut admin)
                .await
                .unwrap();
        }
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(admin_options().database(&building))
            .await
            .unwrap();
        Queue::new(pool.clone())
            .migrate()
            .await
            .expect("migrate template");
        pool.close().await;
        // Renamed only once complete, so a crash never leaves a half-built template in use.
        let rename = format!("ALTER DATABASE {building} RENAME TO {name}");
        sqlx::query(sqlx::AssertSqlSafe(rename))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    sqlx::query("SELECT pg_advisory_unlock(7312001)")
        .execute(&mut admin)
        .await
        .unwrap();
    name
}
