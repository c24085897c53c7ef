//! Brings the `jobrunner` schema up to date, under one advisory lock: first the numbered
//! migrations in `runner/migrations` (types, tables, indexes: what holds data), then the
//! definitions in `runner/sql` (functions, views, triggers: what only holds code), each
//! written once in its current form and applied with `CREATE OR REPLACE` in one transaction
//! whenever its text changed.
//!
//! A definition whose signature or return type changes cannot be replaced: a numbered
//! migration drops the old one first.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use sqlx::migrate::{Migrate, MigrateError, Migrator};
use sqlx::{Connection, PgConnection};

use crate::{Queue, Result};

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

/// Migrations whose function definitions moved to `runner/sql`, with the checksums their
/// earlier text had. A database migrated by a release before the move recorded those; what
/// the migrations still do was done then, so the record is brought up to the current text.
const REWRITTEN: [(i64, &str); 5] = [
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
];

/// Where sqlx's bookkeeping of the numbered migrations lives.
const TABLE: &str = "jobrunner._sqlx_migrations";

impl Queue {
    /// Applies pending migrations, then changed definitions. Idempotent, and safe to call from
    /// many runners at once: they migrate one after the other and the later ones find nothing
    /// to do.
    pub async fn migrate(&self) -> Result<()> {
        // A connection of its own: closing it releases the lock whatever went wrong.
        let mut conn = PgConnection::connect_with(&self.pool().connect_options()).await?;
        // sqlx's migration lock, which earlier releases take too, held until the end.
        conn.lock().await?;
        let migrated = migrate_locked(&mut conn).await;
        conn.close().await?;
        migrated
    }
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
    if let Some(unknown) = applied.keys().find(|v| !migrator.version_exists(**v)) {
        // A newer runner migrated this database.
        return Err(MigrateError::VersionMissing(*unknown).into());
    }
    for migration in migrator.iter() {
        match applied.get(&migration.version) {
            Some(checksum) if *checksum != *migration.checksum => {
                return Err(MigrateError::VersionMismatch(migration.version).into());
            }
            Some(_) => {}
            None => {
                conn.apply(TABLE, migration).await?;
            }
        }
    }
    apply_definitions(conn).await
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
    let mut wanted: Vec<(String, String)> = DEFINITIONS
        .iter()
        .map(|(file, text)| ((*file).to_owned(), hex::encode(Sha256::digest(text))))
        .collect();
    wanted.sort();
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
