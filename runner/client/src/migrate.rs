//! Brings the `jobrunner` schema up to date, under one advisory lock: first the numbered
//! migrations in `runner/migrations` (types, tables, indexes: what holds data), then the
//! definitions in `runner/sql` (functions, views, triggers: what only holds code), each
//! written once in its current form and applied with `CREATE OR REPLACE` in one transaction
//! whenever its text changed.
//!
//! A definition whose signature or return type changes cannot be replaced: a numbered
//! migration drops the old one first.
//!
//! Runners keep running while it migrates, so no step may hold them up for long:
//! - a statement that needs a strong lock on a table waits for it at most [`LOCK_TIMEOUT`],
//!   so that it never queues the runners' statements behind a long transaction, and tries
//!   again after a pause, for up to [`LOCK_PATIENCE`];
//! - indexes on the jobs table are built `CONCURRENTLY`, one per `-- no-transaction`
//!   migration, with `IF NOT EXISTS`; what an interrupted build left behind (an invalid index)
//!   is dropped before pending migrations run, so that the build runs again.
//!
//! It needs a session of its own (its lock): through a pooler in transaction mode, the
//! direct URL's.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sqlx::migrate::{Migrate, MigrateError, Migration, Migrator};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::{Queue, QueueError, Result};

/// The longest a migration statement waits for a lock: the runners' statements that queue
/// behind it wait as long.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a migration keeps trying to take its locks before it gives up.
pub const LOCK_PATIENCE: Duration = Duration::from_secs(300);

/// The definitions, in the order they are applied: a SQL function's body is checked against
/// what exists when it is created, and retired definitions go once their callers are replaced.
const DEFINITIONS: [(&str, &str); 6] = [
    ("tenants.sql", include_str!("../../sql/tenants.sql")),
    ("enqueue.sql", include_str!("../../sql/enqueue.sql")),
    ("schedules.sql", include_str!("../../sql/schedules.sql")),
    ("claim.sql", include_str!("../../sql/claim.sql")),
    ("batches.sql", include_str!("../../sql/batches.sql")),
    ("retired.sql", include_str!("../../sql/retired.sql")),
];

/// Migrations whose function definitions moved to `runner/sql`, or whose index builds moved
/// to migrations of their own, with the checksums their earlier text had. A database migrated
/// by a release before the move recorded those; what the migrations still do was done then, so
/// the record is brought up to the current text.
const REWRITTEN: [(i64, &str); 8] = [
    (
        1,
        "11608fa191f733dc7edbb48544c735b026d9621538f7ce33f018e127f1ed0c2b52b70fd0b98d564bfc4d74146521975c",
    ),
    (
        3,
        "0d8d61fe6f7fd8b0066541acff70864eb39179b8bfd9ae45fb43984f32d9f2e70c7e863c5e2652436178935928350aaa",
    ),
    (
        4,
        "09bc37a8981799a71e8a729006dc8dd34a29246ea26f6aecf405e8fe3a7fd58c6b1936d78a49f4b40648ef4cb2c5f728",
    ),
    (
        5,
        "ee47b655d6dcf471e13023a5fa5aa528d2091dcc6858482171b0738dab2fe7c0c1b5d4e74e278860784dc8609acae543",
    ),
    (
        6,
        "638b7c76635a1282043e557569c5f08e264fb6a0a0e12f3282540a749993c14eded2d741d17cf1389f2e1191c3f32e71",
    ),
    // Their index builds moved to migrations of their own (0017-0021), built concurrently.
    (
        11,
        "c9d4e1ac2d9166194356f3e6bc3f8280e316bdbc22e029971e0f39ff34929e46549a53658482c89ecd9092927d00b921",
    ),
    (
        12,
        "d742012ca154130d7cd9f86c11662a03a95301662606eba798c3f95b72e8c7cdc7ef645611c0c6efd30dc56f925b902a",
    ),
    (
        14,
        "042ddafd0ad21026eb6658f2fc3bda8e0e523a3c5f1fca5a27a7ca3863ac135d1edf24d5d5565e01cbb06a769841e999",
    ),
];

/// Where sqlx's bookkeeping of the numbered migrations lives.
const TABLE: &str = "jobrunner._sqlx_migrations";

impl Queue {
    /// Applies pending migrations, then changed definitions. Idempotent, and safe to call from
    /// many runners at once: they migrate one after the other and the later ones find nothing
    /// to do.
    ///
    /// Through a pooler in transaction mode without a direct URL it cannot take its lock: it
    /// then only checks that the schema is current, and fails if it is not.
    pub async fn migrate(&self) -> Result<()> {
        let Some(options) = self.db().session() else {
            return self.check_schema().await.map_err(|error| match error {
                QueueError::SchemaMissing(_) => QueueError::NoSession,
                error => error,
            });
        };
        // A connection of its own: closing it releases the lock whatever went wrong.
        let mut conn = PgConnection::connect_with(&options).await?;
        lock(&mut conn).await?;
        let migrated = migrate_locked(&mut conn).await;
        conn.close().await?;
        migrated
    }

    /// Checks, without changing anything, that the schema is the one this build migrates to:
    /// [`QueueError::SchemaNewer`] if a newer release migrated it, [`QueueError::NoSession`]
    /// if something is left to migrate.
    async fn check_schema(&self) -> Result<()> {
        let migrator = sqlx::migrate!("../migrations");
        let applied: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT version, checksum FROM jobrunner._sqlx_migrations WHERE success",
        )
        .fetch_all(self.db())
        .await?;
        refuse_newer(&migrator, applied.iter().map(|(version, _)| *version))?;
        let applied: HashMap<i64, Vec<u8>> = applied.into_iter().collect();
        let migrations_current = migrator
            .iter()
            .all(|m| applied.get(&m.version).is_some_and(|c| *c == *m.checksum));
        let definitions: Vec<(String, String)> =
            sqlx::query_as("SELECT file, sha256 FROM jobrunner.definitions ORDER BY file")
                .fetch_all(self.db())
                .await?;
        if migrations_current && definitions == wanted_definitions() {
            Ok(())
        } else {
            Err(QueueError::NoSession)
        }
    }
}

/// [`QueueError::SchemaNewer`] if a migration among `applied` is not one this build knows: a
/// newer release applied it.
fn refuse_newer(migrator: &Migrator, applied: impl Iterator<Item = i64>) -> Result<()> {
    match applied.filter(|v| !migrator.version_exists(*v)).max() {
        Some(version) => Err(QueueError::SchemaNewer {
            version,
            known: migrator.iter().map(|m| m.version).max().unwrap_or_default(),
        }),
        None => Ok(()),
    }
}

/// The definitions' files and the hashes of their text, by file.
fn wanted_definitions() -> Vec<(String, String)> {
    let mut wanted: Vec<(String, String)> = DEFINITIONS
        .iter()
        .map(|(file, text)| ((*file).to_owned(), hex::encode(Sha256::digest(text))))
        .collect();
    wanted.sort();
    wanted
}

/// A fingerprint of the schema this build migrates to: its numbered migrations and its
/// definitions. Two builds with the same fingerprint make the same schema.
pub fn schema_fingerprint() -> String {
    let mut hash = Sha256::new();
    for migration in sqlx::migrate!("../migrations").iter() {
        hash.update(migration.version.to_be_bytes());
        hash.update(&migration.checksum);
    }
    for (file, text) in DEFINITIONS {
        hash.update(file);
        hash.update(text);
    }
    hex::encode(hash.finalize())
}

async fn migrate_locked(conn: &mut PgConnection) -> Result<()> {
    let migrator = sqlx::migrate!("../migrations");
    conn.create_schema_if_not_exists("jobrunner").await?;
    conn.ensure_migrations_table(TABLE).await?;
    if let Some(version) = conn.dirty_version(TABLE).await? {
        return Err(MigrateError::Dirty(version).into());
    }
    accept_rewritten(conn, &migrator).await?;
    let applied: HashMap<i64, Vec<u8>> = conn
        .list_applied_migrations(TABLE)
        .await?
        .into_iter()
        .map(|m| (m.version, m.checksum.into_owned()))
        .collect();
    refuse_newer(&migrator, applied.keys().copied())?;
    let mut pending = Vec::new();
    for migration in migrator.iter() {
        match applied.get(&migration.version) {
            Some(checksum) if *checksum != *migration.checksum => {
                return Err(MigrateError::VersionMismatch(migration.version).into());
            }
            Some(_) => {}
            None => pending.push(migration),
        }
    }
    if !pending.is_empty() {
        drop_invalid_indexes(conn).await?;
    }
    for migration in pending {
        apply_patiently(conn, migration).await?;
    }
    let mut patience = Patience::new();
    loop {
        set_lock_timeout(conn, LOCK_TIMEOUT).await?;
        match apply_definitions(conn).await {
            Err(error) if lock_not_available(&error) => patience.wait(None).await?,
            applied => return applied,
        }
    }
}

/// Applies `migration`, trying again while its locks are not to be had (see
/// [`LOCK_TIMEOUT`]). A `CONCURRENTLY` build waits for the transactions before it without
/// holding anyone up, so a `-- no-transaction` migration waits as long as it takes.
async fn apply_patiently(conn: &mut PgConnection, migration: &Migration) -> Result<()> {
    let timeout = if migration.no_tx {
        Duration::ZERO
    } else {
        LOCK_TIMEOUT
    };
    let mut patience = Patience::new();
    loop {
        set_lock_timeout(conn, timeout).await?;
        match conn.apply(TABLE, migration).await.map_err(QueueError::from) {
            Err(error) if lock_not_available(&error) => {
                patience.wait(Some(migration.version)).await?
            }
            applied => return applied.map(drop),
        }
    }
}

/// Takes sqlx's migration lock, which earlier releases take too, held until the connection
/// closes. Not by waiting in `pg_advisory_lock`, as sqlx does: a `CREATE INDEX CONCURRENTLY`
/// of the migrator that holds the lock waits for every transaction older than it, including
/// a statement waiting for the lock, which waits for it: a deadlock.
async fn lock(conn: &mut PgConnection) -> Result<()> {
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut *conn)
        .await?;
    // sqlx's key for the database.
    let key = 0x3d32ad9e * i64::from(CRC.checksum(database.as_bytes()));
    loop {
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        if locked {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Pauses between tries to take a migration's locks, longer each time, until
/// [`LOCK_PATIENCE`] is spent.
struct Patience {
    started: Instant,
    pause: Duration,
}

impl Patience {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            pause: Duration::from_millis(100),
        }
    }

    /// Pauses before the next try; an error if patience ran out. `version` is the migration
    /// (`None`: the definitions).
    async fn wait(&mut self, version: Option<i64>) -> Result<()> {
        if self.started.elapsed() >= LOCK_PATIENCE {
            return Err(QueueError::MigrationBlocked {
                version,
                waited: self.started.elapsed(),
            });
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Duration::from_secs(5));
        Ok(())
    }
}

async fn set_lock_timeout(conn: &mut PgConnection, timeout: Duration) -> Result<()> {
    let ms = timeout.as_millis();
    sqlx::raw_sql(AssertSqlSafe(format!("SET lock_timeout = {ms}")))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Whether `error` is a statement that gave up waiting for a lock (`lock_not_available`).
fn lock_not_available(error: &QueueError) -> bool {
    let sqlx_error = match error {
        QueueError::Database(error) => error,
        QueueError::Migrate(MigrateError::Execute(error))
        | QueueError::Migrate(MigrateError::ExecuteMigration(error, _)) => error,
        _ => return false,
    };
    sqlx_error
        .as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == "55P03")
}

/// Drops the invalid indexes of the jobs table: what an interrupted `CREATE INDEX
/// CONCURRENTLY` leaves. The migration that built one was not recorded, so it runs again.
async fn drop_invalid_indexes(conn: &mut PgConnection) -> Result<()> {
    let invalid: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', n.nspname, c.relname)
           FROM pg_index AS i
           JOIN pg_class AS c ON c.oid = i.indexrelid
           JOIN pg_namespace AS n ON n.oid = c.relnamespace
          WHERE n.nspname = 'jobrunner' AND NOT i.indisvalid",
    )
    .fetch_all(&mut *conn)
    .await?;
    for index in invalid {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP INDEX CONCURRENTLY IF EXISTS {index}"
        )))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Updates the recorded checksums of [`REWRITTEN`] migrations from their earlier text to the
/// current one, where the earlier text is what was applied.
async fn accept_rewritten(conn: &mut PgConnection, migrator: &Migrator) -> Result<()> {
    for (version, earlier) in REWRITTEN {
        let current = migrator
            .iter()
            .find(|migration| migration.version == version)
            .expect("a rewritten migration is embedded");
        sqlx::query(
            "UPDATE jobrunner._sqlx_migrations SET checksum = $1
              WHERE version = $2 AND checksum = decode($3, 'hex')",
        )
        .bind(current.checksum.as_ref())
        .bind(version)
        .bind(earlier)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Applies every definition in one transaction if any differs from what was applied last.
async fn apply_definitions(conn: &mut PgConnection) -> Result<()> {
    let wanted = wanted_definitions();
    let applied: Vec<(String, String)> =
        sqlx::query_as("SELECT file, sha256 FROM jobrunner.definitions ORDER BY file")
            .fetch_all(&mut *conn)
            .await?;
    if applied == wanted {
        return Ok(());
    }
    let mut tx = conn.begin().await?;
    for (_, text) in DEFINITIONS {
        sqlx::raw_sql(text).execute(&mut *tx).await?;
    }
    sqlx::query("DELETE FROM jobrunner.definitions")
        .execute(&mut *tx)
        .await?;
    for (file, hash) in &wanted {
        sqlx::query(
            "INSERT INTO jobrunner.definitions (file, sha256, applied_at) VALUES ($1, $2, now())",
        )
        .bind(file)
        .bind(hash)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Each release of the definitions: the newest numbered migration then, and the hash of the
/// definitions. A change to `runner/sql` comes with a numbered migration of its own (a comment
/// will do) and a new entry here: a runner of an earlier release knows fewer migrations, so it
/// refuses the schema ([`QueueError::SchemaNewer`]) instead of putting its older definitions
/// back when it restarts during a rolling upgrade. The test below holds the rule.
#[cfg(test)]
const DEFINITION_RELEASES: [(i64, &str); 1] = [(
    21,
    "aa3936dc6ea46611d82c44c8c74e6ba45663e4578bf25ca85b115e54e3079640",
)];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_change_to_the_definitions_comes_with_a_numbered_migration() {
        let newest = sqlx::migrate!("../migrations")
            .iter()
            .map(|m| m.version)
            .max()
            .unwrap();
        let mut hash = Sha256::new();
        for (file, text) in DEFINITIONS {
            hash.update(file);
            hash.update(text);
        }
        let current = (newest, hex::encode(hash.finalize()));
        let versions: Vec<i64> = DEFINITION_RELEASES.iter().map(|(v, _)| *v).collect();
        assert!(
            versions.windows(2).all(|pair| pair[0] < pair[1]),
            "two releases of the definitions share a migration: {versions:?}"
        );
        let (version, hash) = DEFINITION_RELEASES.last().unwrap();
        assert!(
            *hash == current.1 && *version <= current.0,
            "the newest migration and the definitions are {current:?}: a change to runner/sql \
             needs a numbered migration of its own (a comment will do) and an entry in \
             DEFINITION_RELEASES"
        );
    }
}
